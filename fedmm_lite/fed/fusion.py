"""FedMR's Mixing Feature Fusion Module (book/methods.md, "FedMR"): mapping layers, strategies, router.

For an item i a client scores, with frozen item features F_v[i] (D_v,), F_t[i] (D_t,) and the
backbone's ID vector e_i (d,) (the row of its item table; FedRAP: D_u[i] + C[i]):

    Eq. (1) mapping:   h_v = A_v F_v[i],  h_t = A_t F_t[i],  h_id = A_id e_i        (each (d,))
    Eq. (2) Sum:       s_sum(i)  = h_id + h_t + h_v
    Eq. (3) MLP:       s_mlp(i)  = W_2 relu(W_1 [h_id; h_t; h_v] + c_1) + c_2
    Eq. (4) Gate:      s_gate(i) = sum_m sigma(G_m h_m) * h_m     (the gate multiplies the feature)
    Eq. (5) router:    x_u  = mean_{j in H_u} [s_1(j); ...; s_K(j)]                 (K d,)
                       pi_u = softmax(R_2 relu(R_1 x_u + r_1) + r_2)                (K,) ONE softmax
    Eq. (6) mix:       z_i  = sum_k pi_u,k s_k(i)                                   (d,)

z_i replaces the item embedding in the backbone's score (``backbones.score``). The mapping layers and the
strategy parameters are GLOBAL (dense modules, uploaded as start - end and averaged with the
backbone's rule); the router (R_1, r_1, R_2, r_2) is PRIVATE, one per user, kept across rounds.
The features are frozen: never trained, never uploaded (downloaded once).

Ablations: ``modalities`` drops an input (its mapping layer and its term disappear everywhere, the
MLP's input shrinks to |M| d); ``strategy`` sum | mlp | gate uses that one strategy alone, with no
router at all (equivalently a router over one strategy, whose single weight is 1); ``mix`` uses the
three strategies and the router.

Every function works with or without a leading client axis: the batched engine passes (C, L, ...)
rows with stacked (C, ...) module copies, the per-client oracle and evaluation pass plain tensors.
Deliberate differences from the published code (book/methods.md, "Defects"): the image features are
used (never zeroed); the gate multiplies the features; the router is per user, softmaxed once.
"""
from __future__ import annotations

import torch

from .backbones import linear_init

STRATEGIES = ("sum", "mlp", "gate")
ROUTER = ("r_W1", "r_c1", "r_W2", "r_c2")


def strategy_names(strategy: str) -> tuple:
    """The strategies a run uses: all three for ``mix``, else the one named."""
    return STRATEGIES if strategy == "mix" else (strategy,)


def module_names(strategy: str, modalities) -> tuple:
    """Names of the GLOBAL fusion tensors: the mapping layers A_m, then the strategies' parameters."""
    names = [f"A_{m}" for m in modalities]
    if "mlp" in strategy_names(strategy):
        names += ["M_W1", "M_c1", "M_W2", "M_c2"]
    if "gate" in strategy_names(strategy):
        names += [f"G_{m}" for m in modalities]
    return tuple(names)


def router_names(strategy: str) -> tuple:
    """Names of the PRIVATE router tensors: none for a single strategy (its weight is 1)."""
    return ROUTER if len(strategy_names(strategy)) > 1 else ()


def standardise(F: torch.Tensor) -> torch.Tensor:
    """A fixed transform of a frozen feature matrix (n, D): centred, then scaled so that the mean
    row norm is 1. Encoders differ in scale (MiniLM rows have norm 1, thumbnails ~19); without it
    one modality dominates the sum at initialisation. Not learned, computed once on the server."""
    centred = F - F.mean(0, keepdim=True)                                       # (n, D)
    # F' = (F - mean) / mean_i ||F_i - mean||
    return centred / centred.norm(dim=1).mean().clamp(min=1e-12)


def reduce(F: torch.Tensor, k: int | None) -> torch.Tensor:
    """An option (``FedConfig.feature_dim``): the frozen features (n, D) replaced by their first k
    principal components, (n, k): centred, then projected on the top-k right singular vectors,
    once, on the server. Lossy (the variance beyond the k-th component is dropped), so a labelled
    option, not FedMR itself; it cuts a mapping layer from d x D to d x k, the client's work per
    item row and its one-off feature download in the same proportion. k None or >= D: unchanged."""
    if k is None or k >= F.shape[1]:
        return F
    centred = F - F.mean(0, keepdim=True)                                       # (n, D)
    _, _, V = torch.linalg.svd(centred.double(), full_matrices=False)           # V (min(n, D), D)
    # F_k = (F - mean) V_k^T
    return (centred.double() @ V[:k].T).to(F.dtype)                             # (n, k)


