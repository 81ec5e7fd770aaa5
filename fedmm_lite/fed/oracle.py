"""The per-client loop: the plain, slow correctness oracle of the batched engine (``engine="loop"``).

One client at a time, as the reference codes do: copy the FULL global model (every item row, the
whole tower), take the client's own private tensors, run the plan's mini-batches with plain SGD on
plain per-client formulas, upload the full update Delta_u = start - end, and at the end of the
round apply the server rule to the full updates. Nothing here gathers rows, pads, masks or batches
clients: that is what the engine does and what this file checks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backbones, fusion
from .privacy import NoiseSpec, client_noise


def _logit(backbone: str, m: dict, items: torch.Tensor) -> torch.Tensor:
    """Logits (b,) of one client's model ``m`` (full tables) for ``items`` (b,)."""
    if backbone in ("fedavg", "fcf"):
        return m["Q"][items] @ m["p"] + m["b"]
    if backbone == "fedncf":
        gmf = m["p_gmf"] * m["Q_gmf"][items]                                    # (b, d)
        x = torch.cat([m["p_mlp"].expand(len(items), -1), m["Q_mlp"][items]], 1)  # (b, 2d)
        k = 0
        while f"W{k}" in m:
            x = torch.relu(x @ m[f"W{k}"].T + m[f"c{k}"])
            k += 1
        return torch.cat([gmf, x], 1) @ m["h"] + m["h0"]
    if backbone == "pfedrec":
        return m["E"][items] @ m["w"] + m["b"]
    if backbone == "fedrap":
        return (m["D"][items] + m["C"][items]) @ m["w"] + m["b"]
    raise ValueError(backbone)


