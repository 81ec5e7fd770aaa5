"""FedMR (fed/fedmr.py, fed/fusion.py; book/methods.md, "FedMR") in the federated engine.

Oracles: the per-client loop (full copies, one client at a time) for the batched engine; a
hand-written per-item formula for the fusion equations; the published defects of book/methods.md,
"Defects" (zeroed image input, private state not restored, server update never applied, last-batch
gradient uploaded, a global router) each get a test that fails if the defect is present.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from fedmm_lite.data import NegativeSampler
from fedmm_lite.fed import engine, feature_maps, fusion, oracle, run_federated
from fedmm_lite.fed.method import full_scores
from fedmm_lite.fed.plan import make_plan
from fedmm_lite.fed.rounds import run_round
from fedmm_lite.fed.state import count_parameters, new_state

from test_fed_equivalence import assert_same_run, small_config, tiny_dataset

TRAINED = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")




def mm_dataset(seed: int = 0, d_image: int = 12, d_text: int = 7):
    """The tiny dataset with random frozen features of DIFFERENT widths per modality."""
    data = tiny_dataset(seed=seed)
    rng = np.random.default_rng(100 + seed)
    data.features = {"image": rng.normal(size=(data.n_items, d_image)).astype(np.float32),
                     "text": rng.normal(size=(data.n_items, d_text)).astype(np.float32)}
    return data


def mr_config(backbone: str, **kw):
    base = dict(method="fedmr", router_hidden=5, fusion_lr=0.2)
    base.update(kw)
    return small_config(backbone, **base)


def fresh_state(backbone, data, **kw):
    config = mr_config(backbone, **kw)
    gen = torch.Generator().manual_seed(0)
    state = new_state(config, data, gen)
    return config, state, gen


def one_round(state, data, config, users, t=1, gen=None):
    gen = gen or torch.Generator().manual_seed(5)
    plan = make_plan(data, torch.tensor(users), NegativeSampler(data, "cpu"), config.neg_ratio,
                     config.local_epochs, config.batch_size, gen)
    return run_round(state, [plan], config, t)[0]


# --- the batched engine equals the per-client loop ----------------------------------------------

@pytest.fixture(params=["kernel", "explicit"])
def map_form(request):
    """One of the two exact forms of the clients' feature mappings (fed/feature_maps.py), forced
    through ``FedConfig.feature_map_form``."""
    return request.param


@pytest.mark.parametrize("backbone", TRAINED)
def test_fedmr_batched_engine_equals_per_client_loop(backbone, map_form):
    """beta = 0.6 < 1, H = 2 > 1, chunks of 3 < 9 participants, float64; each form of A_m,u."""
    data = mm_dataset()
    config = mr_config(backbone, feature_map_form=map_form)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    assert torch.allclose(batched.details["router_weights"], loop.details["router_weights"], atol=1e-10)
    untouched = run_federated(data, dataclasses.replace(config, rounds=0), progress=False)
    for name in batched.state.method.modules:    # not vacuous: every fusion module moved
        assert (batched.state.global_[name] - untouched.state.global_[name]).abs().max() > 1e-8, name


@pytest.mark.parametrize("strategy,modalities", [("sum", ("id", "text", "image")),
                                                 ("gate", ("text", "image")),
                                                 ("mix", ("id", "image")),
                                                 ("mlp", ("id", "text"))])
def test_fedmr_ablations_equal_per_client_loop(strategy, modalities, map_form):
    data = mm_dataset(seed=1)
    config = mr_config("pfedrec", strategy=strategy, modalities=modalities, rounds=2,
                       feature_map_form=map_form)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    g = batched.state.global_
    for m in ("id", "text", "image"):            # a dropped input has no mapping layer
        assert (f"A_{m}" in g) == (m in modalities)
    assert ("r_W1" in batched.state.private) == (strategy == "mix")
    assert (batched.details["router_weights"] is None) == (strategy != "mix")


@pytest.mark.parametrize("backbone", ["fedavg", "fedncf", "pfedrec"])
@pytest.mark.parametrize("estimate", ["epoch", "batch"])
def test_router_input_estimates_equal_per_client_loop_and_differ_from_exact(backbone, estimate):
    """The labelled estimates of Eq. (5)'s input (fedmr.py) in both trainers: the same run, and
    not the exact method (the estimate is used: routers and modules end elsewhere)."""
    data = mm_dataset(seed=4)
    config = mr_config(backbone, router_input=estimate, rounds=2)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    exact = run_federated(data, dataclasses.replace(config, router_input="exact"), progress=False)
    moved = max(float((exact.state.global_[k] - batched.state.global_[k]).abs().max())
                for k in batched.state.method.modules)
    assert moved > 1e-6
    assert (exact.state.private["r_W1"] - batched.state.private["r_W1"]).abs().max() > 1e-9


def test_fedmr_upload_noise_reaches_module_uploads_and_matches_loop():
    data = mm_dataset(seed=2)
    config = mr_config("fedavg", noise="gaussian:0.01", rounds=2)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    clean = run_federated(data, dataclasses.replace(config, noise="none"), progress=False)
    for name in batched.state.method.modules:
        assert (clean.state.global_[name] - batched.state.global_[name]).abs().max() > 1e-4, name


# --- the fusion equations against a per-item hand computation -----------------------------------

def test_fusion_equations_match_per_item_formulas():
    data = mm_dataset()
    config, state, _ = fresh_state("fedavg", data)
    g, p, setup = state.global_, state.private, state.method
    u = 2
    H = torch.nonzero(setup.history[u]).flatten()
    F = setup.features

    def strategies_of(i):
        h = {"id": g["A_id"] @ g["Q"][i], "text": g["A_text"] @ F["text"][i],
             "image": g["A_image"] @ F["image"][i]}
        s_sum = h["id"] + h["text"] + h["image"]
        cat = torch.cat([h["id"], h["text"], h["image"]])
        s_mlp = g["M_W2"] @ torch.relu(g["M_W1"] @ cat + g["M_c1"]) + g["M_c2"]
        s_gate = sum(torch.sigmoid(g[f"G_{m}"] @ h[m]) * h[m] for m in ("id", "text", "image"))
        return [s_sum, s_mlp, s_gate]

    x = torch.stack([torch.cat(strategies_of(int(j))) for j in H]).mean(0)      # (K d,)
    hidden = torch.relu(p["r_W1"][u] @ x + p["r_c1"][u])
    pi = torch.softmax(p["r_W2"][u] @ hidden + p["r_c2"][u], 0)                 # (K,)
    expected = torch.stack([sum(pi[k] * s for k, s in enumerate(strategies_of(i)))
                            @ p["p"][u] + p["b"][u] for i in range(data.n_items)])
    scores = full_scores(state, torch.tensor([u]))[0]
    assert torch.allclose(scores, expected, atol=1e-10)
    assert torch.allclose(state.method.router_weights(state, torch.tensor([u]))[0], pi, atol=1e-12)
    assert pi.sum() == pytest.approx(1.0)


# --- section 8 defects ----------------------------------------------------------------------------

def test_image_features_reach_the_loss():
    """Defect 2: the image input replaced by zeros. Perturbing F_v must change the loss, the
    gradient, the trained model and the scores."""
    data = mm_dataset()
    config = mr_config("fedavg", rounds=1)
    a = run_federated(data, config, progress=False)
    # (not an affine change: the features are standardised, fusion.standardise)
    perturbed = data.features["image"] + np.random.default_rng(7).normal(size=data.features["image"].shape)
    data.features = {**data.features, "image": perturbed.astype(np.float32)}
    b = run_federated(data, config, progress=False)
    assert abs(a.history[-1]["train_loss"] - b.history[-1]["train_loss"]) > 1e-6
    assert (a.state.global_["A_image"] - b.state.global_["A_image"]).abs().max() > 1e-6
    assert (a.state.global_["Q"] - b.state.global_["Q"]).abs().max() > 1e-6
    users = torch.arange(data.n_users)
    assert (full_scores(a.state, users) - full_scores(b.state, users)).abs().max() > 1e-6
    # and the gradient of the image mapping layer is not zero
    config, state, gen = fresh_state("fedavg", data)
    before = state.global_["A_image"].clone()
    one_round(state, data, dataclasses.replace(config, fusion_lr=1e-3), [0, 1])
    assert (state.global_["A_image"] - before).abs().max() > 1e-8


def test_feature_map_lr_steps_only_the_feature_mappings_and_matches_the_loop(map_form):
    """``feature_map_lr``: A_text and A_image take their own step, every other module the fusion
    step; the batched engine and the per-client loop agree under it."""
    data = mm_dataset(seed=2)
    config = mr_config("fedavg", rounds=2, feature_map_lr=0.7, feature_map_form=map_form)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    spec = batched.state.spec
    assert spec.step_size("A_image", config) == spec.step_size("A_text", config) == 0.7
    assert spec.step_size("A_id", config) == spec.step_size("M_W1", config) == 0.2
    # a zero feature step freezes the feature mappings alone
    frozen = run_federated(data, dataclasses.replace(config, feature_map_lr=0.0), progress=False)
    start = run_federated(data, dataclasses.replace(config, rounds=0), progress=False).state.global_
    for name in ("A_text", "A_image"):
        assert torch.equal(frozen.state.global_[name], start[name]), name
    for name in ("A_id", "M_W1", "G_image"):
        assert (frozen.state.global_[name] - start[name]).abs().max() > 1e-8, name


def test_private_routers_differ_persist_and_are_used_in_evaluation():
    """Defects 1 and 10: routers are per user, kept across rounds (also for clients sitting out),
    and evaluation reads each user's own router."""
    data = mm_dataset()
    config, state, gen = fresh_state("fedavg", data)
    one_round(state, data, config, [0, 1, 2], t=1, gen=gen)
    after_1 = {k: state.private[k].clone() for k in fusion.ROUTER}
    one_round(state, data, config, [3, 4], t=2, gen=gen)
    for k in fusion.ROUTER:
        assert torch.equal(state.private[k][:3], after_1[k][:3]), k        # sat out: unchanged
        assert not torch.equal(state.private[k][3:5], after_1[k][3:5]), k  # trained: moved
    users = torch.arange(data.n_users)
    pi = state.method.router_weights(state, users)                         # (U, K)
    assert pi.shape == (data.n_users, 3)
    assert torch.allclose(pi.sum(1), torch.ones(data.n_users, dtype=pi.dtype))
    assert (pi[0] - pi[1]).abs().max() > 1e-6                               # one vector per user
    scores = full_scores(state, users)
    for k in fusion.ROUTER:                                                 # give user 0 user 1's router
        state.private[k][0] = state.private[k][1]
    swapped = full_scores(state, users)
    assert (swapped[0] - scores[0]).abs().max() > 1e-8
    assert torch.equal(swapped[1:], scores[1:])


