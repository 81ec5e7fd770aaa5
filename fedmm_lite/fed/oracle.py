"""The per-client oracle: the plain, slow correctness reference of the batched engine
(``FedConfig.engine = "oracle"``).

One client at a time, as the reference codes do: copy the FULL global model (every item row, the
whole tower), take the client's own private tensors, run the plan's mini-batches with plain SGD on
plain per-client formulas, and upload the full update Delta_u = start - end of every shared tensor.
Nothing here gathers rows, pads, masks or batches clients: that is what the engine does and what
this file checks. The score functions below are this file's own plain copies (``_id_rows``,
``_logit``), independent of ``backbones.score``; the method's hooks (``client_session``) supply the
item representation (FedMR's fusion) and any extra loss. The server side (aggregation, the method's
server step) is the round's, shared with the engine (server.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backbones
from .server import UploadBatch


def _id_rows(backbone: str, m: dict, rows: torch.Tensor) -> dict:
    """The backbone's ID vectors (b, d) of ``rows``, per branch, from one client's full copies."""
    if backbone in ("fedavg", "fcf"):
        return {"item": m["Q"][rows]}
    if backbone == "pfedrec":
        return {"item": m["E"][rows]}
    if backbone == "fedrap":
        return {"item": m["D"][rows] + m["C"][rows]}
    return {"gmf": m["Q_gmf"][rows], "mlp": m["Q_mlp"][rows]}


def _logit(backbone: str, m: dict, items: dict) -> torch.Tensor:
    """Logits (b,) of one client's model ``m`` for item representations ``items`` (b, d) per branch."""
    if backbone in ("fedavg", "fcf"):
        return items["item"] @ m["p"] + m["b"]
    if backbone in ("pfedrec", "fedrap"):
        return items["item"] @ m["w"] + m["b"]
    gmf = m["p_gmf"] * items["gmf"]                                             # (b, d)
    x = torch.cat([m["p_mlp"].expand(len(items["mlp"]), -1), items["mlp"]], 1)  # (b, 2d)
    k = 0
    while f"W{k}" in m:
        x = torch.relu(x @ m[f"W{k}"].T + m[f"c{k}"])
        k += 1
    return torch.cat([gmf, x], 1) @ m["h"] + m["h0"]


def _loss(state, session, m: dict, items, labels, t: int, config, phase_index: int) -> torch.Tensor:
    """Mean BCE over the batch, plus FedRAP's (bounded) regulariser over the batch rows, plus the
    method's extra loss."""
    rows = torch.cat([items, session.history])                                  # (b + P,)
    reps = session.items(m, _id_rows(state.backbone, m, rows), rows, len(items))
    logits = _logit(state.backbone, m, reps)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    if state.backbone == "fedrap":
        lam, mu = backbones.fedrap_weights(t, config)
        gap = torch.clamp((m["D"][items] - m["C"][items]) ** 2, max=config.fedrap_bound)
        loss = loss - lam * gap.mean() + mu * m["C"][items].abs().mean()
    extra = session.extra_loss(logits, loss.detach(), items, phase_index)
    return loss if extra is None else loss + extra


def _train_client(state, plan, c: int, config, t: int, downloads=None):
    """Train client ``plan.clients[c]`` on full copies; returns (full model, start copy, mean loss)."""
    spec = state.spec
    u = int(plan.clients[c])
    session = state.method.client_session(state, u, config, t, downloads)
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
        session.begin_epoch(epoch, m, lambda rows: _id_rows(state.backbone, m, rows))
        order = plan.orders[epoch, c, :length]
        for lo in range(0, length, bs):
            idx = order[lo:lo + bs]
            items = plan.items[c, idx]
            labels = plan.labels[c, idx].to(state.dtype)
            for k, phase in enumerate(phases):
                loss = _loss(state, session, m, items, labels, t, config, k)
                grads = torch.autograd.grad(loss, [m[name] for name in phase], allow_unused=True)
                with torch.no_grad():
                    for name, g in zip(phase, grads):
                        if g is None:           # FedMR without the ID input: the table is unread
                            continue
                        m[name] -= spec.step_size(name, config) * g
                if k == 0:
                    losses.append(float(loss.detach()))
    session.finish(state, u)
    return {k: v.detach() for k, v in m.items()}, start, (sum(losses) / len(losses) if losses else 0.0)


def train_chunk(state, plan, config, t: int, downloads=None):
    """The clients of ``plan``, one after the other. Returns ``(UploadBatch, per-client mean loss
    (C,))`` with full updates (every row of every item table) and writes each client's private
    tensors back, as the engine's ``train_chunk`` does."""
    spec = state.spec
    plan = plan.to(state.device)
    C = plan.n_clients
    batch = UploadBatch.for_rule(spec.rule, plan.sizes, plan.clients)
    updates = {name: [] for name in state.global_}
    reports = {name: [] for name in spec.reported}
    losses = []
    for c in range(C):
        u = int(plan.clients[c])
        end, start, loss = _train_client(state, plan, c, config, t, downloads)
        losses.append(loss)
        for name in state.global_:
            updates[name].append(start[name] - end[name])                       # full update
        for name in reports:
            reports[name].append(end[name].clone())
        # private state stays on the client
        for name in spec.private_vectors:
            state.private[name][u] = end[name]
        for name in spec.private_tables:
            source = spec.tuned_from.get(name)
            if source is None:
                state.private[name][u] = end[name].to(state.private[name].dtype)
            else:
                # PFedRec's E_u: the E it started from, with the rows it trained (tuned_tables.py)
                rows = torch.unique(plan.items[c, :int(plan.lengths[c])])
                state.private[name].write_one(t, start[source], u, rows, end[source][rows])
        state.joined[u] = True
    for name, deltas in updates.items():
        if name in spec.tables:
            n = deltas[0].shape[0]
            batch.values[name] = torch.cat(deltas)                              # (C n, d)
            batch.rows[name] = torch.arange(n, device=state.device).repeat(C)
            batch.owners[name] = torch.arange(C, device=state.device).repeat_interleave(n)
        else:
            batch.values[name] = torch.stack(deltas)                            # (C, ...)
    for name, values in reports.items():
        batch.reports[name] = torch.stack(values)
    return batch, torch.tensor(losses, dtype=torch.float64)
