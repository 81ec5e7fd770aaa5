"""Clipped differential privacy of the uploads (fed/privacy.py, fed/server.py, fed/accounting.py).

Oracles: norms recomputed on dense full tables; the noise's sample moments against z S; the
central update against a hand-computed clipped sum over beta U; the accountant against the
dp-accounting library called directly in the test (and a published figure); the batched engine
against the per-client loop with clipping and noise on; the option checks one line each.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedmm_lite.errors import OptionError
from fedmm_lite.fed import accounting, run_federated
from fedmm_lite.fed.config import FedConfig, validate
from fedmm_lite.fed.privacy import (DpSpec, NoiseSpec, clip_uploads, dp_spec, poisson_participants,
                                    privatise, upload_norms)
from fedmm_lite.fed.rounds import FederatedRun
from fedmm_lite.fed.server import ServerRound, UploadBatch
from fedmm_lite.fed.state import ServerState

from test_fed_equivalence import assert_same_run, small_config, tiny_dataset
from test_fedmr import mm_dataset, mr_config

dpa = pytest.importorskip("dp_accounting")   # a pinned requirement; skipped only where it is absent

N_ITEMS, D = 7, 3


def sparse_batch(seed=0, scale=1.0) -> UploadBatch:
    """Three clients: item table Q row-sparse (different rows each), a module W (C, 2, 2), a report
    r (C, 4)."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.tensor([0, 3]), torch.tensor([1, 2, 6]), torch.tensor([5])]
    batch = UploadBatch(3, clients=torch.tensor([4, 8, 9]), sizes=torch.tensor([5, 6, 7]))
    batch.values["Q"] = torch.randn(6, D, generator=g, dtype=torch.float64) * scale
    batch.rows["Q"] = torch.cat(rows)
    batch.owners["Q"] = torch.tensor([0, 0, 1, 1, 1, 2])
    batch.values["W"] = torch.randn(3, 2, 2, generator=g, dtype=torch.float64) * scale
    batch.reports["r"] = torch.randn(3, 4, generator=g, dtype=torch.float64) * scale
    return batch


def dense_vectors(batch) -> torch.Tensor:
    """Each client's whole upload as one flat vector, the item table over all N_ITEMS rows (C, k)."""
    out = []
    for c in range(batch.n_clients):
        table = torch.zeros(N_ITEMS, D, dtype=torch.float64)
        mine = batch.owners["Q"] == c
        table[batch.rows["Q"][mine]] = batch.values["Q"][mine]
        reports = [batch.reports[k][c].flatten() for k in sorted(batch.reports)]
        out.append(torch.cat([table.flatten(), batch.values["W"][c].flatten(), *reports]))
    return torch.stack(out)


def test_norms_are_those_of_the_whole_upload_over_all_rows():
    batch = sparse_batch()
    l2, l1 = upload_norms(batch, ("Q",))
    full = dense_vectors(batch)
    assert torch.allclose(l2, full.norm(dim=1)) and torch.allclose(l1, full.abs().sum(1))


@pytest.mark.parametrize("clip", [0.5, 2.0, 100.0])
def test_clipping_bounds_every_upload_and_keeps_its_direction(clip):
    batch = sparse_batch(scale=1.0)
    before = dense_vectors(batch)
    norms = clip_uploads(batch, clip, ("Q",))
    after = dense_vectors(batch)
    assert torch.allclose(norms, before.norm(dim=1))
    assert bool((after.norm(dim=1) <= clip * (1 + 1e-12)).all())
    for c in range(3):
        if before[c].norm() <= clip:                    # short uploads are untouched
            assert torch.allclose(after[c], before[c])
        else:                                           # long ones scaled to exactly S, same direction
            assert after[c].norm() == pytest.approx(clip)
            assert torch.allclose(after[c] / after[c].norm(), before[c] / before[c].norm())
    assert clip < 100 or torch.equal(after, before)