@pytest.mark.parametrize("backbone", ["fcf", "fedavg"])
def test_server_applies_the_round_update_start_minus_end(backbone):
    """Defects 3 and 6: with one participant, the server's new module equals the client's
    end-of-round copy (theta - (start - end) = end; both rules give the lone client weight 1),
    which the per-client oracle computes from full copies; an upload of the last batch's gradient
    (or no update at all) would not."""
    data = mm_dataset()
    config, state, gen = fresh_state(backbone, data, local_epochs=2, batch_size=4)
    plan = make_plan(data, torch.tensor([5]), NegativeSampler(data, "cpu"), config.neg_ratio,
                     config.local_epochs, config.batch_size, gen)
    assert plan.lengths[0] > 2 * config.batch_size                         # several batches
    before = {k: v.clone() for k, v in state.global_.items()}
    end, start, _ = oracle._train_client(state, plan, 0, config, 1)         # reference end copy
    uploads, _ = engine.train_chunk(copy.deepcopy(state), plan, config, 1)
    # only global tensors are uploaded: never a router (private) nor a feature (frozen)
    assert set(uploads.values) == set(state.global_)
    assert not set(uploads.values) & set(fusion.ROUTER)
    for name in state.method.modules:
        # Delta_u = start - end
        assert torch.allclose(uploads.values[name][0], start[name] - end[name], atol=1e-10), name
    run_round(state, [plan], config, 1)
    for name in state.method.modules:
        assert torch.allclose(state.global_[name], end[name], atol=1e-10), name
        assert (state.global_[name] - before[name]).abs().max() > 1e-6, name   # the module moved


