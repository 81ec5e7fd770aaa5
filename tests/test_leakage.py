"""The upload-leakage attack and the prediction-function probe (fed/leakage.py).

Oracles: planted updates with known positives and negatives; the world's truth (each client's
training items; each user's planted group) for the attack on real rounds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmm_lite.data import load_dataset
from fedmm_lite.fed import leakage
from fedmm_lite.fed.config import default_config
from fedmm_lite.fed.rounds import FederatedRun


def planted_update(n=200, d=16, positives=(3, 50, 77), negatives=(1, 9, 20, 31, 64, 90, 120, 150),
                   seed=0) -> torch.Tensor:
    """Rows of a client's update as the gradients make them: -a_i v for positives, +b_i v for
    negatives (one user direction v), 0 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.zeros(n, d, dtype=torch.float64)
    for i in positives:
        x[i] = -(1 + torch.rand(1, generator=g, dtype=torch.float64)) * v
    for i in negatives:
        x[i] = (0.2 + torch.rand(1, generator=g, dtype=torch.float64)) * v
    return x


def test_the_attack_separates_planted_positives_from_negatives():
    x = planted_update()
    scores, predicted = leakage.infer_items(x)
    assert set(torch.nonzero(predicted).flatten().tolist()) == {3, 50, 77}
    # the sign of the update does not matter (the minority side is the positives)
    _, predicted = leakage.infer_items(-x)
    assert set(torch.nonzero(predicted).flatten().tolist()) == {3, 50, 77}


def test_noise_far_above_the_signal_leaves_the_attack_at_chance():
    x = planted_update() * 1e-3
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scores, predicted = leakage.infer_items(noisy, sigma=1.0)
    assert int(predicted[[3, 50, 77]].sum()) == 0     # the planted positives are lost in the noise
    assert int(predicted.sum()) <= 2                  # and the threshold lets ~0.05 noise rows through
    # P(|N(0,1)| > t) = 0.05 / 200, i.e. P(N(0,1) > t) = 1.25e-4: t = 3.66 (a normal table)
    assert leakage.threshold(1.0, 200) == pytest.approx(3.66, abs=0.01)


def test_auc_by_hand():
    assert leakage.auc(np.array([0.9, 0.1, 0.5, 0.3]), np.array([1, 0, 1, 0])) == 1.0
    assert leakage.auc(np.array([0.1, 0.9, 0.5, 0.3]), np.array([1, 0, 1, 0])) == 0.25   # 1 of 4 pairs
    assert leakage.auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5


@pytest.fixture(scope="module")
def world():
    return load_dataset("world-quick")


def attack_on(world, backbone, **kw):
    config = default_config(backbone, rounds=2, device="cpu", sample_ratio=0.5, **kw)
    run = FederatedRun(world, config)
    run.train_round(1)
    seen = leakage.observe_round(run, 2)
    shapes = {k: tuple(v.shape) for k, v in run.state.global_.items()}
    return leakage.attack_uploads(seen, world, run.state.spec.tables, shapes,
                                  leakage.noise_std(run.noise, run.dp))


@pytest.mark.parametrize("backbone", ["fedavg", "fcf", "fedncf", "pfedrec", "fedrap"])
def test_one_rounds_update_gives_away_the_clients_items_on_the_world(world, backbone):
    result = attack_on(world, backbone)
    assert result["clients"] == 90
    assert result["recall"] >= 0.95 and result["precision"] >= 0.95 and result["auc"] >= 0.99


def test_local_dp_brings_the_attack_down_to_a_coin(world):
    result = attack_on(world, "fedavg", dp="local", clip=1.0, noise_multiplier=5.0)
    assert result["recall"] < 0.1 and abs(result["auc"] - 0.5) < 0.1


def test_noise_std_of_each_setting():
    from fedmm_lite.fed.privacy import DpSpec, NoiseSpec

    assert leakage.noise_std(NoiseSpec("gaussian", 0.3)) == 0.3
    assert leakage.noise_std(NoiseSpec("laplace", 2.0)) == pytest.approx(2 * 2 ** 0.5)   # Var = 2 b^2
    assert leakage.noise_std(NoiseSpec(), DpSpec("local", 0.5, 4.0)) == 2.0
    assert leakage.noise_std(NoiseSpec(), DpSpec("central", 0.5, 4.0)) == 0.0   # the server sees raw uploads


def test_the_probe_reads_planted_groups_and_only_them():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], 60)
    centres = rng.normal(size=(3, 9)) * 3
    P = centres[groups] + rng.normal(size=(180, 9))
    assert leakage.probe_groups(P, groups)["accuracy"] > 0.95
    shuffled = leakage.probe_groups(rng.normal(size=(180, 9)), groups)
    assert shuffled["accuracy"] < 0.55 and shuffled["majority_rate"] == pytest.approx(1 / 3)


def test_gfmfr_reports_are_what_the_probe_reads():
    world = load_dataset("world-quick")
    rng = np.random.default_rng(0)                 # stand-in item features: only P_u matters here
    world.features = {m: rng.normal(size=(world.n_items, 6)).astype(np.float32) for m in ("image", "text")}
    config = default_config("fedavg", method="gfmfr", rounds=2, device="cpu", sample_ratio=1.0)
    run = FederatedRun(world, config)
    run.train_round(1)
    seen = leakage.observe_round(run, 2)
    clients, P = leakage.reported_functions(seen)
    assert sorted(clients.tolist()) == list(range(world.n_users))
    assert P.shape == (world.n_users, config.dim + 1)            # (p_u, b_u) of FedAvg
    user = int(clients[0])
    expected = torch.cat([run.state.private["b"][user].reshape(-1), run.state.private["p"][user]])
    assert np.allclose(P[0], expected.double().numpy())          # the client's own P_u, unnoised
