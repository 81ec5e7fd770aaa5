"""The written-out gradients of the inner-product backbones (fed/gradients.py) equal autograd's.

The engine-versus-loop equivalence tests already check them end to end; these compare them with
autograd on the backbones' own loss (``backbones.batched_logits`` + ``backbones.regulariser``)
for single mini-batches, including padded samples, repeated items, and FedRAP's clip boundary.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedmm_lite.fed import backbones, gradients
from fedmm_lite.fed.config import default_config

NAMES = {"fedavg": ("p", "b", "Q"), "fcf": ("p", "b", "Q"), "pfedrec": ("w", "b", "E"),
         "fedrap": ("w", "b", "D", "C")}


def random_view(backbone, A=5, B=7, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    view = {}
    for name in NAMES[backbone]:
        if name == "b":
            view[name] = torch.randn(A, generator=g, dtype=torch.float64)
        elif name in ("p", "w"):
            view[name] = torch.randn(A, d, generator=g, dtype=torch.float64)
        else:
            view[name] = torch.randn(A, B, d, generator=g, dtype=torch.float64) * 0.6
    y = (torch.rand(A, B, generator=g) < 0.3).to(torch.float64)
    valid = torch.rand(A, B, generator=g) < 0.8
    valid[:, 0] = True                                  # every client has a sample
    return view, y, valid


def autograd_reference(backbone, view, names, y, valid, t, config):
    leaves = {k: v.clone().requires_grad_(k in names) for k, v in view.items()}
    m = valid.to(torch.float64)
    logits = backbones.score(backbone, leaves, backbones.id_rows(backbone, leaves))
    loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * m).sum(1) / m.sum(1)
    reg = backbones.regulariser(backbone, leaves, valid, t, config)
    if reg is not None:
        loss = loss + reg
    grads = torch.autograd.grad(loss.sum(), [leaves[k] for k in names])
    return loss.detach(), grads


@pytest.mark.parametrize("backbone", sorted(NAMES))
@pytest.mark.parametrize("t", [1, 7])
def test_closed_form_equals_autograd(backbone, t):
    config = default_config(backbone, fedrap_bound=0.3, fedrap_lambda=0.5, fedrap_mu=0.2)
    view, y, valid = random_view(backbone, seed=t)
    names = NAMES[backbone]
    ref_loss, ref_grads = autograd_reference(backbone, view, names, y, valid, t, config)
    m = valid.to(torch.float64)
    m_mean = m / m.sum(1, keepdim=True)
    loss, grads = gradients.loss_and_grads(backbone, view, names, y, m_mean, valid, t, config)
    assert torch.allclose(loss, ref_loss, atol=1e-12, rtol=0)
    for name, got, want in zip(names, grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-12, rtol=0), name
    # padded samples contribute nothing: their row gradients are exactly zero
    for name, got in zip(names, grads):
        if got.dim() == 3:
            assert torch.count_nonzero(got[~valid]) == 0, name


def test_a_phase_gets_only_its_own_gradients():
    config = default_config("pfedrec")
    view, y, valid = random_view("pfedrec")
    m = valid.to(torch.float64)
    _, grads = gradients.loss_and_grads("pfedrec", view, ("w", "b"), y, m / m.sum(1, keepdim=True),
                                        valid, 1, config)
    _, ref = autograd_reference("pfedrec", view, ("w", "b"), y, valid, 1, config)
    assert len(grads) == 2 and all(torch.allclose(a, b, atol=1e-12) for a, b in zip(grads, ref))


def test_fedrap_clip_passes_no_gradient_at_or_beyond_tau():
    """Where (D - C)^2 >= tau the clipped term is flat, as autograd's clamp says."""
    config = default_config("fedrap", fedrap_bound=0.25, fedrap_lambda=1.0, fedrap_mu=0.0)
    view, y, valid = random_view("fedrap", A=1, B=3, d=1)
    valid[:] = True
    view["C"] = torch.zeros(1, 3, 1, dtype=torch.float64)
    view["D"] = torch.tensor([[[0.1], [0.5], [0.9]]], dtype=torch.float64)   # gap^2 .01, .25, .81
    view["w"] = torch.zeros(1, 1, dtype=torch.float64)                      # no BCE gradient on rows
    m = valid.to(torch.float64) / 3
    _, (gD,) = gradients.loss_and_grads("fedrap", view, ("D",), y, m, valid, 1000, config)
    _, (ref,) = autograd_reference("fedrap", view, ("D",), y, valid, 1000, config)
    assert torch.allclose(gD, ref, atol=1e-15)
    assert gD[0, 0, 0] < 0 and gD[0, 1, 0] == 0 and gD[0, 2, 0] == 0


def test_only_inner_product_backbones_without_fusion_use_it():
    assert set(gradients.INNER_PRODUCT) == {"fedavg", "fcf", "pfedrec", "fedrap"}
    for backbone in ("fedavg", "fedncf"):
        assert gradients.has_closed_form(backbone) == (backbone == "fedavg")