# --- cost accounting ------------------------------------------------------------------------------

def test_parameter_count_at_ku_size():
    """FedMR with FedAvg at KU size: 560 items, D = 512 per modality, d = 64, strategy mix.

    The vanilla count matches the paper (Table 5: 35,905 = 560 * 64 item table + 64 user vector
    + 1 bias). The paper's FedMR count, 455,620, matches no reading we could build: our module,
    counted by hand below, holds 137,476 scalars (mappings without bias, as in Eq. (1); MLP
    192 -> 64 -> 64 with biases; three 64 x 64 gates; router 192 -> 16 -> 3 with biases). Adding
    the frozen features gives 137,476 + 573,440 (2 x 560 x 512) = 710,916, and one modality's
    features 424,196: neither is 455,620. We count the features apart, as a one-off download
    (``feature_download_scalars``), because they are never trained or uploaded.
    """
    class KU:
        n_users, n_items = 3, 560
        train_indptr = np.array([0, 2, 4, 6])
        train_indices = np.array([0, 1, 2, 3, 4, 5])
        features = {"image": np.zeros((560, 512), np.float32), "text": np.zeros((560, 512), np.float32)}

    for method, expected in (("id", 35_905), ("fedmr", 137_476)):
        config = small_config("fedavg", method=method, dim=64, router_hidden=16)
        state = new_state(config, KU, torch.Generator().manual_seed(0))
        held, uploaded = count_parameters(state)
        assert held == expected, (method, held)
    # hand count of the parts
    mapping = 2 * 64 * 512 + 64 * 64
    mlp = 64 * 192 + 64 + 64 * 64 + 64
    gates = 3 * 64 * 64
    router = 16 * 192 + 16 + 3 * 16 + 3
    assert 35_905 + mapping + mlp + gates + router == 137_476
    assert uploaded == 560 * 64 + mapping + mlp + gates             # the router is never uploaded
    assert state.method.feature_download_scalars == 2 * 560 * 512


