"""The five ID backbones of algorithms.md section 2: what is shared, what is private, the score.

A backbone is data plus a few functions, not a class tree:
- ``SPECS[name]``: which tensors are global item tables (n, d) (uploaded as row updates), global
  small modules (uploaded whole), private per-client vectors (U, ...) and private per-client item
  tables (U, n, d); the server rule; the optimisation phases of a mini-batch;
- ``init_state``: the initial global and private tensors;
- ``batched_logits`` / ``regulariser``: the score and the extra loss on a chunk of clients, every
  tensor with a leading client axis (used by the batched engine);
- ``full_scores``: scores of all items for a set of users, from the stored state (evaluation).

Scores (logits; sigma is applied inside the loss):
    FedAvg / FCF (MF):  s_ui = p_u . q_i + b_u
    FedNCF (NeuMF):     s_ui = h . [p_u * q_i ; MLP([p'_u ; q'_i])] + h_0
    PFedRec:            s_ui = w_u . E[i] + b_u       (E_u, the locally tuned table, at evaluation)
    FedRAP:             s_ui = w_u . (D_u[i] + C[i]) + b_u

Storage of the per-client item tables, in ``private_dtype``:
- FedRAP's D_u: a dense (U, n, d) tensor (D_u accumulates over rounds on every row a client ever
  touched, fresh negatives included). At the large preset (6,300 clients x 4,500 items x d = 64)
  that is 7.3 GB in float32 (3.6 GB in bfloat16): it fits a 24 GB machine; a round writes only
  the rows the participants touched.
- PFedRec's E_u: ``tuned.TunedTables``, the snapshot of E the client started its last round from
  plus the rows it tuned then (E_u differs from that snapshot nowhere else); indexing it gives the
  dense tables back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .tuned import TunedTables

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone shares, keeps private, and how the server combines uploads."""

    tables: tuple            # global item tables (n, d): local copies are the client's touched rows
    dense: tuple             # global small modules, copied whole to every client (the NCF tower)
    private_vectors: tuple   # per-client tensors (U, ...), trained locally, never uploaded
    private_tables: tuple    # per-client item tables (U, n, d), never uploaded
    rule: str                # server rule: "data_size" or "uniform" (server.py)
    phases: tuple | None = None   # per-batch optimisation phases (PFedRec); None = one joint step
    tuned_from: dict = field(default_factory=dict)  # private table -> global table it is tuned from


SPECS = {
    "fedavg": BackboneSpec(("Q",), (), ("p", "b"), (), "data_size"),
    "fcf": BackboneSpec(("Q",), (), ("p", "b"), (), "uniform"),
    "fedncf": BackboneSpec(("Q_gmf", "Q_mlp"), ("W0", "c0", "W1", "c1", "h", "h0"),
                           ("p_gmf", "p_mlp"), (), "data_size"),
    # PFedRec: first a step on the score function (w, b), then a step on the item table (post-tuning);
    # the tuned table E_u is the client's copy of E after its last local training (kept private).
    "pfedrec": BackboneSpec(("E",), (), ("w", "b"), ("E_u",), "uniform",
                            phases=(("w", "b"), ("E",)), tuned_from={"E_u": "E"}),
    "fedrap": BackboneSpec(("C",), (), ("w", "b"), ("D",), "uniform"),
}


@dataclass
class FedState:
    """Global (server) tensors, private per-client tensors (leading client axis), and who joined."""

    backbone: str
    global_: dict            # name -> tensor (server side)
    private: dict            # name -> (U, ...) tensor (client side)
    joined: torch.Tensor     # (U,) bool: has the client trained at least once
    dtype: torch.dtype = torch.float32
    fusion: object = None    # fusion.FusionSetup for method "fedmr" (None: the plain ID backbone)

    def to(self, device) -> "FedState":
        return FedState(self.backbone, {k: v.to(device) for k, v in self.global_.items()},
                        {k: v.to(device) for k, v in self.private.items()},
                        self.joined.to(device), self.dtype,
                        None if self.fusion is None else self.fusion.to(device))


