"""The batched engine: a chunk of clients trains at once, every tensor with a leading client axis.

design.md, "The engine". For a chunk of C clients and its ``ChunkPlan``:
1. local copies: each global item table contributes only the rows each client touches, stored
   flat for the chunk ``(Q, d)`` (client after client, ``plan.rows``; no padding to the heaviest
   client); private per-client tables (FedRAP's D_u) the same rows; small global modules (the
   NCF tower) one copy per client ``(C, ...)``; private vectors their clients' rows;
2. per mini-batch position, for each optimisation phase: the loss of client c is the mean BCE over
   its valid samples (plus FedRAP's regulariser); ONE backward on sum_c loss_c gives every client
   exactly its own gradient (clients share no tensor); the inner-product backbones skip autograd
   and use the same gradients written out (gradients.py); the SGD step touches only the clients
   with a sample at this position;
3. uploads Delta_u = start - end of the shared local copies (the round's accumulated update),
   row-sparse for item tables, noised (all n rows) when ``--noise`` is on;
4. private tensors are written back to the clients' stacked storage.

For SGD this equals a sequential loop over clients with full model copies (``oracle.py``): a row a
client does not touch gets zero gradient there, and repeated items share one local row here.

FedMR (``state.fusion``, fusion.py): the ID mapping and the strategy modules are small global
modules (one copy per client), the routers private vectors; each client's feature mappings A_v,
A_t are held as coefficients over its own rows or as matrices, whichever the chunk's size makes
cheaper (feature_maps.py); with a router, a mini-batch reads the rows of its items AND of the
user's training items H_u (the router's input); a single strategy has no router and reads only
its items.
"""
from __future__ import annotations

import bisect

import torch
import torch.nn.functional as F

from . import backbones, fusion, gradients
from .feature_maps import feature_maps
from .privacy import NoiseSpec, client_noise
from .rows import add_rows, gather_rows
from .server import Aggregator, UploadBatch, apply_update


def _local_copies(state, plan, spec, skip=()):
    """The chunk's local models, (C, ...) or (Q, d) for item tables, and the start of the shared
    ones (``skip``: global tensors held another way, FedMR's feature mappings A_m)."""
    C = plan.n_clients
    dt = state.dtype
    clients = plan.clients                                                      # (C,)
    local = {}
    for name, value in state.global_.items():
        if name in skip:
            continue
        if name in spec.tables:
            local[name] = value.index_select(0, plan.rows)                      # (Q, d)
        else:
            local[name] = value.unsqueeze(0).expand((C,) + tuple(value.shape)).clone()  # (C, ...)
    for name in spec.private_vectors:
        local[name] = state.private[name][clients].clone()                      # (C, ...)
    for name in spec.private_tables:
        if name not in spec.tuned_from:                                         # trained directly (D_u)
            local[name] = state.private[name][clients[plan.row_owner], plan.rows].to(dt)  # (Q, d)
    start = {name: local[name].clone() for name in state.global_ if name in local}
    return local, start


def _step_sizes(spec, config, state=None):
    lr, item_lr, _ = config.step_sizes()
    # global item tables take item_lr (their updates are diluted by the server's averaging);
    # FedMR's global fusion modules take fusion_lr; everything else, private tables such as
    # FedRAP's D_u and FedMR's routers included, takes lr
    modules = set(state.fusion.modules) if state is not None and state.fusion is not None else set()
    fusion_lr = config.fusion_step()
    return lambda name: item_lr if name in spec.tables else (fusion_lr if name in modules else lr)


def _batch_view(local, row_names, act, slots, phase, autograd=True):
    """The tensors one mini-batch reads, for the active clients ``act`` (A,): item tables as the
    rows of the batch's items (A, B, d) (``slots`` (A, B): index into the chunk's Q rows),
    everything else as the clients' copies (A, ...). With ``autograd``, the tensors of ``phase``
    are fresh leaves that receive the gradient."""
    view = {}
    for name, value in local.items():
        if name in row_names:
            v = gather_rows(value, slots)                                       # (A, B, d)
        else:
            v = value[act]                          # (A, ...): a view for a slice, a copy for indices
        if autograd and name in phase:
            # a fresh leaf (a detached view when ``act`` is a slice: its gradient is taken before
            # the in-place SGD step moves it)
            v = v.detach().requires_grad_(True)
        view[name] = v
    return view