def test_feature_map_forms_agree_and_are_chosen_by_rows():
    """Both forms of a chunk's A_m,u (fed/feature_maps.py) against explicit per-client matrices
    moved by hand: same mapped rows after random steps, same uploads; the choice follows |I_u|."""
    data = mm_dataset(seed=3, d_image=40)
    config = mr_config("fedavg")
    plan = make_plan(data, torch.tensor([1, 4, 6]), NegativeSampler(data, "cpu"), config.neg_ratio,
                     config.local_epochs, config.batch_size, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(7)
    F = torch.randn(data.n_items, 40, generator=gen, dtype=torch.float64)
    A = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    forms = [feature_maps.KernelMap(F, A, plan), feature_maps.ExplicitMap(F, A, plan)]
    by_hand = A.expand(3, -1, -1).clone()                                    # (C, d, D)
    items = plan.rows[plan.slots]                                            # (C, L) item ids
    for step in range(4):
        act = slice(1, 3) if step % 2 else torch.tensor([0, 2])
        clients = torch.arange(1, 3) if step % 2 else act
        slots = plan.slots[clients, :5]                                      # (A, 5)
        delta = torch.randn(len(clients), 5, 6, generator=gen, dtype=torch.float64)
        for form in forms:
            form.step(act, slots, delta, 0.3)
        for a, c in enumerate(clients.tolist()):
            by_hand[c] -= 0.3 * delta[a].T @ F[items[c, :5]]
        want = torch.einsum("cld,ced->cle", F[items[clients, :9]], by_hand[clients])
        for form in forms:
            assert torch.allclose(form.mapped(act, plan.slots[clients, :9]), want, atol=1e-10)
    for form in forms:
        assert torch.allclose(form.upload(), A - by_hand, atol=1e-10)
    most = int(torch.bincount(plan.row_owner).max())
    assert most > 1
    chosen = feature_maps.feature_maps({"image": F}, {"A_image": A}, plan, ("image",), "auto")
    kind = feature_maps.KernelMap if most <= 40 else feature_maps.ExplicitMap
    assert isinstance(chosen["image"], kind)
    narrow = feature_maps.feature_maps({"image": F[:, :most - 1]}, {"A_image": A[:, :most - 1]},
                                       plan, ("image",), "auto")
    assert isinstance(narrow["image"], feature_maps.ExplicitMap)
    for form, kind in (("kernel", feature_maps.KernelMap), ("explicit", feature_maps.ExplicitMap)):
        forced = feature_maps.feature_maps({"image": F}, {"A_image": A}, plan, ("image",), form)
        assert isinstance(forced["image"], kind)


def test_feature_dim_keeps_the_first_principal_components():
    """fusion.reduce: on features of rank k the k components keep every centred inner product
    (the kernel of the items), and a wider k changes nothing; FedMR then maps k-wide features."""
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(30, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 10, generator=gen,
                                                                                dtype=torch.float64)
    F = low + torch.randn(10, generator=gen, dtype=torch.float64)          # rank 3 plus a mean
    reduced = fusion.reduce(F, 3)
    centred = F - F.mean(0)
    assert reduced.shape == (30, 3)
    assert torch.allclose(reduced @ reduced.T, centred @ centred.T, atol=1e-9)
    assert fusion.reduce(F, 10) is F and fusion.reduce(F, None) is F
    two = fusion.reduce(F, 2)
    assert not torch.allclose(two @ two.T, centred @ centred.T, atol=1e-3)  # lossy below the rank
    data = mm_dataset(seed=11)
    config = mr_config("fedavg", feature_dim=4, rounds=1)
    result = run_federated(data, config, progress=False)
    assert result.state.global_["A_image"].shape == (8, 4) and result.state.global_["A_text"].shape == (8, 4)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(result, loop)
