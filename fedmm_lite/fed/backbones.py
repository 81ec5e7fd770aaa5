"""The five ID backbones (book/methods.md, "Backbones"): what each shares, keeps private, and scores.

A backbone is data plus a few functions, not a class tree:
- ``SPECS[name]``: which tensors are global item tables (n, d) (uploaded as row updates), global
  small modules (uploaded whole), private per-client vectors (U, ...) and private per-client item
  tables (U, n, d); the server rule; the optimisation phases of a mini-batch; the prediction
  function P_u (the parameters that turn an item representation into a score);
- ``init_tensors``: the initial global and private tensors;
- ``score``: THE score function of the backbone, used by the batched engine's training and by
  evaluation alike (the per-client oracle keeps its own plain copy, oracle.py);
- ``id_rows`` / ``eval_id_tables``: the backbone's item representation (its ID rows) that a method
  may transform before scoring (FedMR fuses it with item features);
- ``regulariser``: FedRAP's extra loss.

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
- PFedRec's E_u: ``tuned_tables.TunedTables``, the snapshot of E the client started its last round
  from plus the rows it tuned then (E_u differs from that snapshot nowhere else); indexing it gives
  the dense tables back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .tuned_tables import TunedTables

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


@dataclass(frozen=True)
class BackboneSpec:
    """What a run's tensors are: shared and averaged, private, or the method's (state.py has the
    five categories). A method extends the backbone's spec with its own tensors."""

    tables: tuple            # global item tables (n, d): a client reads and uploads only its rows
    modules: tuple           # global small modules, copied whole to every client (the NCF tower)
    private_vectors: tuple   # per-client trainable tensors (U, ...), never averaged
    private_tables: tuple    # per-client item tables (U, n, d), never uploaded
    rule: str                # server rule: "data_size" or "uniform" (server.py)
    prediction: tuple        # the prediction function P_u: what turns an item representation into a score
    phases: tuple | None = None   # per-batch optimisation phases (PFedRec); None = one joint step
    tuned_from: dict = field(default_factory=dict)  # private table -> global table it is tuned from
    method_modules: tuple = ()    # global modules a method adds (FedMR's fusion), with the method's step
    buffers: tuple = ()           # per-client NON-trainable tensors (U, ...) a method keeps on the client
    reported: tuple = ()          # private tensors a client also uploads each round, never averaged
    server_only: tuple = ()       # tensors that never leave the server (state.ServerState.only)

    @property
    def shared(self) -> tuple:
        """Every global (averaged) tensor: item tables, backbone modules, method modules."""
        return tuple(self.tables) + tuple(self.modules) + tuple(self.method_modules)

    def step_size(self, name: str, config) -> float:
        """The SGD step of tensor ``name`` (config.py, "Learning-rate convention"): ``item_lr`` for
        global item tables (their updates are diluted by the server's averaging), the method's
        step for its global modules (FedMR's ``fusion_lr``, ``feature_map_lr``), ``lr`` for
        everything else, private tables such as FedRAP's D_u and FedMR's routers included."""
        lr, item_lr, _ = config.step_sizes()
        if name in self.tables:
            return item_lr
        if name in self.method_modules:
            return config.fusion_step(name)
        return lr


SPECS = {
    "fedavg": BackboneSpec(("Q",), (), ("p", "b"), (), "data_size", prediction=("p", "b")),
    "fcf": BackboneSpec(("Q",), (), ("p", "b"), (), "uniform", prediction=("p", "b")),
    "fedncf": BackboneSpec(("Q_gmf", "Q_mlp"), ("W0", "c0", "W1", "c1", "h", "h0"),
                           ("p_gmf", "p_mlp"), (), "data_size",
                           prediction=("W0", "c0", "W1", "c1", "h", "h0")),
    # PFedRec: first a step on the score function (w, b), then a step on the item table (post-tuning);
    # the tuned table E_u is the client's copy of E after its last local training (kept private).
    "pfedrec": BackboneSpec(("E",), (), ("w", "b"), ("E_u",), "uniform", prediction=("w", "b"),
                            phases=(("w", "b"), ("E",)), tuned_from={"E_u": "E"}),
    "fedrap": BackboneSpec(("C",), (), ("w", "b"), ("D",), "uniform", prediction=("w", "b")),
}

# backbone -> the user vector of an inner-product score s_ui = u . x_i + b_u
USER_VECTOR = {"fedavg": "p", "fcf": "p", "pfedrec": "w", "fedrap": "w"}


def _normal(shape, std, generator, dtype):
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) * std