def spec_of(state: FedState) -> BackboneSpec:
    """The spec a run trains with: the backbone's, extended by FedMR's fusion tensors if any."""
    return SPECS[state.backbone] if state.fusion is None else state.fusion.spec


def _normal(shape, std, generator, dtype):
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) * std


def _linear_init(out_dim, in_dim, generator, dtype):
    """nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(in_dim)
    return ((torch.rand(out_dim, in_dim, generator=generator, dtype=torch.float64) * 2 - 1)
            * bound).to(dtype)


def init_state(backbone: str, n_users: int, n_items: int, config, generator: torch.Generator,
               device, dataset=None) -> FedState:
    """Initial tensors, drawn on CPU from ``generator`` in a fixed order, then moved to ``device``.

    ``config.method == "fedmr"`` adds FedMR's fusion tensors (fusion.py), drawn after the
    backbone's, from ``dataset.features`` and the users' training items (``dataset`` needed)."""
    d, s = config.dim, config.init_std
    dt = DTYPES[config.dtype]
    pdt = DTYPES[config.private_dtype]
    g, p = {}, {}
    if backbone in ("fedavg", "fcf"):
        g["Q"] = _normal((n_items, d), s, generator, dt)               # (n, d)
        p["p"] = _normal((n_users, d), s, generator, dt)               # (U, d)
        p["b"] = torch.zeros(n_users, dtype=dt)                        # (U,)
    elif backbone == "fedncf":
        g["Q_gmf"] = _normal((n_items, d), s, generator, dt)           # (n, d)
        g["Q_mlp"] = _normal((n_items, d), s, generator, dt)           # (n, d)
        widths = (2 * d,) + tuple(config.ncf_layers)
        for k in range(len(widths) - 1):
            g[f"W{k}"] = _linear_init(widths[k + 1], widths[k], generator, dt)   # (out, in)
            g[f"c{k}"] = torch.zeros(widths[k + 1], dtype=dt)                     # (out,)
        g["h"] = _linear_init(1, d + widths[-1], generator, dt).reshape(-1)       # (d + last,)
        g["h0"] = torch.zeros(1, dtype=dt)                                        # (1,)
        p["p_gmf"] = _normal((n_users, d), s, generator, dt)           # (U, d)
        p["p_mlp"] = _normal((n_users, d), s, generator, dt)           # (U, d)
    elif backbone == "pfedrec":
        g["E"] = _normal((n_items, d), s, generator, dt)               # (n, d)
        p["w"] = _normal((n_users, d), s, generator, dt)               # (U, d)
        p["b"] = torch.zeros(n_users, dtype=dt)                        # (U,)
    elif backbone == "fedrap":
        g["C"] = _normal((n_items, d), s, generator, dt)               # (n, d)
        p["w"] = _normal((n_users, d), s, generator, dt)               # (U, d)
        p["b"] = torch.zeros(n_users, dtype=dt)                        # (U,)
    else:
        raise ValueError(f"init_state: no trainable state for backbone {backbone!r}")
    setup = None
    if getattr(config, "method", "id") == "fedmr":
        from . import fusion
        if dataset is None or not getattr(dataset, "features", None):
            raise ValueError("init_state: method fedmr needs a dataset with encoded features "
                             "(encoders.encode_dataset)")
        indptr = torch.as_tensor(dataset.train_indptr, dtype=torch.long)
        history = torch.zeros(n_users, n_items, dtype=torch.bool)                # (U, n)
        rows = torch.repeat_interleave(torch.arange(n_users), indptr[1:] - indptr[:-1])
        history[rows, torch.as_tensor(dataset.train_indices, dtype=torch.long)] = True
        fg, fp, setup = fusion.init_fusion(config, dataset.features, history, SPECS[backbone],
                                           n_users, generator, dt)
        g.update(fg)
        p.update(fp)
    state = FedState(backbone, g, p, torch.zeros(n_users, dtype=torch.bool), dt, setup).to(device)
    # per-client item tables are allocated directly on the device, in the storage dtype
    if backbone == "pfedrec":
        # E_u = the round's snapshot of E + the client's tuned rows, at most (1 + neg_ratio) n_u
        # of them a round (tuned.py); without the dataset, room for every row
        if dataset is not None:
            sizes = torch.as_tensor(np.diff(np.asarray(dataset.train_indptr)), dtype=torch.long)
            capacity = sizes * (1 + config.neg_ratio)
        else:
            capacity = torch.full((n_users,), n_items, dtype=torch.long)
        state.private["E_u"] = TunedTables(capacity, n_items, d, pdt, device)  # stands for (U, n, d)
    if backbone == "fedrap":
        # D_u starts at 0: a new client scores with the global view C alone
        state.private["D"] = torch.zeros(n_users, n_items, d, dtype=pdt, device=device)    # (U, n, d)
    return state


def ncf_depth(params: dict) -> int:
    """Number of tower layers (W0, W1, ...)."""
    return sum(1 for k in params if k.startswith("W") and k[1:].isdigit())


def id_rows(backbone: str, view: dict) -> dict:
    """The backbone's ID vector of each row, per branch (FedMR's ID input e_i): (C, L, d) each.

    FedAvg / FCF: Q[i]; PFedRec: E[i]; FedRAP: D_u[i] + C[i]; FedNCF: both branches, GMF's
    Q_gmf[i] and the MLP's Q_mlp[i] (FedMR fuses each, with shared modules and router)."""
    if backbone in ("fedavg", "fcf"):
        return {"item": view["Q"]}
    if backbone == "pfedrec":
        return {"item": view["E"]}
    if backbone == "fedrap":
        return {"item": view["D"] + view["C"]}
    if backbone == "fedncf":
        return {"gmf": view["Q_gmf"], "mlp": view["Q_mlp"]}
    raise ValueError(f"id_rows: unknown backbone {backbone!r}")