def _mini_batches(plan, dtype):
    """The chunk's mini-batch positions, epoch by epoch: ``(act, slots, y, valid, weight)``.

    ``act`` the clients with a sample at this position (a slice when the chunk's clients come in
    ascending order of sample count, as rounds build them: the active ones are then a suffix and
    every tensor below is a view, not a gathered copy); for them, (A, B): ``slots`` the sample's
    row among the chunk's rows, ``y`` its label, ``valid`` False on padding, ``weight`` 1 / n_B on
    valid samples (n_B = the client's samples in this batch: sum_b weight_b BCE_b is its mean
    loss).
    """
    C, L = plan.items.shape
    bs = plan.batch_size
    device = plan.items.device
    lengths = plan.lengths.tolist()
    ascending = all(a <= b for a, b in zip(lengths, lengths[1:]))
    position = torch.arange(L, device=device)                                   # (L,)
    valid_all = position.unsqueeze(0) < plan.lengths.unsqueeze(1)               # (C, L)
    # n_B = min(batch size, samples left from the batch's start), the same for every epoch
    count = (plan.lengths.unsqueeze(1) - (position // bs * bs).unsqueeze(0)).clamp(1, bs)  # (C, L)
    weight_all = valid_all.to(dtype) / count.to(dtype)                         # (C, L)
    labels = plan.labels.to(dtype)
    for epoch in range(plan.orders.shape[0]):
        order = plan.orders[epoch]                                              # (C, L)
        slots_e = torch.gather(plan.slots, 1, order)                            # this epoch's shuffle
        labels_e = torch.gather(labels, 1, order)
        for lo in range(0, L, bs):
            hi = min(lo + bs, L)
            if ascending:
                act = slice(bisect.bisect_right(lengths, lo), C)                # clients with L_c > lo
                if act.start == C:
                    continue
            else:
                act = torch.nonzero(plan.lengths > lo).flatten()                # (A,)
                if act.numel() == 0:
                    continue
            yield (act, slots_e[act, lo:hi], labels_e[act, lo:hi], valid_all[act, lo:hi],
                   weight_all[act, lo:hi])


def train_chunk(state, plan, config, t: int, noise: NoiseSpec | None = None,
                noise_generator: torch.Generator | None = None):
    """Train one chunk for one round. Returns ``(UploadBatch, per-client mean loss (C,))`` and
    writes the clients' private tensors back into ``state.private``.

    A mini-batch step touches only its active clients and the rows of its items: the gradient of
    a row read by several samples is accumulated (``rows.add_rows``), exactly as autograd would
    accumulate it in a full-table copy.
    """
    spec = backbones.spec_of(state)
    device = state.joined.device
    plan = plan.to(device)
    C = plan.n_clients
    setup = state.fusion
    maps = {}
    if setup is not None and setup.features:
        # FedMR's feature mappings: each client's A_m, held the cheaper of two exact ways
        maps = feature_maps(setup.features, state.global_, plan, tuple(setup.features))
    map_names = {f"A_{m}": m for m in maps}
    local, start = _local_copies(state, plan, spec, skip=map_names)
    step_of = _step_sizes(spec, config, state)
    closed_form = gradients.has_closed_form(state)      # inner-product backbones: no autograd graph
    pos_mask = None
    if setup is not None and setup.routed:
        # FedMR's router reads the user's training items H_u: the first n_u samples of the plan
        P = int(plan.sizes.max())
        pos_slots = plan.slots[:, :P]                                           # (C, P)
        pos_mask = torch.arange(P, device=device).unsqueeze(0) < plan.sizes.unsqueeze(1)  # (C, P)
    row_names = set(spec.tables) | (set(spec.private_tables) - set(spec.tuned_from))
    phases = spec.phases or (tuple(local) + tuple(map_names),)
    loss_sum = torch.zeros(C, dtype=torch.float64, device=device)
    batches_done = torch.zeros(C, dtype=torch.float64, device=device)

    for act, slots, y, valid, m_mean in _mini_batches(plan, state.dtype):
        n_batch = slots.shape[1]
        if pos_mask is not None:
            # rows read: the batch's items, then the user's training items (router input)
            slots = torch.cat([slots, pos_slots[act]], 1)                       # (A, B+P)
        if closed_form:
            # the same loss and gradients, written out (gradients.py, G1-G3); the batch's rows are
            # read once, and a later phase re-reads only what an earlier phase moved
            view = _batch_view(local, row_names, act, slots, (), autograd=False)
            for k, phase in enumerate(phases):
                loss, grads = gradients.loss_and_grads(state.backbone, view, phase, y, m_mean, valid,
                                                       t, config, with_loss=k == 0)
                _sgd_step(local, row_names, act, slots, phase, grads, step_of)
                if k == 0:
                    loss_sum[act] += loss.double()
                if k + 1 < len(phases):
                    view.update(_batch_view({n: local[n] for n in phase}, row_names, act, slots, (),
                                            autograd=False))
            batches_done[act] += 1
            continue
        for k, phase in enumerate(phases):
            leaves = _batch_view(local, row_names, act, slots, phase)
            mapped = {}
            if setup is None:
                view = leaves
                logits = backbones.batched_logits(state.backbone, view)         # (A, B)
            else:
                # FedMR Eq. (1) for the features: h_m of the batch's and the history's rows
                for name, mod in map_names.items():
                    mapped[mod] = maps[mod].mapped(act, slots).requires_grad_(name in phase)
                # FedMR: z_i = sum_k pi_u,k s_k(i) replaces the item embedding (fusion.py)
                z, _ = fusion.fuse(setup, leaves, backbones.id_rows(state.backbone, leaves), {},
                                   n_batch, None if pos_mask is None else pos_mask[act], mapped)
                view = {name: (v[:, :n_batch] if name in row_names else v) for name, v in leaves.items()}
                logits = backbones.batched_logits(state.backbone, view, z)      # (A, B)
            # loss_c = mean over c's valid samples of BCE(sigma(s), y) (+ FedRAP's regulariser)
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
            loss = (bce * m_mean).sum(1)                                        # (A,)
            reg = backbones.regulariser(state.backbone, view, valid, t, config)
            if reg is not None:
                loss = loss + reg
            # one backward on sum_c loss_c: client c's tensors only receive client c's gradient
            # (allow_unused: a FedMR ablation without the ID input leaves the ID table unread)
            trained = [name for name in phase if name not in map_names]
            mapped_trained = [name for name in phase if name in map_names]
            grads = torch.autograd.grad(
                loss.sum(), [leaves[name] for name in trained] + [mapped[map_names[name]]
                                                                  for name in mapped_trained],
                allow_unused=True)
            _sgd_step(local, row_names, act, slots, trained, grads[:len(trained)], step_of)
            for name, delta in zip(mapped_trained, grads[len(trained):]):
                if delta is not None:
                    # dL/dh_m -> the client's A_m (feature_maps.py)
                    maps[map_names[name]].step(act, slots, delta, step_of(name))
            if k == 0:
                loss_sum[act] += loss.detach().double()
        batches_done[act] += 1

    uploads = _uploads(state, plan, local, start, spec, noise, noise_generator, maps, map_names)
    _write_private(state, plan, local, spec, t)
    return uploads, loss_sum / batches_done.clamp(min=1)


@torch.no_grad()
def _sgd_step(local, row_names, act, slots, phase, grads, step_of) -> None:
    """theta_c <- theta_c - lr * grad_c for the active clients; a row's gradient is accumulated
    over the batch's samples of the same item."""
    for name, g in zip(phase, grads):
        if g is None:
            continue
        if name in row_names:
            add_rows(local[name], slots, g, -step_of(name))
        elif isinstance(act, slice):
            local[name][act].add_(g, alpha=-step_of(name))
        else:
            local[name].index_add_(0, act, g, alpha=-step_of(name))   # act: distinct clients


@torch.no_grad()
def _uploads(state, plan, local, start, spec, noise, noise_generator, maps=None,
             map_names=None) -> UploadBatch:
    """Delta_u = start - end for every shared tensor; row-sparse, or dense + noise."""
    batch = UploadBatch(sizes=plan.sizes.clone())
    for name in state.global_:
        if map_names and name in map_names:
            batch.values[name] = maps[map_names[name]].upload()                 # (C, d, D_m)
            continue
        # Delta_u = theta_u(start) - theta_u(end)
        delta = start[name] - local[name].detach()                              # (Q, d) or (C, ...)
        if name in spec.tables:
            batch.values[name] = delta
            batch.rows[name] = plan.rows.clone()
            batch.owners[name] = plan.row_owner.clone()
        else:
            batch.values[name] = delta
    if noise is not None and noise.active:
        _add_noise(state, plan, batch, spec, noise, noise_generator)
    return batch


@torch.no_grad()
def _add_noise(state, plan, batch, spec, noise, generator) -> None:
    """Every client uploads its FULL shared update plus noise (all n rows of every table)."""
    C = plan.n_clients
    n_of = lambda name: state.global_[name].shape[0]                            # noqa: E731
    device = state.joined.device
    for name in spec.tables:
        n, d = state.global_[name].shape
        dense = torch.zeros(C, n, d, dtype=state.dtype, device=device)          # (C, n, d)
        dense[batch.owners[name], batch.rows[name]] = batch.values[name]
        batch.values[name] = dense.view(C * n, d)                               # rows of client after client
        batch.rows[name] = torch.arange(n, device=device).repeat(C)             # (C n,)
        batch.owners[name] = torch.arange(C, device=device).repeat_interleave(n)  # (C n,)
    # draws: client by client, tensor by tensor in sorted name order (the oracle does the same)
    for c in range(C):
        for name in sorted(state.global_):
            shape = tuple(state.global_[name].shape)
            mine = batch.values[name].view(C, n_of(name), -1)[c] if name in spec.tables \
                else batch.values[name][c]
            mine += client_noise(shape, noise, generator, state.dtype).to(device).view(mine.shape)


@torch.no_grad()
def _write_private(state, plan, local, spec, t: int) -> None:
    """Store the chunk's private tensors back into the stacked per-client storage."""
    clients = plan.clients
    for name in spec.private_vectors:
        state.private[name][clients] = local[name].detach()
    cl, rr = clients[plan.row_owner], plan.rows                                 # (Q,) user, item
    for name in spec.private_tables:
        store = state.private[name]
        source = spec.tuned_from.get(name)
        if source is not None:
            # PFedRec: E_u = the client's copy of E after training: the E it received (this
            # round's snapshot, still state.global_ before aggregation) with its tuned rows
            store.write(t, state.global_[source], clients, plan.row_owner, rr, local[source].detach())
        else:
            store[cl, rr] = local[name].detach().to(store.dtype)
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
