"""Evaluation in one pass: one score matrix per chunk serves valid and test (and the sampled
protocol), and the fast scores equal the score function's.

Oracles: the score function itself on the dense per-user tables (``backbones.score`` on
``eval_id_tables``), ``metrics.evaluate`` called once per split, and a pure-Python sorting loop
for the sampled protocol's ranks."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedmm_lite.fed import backbones
from fedmm_lite.fed.method import full_scores
from fedmm_lite.fed.rounds import FederatedRun, run_federated
from fedmm_lite.metrics import evaluate, evaluate_splits, sample_negatives

from test_fed_equivalence import small_config, tiny_dataset
from test_fedmr import mm_dataset
from test_metrics import brute_force_rank, make_dataset, table_score_fn

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")


def dense_scores(state, users: torch.Tensor) -> torch.Tensor:
    """The oracle: the backbone's one score function on the dense (c, n, d) tables."""
    return backbones.score(state.backbone, backbones.eval_params(state, users),
                           backbones.eval_id_tables(state, users))


def trained_run(backbone: str, method: str = "id", dataset=None, **kw) -> FederatedRun:
    """Three rounds with 60% of the clients each: clients that trained in different rounds (several
    PFedRec snapshots) and, with this seed, clients that never trained."""
    config = small_config(backbone, method=method, **kw)
    run = FederatedRun(dataset if dataset is not None else tiny_dataset(), config)
    for t in range(1, 4):
        run.train_round(t)
    return run


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fast_scores_equal_the_score_function_on_the_dense_tables(backbone):
    run = trained_run(backbone)
    state = run.state
    n_users = state.n_users
    if backbone == "pfedrec":   # what makes the fast path non-trivial is present
        assert len(state.private["E_u"].rounds) >= 2 and not bool(state.joined.all())
    orders = [torch.arange(n_users),                                   # consecutive (a slice)
              torch.randperm(n_users, generator=torch.Generator().manual_seed(1)),   # any order
              torch.tensor([5, 2, 11])]
    for users in orders:
        fast = backbones.eval_scores(state, users)
        assert fast.shape == (users.shape[0], 60)
        assert torch.allclose(fast, dense_scores(state, users), rtol=0, atol=1e-12), backbone


@pytest.mark.parametrize("backbone", ["pfedrec", "fedrap"])
def test_fast_scores_with_half_precision_private_tables(backbone):
    run = trained_run(backbone, dtype="float32", private_dtype="bfloat16")
    users = torch.arange(run.state.n_users)
    assert torch.allclose(backbones.eval_scores(run.state, users), dense_scores(run.state, users),
                          rtol=1e-5, atol=1e-5)


def test_gfmfr_keeps_the_fast_path_and_its_scores():
    run = trained_run("pfedrec", method="gfmfr", dataset=mm_dataset(), groups=2, server_epochs=5)
    users = torch.arange(run.state.n_users)
    assert torch.allclose(full_scores(run.state, users), dense_scores(run.state, users),
                          rtol=0, atol=1e-12)


@pytest.mark.parametrize("backbone", ["pfedrec", "fedncf"])
def test_run_evaluates_both_splits_from_one_scoring_and_equals_two_passes(backbone):
    run = trained_run(backbone, eval_chunk_size=4)
    calls = []
    scorer = run.score

    def counting(users):
        calls.append(users.clone())
        return scorer(users)

    run.score = counting
    valid, test = run.evaluate(3)
    # one call per chunk of 4 users for both splits together: 14 users -> 4 calls
    assert [len(u) for u in calls] == [4, 4, 4, 2]
    oracle = lambda users: dense_scores(run.state, users)  # noqa: E731
    for split, got in (("valid", valid), ("test", test)):
        two_pass = evaluate(oracle, run.dataset, split, ks=(10, 20, 50), chunk_size=5)
        assert got == pytest.approx(two_pass, abs=1e-12), split