def batched_logits(backbone: str, view: dict, items: dict | None = None) -> torch.Tensor:
    """Logits (C, B) of a mini-batch on a chunk of clients.

    ``view`` holds, for every item table, the rows of the batch's items (C, B, d) and, for every
    other tensor, the clients' copies (C, ...): the leading axis is always the client.
    ``items`` (FedMR) replaces the item embedding of each branch (``id_rows``) by z_i (C, B, d).
    """
    items = items if items is not None else id_rows(backbone, view)
    if backbone in ("fedavg", "fcf"):
        # s_ui = p_u . q_i + b_u   (FedMR: q_i -> z_i)
        return torch.einsum("cbd,cd->cb", items["item"], view["p"]) + view["b"].unsqueeze(1)
    if backbone == "fedncf":
        q_m = items["mlp"]                                                      # (C, B, d)
        gmf = view["p_gmf"].unsqueeze(1) * items["gmf"]                         # (C, B, d)
        x = torch.cat([view["p_mlp"].unsqueeze(1).expand_as(q_m), q_m], -1)     # (C, B, 2d)
        for k in range(ncf_depth(view)):
            # x <- relu(W_k x + c_k), one tower copy per client
            x = torch.relu(torch.einsum("cbi,coi->cbo", x, view[f"W{k}"]) + view[f"c{k}"].unsqueeze(1))
        # s_ui = h . [p_u * q_i ; MLP(p'_u, q'_i)] + h_0
        z = torch.cat([gmf, x], -1)                                             # (C, B, d + last)
        return torch.einsum("cbk,ck->cb", z, view["h"]) + view["h0"]
    if backbone == "pfedrec":
        # s_ui = w_u . E[i] + b_u   (FedMR: E[i] -> z_i)
        return torch.einsum("cbd,cd->cb", items["item"], view["w"]) + view["b"].unsqueeze(1)
    if backbone == "fedrap":
        # s_ui = w_u . (D_u[i] + C[i]) + b_u   (FedMR: D_u[i] + C[i] -> z_i)
        return (torch.einsum("cbd,cd->cb", items["item"], view["w"])
                + view["b"].unsqueeze(1))
    raise ValueError(f"batched_logits: unknown backbone {backbone!r}")