def test_local_dp_noises_every_scalar_of_every_full_upload_with_std_z_s():
    # a zero upload: what the server receives is the noise alone
    C, n, d = 40, 50, 8
    batch = UploadBatch(C, clients=torch.arange(C), sizes=torch.ones(C, dtype=torch.long))
    batch.values["Q"] = torch.zeros(C, d, dtype=torch.float64)         # one (zero) row per client
    batch.rows["Q"] = torch.zeros(C, dtype=torch.long)
    batch.owners["Q"] = torch.arange(C)
    batch.values["W"] = torch.zeros(C, 5, dtype=torch.float64)
    dp = DpSpec("local", clip=0.7, noise_multiplier=1.5)
    out = privatise(batch, NoiseSpec(), torch.Generator().manual_seed(0), {"Q": (n, d), "W": (5,)}, ("Q",), dp)
    assert out.sizes is None                                             # n_u is not sent under DP
    assert torch.equal(out.rows["Q"], torch.arange(n).repeat(C))        # all n rows of every client
    x = torch.cat([out.values["Q"].flatten(), out.values["W"].flatten()])
    assert float(x.mean()) == pytest.approx(0.0, abs=4 * 1.05 / len(x) ** 0.5)
    assert float(x.std()) == pytest.approx(1.5 * 0.7, rel=0.02)
    # and the draws are independent across clients: client 0 and 1 are uncorrelated
    a, b = out.values["Q"].view(C, n, d)[0].flatten(), out.values["Q"].view(C, n, d)[1].flatten()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.15


def server(shapes, dtype=torch.float64):
    return ServerState({k: torch.zeros(s, dtype=dtype) for k, s in shapes.items()})


def test_central_update_is_the_clipped_sum_plus_noise_over_expected_participants():
    config = FedConfig(backbone="fcf", server_lr=1.0, dp="central", clip=0.5, noise_multiplier=1e-9)
    shapes = {"Q": (N_ITEMS, D), "W": (2, 2)}
    dp = dp_spec(config)
    batch = sparse_batch(scale=1.0)
    batch.reports = {}
    expected_sum = sum(v * min(1.0, 0.5 / float(v.norm())) for v in dense_vectors(batch))   # clipped
    state = server(shapes)
    round_ = ServerRound(state, _NoStep(), "data_size", config, 1, dp=dp,
                         generator=torch.Generator().manual_seed(0), expected_clients=12.5, tables=("Q",))
    round_.receive(batch)
    round_.close()
    got = -torch.cat([state.global_["Q"].flatten(), state.global_["W"].flatten()])   # theta = 0 - update
    assert torch.allclose(got, expected_sum / 12.5, atol=1e-8)


def test_central_noise_has_std_z_s_on_the_sum_even_without_participants():
    config = FedConfig(backbone="fcf", server_lr=1.0, dp="central", clip=2.0, noise_multiplier=3.0)
    state = server({"Q": (300, 40)})
    round_ = ServerRound(state, _NoStep(), "uniform", config, 1, dp=dp_spec(config),
                         generator=torch.Generator().manual_seed(1), expected_clients=10.0, tables=("Q",))
    round_.close()                                     # nobody sampled: the noise is released anyway
    x = -state.global_["Q"] * 10.0                     # the noised sum
    assert float(x.mean()) == pytest.approx(0.0, abs=4 * 6.0 / x.numel() ** 0.5)   # 4 standard errors
    assert float(x.std()) == pytest.approx(6.0, rel=0.02)


class _NoStep:
    def server_step(self, *args):
        return {}


# --- the round: batched engine against the per-client loop, with clipping and noise ----------------
@pytest.mark.parametrize("backbone", ["fedavg", "fcf", "fedncf", "pfedrec", "fedrap"])
@pytest.mark.parametrize("mode", ["local", "central"])
def test_batched_engine_equals_per_client_loop_under_dp(backbone, mode):
    data = tiny_dataset(seed=1)
    # S below the uploads' norms: clipping is active
    config = small_config(backbone, rounds=2, dp=mode, clip=0.05, noise_multiplier=0.02)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    assert batched.privacy["epsilon_per_round"] == loop.privacy["epsilon_per_round"]
    assert all(h["upload_norms"]["clipped_fraction"] > 0 for h in batched.history[1:])
    # not vacuous: without DP the model differs
    clean = run_federated(data, dataclasses.replace(config, dp="none", clip=None, noise_multiplier=None),
                          progress=False)
    name = next(iter(clean.state.global_))
    assert (clean.state.global_[name] - batched.state.global_[name]).abs().max() > 1e-6


def test_batched_engine_equals_per_client_loop_under_local_dp_for_fedmr_and_gfmfr():
    data = mm_dataset()
    for config in (mr_config("fedavg", rounds=2, dp="local", clip=0.1, noise_multiplier=0.01),
                   mr_config("pfedrec", method="gfmfr", groups=2, rounds=3, server_epochs=3,
                             dp="local", clip=0.1, noise_multiplier=0.01)):
        batched = run_federated(data, config, progress=False)
        loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
        assert_same_run(batched, loop)


