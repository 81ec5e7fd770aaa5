"""The headroom ladder (fedmm_lite/headroom.py): oracles from the world's true logits, centralised
models selected on validation, the table's arithmetic."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmm_lite import headroom
from fedmm_lite.data import load_dataset
from fedmm_lite.fed.rounds import popularity_scores

from test_fedmr import mm_dataset


def test_standard_error_is_binomial():
    assert headroom.standard_error(0.5, 100) == pytest.approx(0.05)
    assert headroom.standard_error(0.2, 400) == pytest.approx(math.sqrt(0.2 * 0.8 / 400))
    assert headroom.standard_error(0.0, 10) == 0.0


def test_ladder_on_world_quick_orders_the_oracles_and_measures_the_gap():
    data = load_dataset("world-quick")
    pop = popularity_scores(data, "cpu").expand(data.n_users, -1)
    rows = headroom.standard_rungs(data, headroom.evaluate_scores(data, pop, "test"),
                                   headroom.evaluate_scores(data, pop, "valid"))
    table = headroom.ladder_table(rows)
    bayes = table.loc["Bayes oracle (true logits)"]
    content = table.loc["content-only oracle (no co-consumption)"]
    assert bayes["test HR@50"] >= content["test HR@50"]
    assert bayes["test NDCG@50"] > content["test NDCG@50"]
    assert bayes["gap closed"] == pytest.approx(1.0)
    assert table.loc["popularity", "gap closed"] == pytest.approx(0.0)
    hr = table.loc["popularity", "test HR@50"]
    assert table.loc["popularity", "SE"] == pytest.approx(math.sqrt(hr * (1 - hr) / data.n_users))


@pytest.mark.parametrize("model", ["id", "fusion"])
def test_central_model_is_selected_on_validation(model):
    data = mm_dataset(seed=7)
    options = dict(strategy="mix", dim=8, router_hidden=4) if model == "fusion" else {}
    result = headroom.train_central(data, model, epochs=6, lr=0.05, batch_size=32, **options)
    curve = [h["valid_hr@50"] for h in result.history]
    assert len(curve) == 6
    assert result.best_epoch == 1 + int(np.argmax(curve))          # earliest best, on validation
    assert result.valid["hr@50"] == max(curve)
    assert set(result.test) >= {"hr@50", "ndcg@50"}


def test_central_fusion_model_reads_the_features():
    """The same seed with other features gives another model (defect 2 of the published code)."""
    data = mm_dataset(seed=8)
    a = headroom.train_central(data, "fusion", epochs=2, lr=0.05, batch_size=32, dim=8,
                               router_hidden=4, strategy="sum")
    data.features = {k: np.random.default_rng(1).normal(size=v.shape).astype(np.float32)
                     for k, v in data.features.items()}
    b = headroom.train_central(data, "fusion", epochs=2, lr=0.05, batch_size=32, dim=8,
                               router_hidden=4, strategy="sum")
    assert a.history[-1]["loss"] != pytest.approx(b.history[-1]["loss"], abs=1e-7)


@pytest.mark.parametrize("fusion_model", [False, True])
def test_central_model_scores_every_item_as_it_trains_on_pairs(fusion_model):
    """The ID model is the FedAvg score function; both models' full-ranking scores equal their
    training logits of the same (user, item) pairs (the mix of Eq. (6) under the user's router)."""
    from fedmm_lite.fed.config import FedConfig

    data = mm_dataset(seed=9)
    generator = torch.Generator().manual_seed(0)
    config = FedConfig(method="fedmr", dim=8, router_hidden=4)
    net = headroom._CentralModel(data, config, fusion_model, generator)
    users = torch.tensor([0, 3, 5])
    scores = net.scores(users)
    if not fusion_model:
        p, q, b = net.params["p"], net.params["Q"], net.params["b"]
        assert torch.allclose(scores, p[users] @ q.T + b[users].unsqueeze(1), atol=1e-6)
    pairs = net.logits(torch.tensor([0, 3, 5, 0]), torch.tensor([5, 6, 7, 8]))
    want = torch.stack([scores[0, 5], scores[1, 6], scores[2, 7], scores[0, 8]])
    assert torch.allclose(pairs.detach(), want, atol=1e-5)


def test_central_fusion_training_is_repeatable_with_two_threads():
    """headroom.train_central runs under deterministic algorithms: two runs of one seed with two
    CPU threads give the same losses (without them the fusion model's losses differed)."""
    data = load_dataset("world-quick")
    rng = np.random.default_rng(0)
    data.features = {m: rng.normal(size=(data.n_items, 48)).astype(np.float32) for m in ("image", "text")}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = (headroom.train_central(data, "fusion", epochs=3, seed=0) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.test == b.test