def init_tensors(config, widths: dict, n_users: int, generator: torch.Generator,
                 dtype) -> tuple[dict, dict]:
    """Initial global fusion modules and private routers (U, ...), drawn on CPU from ``generator``
    in a fixed order (after the backbone's own tensors). ``widths``: modality -> D_m."""
    d, mods = config.dim, tuple(config.modalities)
    names = strategy_names(config.strategy)
    dims = {"id": d, **widths}
    g, p = {}, {}
    for m in mods:
        g[f"A_{m}"] = linear_init(d, dims[m], generator, dtype)                 # (d, D_m)
    if "id" in mods:
        # A_id starts at the identity: h_id = e_i, so FedMR starts from the backbone's own item
        # embedding plus the feature terms (a random A_id diluted the item table's tuned step)
        g["A_id"] = torch.eye(d, dtype=dtype)
    if "mlp" in names:
        g["M_W1"] = linear_init(d, len(mods) * d, generator, dtype)             # (d, |M| d)
        g["M_c1"] = torch.zeros(d, dtype=dtype)                                 # (d,)
        g["M_W2"] = linear_init(d, d, generator, dtype)                         # (d, d)
        g["M_c2"] = torch.zeros(d, dtype=dtype)                                 # (d,)
    if "gate" in names:
        for m in mods:
            g[f"G_{m}"] = linear_init(d, d, generator, dtype)                   # (d, d)
    K, hidden = len(names), config.router_hidden
    if K > 1:
        p["r_W1"] = linear_init(hidden, K * d, generator, dtype, (n_users,))    # (U, h, K d)
        p["r_c1"] = torch.zeros(n_users, hidden, dtype=dtype)                   # (U, h)
        p["r_W2"] = linear_init(K, hidden, generator, dtype, (n_users,))        # (U, K, h)
        p["r_c2"] = torch.zeros(n_users, K, dtype=dtype)                        # (U, K)
    return g, p


