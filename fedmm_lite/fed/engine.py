"""The batched engine: a chunk of clients trains at once, every tensor with a leading client axis.

design.md, "The engine". For a chunk of C clients and its ``ChunkPlan``:
1. local copies: each global item table contributes only the rows a client touches,
   ``(C, R, d)``; private per-client tables (FedRAP's D_u) the same rows; small global modules
   (the NCF tower) one copy per client ``(C, ...)``; private vectors their clients' rows;
2. per mini-batch position, for each optimisation phase: the loss of client c is the mean BCE over
   its valid samples (plus FedRAP's regulariser); ONE backward on sum_c loss_c gives every client
   exactly its own gradient (clients share no tensor); the SGD step is elementwise and masked, so a
   client with no sample at this position does not move;
3. uploads Delta_u = start - end of the shared local copies (the round's accumulated update),
   row-sparse for item tables, noised (all n rows) when ``--noise`` is on;
4. private tensors are written back to the clients' stacked storage.

For SGD this equals a sequential loop over clients with full model copies (``oracle.py``): a row a
client does not touch gets zero gradient there, and repeated items share one local row here.

FedMR (``state.fusion``, fusion.py): the fusion modules are small global modules (one copy per
client), the routers private vectors; a mini-batch reads the rows of its items AND of the user's
training items H_u (the router's input), with the frozen feature rows of the same items.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backbones, fusion
from .privacy import NoiseSpec, client_noise
from .server import Aggregator, UploadBatch, apply_update


def _local_copies(state, plan, spec):
    """The chunk's local models, (C, ...) or (C, R, d) for item tables, and the start of the shared ones."""
    C = plan.n_clients
    dt = state.dtype
    clients = plan.clients                                                      # (C,)
    local = {}
    for name, value in state.global_.items():
        if name in spec.tables:
            local[name] = value[plan.rows].clone()                              # (C, R, d)
        else:
            local[name] = value.unsqueeze(0).expand((C,) + tuple(value.shape)).clone()  # (C, ...)
    for name in spec.private_vectors:
        local[name] = state.private[name][clients].clone()                      # (C, ...)
    for name in spec.private_tables:
        if name not in spec.tuned_from:                                         # trained directly (D_u)
            local[name] = state.private[name][clients.unsqueeze(1), plan.rows].to(dt)  # (C, R, d)
    start = {name: local[name].clone() for name in state.global_}
    return local, start


def _step_sizes(spec, config, state=None):
    lr, item_lr, _ = config.step_sizes()
    # global item tables take item_lr (their updates are diluted by the server's averaging);
    # FedMR's global fusion modules take fusion_lr; everything else, private tables such as
    # FedRAP's D_u and FedMR's routers included, takes lr
    modules = set(state.fusion.modules) if state is not None and state.fusion is not None else set()
    fusion_lr = config.fusion_step()
    return lambda name: item_lr if name in spec.tables else (fusion_lr if name in modules else lr)


def _batch_view(local, row_names, act, slots, phase):
    """The tensors one mini-batch reads, for the active clients ``act`` (A,): item tables as the
    rows of the batch's items (A, B, d), everything else as the clients' copies (A, ...). The
    tensors of ``phase`` are fresh leaves that receive the gradient."""
    view = {}
    for name, value in local.items():
        if name in row_names:
            v = value[act.unsqueeze(1), slots]                                  # (A, B, d)
        else:
            v = value[act]                                                      # (A, ...)
        view[name] = v.requires_grad_(True) if name in phase else v
    return view


