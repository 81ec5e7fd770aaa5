"""Tests of fedmm_lite.metrics against independent oracles: hand-computed cases, a pure-Python
sorting loop per user, planted constant / random models, and the sampled protocol's invariants."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmm_lite.data.dataset import Dataset
from fedmm_lite.errors import OptionError
from fedmm_lite.metrics import (evaluate, hr_ndcg, random_expectation, sample_negatives,
                                sampled_evaluate, target_ranks)


def make_dataset(n_users: int, n_items: int, min_train: int, max_train: int,
                 seed: int) -> Dataset:
    """A random leave-one-out Dataset built directly from arrays (no data/ loader involved)."""
    rng = np.random.default_rng(seed)
    indptr, indices, valid, test = [0], [], [], []
    for _ in range(n_users):
        size = int(rng.integers(min_train, max_train + 1))
        items = rng.permutation(n_items)[:size + 2]
        indices.extend(sorted(items[:size].tolist()))
        indptr.append(indptr[-1] + size)
        valid.append(items[size])
        test.append(items[size + 1])
    return _dataset_from_arrays(indptr, indices, valid, test, n_items)


def _dataset_from_arrays(indptr, indices, valid, test, n_items) -> Dataset:
    n_users = len(valid)
    return Dataset(
        name="metrics-test",
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        item_ids=np.array([f"i{i}" for i in range(n_items)]),
        titles=[""] * n_items,
        image_paths=[None] * n_items,
        train_indptr=np.asarray(indptr, dtype=np.int64),
        train_indices=np.asarray(indices, dtype=np.int64),
        valid_items=np.asarray(valid, dtype=np.int64),
        test_items=np.asarray(test, dtype=np.int64),
    )


def table_score_fn(table: torch.Tensor, calls: list | None = None):
    """score_fn that looks rows up in a fixed (U, n) table, optionally recording each call."""
    def score_fn(users: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append((users.clone(), torch.is_grad_enabled()))
        return table[users]
    return score_fn


def brute_force_rank(scores: list[float], target: int, excluded: set[int]) -> int:
    """Oracle: sort the candidates by score, descending, placing the target after its ties; the
    1-based position of the target is its rank."""
    candidates = [j for j in range(len(scores)) if j not in excluded or j == target]
    ordered = sorted(candidates, key=lambda j: (-scores[j], j == target))
    return ordered.index(target) + 1


# ---------------------------------------------------------------- hand-computed cases

def test_perfect_scores_give_hr_and_ndcg_one():
    scores = torch.tensor([[0.1, 0.9, 0.3], [5.0, 1.0, 2.0]])
    ranks = target_ranks(scores, torch.tensor([1, 0]), torch.zeros(2, 3, dtype=torch.bool))
    assert ranks.tolist() == [1, 1]
    m = hr_ndcg(ranks, ks=(1, 10))
    assert m == {"hr@1": 1.0, "ndcg@1": 1.0, "hr@10": 1.0, "ndcg@10": 1.0}


def test_target_at_rank_three_gives_ndcg_half():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.0]])
    ranks = target_ranks(scores, torch.tensor([2]), torch.zeros(1, 5, dtype=torch.bool))
    assert ranks.tolist() == [3]
    m = hr_ndcg(ranks, ks=(2, 10))
    # NDCG@10 = 1 / log2(1 + 3) = 0.5 ; outside the top 2 -> no hit, NDCG 0
    assert m["ndcg@10"] == pytest.approx(0.5)
    assert m["hr@10"] == 1.0
    assert m["hr@2"] == 0.0 and m["ndcg@2"] == 0.0


def test_ties_count_against_the_target():
    # target (item 1) tied with items 0 and 3 -> two rivals counted -> rank 3
    scores = torch.tensor([[2.0, 2.0, 1.0, 2.0, 0.5]])
    ranks = target_ranks(scores, torch.tensor([1]), torch.zeros(1, 5, dtype=torch.bool))
    assert ranks.tolist() == [3]


def test_excluded_items_scoring_higher_do_not_count():
    scores = torch.tensor([[9.0, 8.0, 1.0, 7.0, 0.0]])
    exclude = torch.tensor([[True, True, False, False, False]])
    ranks = target_ranks(scores, torch.tensor([2]), exclude)
    assert ranks.tolist() == [2]          # only item 3 (7.0, not excluded) beats the target


def test_target_is_never_its_own_rival_even_when_masked():
    scores = torch.tensor([[1.0, 0.0]])
    for mask in (torch.tensor([[False, False]]), torch.tensor([[True, False]])):
        assert target_ranks(scores, torch.tensor([0]), mask).tolist() == [1]


def test_nan_scores_raise_a_clear_error():
    scores = torch.tensor([[0.1, float("nan")], [0.2, 0.3]])
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(scores, torch.tensor([0, 0]), torch.zeros(2, 2, dtype=torch.bool))


def test_nan_from_score_fn_raises_in_evaluate():
    ds = make_dataset(5, 30, 2, 4, seed=3)
    table = torch.zeros(5, 30)
    table[4, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate(table_score_fn(table), ds, "valid", chunk_size=2)


def test_hr_ndcg_averages_over_users():
    m = hr_ndcg(np.array([1, 3, 60]), ks=(10, 50))
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert m["hr@50"] == pytest.approx(2 / 3)


def test_random_expectation_hand_values():
    assert random_expectation(100, 10) == pytest.approx(0.1)
    assert random_expectation(5, 10) == 1.0
    assert random_expectation(2, 1, metric="ndcg") == pytest.approx(0.5)
    assert random_expectation(2, 2, metric="ndcg") == pytest.approx((1 + 1 / math.log2(3)) / 2)


# ---------------------------------------------------------------- evaluate vs a brute-force loop

@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_matches_brute_force_sorting_oracle(split):
    ds = make_dataset(n_users=37, n_items=60, min_train=1, max_train=25, seed=11)
    gen = torch.Generator().manual_seed(5)
    # integer scores in a small range: many ties, so the tie rule is exercised
    table = torch.randint(0, 12, (ds.n_users, ds.n_items), generator=gen).float()
    ks = (1, 5, 10, 20, 50)
    got = evaluate(table_score_fn(table), ds, split, ks=ks, chunk_size=8, return_ranks=True)

    rows = table.tolist()
    expected_ranks = []
    for u in range(ds.n_users):
        target = int(ds.test_items[u] if split == "test" else ds.valid_items[u])
        other = int(ds.valid_items[u] if split == "test" else ds.test_items[u])
        excluded = set(ds.train_items(u).tolist()) | {other}
        expected_ranks.append(brute_force_rank(rows[u], target, excluded))
    assert got["ranks"].tolist() == expected_ranks
    for k in ks:
        hr = sum(r <= k for r in expected_ranks) / ds.n_users
        ndcg = sum(1 / math.log2(1 + r) for r in expected_ranks if r <= k) / ds.n_users
        assert got[f"hr@{k}"] == pytest.approx(hr)
        assert got[f"ndcg@{k}"] == pytest.approx(ndcg)


def test_evaluate_users_subset_keeps_their_order_and_ranks():
    ds = make_dataset(20, 40, 2, 10, seed=2)
    table = torch.randn(20, 40, generator=torch.Generator().manual_seed(0))
    full = evaluate(table_score_fn(table), ds, "test", return_ranks=True)["ranks"]
    subset = [17, 3, 9]
    part = evaluate(table_score_fn(table), ds, "test", users=subset, chunk_size=2,
                    return_ranks=True)["ranks"]
    assert part.tolist() == full[subset].tolist()


def test_evaluate_default_keys():
    ds = make_dataset(6, 80, 2, 5, seed=4)
    out = evaluate(table_score_fn(torch.randn(6, 80)), ds, "valid")
    assert set(out) == {"hr@10", "hr@20", "hr@50", "ndcg@10", "ndcg@20", "ndcg@50"}


# ---------------------------------------------------------------- planted models

def test_constant_model_scores_zero():
    ds = make_dataset(50, 120, 1, 20, seed=7)    # every user has >= 99 candidates
    out = evaluate(lambda users: torch.zeros(users.shape[0], 120), ds, "test", chunk_size=16,
                   return_ranks=True)
    assert out["hr@50"] == 0.0 and out["ndcg@50"] == 0.0
    # each target is ranked last among its n - |H_u| - 1 candidates
    assert out["ranks"].tolist() == (120 - ds.train_sizes - 1).tolist()


def test_random_model_matches_random_expectation():
    n_users, n_items = 3000, 300
    ds = make_dataset(n_users, n_items, 5, 60, seed=8)
    gen = torch.Generator().manual_seed(123)
    table = torch.rand(n_users, n_items, generator=gen)
    out = evaluate(table_score_fn(table), ds, "valid", ks=(50,), chunk_size=512)
    n_candidates = n_items - ds.train_sizes - 1                           # (U,)
    p = np.array([random_expectation(int(c), 50) for c in n_candidates])  # (U,) per-user HR@50
    # mean of independent Bernoulli(p_u): 4 standard deviations of the mean
    tolerance = 4 * math.sqrt(float((p * (1 - p)).sum())) / n_users
    assert abs(out["hr@50"] - p.mean()) < tolerance
    q = np.array([random_expectation(int(c), 50, metric="ndcg") for c in n_candidates])
    assert abs(out["ndcg@50"] - q.mean()) < 4 * tolerance


def test_other_held_out_item_is_masked():
    # one user, 5 items; train {0}; valid 1; test 2. The other held-out item scores highest.
    ds = _dataset_from_arrays([0, 1], [0], valid=[1], test=[2], n_items=5)
    # testing: the valid item (1) outscores the test item (2); masked -> test ranks 1
    scores = torch.tensor([[9.0, 8.0, 5.0, 1.0, 0.0]])
    out = evaluate(lambda users: scores, ds, "test", ks=(1,), return_ranks=True)
    assert out["ranks"].tolist() == [1] and out["hr@1"] == 1.0
    # validating: the test item (2) outscores the valid item (1); masked -> valid ranks 1
    scores = torch.tensor([[9.0, 5.0, 8.0, 1.0, 0.0]])
    out = evaluate(lambda users: scores, ds, "valid", ks=(1,), return_ranks=True)
    assert out["ranks"].tolist() == [1]
    # control: an unmasked item (3) outscoring the target does count
    scores = torch.tensor([[9.0, 5.0, 8.0, 6.0, 0.0]])
    out = evaluate(lambda users: scores, ds, "valid", ks=(1,), return_ranks=True)
    assert out["ranks"].tolist() == [2]


# ---------------------------------------------------------------- chunking and contract

def test_evaluate_calls_score_fn_with_at_most_chunk_size_users_without_grad():
    ds = make_dataset(23, 30, 1, 5, seed=9)
    table = torch.randn(23, 30, requires_grad=True)
    calls: list = []
    evaluate(table_score_fn(table, calls), ds, "valid", chunk_size=5)
    assert [len(users) for users, _ in calls] == [5, 5, 5, 5, 3]
    assert torch.cat([users for users, _ in calls]).tolist() == list(range(23))
    assert not any(grad for _, grad in calls)
    assert all(users.dtype == torch.long for users, _ in calls)


def test_evaluate_rejects_bad_input():
    ds = make_dataset(4, 20, 1, 3, seed=1)
    with pytest.raises(OptionError, match="split"):
        evaluate(lambda u: torch.zeros(len(u), 20), ds, "train")
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: torch.zeros(len(u), 19), ds, "test")
    with pytest.raises(OptionError, match="ks"):
        evaluate(lambda u: torch.zeros(len(u), 20), ds, "test", ks=(0,))


# ---------------------------------------------------------------- sampled protocol

def test_sampled_negatives_are_never_interacted_and_distinct():
    ds = make_dataset(40, 150, 5, 40, seed=12)
    neg = sample_negatives(ds, 99, seed=0)
    assert neg.shape == (40, 99)
    for u in range(ds.n_users):
        interacted = set(ds.train_items(u).tolist()) | {int(ds.valid_items[u]),
                                                        int(ds.test_items[u])}
        assert not interacted & set(neg[u].tolist())
        assert len(set(neg[u].tolist())) == 99


def test_sampled_negatives_are_deterministic_per_seed():
    ds = make_dataset(10, 200, 5, 20, seed=13)
    assert np.array_equal(sample_negatives(ds, 99, seed=4), sample_negatives(ds, 99, seed=4))
    assert not np.array_equal(sample_negatives(ds, 99, seed=4), sample_negatives(ds, 99, seed=5))


def test_sampled_perfect_model_scores_one_even_with_interacted_items_on_top():
    ds = make_dataset(30, 150, 5, 40, seed=14)
    table = torch.zeros(30, 150)
    for u in range(30):
        table[u, ds.train_items(u)] = 10.0        # interacted items above the target: must not
        table[u, ds.valid_items[u]] = 10.0        # be candidates, or the target would lose
        table[u, ds.test_items[u]] = 5.0
    out = sampled_evaluate(table_score_fn(table), ds, "test", k=1, chunk_size=7)
    assert out == {"hr@1_sampled": 1.0, "ndcg@1_sampled": 1.0}
    # a constant model ranks every target last (rank 100) under the sampled protocol too
    const = sampled_evaluate(lambda u: torch.zeros(len(u), 150), ds, "test")
    assert set(const) == {"hr@10_sampled", "ndcg@10_sampled"}
    assert const["hr@10_sampled"] == 0.0


def test_sampled_evaluate_is_deterministic_and_matches_oracle():
    ds = make_dataset(25, 160, 5, 30, seed=15)
    table = torch.randn(25, 160, generator=torch.Generator().manual_seed(1))
    a = sampled_evaluate(table_score_fn(table), ds, "valid", seed=3)
    b = sampled_evaluate(table_score_fn(table), ds, "valid", seed=3, chunk_size=4)
    assert a == b
    neg = sample_negatives(ds, 99, seed=3)
    rows = table.tolist()
    ranks = [1 + sum(rows[u][j] >= rows[u][int(ds.valid_items[u])] for j in neg[u])
             for u in range(25)]
    assert a["hr@10_sampled"] == pytest.approx(sum(r <= 10 for r in ranks) / 25)
    assert a["ndcg@10_sampled"] == pytest.approx(
        sum(1 / math.log2(1 + r) for r in ranks if r <= 10) / 25)


def test_sampled_too_few_items_raises():
    ds = make_dataset(3, 50, 5, 10, seed=16)
    with pytest.raises(OptionError, match="n_negatives"):
        sample_negatives(ds, 99)