def _apply(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """x W^T for rows x (..., L, in) and a weight W (..., out, in) with matching leading axes."""
    return x @ W.transpose(-1, -2)


def map_inputs(params: dict, id_rows: torch.Tensor | None, feats: dict, modalities,
               mapped: dict | None = None) -> dict:
    """FedMR Eq. (1): h_m = A_m x_m for every used modality; rows (..., L, D_m) -> (..., L, d).
    ``mapped`` modality -> h_m already computed (the batched engine's feature_maps.py)."""
    h = {}
    for m in modalities:
        if mapped and m in mapped:
            h[m] = mapped[m]
            continue
        x = id_rows if m == "id" else feats[m]
        # h_m = A_m x_m
        h[m] = _apply(x, params[f"A_{m}"])
    # evaluation: per-user ID rows (c, n, d) next to shared feature rows (n, d)
    return dict(zip(h, torch.broadcast_tensors(*h.values())))


def strategy_outputs(params: dict, h: dict, names, modalities) -> torch.Tensor:
    """FedMR Eqs. (2)-(4), stacked: (..., L, K, d)."""
    outs = []
    for name in names:
        if name == "sum":
            # Eq. (2): s_sum = h_id + h_t + h_v
            outs.append(sum(h[m] for m in modalities))
        elif name == "mlp":
            x = torch.cat([h[m] for m in modalities], -1)                       # (..., L, |M| d)
            # Eq. (3): s_mlp = W_2 relu(W_1 [h_id; h_t; h_v] + c_1) + c_2
            hidden = torch.relu(_apply(x, params["M_W1"]) + params["M_c1"].unsqueeze(-2))
            outs.append(_apply(hidden, params["M_W2"]) + params["M_c2"].unsqueeze(-2))
        elif name == "gate":
            # Eq. (4): s_gate = sum_m sigma(G_m h_m) * h_m
            outs.append(sum(torch.sigmoid(_apply(h[m], params[f"G_{m}"])) * h[m] for m in modalities))
        else:
            raise ValueError(f"fusion: unknown strategy {name!r}")
    return torch.stack(outs, -2)


def history_summary(S: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FedMR Eq. (5), router input: x_u = mean_{j in H_u} [s_1(j); ...; s_K(j)].

    ``S`` (..., P, K, d) strategy outputs of the user's rows, ``mask`` (..., P) True on H_u."""
    m = mask.to(S.dtype)                                                        # (..., P)
    count = m.sum(-1, keepdim=True).clamp(min=1)                                # (..., 1)
    flat = S.flatten(-2)                                                        # (..., P, K d)
    # x_u = sum_j m_j s(j) / sum_j m_j
    return (flat * m.unsqueeze(-1)).sum(-2) / count                             # (..., K d)


def router_weights(params: dict, x: torch.Tensor) -> torch.Tensor:
    """FedMR Eq. (5): pi_u = softmax(R_2 relu(R_1 x_u + r_1) + r_2), ONE softmax: (..., K)."""
    hidden = torch.relu((params["r_W1"] @ x.unsqueeze(-1)).squeeze(-1) + params["r_c1"])   # (..., h)
    logits = (params["r_W2"] @ hidden.unsqueeze(-1)).squeeze(-1) + params["r_c2"]          # (..., K)
    return torch.softmax(logits, -1)


def mix(S: torch.Tensor, pi: torch.Tensor | None) -> torch.Tensor:
    """FedMR Eq. (6): z_i = sum_k pi_u,k s_k(i); ``S`` (..., L, K, d), ``pi`` (..., K) -> (..., L, d).

    A single strategy (no router) returns it unchanged: its weight is 1."""
    if pi is None:
        return S[..., 0, :]
    # z_i = sum_k pi_k s_k(i)
    return (S * pi.unsqueeze(-2).unsqueeze(-1)).sum(-2)


def fuse(fedmr, params: dict, id_rows: dict, feats: dict, n_batch: int,
         pos_mask: torch.Tensor | None, mapped: dict | None = None,
         router_input: torch.Tensor | None = None, batch_mask: torch.Tensor | None = None):
    """Personalised item representations of a mini-batch, per ID branch (Eqs. (1)-(6)).

    ``fedmr``: the run's FedMR method (fedmr.py: its ``modalities``, ``strategies``, ``routed``).

    ``id_rows`` branch -> (..., n_batch + P, d): the batch's ID vectors, then those of the
    user's training items H_u (``pos_mask`` (..., P) marks the real ones; a single strategy has
    no router and passes the batch's rows only, P = 0, ``pos_mask`` None); ``feats`` the matching
    feature rows (or ``mapped``: modality -> h_m (..., n_batch + P, d), already mapped).
    Eq. (5)'s router input is the mean over those P rows, unless an estimate is asked for
    (fedmr.py, ``router_input``): ``router_input`` (..., K d) a summary computed elsewhere, or
    ``batch_mask`` (..., n_batch) the batch's rows to average (its positives).
    Returns (branch -> z (..., n_batch, d), pi (..., K) or None). With two ID
    branches (FedNCF: GMF and MLP tables) the modules and the router are shared and the router's
    input is the mean over both branches of Eq. (5)'s summary.
    """
    S = {b: strategy_outputs(params, map_inputs(params, rows, feats, fedmr.modalities, mapped),
                             fedmr.strategies, fedmr.modalities) for b, rows in id_rows.items()}
    pi = None
    if fedmr.routed:
        if router_input is not None:
            x = router_input
        elif batch_mask is not None:
            x = sum(history_summary(s[..., :n_batch, :, :], batch_mask) for s in S.values()) / len(S)
        else:
            x = sum(history_summary(s[..., n_batch:, :, :], pos_mask) for s in S.values()) / len(S)
        pi = router_weights(params, x)
    return {b: mix(s[..., :n_batch, :, :], pi) for b, s in S.items()}, pi


def router_input(fedmr, params: dict, id_rows: dict, feats: dict, mask: torch.Tensor,
                 mapped: dict | None = None) -> torch.Tensor:
    """FedMR Eq. (5)'s x_u alone, from the rows of H_u (``id_rows`` branch -> (..., P, d), ``mask``
    (..., P) True on real rows), averaged over the ID branches: (..., K d)."""
    S = [strategy_outputs(params, map_inputs(params, rows, feats, fedmr.modalities, mapped),
                          fedmr.strategies, fedmr.modalities) for rows in id_rows.values()]
    return sum(history_summary(s, mask) for s in S) / len(S)


def fuse_all_items(fedmr, params: dict, id_tables: dict, history: torch.Tensor):
    """Evaluation: z for every item and every user of a chunk (c users, n items).

    ``id_tables`` branch -> (n, d) (a global table) or (c, n, d) (per-user tables: PFedRec's E_u,
    FedRAP's D_u + C); ``history`` (c, n) bool, the users' training items. Returns
    (branch -> (c, n, d), pi (c, K) or None)."""
    c = history.shape[0]
    S = {b: strategy_outputs(params, map_inputs(params, t, fedmr.features, fedmr.modalities),
                             fedmr.strategies, fedmr.modalities) for b, t in id_tables.items()}
    pi = None
    if fedmr.routed:
        x = 0
        for s in S.values():
            s = s if s.dim() == 4 else s.unsqueeze(0)                           # (c or 1, n, K, d)
            m = history.to(s.dtype)                                             # (c, n)
            # x_u = mean_{j in H_u} s(j): a masked mean over the n items
            x = x + torch.einsum("un,unk->uk", m, s.flatten(-2).expand(c, -1, -1)) / (
                m.sum(1, keepdim=True).clamp(min=1))
        x = x / len(S)
        pi = router_weights(params, x)                                          # (c, K)
    out = {}
    for b, s in S.items():
        if pi is None:
            z = s[..., 0, :]
            out[b] = z if z.dim() == 3 else z.unsqueeze(0).expand(c, -1, -1)
        elif s.dim() == 3:
            # z_ui = sum_k pi_u,k s_k(i)
            out[b] = torch.einsum("nkd,uk->und", s, pi)
        else:
            out[b] = torch.einsum("unkd,uk->und", s, pi)
    return out, pi