def train_chunk(state, plan, config, t: int, noise: NoiseSpec | None = None,
                noise_generator: torch.Generator | None = None):
    """Train one chunk for one round. Returns ``(UploadBatch, per-client mean loss (C,))`` and
    writes the clients' private tensors back into ``state.private``.

    A mini-batch step touches only its active clients and the rows of its items: the gradient of
    a row read by several samples is accumulated (``index_put_(accumulate=True)``), exactly as
    autograd would accumulate it in a full-table copy.
    """
    spec = backbones.spec_of(state)
    device = state.joined.device
    plan = plan.to(device)
    C = plan.n_clients
    local, start = _local_copies(state, plan, spec)
    step_of = _step_sizes(spec, config, state)
    setup = state.fusion
    if setup is not None:
        # FedMR's router reads the user's training items H_u: the first n_u samples of the plan
        P = int(plan.sizes.max())
        pos_slots = plan.slots[:, :P]                                           # (C, P)
        pos_items = plan.items[:, :P]                                           # (C, P)
        pos_mask = torch.arange(P, device=device).unsqueeze(0) < plan.sizes.unsqueeze(1)  # (C, P)
    row_names = set(spec.tables) | (set(spec.private_tables) - set(spec.tuned_from))
    phases = spec.phases or (tuple(local),)
    labels = plan.labels.to(state.dtype)                                        # (C, L)
    loss_sum = torch.zeros(C, dtype=torch.float64, device=device)
    batches_done = torch.zeros(C, dtype=torch.float64, device=device)

    for _, idx, valid in plan.batches():
        act = torch.nonzero(valid.any(dim=1)).flatten()                         # (A,) active clients
        if act.numel() == 0:
            continue
        idx, valid = idx[act], valid[act]                                       # (A, B)
        slots = torch.gather(plan.slots[act], 1, idx)                           # (A, B)
        y = torch.gather(labels[act], 1, idx)                                   # (A, B)
        m = valid.to(state.dtype)                                               # (A, B)
        count = m.sum(1)                                                        # (A,) >= 1
        n_batch = slots.shape[1]
        if setup is not None:
            # rows read: the batch's items, then the user's training items (router input)
            items = torch.cat([torch.gather(plan.items[act], 1, idx), pos_items[act]], 1)  # (A, B+P)
            feats = {mod: f[items] for mod, f in setup.features.items()}        # (A, B+P, D_m)
            slots = torch.cat([slots, pos_slots[act]], 1)                       # (A, B+P)
        for k, phase in enumerate(phases):
            leaves = _batch_view(local, row_names, act, slots, phase)
            if setup is None:
                view = leaves
                logits = backbones.batched_logits(state.backbone, view)         # (A, B)
            else:
                # FedMR: z_i = sum_k pi_u,k s_k(i) replaces the item embedding (fusion.py)
                z, _ = fusion.fuse(setup, leaves, backbones.id_rows(state.backbone, leaves), feats,
                                   n_batch, pos_mask[act])
                view = {name: (v[:, :n_batch] if name in row_names else v) for name, v in leaves.items()}
                logits = backbones.batched_logits(state.backbone, view, z)      # (A, B)
            # loss_c = mean over c's valid samples of BCE(sigma(s), y) (+ FedRAP's regulariser)
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
            loss = (bce * m).sum(1) / count                                     # (A,)
            reg = backbones.regulariser(state.backbone, view, valid, t, config)
            if reg is not None:
                loss = loss + reg
            # one backward on sum_c loss_c: client c's tensors only receive client c's gradient
            # (allow_unused: a FedMR ablation without the ID input leaves the ID table unread)
            grads = torch.autograd.grad(loss.sum(), [leaves[name] for name in phase], allow_unused=True)
            with torch.no_grad():
                for name, g in zip(phase, grads):
                    if g is None:
                        continue
                    # theta_c <- theta_c - lr * grad_c (rows: accumulated over repeated items)
                    if name in row_names:
                        local[name].index_put_((act.unsqueeze(1).expand_as(slots), slots),
                                               -step_of(name) * g, accumulate=True)
                    else:
                        local[name].index_put_((act,), -step_of(name) * g, accumulate=True)
            if k == 0:
                loss_sum.index_put_((act,), loss.detach().double(), accumulate=True)
        batches_done.index_put_((act,), torch.ones_like(act, dtype=torch.float64), accumulate=True)

    uploads = _uploads(state, plan, local, start, spec, noise, noise_generator)
    _write_private(state, plan, local, spec)
    return uploads, loss_sum / batches_done.clamp(min=1)