def _fused_logit(state, m: dict, items: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """FedMR on one client's full copies: z_i from fusion.py (no client axis), then the backbone's
    score written out with z_i in place of the item embedding; ``history`` (P,) = H_u."""
    setup = state.fusion
    rows = torch.cat([items, history])                                          # (b + P,)
    table = {"fedavg": "Q", "fcf": "Q", "pfedrec": "E"}.get(state.backbone)
    if table is not None:
        ids = {"item": m[table][rows]}
    elif state.backbone == "fedrap":
        ids = {"item": m["D"][rows] + m["C"][rows]}
    else:
        ids = {"gmf": m["Q_gmf"][rows], "mlp": m["Q_mlp"][rows]}
    feats = {mod: f[rows] for mod, f in setup.features.items()}
    z, _ = fusion.fuse(setup, m, ids, feats, len(items), torch.ones(len(history), dtype=torch.bool))
    if state.backbone in ("fedavg", "fcf"):
        return z["item"] @ m["p"] + m["b"]
    if state.backbone in ("pfedrec", "fedrap"):
        return z["item"] @ m["w"] + m["b"]
    gmf = m["p_gmf"] * z["gmf"]                                                 # (b, d)
    x = torch.cat([m["p_mlp"].expand(len(items), -1), z["mlp"]], 1)             # (b, 2d)
    k = 0
    while f"W{k}" in m:
        x = torch.relu(x @ m[f"W{k}"].T + m[f"c{k}"])
        k += 1
    return torch.cat([gmf, x], 1) @ m["h"] + m["h0"]


def _loss(backbone: str, m: dict, items, labels, t: int, config, state=None, history=None) -> torch.Tensor:
    """Mean BCE over the batch, plus FedRAP's (bounded) regulariser over the batch rows."""
    if state is not None and state.fusion is not None:
        logits = _fused_logit(state, m, items, history)
    else:
        logits = _logit(backbone, m, items)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    if backbone == "fedrap":
        lam, mu = backbones.fedrap_weights(t, config)
        gap = torch.clamp((m["D"][items] - m["C"][items]) ** 2, max=config.fedrap_bound)
        loss = loss - lam * gap.mean() + mu * m["C"][items].abs().mean()
    return loss


def _train_client(state, plan, c: int, config, t: int):
    """Train client ``plan.clients[c]`` on full copies; returns (full model, start copy, mean loss)."""
    spec = backbones.spec_of(state)
    u = int(plan.clients[c])
    lr, item_lr, _ = config.step_sizes()
    tables = set(spec.tables)            # item_lr for global item tables, lr for everything else
    modules = set(state.fusion.modules) if state.fusion is not None else set()   # fusion_lr
    history = None
    if state.fusion is not None:
        history = torch.nonzero(state.fusion.history[u]).flatten()              # (P,) H_u
    m = {name: v.detach().clone() for name, v in state.global_.items()}         # full copies
    for name in spec.private_vectors:
        m[name] = state.private[name][u].detach().clone()
    for name in spec.private_tables:
        if name not in spec.tuned_from:
            m[name] = state.private[name][u].to(state.dtype).clone()            # (n, d)
    start = {name: v.clone() for name, v in m.items()}
    for v in m.values():
        v.requires_grad_(True)
    phases = spec.phases or (tuple(m),)
    losses = []
    length = int(plan.lengths[c])
    bs = plan.batch_size
    for epoch in range(plan.orders.shape[0]):
        order = plan.orders[epoch, c, :length]
        for lo in range(0, length, bs):
            idx = order[lo:lo + bs]
            items = plan.items[c, idx]
            labels = plan.labels[c, idx].to(state.dtype)
            for k, phase in enumerate(phases):
                loss = _loss(state.backbone, m, items, labels, t, config, state, history)
                grads = torch.autograd.grad(loss, [m[name] for name in phase], allow_unused=True)
                with torch.no_grad():
                    for name, g in zip(phase, grads):
                        if g is None:           # FedMR without the ID input: the table is unread
                            continue
                        step = item_lr if name in tables else (
                            config.fusion_step() if name in modules else lr)
                        m[name] -= step * g
                if k == 0:
                    losses.append(float(loss.detach()))
    return {k: v.detach() for k, v in m.items()}, start, (sum(losses) / len(losses) if losses else 0.0)


def train_round(state, plans, config, t: int, noise: NoiseSpec | None = None,
                noise_generator: torch.Generator | None = None) -> float:
    """One round of the per-client loop; updates ``state`` in place, returns the mean client loss."""
    spec = backbones.spec_of(state)
    _, _, server_lr = config.step_sizes()
    weighted = {name: torch.zeros_like(v) for name, v in state.global_.items()}
    total_weight = 0.0
    losses = []
    start_global = {name: v.clone() for name, v in state.global_.items()}
    for plan in plans:
        plan = plan.to(state.joined.device)
        for c in range(plan.n_clients):
            u = int(plan.clients[c])
            end, start, loss = _train_client(state, plan, c, config, t)
            losses.append(loss)
            # the server's weight for this client: n_u (data-size rule) or 1 (uniform rule)
            r = float(plan.sizes[c]) if spec.rule == "data_size" else 1.0
            total_weight += r
            for name in sorted(state.global_):
                delta = start[name] - end[name]                                 # full update
                if noise is not None and noise.active:
                    delta = delta + client_noise(tuple(delta.shape), noise, noise_generator,
                                                 state.dtype).to(delta.device)
                weighted[name] += r * delta
            # private state stays on the client
            for name in spec.private_vectors:
                state.private[name][u] = end[name]
            for name in spec.private_tables:
                source = spec.tuned_from.get(name)
                if source is None:
                    state.private[name][u] = end[name].to(state.private[name].dtype)
                else:
                    # PFedRec's E_u: the E it started from, with the rows it trained (tuned.py)
                    rows = torch.unique(plan.items[c, :int(plan.lengths[c])])
                    state.private[name].write_one(t, start[source], u, rows, end[source][rows])
            state.joined[u] = True
    # theta <- theta - eta_s * (sum_u r_u Delta_u) / (sum_u r_u)
    state.global_ = {name: start_global[name] - server_lr * weighted[name] / total_weight
                     for name in start_global}
    return sum(losses) / len(losses) if losses else float("nan")
