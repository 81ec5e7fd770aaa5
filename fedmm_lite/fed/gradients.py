"""Closed-form mini-batch gradients of the matrix-factorisation backbones, for the batched engine.

FedAvg, FCF, PFedRec and FedRAP all score with an inner product (``backbones.score``):

    s_ui = u . x_i + b_u      u = p_u (FedAvg, FCF) or w_u (PFedRec, FedRAP),
                              x_i = Q[i], E[i], or D_u[i] + C[i] (FedRAP)

and train on the mean binary cross-entropy over a client's valid samples of the batch,
L_u = (1 / n_B) sum_b m_b BCE(sigma(s_b), y_b). Its derivative in the logit is the classic

    g_b = dL_u / ds_b = m_b (sigma(s_b) - y_b) / n_B                                      (G1)

so, by the chain rule through the inner product,

    dL/du = sum_b g_b x_b,   dL/db_u = sum_b g_b,   dL/dx_b = g_b u   (one row per sample)  (G2)

and FedRAP's regulariser R_u (``backbones.regulariser``), with delta = D_u[i] - C[i], adds

    dR/dD_u[i] = -lambda_t 2 delta [delta^2 < tau] m_b / n_R,
    dR/dC[i]   = +lambda_t 2 delta [delta^2 < tau] m_b / n_R + mu_t sign(C[i]) m_b / n_R   (G3)

(n_R = d * number of valid rows; the clip's gradient is 0 at and beyond tau, as autograd's).

Written out, a step is a handful of batched products instead of an autograd graph per mini-batch
position: that overhead, not arithmetic, dominates the engine on small batches. This is a fast path
of ``backbones.score`` and ``backbones.regulariser`` (it calls them for the loss values): the
per-client oracle keeps autograd, so the equivalence tests check these formulas against an
independent computation; ``tests/test_fed_gradients.py`` also compares them with autograd directly.
FedNCF (a tower) and FedMR (fusion modules) keep autograd in the engine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backbones

# backbone -> (user vector, item tables whose rows sum to x_i)
INNER_PRODUCT = {"fedavg": ("p", ("Q",)), "fcf": ("p", ("Q",)),
                 "pfedrec": ("w", ("E",)), "fedrap": ("w", ("D", "C"))}


def has_closed_form(backbone: str) -> bool:
    """True for the inner-product backbones, whose gradients are written out here (a method that
    changes the item representation, FedMR, keeps autograd: method.ChunkSession.closed_form)."""
    return backbone in INNER_PRODUCT


def loss_and_grads(backbone: str, view: dict, names, y: torch.Tensor, m: torch.Tensor,
                   valid: torch.Tensor, t: int, config, with_loss: bool = True, logit_term=None):
    """Per-client loss (A,) and the gradients of sum_c loss_c with respect to ``names``.

    ``view``: item-table rows of the batch (A, B, d), user vectors (A, d), biases (A,);
    ``y`` (A, B) labels; ``m`` (A, B) the valid mask (``valid``, bool) divided by each client's
    number of valid samples n_B, so that sum_b m_b BCE_b is the mean. Returns ``(loss or None, [grad of each
    name])``, the same values autograd gives; ``with_loss=False`` skips computing the loss.
    ``logit_term(s, loss)`` (a method's extra loss on the logits, GFMFR's distillation) returns
    ``(its loss (A,), its gradient in the logits (A, B))``, added to (G1).
    """
    user, tables = INNER_PRODUCT[backbone]
    u = view[user]                                                               # (A, d)
    x = backbones.id_rows(backbone, view)["item"]                               # (A, B, d)
    s = backbones.score(backbone, view, {"item": x})                            # (A, B)
    loss = None
    reg, terms = backbones.fedrap_terms(view, valid, t, config) if backbone == "fedrap" else (None, None)
    if with_loss or logit_term is not None:
        loss = (F.binary_cross_entropy_with_logits(s, y, reduction="none") * m).sum(1)
        if reg is not None:
            loss = loss + reg
    g = (torch.sigmoid(s) - y) * m                                              # (G1) (A, B)
    if logit_term is not None:
        extra = logit_term(s, loss)
        if extra is not None:
            loss = loss + extra[0]
            g = g + extra[1]
    grads = {}
    if user in names:
        grads[user] = torch.bmm(g.unsqueeze(1), x).squeeze(1)                    # (G2) (A, d)
    if "b" in names:
        grads["b"] = g.sum(1)                                                    # (G2) (A,)
    row_grad = None
    if any(name in names for name in tables):
        row_grad = g.unsqueeze(2) * u.unsqueeze(1)                               # (G2) (A, B, d)
    for name in tables:
        if name in names:
            grads[name] = row_grad
    if terms is not None:
        _fedrap_gradients(view, names, terms, t, config, grads)
    return loss, [grads.get(name) for name in names]


def _fedrap_gradients(view, names, terms, t, config, grads) -> None:
    """Adds (G3), the gradients of FedRAP's R_u (``backbones.fedrap_terms``), to ``grads``.
    ``delta`` is not needed afterwards and becomes the pull in place; D and C may share the BCE
    part of their gradient (G2, one tensor), so D's sum is a new tensor before C's is formed in place."""
    lam, mu = backbones.fedrap_weights(t, config)
    c_rows = view["C"]                                                          # (A, B, d)
    delta, sq, m, n_r = terms                                                   # (A, B, d) x2, (A, B, 1), (A,)
    scale = (m / n_r.view(-1, 1, 1))                                            # (A, B, 1)
    # (G3) pull = 2 lambda_t (D_u[i] - C[i]) [(D_u[i] - C[i])^2 < tau] / count  (the clip's mask)
    pull = delta.mul_(sq < config.fedrap_bound).mul_(2 * lam * scale)          # (A, B, d)
    if "D" in names:
        grads["D"] = grads["D"] - pull
    if "C" in names:
        # + pull + mu_t sign(C[i]) / count
        grads["C"] = grads["C"].add_(pull).addcmul_(torch.sign(c_rows), scale, value=mu)