@torch.no_grad()
def _uploads(state, plan, local, start, spec, noise, noise_generator) -> UploadBatch:
    """Delta_u = start - end for every shared tensor; row-sparse, or dense + noise."""
    batch = UploadBatch(sizes=plan.sizes.clone())
    for name in state.global_:
        # Delta_u = theta_u(start) - theta_u(end)
        delta = start[name] - local[name].detach()                              # (C, R, d) or (C, ...)
        if name in spec.tables:
            batch.values[name] = delta
            batch.rows[name] = plan.rows.clone()
            batch.row_mask[name] = plan.row_mask.clone()
        else:
            batch.values[name] = delta
    if noise is not None and noise.active:
        _add_noise(state, plan, batch, spec, noise, noise_generator)
    return batch


@torch.no_grad()
def _add_noise(state, plan, batch, spec, noise, generator) -> None:
    """Every client uploads its FULL shared update plus noise (all n rows of every table)."""
    C = plan.n_clients
    device = state.joined.device
    for name in spec.tables:
        n, d = state.global_[name].shape
        dense = torch.zeros(C, n, d, dtype=state.dtype, device=device)          # (C, n, d)
        mask = batch.row_mask[name]
        cl = torch.arange(C, device=device).unsqueeze(1).expand_as(mask)[mask]
        dense[cl, batch.rows[name][mask]] = batch.values[name][mask]
        batch.values[name] = dense
        batch.rows[name] = torch.arange(n, device=device).expand(C, n).clone()
        batch.row_mask[name] = torch.ones(C, n, dtype=torch.bool, device=device)
    # draws: client by client, tensor by tensor in sorted name order (the oracle does the same)
    for c in range(C):
        for name in sorted(state.global_):
            shape = tuple(state.global_[name].shape)
            batch.values[name][c] += client_noise(shape, noise, generator, state.dtype).to(device)


@torch.no_grad()
def _write_private(state, plan, local, spec) -> None:
    """Store the chunk's private tensors back into the stacked per-client storage."""
    clients = plan.clients
    for name in spec.private_vectors:
        state.private[name][clients] = local[name].detach()
    mask = plan.row_mask                                                        # (C, R)
    cl = clients.unsqueeze(1).expand_as(mask)[mask]                             # (rows,)
    rr = plan.rows[mask]                                                        # (rows,)
    for name in spec.private_tables:
        store = state.private[name]
        source = spec.tuned_from.get(name)
        if source is not None:
            # PFedRec: E_u = the client's copy of E after training: E where untouched, tuned rows
            store[clients] = state.global_[source].to(store.dtype)
            store[cl, rr] = local[source].detach()[mask].to(store.dtype)
        else:
            store[cl, rr] = local[name].detach()[mask].to(store.dtype)
    state.joined[clients] = True


def train_round(state, plans, config, t: int, noise: NoiseSpec | None = None,
                noise_generator: torch.Generator | None = None) -> float:
    """One round: train every chunk of ``plans``, aggregate the uploads, update the global tensors.

    Returns the mean over participants of their mean mini-batch loss.
    """
    spec = backbones.spec_of(state)
    _, _, server_lr = config.step_sizes()
    shapes = {k: tuple(v.shape) for k, v in state.global_.items()}
    aggregator = Aggregator(spec.rule, shapes, state.dtype, state.joined.device)
    losses = []
    for plan in plans:
        uploads, loss = train_chunk(state, plan, config, t, noise, noise_generator)
        aggregator.add(uploads)
        losses.append(loss)
    state.global_ = apply_update(state.global_, aggregator.mean_update(), server_lr)
    return float(torch.cat(losses).mean()) if losses else float("nan")