def test_participants_are_poisson_sampled_under_dp():
    g = torch.Generator().manual_seed(0)
    counts = [len(poisson_participants(200, 0.1, g)) for _ in range(400)]
    # Binomial(200, 0.1): mean 20, variance 18
    assert np.mean(counts) == pytest.approx(20, abs=0.6)
    assert np.var(counts) == pytest.approx(18, rel=0.25)
    assert torch.equal(poisson_participants(50, 1.0, g), torch.arange(50))
    assert len(poisson_participants(50, 1e-12, g)) == 0


def test_a_round_without_participants_keeps_the_model_under_local_dp():
    data = tiny_dataset()
    config = small_config("fedavg", rounds=2, sample_ratio=1e-9, dp="local", clip=1.0, noise_multiplier=1.0)
    run = FederatedRun(data, config)
    before = {k: v.clone() for k, v in run.state.global_.items()}
    record = run.train_round(1)
    assert record.participants == 0
    assert all(torch.equal(before[k], run.state.global_[k]) for k in before)


# --- accounting ------------------------------------------------------------------------------------
def library_epsilon(event, rounds, delta):
    """The library, called directly (not through fed/accounting.py)."""
    accountant = dpa.rdp.RdpAccountant()
    accountant.compose(dpa.SelfComposedDpEvent(event, rounds))
    return accountant.get_epsilon(delta)


def test_accountant_matches_the_library_computed_independently():
    got = accounting.epsilon("central", 1.1, 0.05, 30, 1e-5)
    want = library_epsilon(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)), 30, 1e-5)
    assert got == pytest.approx(want, rel=1e-12)
    # local: two clipped uploads differ by up to 2 S, so z S of noise is multiplier z / 2
    assert accounting.epsilon("local", 3.0, 0.05, 7, 1e-6) == pytest.approx(
        library_epsilon(dpa.GaussianDpEvent(1.5), 7, 1e-6), rel=1e-12)
    # at beta = 1 a round is the plain Gaussian mechanism
    assert accounting.epsilon("central", 2.0, 1.0, 5, 1e-5) == pytest.approx(
        library_epsilon(dpa.GaussianDpEvent(2.0), 5, 1e-5), rel=1e-12)


def test_epsilon_grows_with_rounds_and_falls_with_the_noise_multiplier():
    for mode in ("central", "local"):
        per_round = [accounting.epsilon(mode, 1.0, 0.2, t, 1e-5) for t in range(1, 6)]
        assert all(a < b for a, b in zip(per_round, per_round[1:]))
        by_z = [accounting.epsilon(mode, z, 0.2, 5, 1e-5) for z in (0.5, 1.0, 2.0, 4.0)]
        assert all(a > b for a, b in zip(by_z, by_z[1:]))
    assert accounting.epsilon("central", 1.0, 1.0, 0, 1e-5) == 0.0
    # sampling amplifies: a smaller beta spends less per round
    assert accounting.epsilon("central", 1.0, 0.1, 5, 1e-5) < accounting.epsilon("central", 1.0, 1.0, 5, 1e-5)


def test_a_run_records_epsilon_per_round_and_stops_at_the_target():
    data = tiny_dataset()
    base = small_config("pfedrec", rounds=8, eval_every=3, dp="central", clip=0.5, noise_multiplier=1.0)
    full = run_federated(data, base, progress=False)
    eps = full.privacy["epsilon_per_round"]
    assert len(eps) == 8 and all(a < b for a, b in zip(eps, eps[1:]))
    assert eps == [accounting.epsilon("central", 1.0, base.sample_ratio, t, 1e-5) for t in range(1, 9)]
    assert [h["epsilon"] for h in full.history[1:]] == [eps[2], eps[5], eps[7]]
    assert full.privacy["stopped_at_target_epsilon"] is False
    target = (eps[3] + eps[4]) / 2                    # between rounds 4 and 5
    stopped = run_federated(data, dataclasses.replace(base, target_epsilon=target), progress=False)
    assert stopped.privacy["epsilon_per_round"] == eps[:4]
    assert stopped.privacy["epsilon"] <= target and stopped.privacy["stopped_at_target_epsilon"]
    assert stopped.history[-1]["round"] == 4          # the last round is evaluated
    assert stopped.privacy["protected_unit"].startswith("one user's whole contribution")