def fedrap_weights(t: int, config) -> tuple[float, float]:
    """FedRAP curriculum: lambda_t = tanh(t/10) * lambda, mu_t = tanh(t/10) * mu (increasing in t)."""
    ramp = math.tanh(t / 10.0)
    return ramp * config.fedrap_lambda, ramp * config.fedrap_mu


def regulariser(backbone: str, view: dict, valid: torch.Tensor, t: int, config) -> torch.Tensor | None:
    """Per-client extra loss (C,), or None. FedRAP (bounded, see below), over the batch rows:

        R_u = -lambda_t * mean_rows min((D_u[i] - C[i])^2, tau) + mu_t * mean_rows |C[i]|

    Deliberate difference from the paper: the differentiation term is clipped at tau
    (``fedrap_bound``), so the loss is bounded below by -lambda * tau; unclipped, -lambda (D_u - C)^2
    has no minimum and the official code's loss diverges (algorithms.md section 2). Measured on
    world-quick (lambda = 10, item_lr = 1000, 100 rounds): clipped at tau = 1 the loss stays above
    -lambda * tau = -10, max |D_u| = 8.4 and the best validation HR@50 is 0.567; unclipped the loss
    reaches -1e13, |D_u| 2.8e6, |C| 2.6e7, and HR@50 falls from 0.55 (round 10) to 0.44.
    """
    if backbone != "fedrap":
        return None
    lam, mu = fedrap_weights(t, config)
    d_rows, c_rows = view["D"], view["C"]                                       # (C, B, d) each
    m = valid.to(d_rows.dtype).unsqueeze(-1)                                    # (C, B, 1)
    count = (m.sum(dim=(1, 2)) * d_rows.shape[-1]).clamp(min=1)                 # (C,)
    # min((D_u[i] - C[i])^2, tau)
    gap = torch.clamp((d_rows - c_rows) ** 2, max=config.fedrap_bound)          # (C, B, d)
    # -lambda_t mean(min(gap, tau)) + mu_t mean(|C|)
    return (-lam * (gap * m).sum(dim=(1, 2)) + mu * (c_rows.abs() * m).sum(dim=(1, 2))) / count


@torch.no_grad()
def full_scores(state: FedState, users: torch.Tensor) -> torch.Tensor:
    """Logits (c, n) of every item for ``users`` (c,), from the stored global and private state."""
    g, p, dt = state.global_, state.private, state.dtype
    name = state.backbone
    if state.fusion is not None:
        return _fused_full_scores(state, users)
    if name in ("fedavg", "fcf"):
        # s_ui = p_u . q_i + b_u
        return p["p"][users] @ g["Q"].T + p["b"][users].unsqueeze(1)           # (c, n)
    if name == "fedncf":
        d = g["Q_gmf"].shape[1]
        gmf = p["p_gmf"][users].unsqueeze(1) * g["Q_gmf"].unsqueeze(0)          # (c, n, d)
        w0 = g["W0"]                                                            # (h0, 2d)
        # W0 [p' ; q'] = W0[:, :d] p' + W0[:, d:] q'  (split so the (c, n, 2d) input is never built)
        x = (p["p_mlp"][users] @ w0[:, :d].T).unsqueeze(1) + (g["Q_mlp"] @ w0[:, d:].T).unsqueeze(0)
        x = torch.relu(x + g["c0"])                                             # (c, n, h0)
        for k in range(1, ncf_depth(g)):
            x = torch.relu(x @ g[f"W{k}"].T + g[f"c{k}"])                       # (c, n, h_k)
        return torch.cat([gmf, x], -1) @ g["h"] + g["h0"]                       # (c, n)
    if name == "pfedrec":
        # evaluation uses the client's tuned table E_u; a client that never trained has none yet
        # and is scored with the global table it would receive
        tuned = p["E_u"][users].to(dt)                                          # (c, n, d)
        table = torch.where(state.joined[users].view(-1, 1, 1), tuned, g["E"].unsqueeze(0))
        return torch.einsum("cnd,cd->cn", table, p["w"][users]) + p["b"][users].unsqueeze(1)
    if name == "fedrap":
        item = p["D"][users].to(dt) + g["C"].unsqueeze(0)                       # (c, n, d)
        return torch.einsum("cnd,cd->cn", item, p["w"][users]) + p["b"][users].unsqueeze(1)
    raise ValueError(f"full_scores: unknown backbone {name!r}")


