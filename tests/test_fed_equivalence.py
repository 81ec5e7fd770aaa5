"""The batched engine equals the per-client loop oracle (book/methods.md, "Cost model").

For every backbone, with partial participation (beta < 1), several local epochs (H > 1) and chunks
smaller than the number of participants, both engines run the same rounds from the same seed; the
oracle trains each client on FULL model copies one at a time and applies the server rule to full
updates. Global tensors, private tensors, training losses and every evaluated metric must agree to
float64 rounding.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedmm_lite.data.dataset import Dataset
from fedmm_lite.fed import FedConfig, run_federated
from fedmm_lite.fed.tuned_tables import TunedTables

TRAINED = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")


def stored_tensors(value) -> list:
    """The tensors a private entry is stored in (PFedRec's E_u: pool rows and snapshots)."""
    return [value.rows, value.snapshots, value.items] if isinstance(value, TunedTables) else [value]


def fill_private(value, fill: float, keep=()) -> None:
    """Overwrite a private entry with ``fill`` (integers with 0), except the clients in ``keep``."""
    keep = torch.as_tensor(list(keep), dtype=torch.long)
    if isinstance(value, TunedTables):
        other = torch.ones(value.rows.shape[0], dtype=torch.bool)
        for u in keep.tolist():
            other[int(value.offsets[u]):int(value.offsets[u + 1])] = False
        value.rows[other] = fill
        shared = torch.zeros(value.snapshots.shape[0], dtype=torch.bool)
        shared[value.snapshot_of[keep][value.snapshot_of[keep] >= 0]] = True
        value.snapshots[~shared] = fill
        return
    kept = value[keep].clone()
    value.copy_(torch.full_like(value, fill) if value.is_floating_point() else torch.zeros_like(value))
    value[keep] = kept




def tiny_dataset(n_users: int = 14, n_items: int = 60, seed: int = 0) -> Dataset:
    """Users with 3..12 training items (long and short clients in one chunk), drawn at random."""
    rng = np.random.default_rng(seed)
    indptr, train, valid, test = [0], [], [], []
    for _ in range(n_users):
        k = int(rng.integers(3, 13))
        items = rng.choice(n_items, size=k + 2, replace=False)
        train += sorted(items[:k].tolist())
        indptr.append(len(train))
        valid.append(items[k])
        test.append(items[k + 1])
    return Dataset(name="tiny", user_ids=np.array([f"u{u}" for u in range(n_users)]),
                   item_ids=np.array([f"i{i}" for i in range(n_items)]), titles=[""] * n_items,
                   image_paths=[None] * n_items, train_indptr=np.array(indptr, dtype=np.int64),
                   train_indices=np.array(train, dtype=np.int64),
                   valid_items=np.array(valid, dtype=np.int64), test_items=np.array(test, dtype=np.int64))


def small_config(backbone: str, **kw) -> FedConfig:
    base = dict(backbone=backbone, rounds=3, local_epochs=2, sample_ratio=0.6, batch_size=8,
                chunk_size=3, dim=8, device="cpu", dtype="float64", private_dtype="float64",
                lr=0.3, item_lr=2.0, fedrap_bound=0.05, fedrap_lambda=0.5, fedrap_mu=0.1,
                ncf_layers=(8, 4), seed=3)
    base.update(kw)
    return FedConfig(**base)


def assert_same_run(a, b, tol=1e-10):
    for name in a.state.global_:
        diff = (a.state.global_[name] - b.state.global_[name]).abs().max()
        assert diff < tol, f"global {name} differs by {float(diff)}"
    for name in a.state.private:
        diff = (a.state.private[name][:].double() - b.state.private[name][:].double()).abs().max()
        assert diff < tol, f"private {name} differs by {float(diff)}"
    assert torch.equal(a.state.joined, b.state.joined)
    assert len(a.history) == len(b.history)
    for ha, hb in zip(a.history, b.history):
        assert ha["round"] == hb["round"]
        for split in ("valid", "test"):
            for key, value in ha[split].items():
                assert value == pytest.approx(hb[split][key], abs=1e-12), (ha["round"], split, key)
        if ha["train_loss"] is not None:
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=tol)
    assert a.best_round == b.best_round