def test_local_accounting_counts_the_rounds_of_the_user_who_took_part_most():
    data = tiny_dataset()
    config = small_config("fedavg", rounds=4, sample_ratio=0.3, dp="local", clip=0.5, noise_multiplier=2.0)
    run = FederatedRun(data, config)
    for t in range(1, 5):
        record = run.train_round(t)
        assert record.epsilon == accounting.epsilon("local", 2.0, 0.3, int(run.participations.max()), 1e-5)


def test_a_target_below_one_round_is_refused():
    with pytest.raises(OptionError, match="--target-epsilon"):
        FederatedRun(tiny_dataset(), small_config("fedavg", dp="central", clip=1.0, noise_multiplier=0.5,
                                                  target_epsilon=0.01))


def test_papers_noise_has_no_epsilon_and_its_clipped_counterpart_is_the_librarys():
    data = tiny_dataset()
    result = run_federated(data, small_config("fedavg", rounds=1, noise="laplace:0.5"), progress=False)
    assert result.privacy["epsilon"] is None and "unbounded" in result.privacy["why"]
    assert result.privacy["upload_norms_per_round"][0]["l1_max"] > 0
    # Laplace b on uploads of L1 norm <= N: sensitivity 2 N, one round: epsilon 2 N / b
    assert accounting.papers_epsilon("laplace", 1.0, 0.5, 1, 1e-5) == pytest.approx(1.0, abs=0.01)
    assert accounting.papers_epsilon("laplace", 2.0, 3.0, 4, 1e-5) == pytest.approx(
        library_epsilon(dpa.LaplaceDpEvent(2.0 / 6.0), 4, 1e-5))
    assert accounting.papers_epsilon("gaussian", 0.3, float("inf"), 3, 1e-5) == float("inf")


# --- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,option", [
    (dict(clip=1.0), "--clip"),                                            # without --dp
    (dict(delta=1e-5), "--delta"),
    (dict(target_epsilon=3.0), "--target-epsilon"),
    (dict(dp="local"), "--dp"),                                            # without S and z
    (dict(dp="local", clip=1.0), "--clip"),                               # clip without noise
    (dict(dp="local", noise_multiplier=1.0), "--noise-multiplier"),       # noise without clip
    (dict(dp="central", clip=-1.0, noise_multiplier=1.0), "--clip"),
    (dict(dp="central", clip=1.0, noise_multiplier=-1.0), "--noise-multiplier"),
    (dict(dp="central", clip=1.0, noise_multiplier=float("nan")), "--noise-multiplier"),
    (dict(dp="central", clip=1.0, noise_multiplier=1.0, delta=1.0), "--delta"),
    (dict(dp="central", clip=1.0, noise_multiplier=1.0, delta=0.0), "--delta"),
    (dict(dp="central", clip=1.0, noise_multiplier=1.0, target_epsilon=0.0), "--target-epsilon"),
    (dict(dp="central", clip=1.0, noise_multiplier=1.0, noise="gaussian:0.1"), "--noise"),
    (dict(dp="central", clip=1.0, noise_multiplier=1.0, method="gfmfr"), "--dp central --method gfmfr"),
    (dict(dp="both", clip=1.0, noise_multiplier=1.0), "--dp"),
])
def test_bad_dp_options_are_one_line_naming_the_option(kw, option):
    with pytest.raises(OptionError) as err:
        validate(FedConfig(**kw))
    assert option in str(err.value) and "\n" not in str(err.value)


def test_upload_norms_are_measured_in_evaluated_rounds_only_without_noise(monkeypatch):
    """A clean run reports the uploads' norms with its evaluated rounds (the privacy chapter picks
    a clipping bound from them) and spends no pass over the uploads in the other rounds; under
    noise every round is measured (the privacy report lists every round)."""
    from fedmm_lite.fed import rounds

    calls = []
    real = rounds.upload_norms
    monkeypatch.setattr(rounds, "upload_norms", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = tiny_dataset()
    clean = run_federated(data, small_config("fedavg", rounds=4, eval_every=2), progress=False)
    assert [h["round"] for h in clean.history if "upload_norms" in h] == [2, 4]
    measured_clean = len(calls)
    calls.clear()
    noisy = run_federated(data, small_config("fedavg", rounds=4, eval_every=2, noise="gaussian:0.01"),
                          progress=False)
    assert len(noisy.privacy["upload_norms_per_round"]) == 4
    assert len(calls) == 2 * measured_clean         # every round against every other round