def _eval_id_tables(state: FedState, users: torch.Tensor) -> dict:
    """The ID table of each branch as the users score with it: (n, d) or per user (c, n, d)."""
    g, p, dt = state.global_, state.private, state.dtype
    name = state.backbone
    if name in ("fedavg", "fcf"):
        return {"item": g["Q"]}
    if name == "fedncf":
        return {"gmf": g["Q_gmf"], "mlp": g["Q_mlp"]}
    if name == "pfedrec":
        tuned = p["E_u"][users].to(dt)                                          # (c, n, d)
        return {"item": torch.where(state.joined[users].view(-1, 1, 1), tuned, g["E"].unsqueeze(0))}
    if name == "fedrap":
        return {"item": p["D"][users].to(dt) + g["C"].unsqueeze(0)}             # (c, n, d)
    raise ValueError(f"full_scores: unknown backbone {name!r}")


@torch.no_grad()
def router_weights(state: FedState, users: torch.Tensor) -> torch.Tensor | None:
    """FedMR: each user's private router weights pi_u (c, K) as evaluation uses them (None
    without a router: a single strategy)."""
    from . import fusion
    setup = state.fusion
    if setup is None or not setup.routed:
        return None
    params = {**state.global_, **{k: state.private[k][users] for k in fusion.ROUTER}}
    _, pi = fusion.fuse_all_items(setup, params, _eval_id_tables(state, users), setup.history[users])
    return pi


def _fused_full_scores(state: FedState, users: torch.Tensor) -> torch.Tensor:
    """FedMR scores (c, n): the backbone's score with z_ui (fusion.fuse_all_items) as the item."""
    from . import fusion
    g, p, setup = state.global_, state.private, state.fusion
    params = {**g, **{k: p[k][users] for k in fusion.ROUTER if k in p}}
    z, _ = fusion.fuse_all_items(setup, params, _eval_id_tables(state, users), setup.history[users])
    name = state.backbone
    if name in ("fedavg", "fcf"):
        # s_ui = p_u . z_ui + b_u
        return torch.einsum("cnd,cd->cn", z["item"], p["p"][users]) + p["b"][users].unsqueeze(1)
    if name in ("pfedrec", "fedrap"):
        # s_ui = w_u . z_ui + b_u
        return torch.einsum("cnd,cd->cn", z["item"], p["w"][users]) + p["b"][users].unsqueeze(1)
    if name == "fedncf":
        d = z["gmf"].shape[-1]
        gmf = p["p_gmf"][users].unsqueeze(1) * z["gmf"]                         # (c, n, d)
        w0 = g["W0"]
        x = (p["p_mlp"][users] @ w0[:, :d].T).unsqueeze(1) + z["mlp"] @ w0[:, d:].T
        x = torch.relu(x + g["c0"])                                             # (c, n, h0)
        for k in range(1, ncf_depth(g)):
            x = torch.relu(x @ g[f"W{k}"].T + g[f"c{k}"])
        return torch.cat([gmf, x], -1) @ g["h"] + g["h0"]                       # (c, n)
    raise ValueError(f"full_scores: unknown backbone {name!r}")


def count_parameters(state: FedState) -> tuple[int, int]:
    """(scalars a client holds: shared model + its private part, scalars it uploads per round)."""
    shared = sum(v.numel() for v in state.global_.values())
    n_users = state.joined.shape[0]
    private = sum(v.numel() // max(n_users, 1) for v in state.private.values())
    return shared + private, shared
