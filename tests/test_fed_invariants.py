"""Invariants of the federation (book/methods.md, "Defects": items 1, 4, 5, 7, 8, 13; "Protocol")."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from fedmm_lite.data import NegativeSampler
from fedmm_lite.fed import backbones, engine, run_federated
from fedmm_lite.fed.method import full_scores
from fedmm_lite.fed.rounds import run_round, select_best
from fedmm_lite.fed.plan import chunks, make_plan, sample_participants
from fedmm_lite.fed.server import aggregation_weights
from fedmm_lite.fed.state import ServerState, new_state
from fedmm_lite.fed.tuned_tables import TunedTables

from test_fed_equivalence import fill_private, small_config, tiny_dataset




def fresh(backbone, data, **kw):
    config = small_config(backbone, **kw)
    gen = torch.Generator().manual_seed(0)
    state = new_state(config, data, gen)
    return config, state, NegativeSampler(data, "cpu"), gen


def train(state, data, config, participants, t, sampler, gen):
    """One round of the batched engine with the participants chosen by the test."""
    plans = [make_plan(data, c, sampler, config.neg_ratio, config.local_epochs, config.batch_size, gen)
             for c in chunks(torch.tensor(participants), config.chunk_size)]
    return run_round(state, plans, config, t)[0]


def snapshot(tensors: dict) -> dict:
    return {k: v.clone() for k, v in tensors.items()}


# --- 1. private state persists and is what evaluation uses -------------------------------------

@pytest.mark.parametrize("backbone", ["fedavg", "fedncf", "pfedrec", "fedrap"])
def test_private_state_persists_for_clients_that_sit_out(backbone):
    data = tiny_dataset()
    config, state, sampler, gen = fresh(backbone, data)
    train(state, data, config, [0, 1, 2], 1, sampler, gen)
    after_1 = snapshot(state.private)
    train(state, data, config, [3, 4], 2, sampler, gen)
    for name, value in state.private.items():
        # clients 0..2 sat out round 2: their private tensors are exactly those of round 1
        assert torch.equal(value[:3], after_1[name][:3]), name
        # clients 3, 4 trained: their private tensors moved
        assert not torch.equal(value[3:5], after_1[name][3:5]), name


@pytest.mark.parametrize("backbone, name", [("fedavg", "p"), ("fcf", "b"), ("fedncf", "p_mlp"),
                                            ("pfedrec", "E_u"), ("pfedrec", "w"), ("fedrap", "D")])
def test_evaluation_reads_each_users_private_state(backbone, name):
    data = tiny_dataset()
    config, state, sampler, gen = fresh(backbone, data)
    train(state, data, config, list(range(data.n_users)), 1, sampler, gen)
    users = torch.arange(data.n_users)
    before = full_scores(state, users)
    value = state.private[name]
    if isinstance(value, TunedTables):          # PFedRec's E_u: move user 5's tuned rows
        mine = slice(int(value.offsets[5]), int(value.offsets[6]))
        value.rows[mine] += 0.5 + torch.rand_like(value.rows[mine])
    else:
        value[5] = value[5] + 0.5 + torch.rand_like(value[5])
    after = full_scores(state, users)
    changed = (after - before).abs().amax(dim=1) > 1e-9                         # (U,)
    assert changed.tolist() == [u == 5 for u in range(data.n_users)]


def test_pfedrec_scores_with_the_tuned_table_not_the_global_one():
    data = tiny_dataset()
    config, state, sampler, gen = fresh("pfedrec", data)
    train(state, data, config, [0, 1], 1, sampler, gen)
    u = torch.tensor([0])
    tuned = state.private["E_u"][0] @ state.private["w"][0] + state.private["b"][0]
    assert torch.allclose(full_scores(state, u)[0], tuned)
    glob = state.global_["E"] @ state.private["w"][0] + state.private["b"][0]
    assert not torch.allclose(full_scores(state, u)[0], glob)


# --- late joiners and non-participants (13) -----------------------------------------------------

def test_late_joiner_starts_from_the_current_global_model():
    data = tiny_dataset()
    config, state, sampler, gen = fresh("pfedrec", data)
    initial_e = state.global_["E"].clone()
    train(state, data, config, [0, 1, 2], 1, sampler, gen)
    current_e = state.global_["E"].clone()
    assert not torch.allclose(current_e, initial_e)
    train(state, data, config, [7], 2, sampler, gen)          # client 7 joins in round 2
    touched = set(data.train_items(7).tolist())
    tuned = state.private["E_u"][7]
    moved = (tuned - current_e).abs().amax(dim=1) > 0                          # (n,)
    # rows client 7 never trained on are the global table it received: the CURRENT one
    untouched = torch.nonzero(~moved).flatten()
    assert torch.equal(tuned[untouched], current_e[untouched])
    assert touched <= set(torch.nonzero(moved).flatten().tolist())


@pytest.mark.parametrize("backbone", ["fedavg", "pfedrec"])
def test_non_participants_are_not_averaged(backbone):
    """The global update is the weighted mean over this round's participants only; a
    non-participant's state can be anything."""
    data = tiny_dataset()
    config, state, sampler, gen = fresh(backbone, data)
    start = snapshot(state.global_)
    plan = make_plan(data, torch.tensor([2, 6]), sampler, config.neg_ratio, config.local_epochs,
                     config.batch_size, torch.Generator().manual_seed(5))
    # reference: the two clients' uploads, weighted over the two of them
    copy = dataclasses.replace(state, server=ServerState(snapshot(state.global_)),
                               private=snapshot(state.private), joined=state.joined.clone())
    uploads, _ = engine.train_chunk(copy, plan, config, 1)
    name = backbones.SPECS[backbone].tables[0]
    dense = torch.zeros((2,) + tuple(start[name].shape), dtype=start[name].dtype)
    dense[uploads.owners[name], uploads.rows[name]] = uploads.values[name]
    a = aggregation_weights(backbones.SPECS[backbone].rule, plan.sizes).to(dense.dtype)
    expected = start[name] - torch.einsum("p,p...->...", a, dense)
    # garbage in every other client's private state must not matter
    for value in state.private.values():
        fill_private(value, 1e6, keep=[2, 6])
    run_round(state, [plan], config, 1)
    assert torch.allclose(state.global_[name], expected, atol=1e-12)
    assert state.joined.tolist() == [u in (2, 6) for u in range(data.n_users)]


