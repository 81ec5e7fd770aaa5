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

from . import backbones
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


def _loss(backbone: str, m: dict, items, labels, t: int, config) -> torch.Tensor:
    """Mean BCE over the batch, plus FedRAP's (bounded) regulariser over the batch rows."""
    loss = F.binary_cross_entropy_with_logits(_logit(backbone, m, items), labels)
    if backbone == "fedrap":
        lam, mu = backbones.fedrap_weights(t, config)
        gap = torch.clamp((m["D"][items] - m["C"][items]) ** 2, max=config.fedrap_bound)
        loss = loss - lam * gap.mean() + mu * m["C"][items].abs().mean()
    return loss


def _train_client(state, plan, c: int, config, t: int):
    """Train client ``plan.clients[c]`` on full copies; returns (full model, start copy, mean loss)."""
    spec = backbones.SPECS[state.backbone]
    u = int(plan.clients[c])
    lr, item_lr, _ = config.step_sizes()
    tables = set(spec.tables)            # item_lr for global item tables, lr for everything else
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
                loss = _loss(state.backbone, m, items, labels, t, config)
                grads = torch.autograd.grad(loss, [m[name] for name in phase])
                with torch.no_grad():
                    for name, g in zip(phase, grads):
                        m[name] -= (item_lr if name in tables else lr) * g
                if k == 0:
                    losses.append(float(loss.detach()))
    return {k: v.detach() for k, v in m.items()}, start, (sum(losses) / len(losses) if losses else 0.0)


def train_round(state, plans, config, t: int, noise: NoiseSpec | None = None,
                noise_generator: torch.Generator | None = None) -> float:
    """One round of the per-client loop; updates ``state`` in place, returns the mean client loss."""
    spec = backbones.SPECS[state.backbone]
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
                source = spec.tuned_from.get(name, name)
                state.private[name][u] = end[source].to(state.private[name].dtype)
            state.joined[u] = True
    # theta <- theta - eta_s * (sum_u r_u Delta_u) / (sum_u r_u)
    state.global_ = {name: start_global[name] - server_lr * weighted[name] / total_weight
                     for name in start_global}
    return sum(losses) / len(losses) if losses else float("nan")