def linear_init(out_dim, in_dim, generator, dtype, lead=()):
    """nn.Linear's default U(-1/sqrt(in), 1/sqrt(in)), with optional leading axes (users)."""
    bound = 1.0 / math.sqrt(in_dim)
    shape = tuple(lead) + (out_dim, in_dim)
    return ((torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound).to(dtype)


def init_tensors(backbone: str, n_users: int, n_items: int, config,
                 generator: torch.Generator) -> tuple[dict, dict]:
    """Initial (global, private) tensors, drawn on CPU from ``generator`` in a fixed order.

    The per-client item tables (E_u, D_u) are not drawn here: ``private_tables`` allocates them."""
    d, s = config.dim, config.init_std
    dt = DTYPES[config.dtype]
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
            g[f"W{k}"] = linear_init(widths[k + 1], widths[k], generator, dt)    # (out, in)
            g[f"c{k}"] = torch.zeros(widths[k + 1], dtype=dt)                     # (out,)
        g["h"] = linear_init(1, d + widths[-1], generator, dt).reshape(-1)        # (d + last,)
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
        raise ValueError(f"init_tensors: no trainable state for backbone {backbone!r}")
    return g, p


def private_tables(backbone: str, n_users: int, n_items: int, config, train_sizes, device) -> dict:
    """The per-client item tables, allocated directly on ``device`` in ``private_dtype``.

    PFedRec's E_u: the round's snapshot of E + the client's tuned rows, at most (1 + neg_ratio) n_u
    of them a round (tuned_tables.py; ``train_sizes`` None: room for every row). FedRAP's D_u
    starts at 0: a new client scores with the global view C alone."""
    pdt = DTYPES[config.private_dtype]
    if backbone == "pfedrec":
        if train_sizes is not None:
            capacity = torch.as_tensor(np.asarray(train_sizes), dtype=torch.long) * (1 + config.neg_ratio)
        else:
            capacity = torch.full((n_users,), n_items, dtype=torch.long)
        return {"E_u": TunedTables(capacity, n_items, config.dim, pdt, device)}   # stands for (U, n, d)
    if backbone == "fedrap":
        return {"D": torch.zeros(n_users, n_items, config.dim, dtype=pdt, device=device)}  # (U, n, d)
    return {}


def ncf_depth(params: dict) -> int:
    """Number of tower layers (W0, W1, ...)."""
    return sum(1 for k in params if k.startswith("W") and k[1:].isdigit())


# ------------------------------------------------------------------------------- the score function
def _dot(items: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """u_c . x for rows ``items`` (c, L, d) per user or (L, d) shared by all users: (c, L)."""
    if items.dim() == 2:
        return u @ items.T                                                      # (c, L)
    return torch.einsum("cld,cd->cl", items, u)


def _matmul(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """x W^T for rows x (..., L, in): a tower layer shared by every user (W (out, in), the global
    module at evaluation) or one copy per user (W (c, out, in), local training)."""
    if W.dim() == 3:
        return torch.einsum("cli,coi->clo", x, W)
    return x @ W.T


def _bias(c: torch.Tensor) -> torch.Tensor:
    """A layer's bias as it broadcasts over rows: (out,) shared, or (c, 1, out) one per user."""
    return c.unsqueeze(1) if c.dim() == 2 else c


def score(backbone: str, params: dict, items: dict) -> torch.Tensor:
    """Logits s_ui (c, L) of ``L`` items for ``c`` users: the backbone's one score function.

    ``params``: the users' own tensors with a leading user axis (p_u, b_u; w_u, b_u; FedNCF's p_u,
    p'_u) and FedNCF's tower and output layer, one copy per user (c, ...) during local training or
    the global module at evaluation. ``items``: branch -> item representations, (c, L, d) per user
    or (L, d) shared by all: the backbone's ID rows (``id_rows`` / ``eval_id_tables``) or, under
    FedMR, the fused z_i that replaces them (FedNCF has two branches, "gmf" and "mlp")."""
    if backbone in USER_VECTOR:
        u = params[USER_VECTOR[backbone]]                                       # (c, d)
        # s_ui = u . x_i + b_u   (x_i = q_i, E[i], D_u[i] + C[i], or FedMR's z_i)
        return _dot(items["item"], u) + params["b"].unsqueeze(1)
    if backbone == "fedncf":
        q_mlp = items["mlp"]                                                    # (c, L, d) or (L, d)
        d = q_mlp.shape[-1]
        gmf = params["p_gmf"].unsqueeze(1) * items["gmf"]                       # (c, L, d)
        W0 = params["W0"]                                                       # (.., h_0, 2d)
        p_mlp = params["p_mlp"]                                                 # (c, d)
        if W0.dim() == 3:
            # a tower per user (local training): W0 [p'_u ; q'_i] + c0 as one product; measured
            # faster, with its backward, than the two halves below at training's batch sizes
            rows = q_mlp if q_mlp.dim() == 3 else q_mlp.expand(p_mlp.shape[0], -1, -1)
            joint = torch.cat([p_mlp.unsqueeze(1).expand(-1, rows.shape[1], -1), rows], -1)  # (c, L, 2d)
            x = torch.relu(_matmul(joint, W0) + _bias(params["c0"]))            # (c, L, h_0)
        else:
            # the shared tower (evaluation, L = every item): W0 [p'_u ; q'_i] + c0 =
            # (W0[:, :d] p'_u + c0) + W0[:, d:] q'_i, so no (c, L, 2d) input is built
            W0_user, W0_item = W0.split(d, dim=-1)                              # (h_0, d) each
            user = _matmul(p_mlp.unsqueeze(1), W0_user) + _bias(params["c0"])    # (c, 1, h_0)
            x = torch.relu(_matmul(q_mlp, W0_item) + user)                      # (c, L, h_0)
        for k in range(1, ncf_depth(params)):
            # x <- relu(W_k x + c_k)
            x = torch.relu(_matmul(x, params[f"W{k}"]) + _bias(params[f"c{k}"]))  # (c, L, h_k)
        z = torch.cat([gmf, x], -1)                                             # (c, L, d + last)
        # s_ui = h . [p_u * q_i ; MLP(p'_u, q'_i)] + h_0
        h = params["h"]
        out = torch.einsum("clk,ck->cl", z, h) if h.dim() == 2 else z @ h
        return out + params["h0"]
    raise ValueError(f"score: unknown backbone {backbone!r}")


def id_rows(backbone: str, view: dict) -> dict:
    """The backbone's ID vector of each row read in local training, per branch: (C, L, d) each.

    FedAvg / FCF: Q[i]; PFedRec: E[i]; FedRAP: D_u[i] + C[i]; FedNCF: both branches, GMF's
    Q_gmf[i] and the MLP's Q_mlp[i]."""
    if backbone in ("fedavg", "fcf"):
        return {"item": view["Q"]}
    if backbone == "pfedrec":
        return {"item": view["E"]}
    if backbone == "fedrap":
        return {"item": view["D"] + view["C"]}
    if backbone == "fedncf":
        return {"gmf": view["Q_gmf"], "mlp": view["Q_mlp"]}
    raise ValueError(f"id_rows: unknown backbone {backbone!r}")


def eval_id_tables(state, users: torch.Tensor) -> dict:
    """The ID table of each branch as ``users`` score with it at evaluation: (n, d) shared or
    (c, n, d) per user (PFedRec's tuned E_u: a client that never trained scores with the global
    table it would receive; FedRAP's D_u + C)."""
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
    raise ValueError(f"eval_id_tables: unknown backbone {name!r}")


def eval_scores(state, users: torch.Tensor) -> torch.Tensor:
    """Logits (c, n) of every item for ``users`` from the backbone's own ID tables: what
    ``score(backbone, eval_params, eval_id_tables)`` gives, without building per-user (c, n, d)
    tables where the score is linear in them (evaluation's fast path, ``method.full_scores``):

        PFedRec: s_ui = w_u . E_u[i] + b_u   per snapshot of E, then the tuned rows (TunedTables.dot)
        FedRAP:  s_ui = w_u . C[i] + w_u . D_u[i] + b_u   (C shared: one (c, d) x (d, n) product)
    """
    name = state.backbone
    if name == "fedncf":
        return _ncf_eval_scores(eval_params(state, users), state.global_)
    if name not in ("pfedrec", "fedrap"):
        return score(name, eval_params(state, users), eval_id_tables(state, users))
    g, p, dt = state.global_, state.private, state.dtype
    w, b = p["w"][users], p["b"][users]                                        # (c, d), (c,)
    if name == "pfedrec":
        joined = state.joined[users]                                            # (c,)
        out = w @ g["E"].T                                                      # (c, n): unjoined users read E
        if bool(joined.any()):
            rows = torch.nonzero(joined).flatten()
            out[rows] = p["E_u"].dot(users[rows], w[rows])
        return out + b.unsqueeze(1)
    # w_u . (C[i] + D_u[i]) = w_u . C[i] + w_u . D_u[i]
    personal = torch.bmm(_user_rows(p["D"], users).to(dt), w.unsqueeze(-1)).squeeze(-1)  # (c, n)
    return w @ g["C"].T + personal + b.unsqueeze(1)


NCF_EVAL_BLOCK = 4     # users whose (users, n, h) tower activations are built at once (cache-sized)


def _ncf_eval_scores(params: dict, g: dict) -> torch.Tensor:
    """FedNCF's ``score`` at evaluation, where the tower and the item tables are global: the GMF
    branch and the first layer's item half are products computed once, the rest of the tower runs
    on a few users at a time. (c, n)."""
    d = g["Q_gmf"].shape[1]
    h, W0 = params["h"], params["W0"]                                       # (d + last,), (h_0, 2d)
    # h . [p_u * q_i ; x_ui] = (p_u * h[:d]) . q_i + h[d:] . x_ui
    gmf = (params["p_gmf"] * h[:d]) @ g["Q_gmf"].T                          # (c, n)
    item_half = g["Q_mlp"] @ W0[:, d:].T                                    # (n, h_0)
    user_half = params["p_mlp"] @ W0[:, :d].T + params["c0"]                # (c, h_0)
    mlp = torch.empty_like(gmf)                                             # (c, n)
    for lo in range(0, gmf.shape[0], NCF_EVAL_BLOCK):
        # x = relu(W0 [p'_u ; q'_i] + c0), then x <- relu(W_k x + c_k)
        x = torch.relu(item_half + user_half[lo:lo + NCF_EVAL_BLOCK].unsqueeze(1))  # (b, n, h_0)
        for k in range(1, ncf_depth(params)):
            x = torch.relu(torch.addmm(params[f"c{k}"], x.flatten(0, 1), params[f"W{k}"].T)
                           .view(x.shape[0], x.shape[1], -1))               # (b, n, h_k)
        mlp[lo:lo + NCF_EVAL_BLOCK] = x @ h[d:]                             # (b, n)
    return gmf + mlp + params["h0"]


def _user_rows(table: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """``table[users]``, as a view (no copy) when ``users`` are consecutive, as evaluation's chunks are."""
    first = int(users[0]) if users.numel() else 0
    if users.numel() and bool((users == torch.arange(first, first + users.numel(),
                                                     device=users.device)).all()):
        return table[first:first + users.numel()]
    return table[users]


def eval_params(state, users: torch.Tensor) -> dict:
    """What ``score`` reads at evaluation: the users' private vectors and the global modules."""
    spec = state.spec
    params = {name: state.global_[name] for name in spec.modules}
    params.update({name: state.private[name][users] for name in spec.private_vectors})
    return params


# ------------------------------------------------------------------------------- FedRAP's regulariser
def fedrap_weights(t: int, config) -> tuple[float, float]:
    """FedRAP curriculum: lambda_t = tanh(t/10) * lambda, mu_t = tanh(t/10) * mu (increasing in t)."""
    ramp = math.tanh(t / 10.0)
    return ramp * config.fedrap_lambda, ramp * config.fedrap_mu


def regulariser(backbone: str, view: dict, valid: torch.Tensor, t: int, config) -> torch.Tensor | None:
    """Per-client extra loss (C,), or None. FedRAP (bounded, see below), over the batch rows:

        R_u = -lambda_t * mean_rows min((D_u[i] - C[i])^2, tau) + mu_t * mean_rows |C[i]|

    Deliberate difference from the paper: the differentiation term is clipped at tau
    (``fedrap_bound``), so the loss is bounded below by -lambda * tau; unclipped, -lambda (D_u - C)^2
    has no minimum and the official code's loss diverges (book/methods.md, "Backbones"). Measured on
    world-quick (lambda = 10, item_lr = 1000, 100 rounds): clipped at tau = 1 the loss stays above
    -lambda * tau = -10, max |D_u| = 8.4 and the best validation HR@50 is 0.567; unclipped the loss
    reaches -1e13, |D_u| 2.8e6, |C| 2.6e7, and HR@50 falls from 0.55 (round 10) to 0.44.
    """
    if backbone != "fedrap":
        return None
    return fedrap_terms(view, valid, t, config)[0]


def fedrap_terms(view: dict, valid: torch.Tensor, t: int, config):
    """FedRAP's regulariser R_u (C,) (``regulariser``) and what its written-out gradient reuses
    (gradients.py, G3): delta = D_u[i] - C[i], its square, the valid mask (C, B, 1), the count.
    Sums run over the last axis first, so that only delta and its square are (C, B, d) tensors."""
    lam, mu = fedrap_weights(t, config)
    d_rows, c_rows = view["D"], view["C"]                                       # (C, B, d) each
    m = valid.to(d_rows.dtype).unsqueeze(-1)                                    # (C, B, 1)
    count = (m.sum(dim=(1, 2)) * d_rows.shape[-1]).clamp(min=1)                 # (C,)
    delta = d_rows - c_rows                                                     # (C, B, d)
    sq = delta.square()                                                         # (C, B, d)
    # min((D_u[i] - C[i])^2, tau), summed per row
    gap = torch.clamp(sq, max=config.fedrap_bound).sum(-1, keepdim=True)        # (C, B, 1)
    # -lambda_t mean(min(gap, tau)) + mu_t mean(|C|)
    absc = torch.linalg.vector_norm(c_rows, 1, dim=-1, keepdim=True)            # (C, B, 1)
    value = (-lam * (gap * m).sum(dim=(1, 2)) + mu * (absc * m).sum(dim=(1, 2))) / count
    return value, (delta, sq, m, count)
