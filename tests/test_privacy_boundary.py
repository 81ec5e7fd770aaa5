"""The privacy boundary (book/methods.md, "Privacy"): the server sees upload objects only.

- an ``UploadBatch`` carries named shared-tensor updates, what the method reports, who sent them,
  and training-set sizes only where the rule weighs by them; nothing else;
- the server side of a round, run from the uploads alone with every client's private state replaced
  by garbage (or absent), gives exactly the global model of the untouched round; a deliberately
  leaking server step is caught by the same check;
- no private tensor appears in an upload, neither by storage nor by value;
- ``--noise`` parses strictly, reaches every row of every upload, and has the requested scale;
- the same holds under clipped DP, local (clients clip and noise) and central (the server does),
  and no training-set size travels under DP.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from fedmm_lite.data import NegativeSampler
from fedmm_lite.errors import OptionError
from fedmm_lite.fed import backbones, engine, oracle, parse_noise
from fedmm_lite.fed.method import IdMethod
from fedmm_lite.fed.plan import make_plan
from fedmm_lite.fed.privacy import NoiseSpec, client_noise, dp_spec, privatise
from fedmm_lite.fed.rounds import NOISE_SEED_OFFSET, run_round
from fedmm_lite.fed.server import ServerRound, UploadBatch
from fedmm_lite.fed.state import new_state

from test_fed_equivalence import fill_private, small_config, stored_tensors, tiny_dataset
from test_fedmr import mm_dataset, mr_config

TRAINED = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")
CLIENTS = [1, 4, 5, 9]


def trained_state(config, data):
    """A state after one round of every client (private state that is not its initial value)."""
    state = new_state(config, data, torch.Generator().manual_seed(0))
    plan = make_plan(data, torch.arange(data.n_users), NegativeSampler(data, "cpu"), config.neg_ratio,
                     config.local_epochs, config.batch_size, torch.Generator().manual_seed(9))
    run_round(state, [plan], config, 1)
    return state


def round_plan(config, data):
    return make_plan(data, torch.tensor(CLIENTS), NegativeSampler(data, "cpu"), config.neg_ratio,
                     config.local_epochs, config.batch_size, torch.Generator().manual_seed(0))


def client_side(state, plan, config, trainer=engine, noise="none"):
    """The clients' half of round 2: uploads as the server receives them (privatised; under
    ``config.dp`` local: clipped and noised)."""
    uploads, _ = trainer.train_chunk(state, plan, config, 2, state.method.downloads(state.server,
                                                                                   plan.clients))
    shapes = {k: tuple(v.shape) for k, v in state.global_.items()}
    return privatise(uploads, parse_noise(noise), torch.Generator().manual_seed(NOISE_SEED_OFFSET),
                     shapes, state.spec.tables, dp_spec(config))


def server_side(state, uploads, config) -> dict:
    """The server's half of round 2, built from ``state.server`` and fed the uploads (under
    ``config.dp`` central: it clips and noises, from a generator of its own)."""
    dp = dp_spec(config)
    server = ServerRound(state.server, state.method, "uniform" if dp.active else state.spec.rule, config, 2,
                         keep_uploads=state.method.keeps_uploads, dp=dp,
                         generator=torch.Generator().manual_seed(NOISE_SEED_OFFSET),
                         expected_clients=config.sample_ratio * state.n_users, tables=state.spec.tables)
    server.receive(uploads)
    server.close()
    return state.global_


def boundary_holds(config, data, trainer=engine, noise="none") -> bool:
    """The real check: the whole round on one copy; on another, the client side, then every private
    tensor and buffer set to NaN in place (and then removed), then the server side from the uploads
    alone. The two global models must be identical."""
    state = trained_state(config, data)
    plan = round_plan(config, data)
    reference = copy.deepcopy(state)
    server_side(reference, client_side(reference, plan, config, trainer, noise), config)
    uploads = client_side(state, plan, config, trainer, noise)
    for value in list(state.private.values()) + list(state.buffers.values()):
        fill_private(value, float("nan"))
    state.private, state.buffers = None, None               # absent: any read would raise
    result = server_side(state, uploads, config)
    same_model = all(torch.equal(result[k], reference.global_[k]) for k in reference.global_)
    # and the method's server-only state (GFMFR: groups, targets' module, teacher)
    only, ref_only = state.server.only, reference.server.only
    same_only = set(only) == set(ref_only) and all(
        torch.equal(only[k], ref_only[k]) if torch.is_tensor(only[k])
        else all(np.array_equal(a, b) for a, b in zip(only[k], ref_only[k])) for k in only)
    return same_model and same_only


def test_an_upload_holds_only_named_shared_updates_reports_and_sizes():
    assert {f.name for f in dataclasses.fields(UploadBatch)} == {"n_clients", "clients", "sizes", "values",
                                                                 "rows", "owners", "reports"}
    data = tiny_dataset()
    for backbone in TRAINED:
        config = small_config(backbone)
        state = new_state(config, data)
        plan = round_plan(config, data)
        uploads = client_side(state, plan, config)
        assert set(uploads.values) == set(state.global_)            # shared tensors only
        assert not set(uploads.values) & set(state.private)
        assert set(uploads.reports) == set(state.spec.reported) == set()
        assert torch.equal(uploads.clients, plan.clients)
        # the training-set sizes travel only where the rule weighs by them
        if backbones.SPECS[backbone].rule == "data_size":
            assert torch.equal(uploads.sizes, plan.sizes)
        else:
            assert uploads.sizes is None


@pytest.mark.parametrize("backbone", TRAINED)
@pytest.mark.parametrize("noise", ["none", "gaussian:0.01"])
def test_server_side_of_a_round_reads_only_uploads(backbone, noise):
    assert boundary_holds(small_config(backbone), tiny_dataset(), noise=noise)


@pytest.mark.parametrize("backbone", ["fedavg", "pfedrec"])
def test_server_side_reads_only_uploads_with_the_oracle_and_with_fedmr(backbone):
    assert boundary_holds(small_config(backbone), tiny_dataset(), trainer=oracle)
    assert boundary_holds(mr_config(backbone), mm_dataset(), noise="gaussian:0.01")


def test_the_check_catches_a_server_step_that_reads_private_state(monkeypatch):
    """A deliberately leaking method (its client session keeps a reference to the clients' private
    tensors, its server step reads them) must fail the check; otherwise the check proves nothing."""
    session = IdMethod.chunk_session

    def chunk_session(self, state, *args):
        self.leak = state.private
        return session(state, *args)

    def server_step(self, server, uploads, start, config, t):
        server.global_["Q"] = server.global_["Q"] + self.leak["p"].mean()
        return {}

    monkeypatch.setattr(IdMethod, "chunk_session", chunk_session)
    monkeypatch.setattr(IdMethod, "server_step", server_step)
    assert not boundary_holds(small_config("fedavg"), tiny_dataset())


@pytest.mark.parametrize("backbone", TRAINED)
def test_no_private_tensor_in_an_upload(backbone):
    config, data = small_config(backbone), tiny_dataset()
    state = trained_state(config, data)
    plan = round_plan(config, data)
    uploads = client_side(state, plan, config)
    uploaded = list(uploads.values.values()) + list(uploads.rows.values())
    pointers = {t.untyped_storage().data_ptr() for t in uploaded}
    for value in state.private.values():
        for tensor in stored_tensors(value):
            assert tensor.untyped_storage().data_ptr() not in pointers
    # by value: no client's private vector (or private item row) equals an uploaded row
    for name, value in state.private.items():
        private_rows = value[plan.clients].reshape(-1, value.shape[-1]) if len(value.shape) > 1 else None
        if private_rows is None:
            continue
        private_rows = private_rows[private_rows.abs().sum(1) > 0]       # D_u starts at 0 everywhere
        for up in uploads.values.values():
            if up.shape[-1] != value.shape[-1]:
                continue
            rows = up.reshape(-1, up.shape[-1])
            close = torch.cdist(private_rows.double(), rows.double()) < 1e-12
            assert not bool(close.any()), (name, "appears in an upload")


def test_noise_is_added_to_every_row_of_every_upload():
    config, data = small_config("fedavg"), tiny_dataset()
    state = new_state(config, data)
    plan = round_plan(config, data)
    noisy = client_side(copy.deepcopy(state), plan, config, noise="gaussian:0.5")
    n = state.global_["Q"].shape[0]
    assert noisy.values["Q"].shape == (4 * n, state.global_["Q"].shape[1])
    assert torch.equal(noisy.rows["Q"], torch.arange(n).repeat(4))      # every row of every client
    assert torch.equal(noisy.owners["Q"], torch.arange(4).repeat_interleave(n))
    # rows the client never touched are pure noise, so the server cannot read the client's items
    untouched = torch.ones(4, n, dtype=torch.bool)
    untouched[plan.row_owner, plan.rows] = False
    pure = noisy.values["Q"].view(4, n, -1)[untouched]
    assert pure.std() == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("text, kind, scale", [("none", "none", 0.0), ("gaussian:0.1", "gaussian", 0.1),
                                               ("laplace:2", "laplace", 2.0), (" Laplace:0.5 ", "laplace", 0.5)])
def test_parse_noise(text, kind, scale):
    assert parse_noise(text) == NoiseSpec(kind, scale)


@pytest.mark.parametrize("text", ["gauss:1", "gaussian", "laplace:-1", "laplace:abc", "gaussian:inf"])
def test_parse_noise_rejects_bad_values(text):
    with pytest.raises(OptionError, match="--noise"):
        parse_noise(text)


def test_laplace_noise_has_the_requested_scale():
    x = client_noise((200_000,), NoiseSpec("laplace", 0.3), torch.Generator().manual_seed(0),
                     torch.float64)
    # Laplace(0, b): mean 0, E|x| = b, variance 2 b^2
    assert float(x.mean()) == pytest.approx(0.0, abs=0.005)
    assert float(x.abs().mean()) == pytest.approx(0.3, rel=0.02)
    assert float(x.var()) == pytest.approx(2 * 0.09, rel=0.03)


@pytest.mark.parametrize("backbone", ["fedavg", "fedncf", "pfedrec"])
@pytest.mark.parametrize("mode", ["local", "central"])
def test_server_side_reads_only_uploads_under_dp(backbone, mode):
    config = small_config(backbone, dp=mode, clip=0.05, noise_multiplier=0.5)
    assert boundary_holds(config, tiny_dataset())
    uploads = client_side(new_state(config, tiny_dataset()), round_plan(config, tiny_dataset()), config)
    assert uploads.sizes is None                       # n_u stays on the client under DP
