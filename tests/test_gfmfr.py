"""GFMFR (fed/gfmfr.py, fed/grouping.py; book/methods.md, "GFMFR").

Oracles: the per-client loop for the batched engine (every backbone, with and without Laplace
noise); hand computations of the group targets, the teacher, the KL term and its gradient; planted
clusters for the grouping; and a test for each defect of the published code (a decreasing ramp,
one moving average shared by all clients, a crash for clients that missed the previous round,
fixed negatives) and for the privacy boundary (the server's groups, targets and teacher come from
the uploads only).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from fedmm_lite.fed import gfmfr, grouping, run_federated
from fedmm_lite.fed.rounds import FederatedRun

from test_fed_equivalence import assert_same_run, small_config
from test_fedmr import mm_dataset
from test_privacy_boundary import boundary_holds

TRAINED = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")


def gf_config(backbone, **kw):
    base = dict(method="gfmfr", groups=2, rounds=3, server_epochs=5, aggregation_lr=0.05)
    base.update(kw)
    return small_config(backbone, **base)


def assert_same_server(a, b, tol=1e-10):
    assert np.array_equal(a.details["assignments"], b.details["assignments"])
    ta, tb = a.details["teacher"], b.details["teacher"]
    assert np.allclose(ta, tb, atol=tol, equal_nan=True)
    for name in a.state.buffers:
        assert torch.allclose(a.state.buffers[name], b.state.buffers[name], atol=tol, equal_nan=True), name


# --- the batched engine equals the per-client loop -----------------------------------------------

@pytest.mark.parametrize("backbone", TRAINED)
def test_gfmfr_batched_engine_equals_per_client_loop(backbone):
    """beta = 0.6, H = 2, chunks of 3, float64; the teacher is on from round 2."""
    data = mm_dataset()
    config = gf_config(backbone)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    assert_same_server(batched, loop)
    # not vacuous: distillation ran (a moving average was set) and it changed the model
    assert bool(torch.isfinite(batched.state.buffers["smoothed_ratio"]).any())
    plain = run_federated(data, dataclasses.replace(config, method="id"), progress=False)
    name = batched.state.spec.tables[0]
    assert (plain.state.global_[name] - batched.state.global_[name]).abs().max() > 1e-6


@pytest.mark.parametrize("backbone", ["fedavg", "fedncf", "pfedrec"])
def test_gfmfr_equivalence_with_laplace_noise_on_every_upload(backbone):
    data = mm_dataset(seed=1)
    config = gf_config(backbone, noise="laplace:0.001")
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    assert_same_server(batched, loop)
    clean = run_federated(data, dataclasses.replace(config, noise="none"), progress=False)
    assert not np.allclose(clean.details["teacher"], batched.details["teacher"], equal_nan=True)


@pytest.mark.parametrize("ablation", ["random-group", "single-group", "multiple-agg"])
def test_ablations_equal_per_client_loop(ablation):
    data = mm_dataset(seed=2)
    config = gf_config("pfedrec", gfmfr_ablation=ablation, groups=3)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    assert_same_server(batched, loop)
    groups = batched.details["assignments"]
    if ablation == "single-group":
        assert batched.details["groups"] == 1 and groups.max() == 0
    if ablation == "multiple-agg":
        assert batched.state.server.only["S_W1"].shape[0] == 3                   # one module per group
        assert "E_G" not in batched.state.server.only


# --- the math by hand --------------------------------------------------------------------------

def test_kl_to_teacher_and_its_logit_gradient_by_hand():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.rand(4, 6, generator=g, dtype=torch.float64)
    p = torch.sigmoid(s)
    by_hand = q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
    kl = gfmfr.kl_to_teacher(s, q)
    assert torch.allclose(kl, by_hand, atol=1e-12)
    (grad,) = torch.autograd.grad(kl.sum(), s)
    assert torch.allclose(grad, torch.sigmoid(s).detach() - q, atol=1e-12)   # d KL / d s = p - q
    assert float(gfmfr.kl_to_teacher(s.detach(), torch.sigmoid(s).detach()).abs().max()) < 1e-12


def test_schedules_ramp_up_and_keep_one_moving_average_per_client():
    T = 20
    ours = [gfmfr.ramp(t, T, "ours") for t in range(T + 1)]
    assert ours == sorted(ours) and ours[0] == 0.0 and ours[-1] == 1.0       # increasing
    cosine = [gfmfr.ramp(t, T, "cosine") for t in range(T + 1)]
    assert cosine == sorted(cosine, reverse=True)                            # the published one
    ratio, prev = torch.tensor([2.0, 4.0]), torch.tensor([float("nan"), 1.0])
    m = gfmfr.smooth(prev, ratio, 0.9)
    assert m.tolist() == pytest.approx([2.0, 0.9 * 1.0 + 0.1 * 4.0])
    assert gfmfr.distillation_weight("ours", ratio, m, 0.5).tolist() == pytest.approx((m * 0.5).tolist())
    assert gfmfr.distillation_weight("scale-align", ratio, m, 0.5).tolist() == ratio.tolist()
    assert float(gfmfr.scale_ratio(torch.tensor([1.0]), torch.tensor([0.0]), 1.0)) == 1.0


def test_targets_and_teacher_equal_a_hand_computation():
    """After one round: C_l = mean of the members' uploaded item tables (start - Delta_u), and the
    teacher is sigma(mean_l(w_u) . Q_l[i] + mean_l(b_u)) with Q_l = S_phi(E_G[l], F)."""
    data = mm_dataset()
    config = gf_config("pfedrec", sample_ratio=1.0, server_epochs=0)
    run = FederatedRun(data, config)
    kept = {}
    method = run.state.method
    original = method._targets

    def spy(uploads, start, clients, members):
        kept.update(uploads=copy.deepcopy(uploads), start=dict(start), members=members.clone())
        return original(uploads, start, clients, members)

    method._targets = spy
    run.train_round(1)
    only = run.state.server.only
    E = kept["start"]["E"]
    n = E.shape[0]
    ends, clients = {}, []
    for batch in kept["uploads"]:
        for c in range(batch.n_clients):
            delta = torch.zeros_like(E)
            mine = batch.owners["E"] == c
            delta[batch.rows["E"][mine]] = batch.values["E"][mine]
            ends[int(batch.clients[c])] = (E - delta, batch.reports["w"][c], batch.reports["b"][c])
            clients.append(int(batch.clients[c]))
    labels = only["group"]
    for l in range(2):
        members = [u for u in clients if int(labels[u]) == l]
        assert members
        target = torch.stack([ends[u][0] for u in members]).mean(0)                 # C_l
        computed = method._targets(kept["uploads"], kept["start"], None, kept["members"])[l]
        assert torch.allclose(computed, target, atol=1e-12)
        Q = method.aggregate(only, torch.tensor([l]))[0]                            # (n, d)
        w = torch.stack([ends[u][1] for u in members]).mean(0)
        b = torch.stack([ends[u][2] for u in members]).mean(0)
        assert torch.allclose(only["teacher"][l], torch.sigmoid(Q @ w + b), atol=1e-12)
    assert n == data.n_items


# --- grouping ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", grouping.METHODS)
def test_grouping_recovers_planted_clusters(method):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    truth = np.repeat(np.arange(3), 20)
    X = centres[truth] + rng.normal(size=(60, 8)) * 0.3
    labels = grouping.cluster(grouping.standardise_columns(X), 3, method, seed=0)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


@pytest.mark.parametrize("method", grouping.METHODS)
def test_identical_prediction_functions_make_one_group_without_warnings(method):
    """Before clients train, every P_u is the same: no method can split identical rows (K-Means
    warned that it found fewer clusters, PCA divided by a zero variance: both reached the book)."""
    X = np.ones((40, 3000))
    X[:10] = 2.0                                                                 # two distinct rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reduced = grouping.reduce(grouping.standardise_columns(np.ones((40, 3000))), width=16)
        assert not np.any(reduced)
        labels = grouping.cluster(X, 3, method, seed=0)
    assert sorted(set(labels.tolist())) == [0, 1]
    assert len(set(labels[:10].tolist())) == 1 and len(set(labels[10:].tolist())) == 1


def test_alignment_keeps_group_ids_stable():
    previous = np.array([0, 0, 1, 1, 2, 2, -1])
    relabelled = np.array([2, 2, 0, 0, 1, 1, 1])                 # same groups, other names
    assert grouping.align_labels(previous, relabelled, 3).tolist() == [0, 0, 1, 1, 2, 2, 2]
    # a participant never grouped before does not vote; overlap decides the rest
    mixed = np.array([1, 1, 1, 0, 2, 2, 0])
    assert grouping.align_labels(previous, mixed, 3).tolist()[:2] == [0, 0]


# --- published defects ---------------------------------------------------------------------------

def test_moving_averages_are_per_client_and_persist_for_clients_that_sit_out():
    data = mm_dataset()
    # a cap above the ratios seen here, so that each client's average is its own
    config = gf_config("fedavg", sample_ratio=0.5, rounds=4, ratio_cap=1e4)
    run = FederatedRun(data, config)
    seen = []
    for t in range(1, 5):
        before = run.state.buffers["smoothed_ratio"].clone()
        record = run.train_round(t)
        after = run.state.buffers["smoothed_ratio"]
        seen.append((before, after))
    values = after[torch.isfinite(after)]
    assert values.numel() >= 2 and values.unique().numel() == values.numel()   # one per client
    before, after = seen[-1]
    unchanged = torch.isclose(before, after, equal_nan=True)
    assert unchanged.any() and (~unchanged).any()                               # sat out: kept


def test_a_client_sampled_for_the_first_time_gets_the_nearest_groups_teacher():
    data = mm_dataset()
    config = gf_config("pfedrec", sample_ratio=0.3, rounds=3)
    run = FederatedRun(data, config)
    run.train_round(1)
    never = torch.nonzero(run.state.server.only["group"] < 0).flatten()
    assert never.numel() > 0
    down = run.state.method.downloads(run.state.server, never)
    nearest = run.state.method.nearest_group(run.state.server)
    assert torch.equal(down["q"], run.state.server.only["teacher"][nearest].expand(len(never), -1))
    # and a whole run with partial participation trains them without a crash
    result = run_federated(data, dataclasses.replace(config, rounds=5), progress=False)
    assert result.details["assignments"].shape == (5, data.n_users)


def test_negatives_are_fresh_each_round_under_gfmfr(monkeypatch):
    from fedmm_lite.fed import rounds

    plans = []
    original = rounds.make_plan
    monkeypatch.setattr(rounds, "make_plan", lambda *a, **k: plans.append(original(*a, **k)) or plans[-1])
    run_federated(mm_dataset(), gf_config("fedavg", sample_ratio=1.0, chunk_size=100), progress=False)
    negatives = [p.items[p.labels == 0] for p in plans]
    assert not torch.equal(negatives[0], negatives[1])


@pytest.mark.parametrize("backbone", ["pfedrec", "fedncf"])
def test_the_server_groups_and_teaches_from_uploads_only(backbone):
    assert boundary_holds(gf_config(backbone), mm_dataset(), noise="laplace:0.001")


def test_wide_prediction_functions_are_reduced_before_clustering():
    """FedNCF's P_u (a tower) has thousands of coordinates; PCA keeps the group structure."""
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(3), 30)
    X = rng.normal(size=(3, 2000))[truth] * 3 + rng.normal(size=(90, 2000))
    reduced = grouping.reduce(grouping.standardise_columns(X), width=16, seed=0)
    assert reduced.shape == (90, 16)
    assert grouping.reduce(X[:, :20]).shape == (90, 20)                      # narrow: unchanged
    labels = grouping.cluster(reduced, 3, "kmeans", seed=0)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)