def test_evaluate_splits_matches_the_sorting_oracle_on_both_splits_and_the_sampled_protocol():
    ds = make_dataset(n_users=31, n_items=160, min_train=1, max_train=40, seed=3)
    gen = torch.Generator().manual_seed(2)
    table = torch.randint(0, 9, (ds.n_users, ds.n_items), generator=gen).double()   # many ties
    negatives = {"valid": sample_negatives(ds, 99, seed=1, split="valid", pool="prior"),
                 "test": sample_negatives(ds, 99, seed=1, split="test", pool="prior")}
    calls = []
    out = evaluate_splits(table_score_fn(table, calls), ds, ("valid", "test"), ks=(1, 10),
                          chunk_size=7, sampled=negatives, sampled_ks=(1, 10), return_ranks=True)
    assert len(calls) == math.ceil(31 / 7)
    rows = table.tolist()
    for split in ("valid", "test"):
        target = ds.valid_items if split == "valid" else ds.test_items
        other = ds.test_items if split == "valid" else ds.valid_items
        full = [brute_force_rank(rows[u], int(target[u]), set(ds.train_items(u).tolist()) | {int(other[u])})
                for u in range(ds.n_users)]
        assert out[split]["ranks"].tolist() == full
        # sampled: the target among itself and its 99 negatives, ties against the target
        sampled = []
        for u in range(ds.n_users):
            candidates = [int(target[u])] + negatives[split][u].tolist()
            scores = [rows[u][j] for j in candidates]
            sampled.append(1 + sum(s >= scores[0] for s in scores[1:]))
        for k in (1, 10):
            assert out[split][f"hr@{k}_sampled"] == pytest.approx(np.mean([r <= k for r in sampled]))
            assert out[split][f"ndcg@{k}_sampled"] == pytest.approx(
                np.mean([(r <= k) / math.log2(1 + r) for r in sampled]))
            assert out[split][f"hr@{k}"] == pytest.approx(np.mean([r <= k for r in full]))


def test_a_target_among_the_training_items_is_ranked_as_target_ranks_ranks_it():
    # hand-built: user 0 trains on {0, 2}; valid 2 (also a training item), test 3; 5 items
    ds = make_dataset(1, 5, 1, 1, seed=0)
    ds.train_indptr, ds.train_indices = np.array([0, 2]), np.array([0, 2])
    ds.valid_items, ds.test_items = np.array([2]), np.array([3])
    scores = torch.tensor([[9.0, 1.0, 5.0, 7.0, 5.0]])
    out = evaluate_splits(lambda u: scores, ds, ("valid", "test"), ks=(1,), return_ranks=True)
    # valid target 2 (score 5): rivals 1 (1.0) no, 4 (5.0) yes (tie), 0 training, 3 the other item
    assert out["valid"]["ranks"].tolist() == [2]
    # test target 3 (score 7): rivals 1, 4 below; 0 and 2 are training items
    assert out["test"]["ranks"].tolist() == [1]


# ------------------------------------------------------------------------- the sampled pools
def test_the_two_sampled_pools():
    ds = make_dataset(n_users=40, n_items=110, min_train=1, max_train=8, seed=5)
    official_valid = sample_negatives(ds, 99, seed=0, split="valid", pool="official")
    official_test = sample_negatives(ds, 99, seed=0, split="test", pool="official")
    prior_valid = sample_negatives(ds, 99, seed=0, split="valid", pool="prior")
    prior_test = sample_negatives(ds, 99, seed=0, split="test", pool="prior")
    # the official pool is one pool for both splits: the same draw (the FedRAP code's form)
    assert np.array_equal(official_valid, official_test)
    # for test the two pools are the same set: same draw
    assert np.array_equal(prior_test, official_test)
    test_item_drawn = 0
    for u in range(ds.n_users):
        train = set(ds.train_items(u).tolist())
        v, t = int(ds.valid_items[u]), int(ds.test_items[u])
        for row in (official_valid[u], prior_valid[u], prior_test[u]):
            assert len(set(row.tolist())) == 99 and not (set(row.tolist()) & train)
        assert v not in prior_valid[u] and v not in prior_test[u] and t not in prior_test[u]
        assert v not in official_valid[u] and t not in official_valid[u]
        test_item_drawn += int(t in prior_valid[u])
    # the prior pool of validation may hold the (later) test item: 99 of about 105 items are drawn
    assert test_item_drawn > 20


def test_a_sampled_run_selects_on_the_sampled_validation_metric():
    ds = tiny_dataset(n_users=14, n_items=130)
    config = small_config("fedavg", protocol="sampled", rounds=3, sample_ratio=1.0)
    result = run_federated(ds, config, progress=False)
    for entry in result.history:
        for split in ("valid", "test"):
            assert {"hr@10_sampled", "ndcg@10_sampled", "hr@50"} <= set(entry[split])
    best = max(result.history, key=lambda e: (e["valid"]["hr@10_sampled"], -e["round"]))
    assert result.best_round == best["round"]
    # a full-protocol run of the same configuration selects on HR@50 and has no sampled keys
    full = run_federated(ds, dataclasses.replace(config, protocol="full"), progress=False)
    assert all("hr@10_sampled" not in e["valid"] for e in full.history)
    assert [e["valid"]["hr@50"] for e in full.history] == [e["valid"]["hr@50"] for e in result.history]


def test_the_popularity_reference_records_no_rounds():
    result = run_federated(tiny_dataset(), small_config("popularity", rounds=7), progress=False)
    assert result.config.rounds == 0 and [e["round"] for e in result.history] == [0]
    assert result.client_updates == 0