def test_participants_are_a_uniform_subset_of_the_requested_size():
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(10)
    for _ in range(2000):
        p = sample_participants(10, 0.3, gen)
        assert len(p) == 3 and len(set(p.tolist())) == 3
        counts[p] += 1
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3


# --- 4. negatives -------------------------------------------------------------------------------

def test_negatives_are_fresh_never_positives_and_uniform():
    data = tiny_dataset(n_users=4, n_items=40)
    sampler = NegativeSampler(data, "cpu")
    gen = torch.Generator().manual_seed(0)
    user = 1
    train_items = set(data.train_items(user).tolist())
    counts = np.zeros(data.n_items)
    draws = []
    for _ in range(400):
        plan = make_plan(data, torch.tensor([user]), sampler, 4, 1, 8, gen)
        size = int(plan.sizes[0])
        negs = plan.items[0, size:int(plan.lengths[0])]
        assert plan.labels[0, :size].eq(1).all() and plan.labels[0, size:].eq(0).all()
        assert set(plan.items[0, :size].tolist()) == train_items
        assert not (set(negs.tolist()) & train_items)
        np.add.at(counts, negs.numpy(), 1)
        draws.append(negs)
    assert not torch.equal(draws[0], draws[1])                  # redrawn every round
    complement = sorted(set(range(data.n_items)) - train_items)
    assert counts[sorted(train_items)].sum() == 0
    # every item outside the training set is drawn equally often (chi-square on the complement)
    assert stats.chisquare(counts[complement]).pvalue > 1e-3


def test_plan_rows_are_unique_per_client_and_cover_every_sample():
    data = tiny_dataset(n_users=6, n_items=15)                # small catalogue: repeated negatives
    plan = make_plan(data, torch.arange(6), NegativeSampler(data, "cpu"), 4, 2, 8,
                     torch.Generator().manual_seed(0))
    repeated = False
    for c in range(6):
        mine = plan.row_owner == c
        rows = plan.rows[mine]
        assert len(set(rows.tolist())) == len(rows)
        length = int(plan.lengths[c])
        assert bool(mine[plan.slots[c, :length]].all())           # a sample reads its own client's rows
        assert torch.equal(plan.rows[plan.slots[c, :length]], plan.items[c, :length])
        repeated |= len(rows) < length
        for e in range(2):                                     # each epoch is a permutation
            assert sorted(plan.orders[e, c, :length].tolist()) == list(range(length))
    assert repeated


# --- 5. model selection never looks at test ------------------------------------------------------

def test_selection_uses_validation_and_reports_test_there():
    history = [dict(round=0, valid={"hr@50": 0.1}, test={"hr@50": 0.05}),
               dict(round=1, valid={"hr@50": 0.3}, test={"hr@50": 0.10}),
               dict(round=2, valid={"hr@50": 0.2}, test={"hr@50": 0.90}),
               dict(round=3, valid={"hr@50": 0.3}, test={"hr@50": 0.95})]
    best = select_best(history)
    assert best["round"] == 1 and best["test"] == {"hr@50": 0.10}


def test_run_reports_the_validation_best_round():
    data = tiny_dataset(n_users=20, n_items=120)
    result = run_federated(data, small_config("fedavg", rounds=4, sample_ratio=1.0), progress=False)
    valid = [h["valid"]["hr@50"] for h in result.history]
    assert result.best_round == result.history[int(np.argmax(valid))]["round"]
    entry = next(h for h in result.history if h["round"] == result.best_round)
    assert result.test == entry["test"] and result.valid == entry["valid"]
    assert [h["round"] for h in result.history] == [0, 1, 2, 3, 4]


