"""The cold-item split (split.build_dataset's ``cold_fraction``, metrics.evaluate_cold): held-out
items never reach training, not even as negatives; their metrics against hand-made rankings; an ID
model cannot move their rows, FedMR scores them from their features."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedmm_lite import metrics
from fedmm_lite.data import NegativeSampler, build_dataset, read_folder
from fedmm_lite.errors import OptionError
from fedmm_lite.fed import run_federated

from test_fedmr import mr_config


def _world_like(make_folder, seed=0, n_users=30, n_items=40, per_user=9):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, per_user, replace=False)):
            rows.append((f"u{u:02d}", f"i{i:02d}", 100 + t))
    items = [(f"i{i:02d}", f"title {i}", "") for i in range(n_items)]
    return read_folder(make_folder(rows, items)), rows


def test_cold_items_are_held_out_of_training_and_become_cold_targets(make_folder):
    raw, rows = _world_like(make_folder)
    data = build_dataset(raw, check_images=False, cold_fraction=0.25, cold_seed=3)
    cold = set(data.cold_items.tolist())
    assert len(cold) == 10                                                  # round(0.25 * 40)
    warm_items = set(data.train_indices.tolist()) | set(data.valid_items) | set(data.test_items)
    assert not cold & warm_items                                            # never trained or held out warm
    by_user = {}
    for u, i, t in rows:
        by_user.setdefault(u, []).append((t, i))
    for k, uid in enumerate(data.user_ids):
        mine = sorted(by_user[uid])
        cold_mine = [data.item_ids.tolist().index(i) for t, i in mine
                     if data.item_ids.tolist().index(i) in cold]
        warm_mine = [data.item_ids.tolist().index(i) for t, i in mine
                     if data.item_ids.tolist().index(i) not in cold]
        assert data.test_items[k] == warm_mine[-1] and data.valid_items[k] == warm_mine[-2]
        assert sorted(data.train_items(k).tolist()) == sorted(warm_mine[:-2])
        got = data.cold_indices[data.cold_indptr[k]:data.cold_indptr[k + 1]].tolist()
        assert got == cold_mine                                             # oldest first
        assert data.cold_test_items[k] == (cold_mine[-1] if cold_mine else -1)
    assert data.stats()["cold_items"] == 10
    again = build_dataset(raw, check_images=False, cold_fraction=0.25, cold_seed=3)
    assert np.array_equal(again.cold_items, data.cold_items)               # the seed decides
    other = build_dataset(raw, check_images=False, cold_fraction=0.25, cold_seed=4)
    assert not np.array_equal(other.cold_items, data.cold_items)


def test_users_without_enough_warm_interactions_are_dropped_and_counted(make_folder):
    rows = [("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("a", "w", 4),
            ("b", "x", 1), ("b", "y", 2), ("b", "w", 3)]
    items = [(i, i, "") for i in "wxyz"]
    raw = read_folder(make_folder(rows, items))
    for seed in range(20):                                                  # a seed that makes w cold
        data = build_dataset(raw, check_images=False, cold_fraction=0.25, cold_seed=seed)
        if data.item_ids[data.cold_items[0]] == "w":
            break
    assert data.user_ids.tolist() == ["a"] and data.report.users_dropped_cold == 1
    with pytest.raises(OptionError, match="--cold-items"):
        build_dataset(raw, check_images=False, cold_fraction=1.0)


def test_negatives_never_hit_cold_items(make_folder):
    raw, _ = _world_like(make_folder, seed=1)
    data = build_dataset(raw, check_images=False, cold_fraction=0.3, cold_seed=0)
    sampler = NegativeSampler(data, "cpu", max_rounds=1)                   # the inversion path too
    users = torch.arange(data.n_users).repeat(200)
    drawn = sampler.sample(users, torch.Generator().manual_seed(0))
    assert not np.isin(drawn.numpy(), data.cold_items).any()
    for u in range(data.n_users):
        mine = drawn[users == u].numpy()
        assert not np.isin(mine, data.train_items(u)).any()
    allowed = data.n_items - len(data.cold_items)
    assert len(np.unique(drawn.numpy())) == allowed                        # every warm item can be drawn


def test_evaluate_cold_ranks_among_cold_and_among_all_items(make_folder):
    raw, _ = _world_like(make_folder, seed=2)
    data = build_dataset(raw, check_images=False, cold_fraction=0.25, cold_seed=1)
    n = data.n_items
    target = torch.as_tensor(data.cold_test_items)
    has = target >= 0
    is_cold = torch.zeros(n, dtype=torch.bool)
    is_cold[torch.as_tensor(data.cold_items)] = True

    def perfect(users):                     # the cold target first, then warm items, cold last
        scores = torch.where(is_cold, -1.0, 0.0).expand(len(users), -1).clone()
        scores[torch.arange(len(users)), target[users].clamp(min=0)] = 5.0
        return scores

    out = metrics.evaluate_cold(perfect, data, ks=(1, 5))
    assert out["cold_users"] == int(has.sum())
    assert out["cold_hr@1"] == 1.0 and out["cold_all_hr@1"] == 1.0

    def warm_first(users):                  # every warm item above every cold item
        return torch.where(is_cold, 0.0, 1.0).expand(len(users), -1).clone()

    out = metrics.evaluate_cold(warm_first, data, ks=(1, 5))
    assert out["cold_all_hr@5"] == 0.0      # the warm candidates come first
    assert out["cold_hr@1"] == 0.0          # a tie counts against the target
    # the random ranker among cold candidates: N_u = n_cold - (cold interactions of u) + 1
    counts = np.diff(data.cold_indptr)[has.numpy()]
    want = np.mean([min(5, len(data.cold_items) - c + 1) / (len(data.cold_items) - c + 1) for c in counts])
    assert out["cold_random_hr@5"] == pytest.approx(want)
    assert metrics.evaluate_cold(warm_first, dataclasses.replace(data, cold_items=None)) == {}


def test_id_rows_of_cold_items_never_move_and_fedmr_scores_them_by_content(make_folder):
    raw, _ = _world_like(make_folder, seed=3, n_users=16, n_items=30, per_user=8)
    data = build_dataset(raw, check_images=False, cold_fraction=0.2, cold_seed=0)
    rng = np.random.default_rng(0)
    data.features = {"image": rng.normal(size=(data.n_items, 6)).astype(np.float32),
                     "text": rng.normal(size=(data.n_items, 5)).astype(np.float32)}
    cold = torch.as_tensor(data.cold_items)
    config = mr_config("fedavg", method="id", rounds=2, sample_ratio=1.0)
    start = run_federated(data, dataclasses.replace(config, rounds=0), progress=False).state
    trained = run_federated(data, config, progress=False)
    assert torch.equal(trained.state.global_["Q"][cold], start.global_["Q"][cold])
    assert (trained.state.global_["Q"] - start.global_["Q"]).abs().max() > 1e-3
    assert "cold_hr@50" in trained.test and trained.test["cold_users"] > 0
    fedmr = run_federated(data, mr_config("fedavg", rounds=2, sample_ratio=1.0), progress=False)
    assert torch.equal(fedmr.state.global_["Q"][cold], start.global_["Q"][cold])
    users = torch.arange(data.n_users)
    from fedmm_lite.fed.method import full_scores
    before = full_scores(fedmr.state, users)[:, cold]
    fedmr.state.method.features["image"][cold] += 1.0                       # content of cold items
    fedmr.state.method._bases = {}
    assert (full_scores(fedmr.state, users)[:, cold] - before).abs().max() > 1e-4