@pytest.mark.parametrize("backbone", TRAINED)
def test_batched_engine_equals_per_client_loop(backbone):
    data = tiny_dataset()
    config = small_config(backbone)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    # the comparison is not vacuous: training moved the shared model and the metrics
    untouched = run_federated(data, dataclasses.replace(config, rounds=0), progress=False)
    for name, value in batched.state.global_.items():
        assert (value - untouched.state.global_[name]).abs().max() > 1e-4, name
    assert batched.client_updates == 3 * 9      # ceil(0.6 * 14) = 9 participants per round


@pytest.mark.parametrize("backbone", ["fedavg", "fedncf", "pfedrec"])
def test_equivalence_with_upload_noise(backbone):
    data = tiny_dataset(seed=1)
    config = small_config(backbone, noise="laplace:0.001", rounds=2)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    clean = run_federated(data, dataclasses.replace(config, noise="none"), progress=False)
    name = next(iter(clean.state.global_))
    assert (clean.state.global_[name] - batched.state.global_[name]).abs().max() > 1e-6


def test_equivalence_float32_full_participation():
    data = tiny_dataset(seed=2)
    config = small_config("fedrap", dtype="float32", private_dtype="float32", sample_ratio=1.0,
                          chunk_size=5, rounds=2)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop, tol=1e-5)


@pytest.mark.parametrize("backbone", ["fedavg", "fedrap"])
def test_same_seed_same_run_with_two_threads(backbone):
    """Repeatable on a CPU with more than one torch thread too (the round runs under PyTorch's
    deterministic algorithms): without them, two such runs of world-quick differed for every
    backbone (accumulated row updates summed in a thread-dependent order)."""
    from fedmm_lite.data import load_dataset

    data = load_dataset("world-quick", seed=0)
    config = FedConfig(backbone=backbone, rounds=2, seed=0, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = (run_federated(data, config, progress=False) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    for name in a.state.global_:
        assert torch.equal(a.state.global_[name], b.state.global_[name]), name
    assert [h["test"] for h in a.history] == [h["test"] for h in b.history]


def test_round_arithmetic_is_held_only_while_a_round_works():
    """Training and evaluation switch PyTorch's deterministic algorithms and the flushing of
    denormal floats on (and the NaN fill of new memory off), and back: the caller's code between
    two rounds of ``FederatedRun`` runs with its own settings."""
    from fedmm_lite.config import denormals_flushed as _denormals_flushed
    from fedmm_lite.fed.rounds import FederatedRun, round_arithmetic

    assert not torch.are_deterministic_algorithms_enabled() and not _denormals_flushed()
    rounds = iter(FederatedRun(tiny_dataset(), small_config("fedavg", rounds=2)))
    for _ in range(3):                     # round 0 (evaluation), rounds 1 and 2
        next(rounds)
        assert not torch.are_deterministic_algorithms_enabled()
        assert not _denormals_flushed()
    assert torch.utils.deterministic.fill_uninitialized_memory
    with round_arithmetic():
        assert torch.are_deterministic_algorithms_enabled()
        assert _denormals_flushed()        # x86 with SSE3 and AArch64 can: every machine here
        assert not torch.utils.deterministic.fill_uninitialized_memory
    assert not _denormals_flushed()
    assert torch.utils.deterministic.fill_uninitialized_memory
    torch.set_flush_denormal(True)         # a caller's own setting (the CLI's) is kept
    try:
        with round_arithmetic():
            pass
        assert _denormals_flushed()
    finally:
        torch.set_flush_denormal(False)


def test_same_seed_same_run_and_other_seed_differs():
    data = tiny_dataset()
    config = small_config("pfedrec", rounds=2)
    a = run_federated(data, config, progress=False)
    b = run_federated(data, config, progress=False)
    for name in a.state.global_:
        assert torch.equal(a.state.global_[name], b.state.global_[name])
    for name in a.state.private:
        assert torch.equal(a.state.private[name][:], b.state.private[name][:])
    assert [h["valid"] for h in a.history] == [h["valid"] for h in b.history]
    c = run_federated(data, dataclasses.replace(config, seed=4), progress=False)
    assert not torch.equal(a.state.global_["E"], c.state.global_["E"])