# --- 8. FedRAP's regulariser schedules reach the loss ----------------------------------------------

def test_fedrap_schedule_follows_tanh_and_increases():
    config = small_config("fedrap", fedrap_lambda=0.4, fedrap_mu=0.02)
    assert backbones.fedrap_weights(0, config) == (0.0, 0.0)
    for t in (1, 5, 20, 100):
        lam, mu = backbones.fedrap_weights(t, config)
        assert lam == pytest.approx(math.tanh(t / 10) * 0.4)
        assert mu == pytest.approx(math.tanh(t / 10) * 0.02)
    lams = [backbones.fedrap_weights(t, config)[0] for t in range(1, 60)]
    assert all(b > a for a, b in zip(lams, lams[1:]))


def test_fedrap_regulariser_changes_the_trained_model():
    data = tiny_dataset()
    results = {}
    for lam, mu in [(0.0, 0.0), (0.5, 0.0), (0.0, 0.1)]:
        config, state, sampler, gen = fresh("fedrap", data, fedrap_lambda=lam, fedrap_mu=mu,
                                            fedrap_bound=10.0)
        train(state, data, config, [0, 1, 2, 3], 3, sampler, gen)
        results[(lam, mu)] = state.global_["C"]
    base = results[(0.0, 0.0)]
    assert (results[(0.5, 0.0)] - base).abs().max() > 1e-6
    assert (results[(0.0, 0.1)] - base).abs().max() > 1e-6


def test_fedrap_regulariser_value_by_hand():
    config = small_config("fedrap", fedrap_lambda=1.0, fedrap_mu=1.0, fedrap_bound=0.5)
    view = {"D": torch.tensor([[[1.0, 0.0], [0.2, 0.0], [9.0, 9.0]]], dtype=torch.float64),
            "C": torch.tensor([[[0.0, -1.0], [0.0, 0.5], [9.0, 9.0]]], dtype=torch.float64)}
    valid = torch.tensor([[True, True, False]])
    t = 10
    ramp = math.tanh(1.0)
    # gaps: min((1)^2, .5), min(1^2, .5), min(.04, .5), min(.25, .5) -> mean over 2 rows x 2 dims
    gap = (0.5 + 0.5 + 0.04 + 0.25) / 4
    l1 = (0.0 + 1.0 + 0.0 + 0.5) / 4
    reg = backbones.regulariser("fedrap", view, valid, t, config)
    assert float(reg[0]) == pytest.approx(ramp * (-gap + l1))


def test_fedrap_stays_bounded_with_a_large_lambda():
    """The clipped differentiation term cannot run away: D_u stays finite and scores stay finite."""
    data = tiny_dataset()
    config = small_config("fedrap", fedrap_lambda=50.0, fedrap_bound=0.05, rounds=6,
                          local_epochs=3, sample_ratio=1.0)
    result = run_federated(data, config, progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in result.history[1:])
    gap = (result.state.private["D"]).abs().max()
    assert torch.isfinite(gap) and gap < 10


# --- configuration -------------------------------------------------------------------------------

def test_default_config_quick_mode_and_overrides(monkeypatch):
    from fedmm_lite.errors import OptionError
    from fedmm_lite.fed import BACKBONE_DEFAULTS, default_config

    monkeypatch.setenv("FEDMM_QUICK", "1")
    quick = default_config("pfedrec")
    assert (quick.rounds, quick.local_epochs) == (5, 1)
    monkeypatch.setenv("FEDMM_QUICK", "0")
    full = default_config("pfedrec", sample_ratio=0.5, lr=None)
    assert full.rounds == 100 and full.sample_ratio == 0.5
    assert full.step_sizes() == tuple(BACKBONE_DEFAULTS["pfedrec"][k] for k in ("lr", "item_lr", "server_lr"))
    assert default_config("fcf", lr=0.01).step_sizes()[0] == 0.01
    for bad in [dict(sample_ratio=0.0), dict(rounds=-1), dict(noise="gaussian"), dict(engine="fast"),
                dict(local_epochs=0)]:
        with pytest.raises(OptionError):
            default_config("fedavg", **bad)
    with pytest.raises(OptionError, match="backbone"):
        default_config("svd")
    with pytest.raises(OptionError, match="unknown"):
        default_config("fedavg", learning_rate=0.1)


def test_engines_one_user_apart_still_agree():
    """compare_metrics allows one user's hit (1 / U), float rounding of k / U included."""
    from fedmm_lite.timing import compare_metrics
    U = 1200
    a = {"valid": {"hr@50": 0.0}, "test": {"hr@50": 263 / U}}
    b = {"valid": {"hr@50": 0.0}, "test": {"hr@50": 262 / U}}
    assert abs(a["test"]["hr@50"] - b["test"]["hr@50"]) > 1 / U           # the float case that failed
    assert compare_metrics(a, b, U)["metrics_agree"]
    b["test"]["hr@50"] = 261 / U
    assert not compare_metrics(a, b, U)["metrics_agree"]
