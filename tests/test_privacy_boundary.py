"""The privacy boundary (design.md): the server sees upload objects only, noise is added before it.

- an ``UploadBatch`` carries named shared-tensor updates and training-set sizes, nothing else;
- replacing every client's private tensors with garbage after the uploads are built leaves the
  server's result unchanged;
- no private tensor appears in an upload, neither by storage nor by value;
- ``--noise`` parses strictly and the noise has the requested scale.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fedmm_lite.data import NegativeSampler
from fedmm_lite.errors import OptionError
from fedmm_lite.fed import backbones, engine, parse_noise
from fedmm_lite.fed.plan import make_plan
from fedmm_lite.fed.privacy import NoiseSpec, client_noise
from fedmm_lite.fed.server import Aggregator, UploadBatch

from test_fed_equivalence import fill_private, small_config, stored_tensors, tiny_dataset

TRAINED = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")




def build_uploads(backbone, noise="none"):
    data = tiny_dataset()
    config = small_config(backbone, noise=noise)
    gen = torch.Generator().manual_seed(0)
    state = backbones.init_state(backbone, data.n_users, data.n_items, config, gen, "cpu")
    plan = make_plan(data, torch.tensor([1, 4, 5, 9]), NegativeSampler(data, "cpu"),
                     config.neg_ratio, config.local_epochs, config.batch_size, gen)
    uploads, _ = engine.train_chunk(state, plan, config, 1, parse_noise(noise),
                                    torch.Generator().manual_seed(1))
    return state, plan, uploads


def aggregate(state, uploads):
    spec = backbones.SPECS[state.backbone]
    agg = Aggregator(spec.rule, {k: tuple(v.shape) for k, v in state.global_.items()},
                     state.dtype, "cpu")
    agg.add(uploads)
    return agg.mean_update()


def test_an_upload_holds_only_named_shared_updates_and_sizes():
    assert {f.name for f in dataclasses.fields(UploadBatch)} == {"sizes", "values", "rows", "owners"}
    for backbone in TRAINED:
        state, plan, uploads = build_uploads(backbone)
        assert set(uploads.values) == set(state.global_)            # shared tensors only
        assert not set(uploads.values) & set(state.private)
        assert torch.equal(uploads.sizes, plan.sizes)


@pytest.mark.parametrize("backbone", TRAINED)
@pytest.mark.parametrize("noise", ["none", "gaussian:0.01"])
def test_server_result_ignores_private_state(backbone, noise):
    state, _, uploads = build_uploads(backbone, noise)
    before = aggregate(state, uploads)
    for value in state.private.values():
        fill_private(value, float("nan"))
    after = aggregate(state, uploads)
    for name in before:
        assert torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("backbone", TRAINED)
def test_no_private_tensor_in_an_upload(backbone):
    state, plan, uploads = build_uploads(backbone)
    uploaded = list(uploads.values.values()) + list(uploads.rows.values()) + [uploads.sizes]
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
    state, plan, clean = build_uploads("fedavg")
    _, _, noisy = build_uploads("fedavg", "gaussian:0.5")
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
