"""The batched engine: a chunk of clients trains at once, every tensor with a leading client axis.

The client side of a round (book/methods.md, "Cost model"). For a chunk of C clients and its
``ChunkPlan``:
1. local copies: each global item table contributes only the rows each client touches, stored
   flat for the chunk ``(Q, d)`` (client after client, ``plan.rows``; no padding to the heaviest
   client); private per-client tables (FedRAP's D_u) the same rows; small global modules (the
   NCF tower, FedMR's fusion modules) one copy per client ``(C, ...)``; private vectors their
   clients' rows; tensors the method holds in a form of its own (``session.held``: FedMR's
   feature mappings) stay with the method's session (method.py);
2. per mini-batch position, for each optimisation phase: the loss of client c is the mean BCE over
   its valid samples of the backbone's score (``backbones.score``) of the method's item
   representation, plus FedRAP's regulariser and the method's extra loss; ONE backward on
   sum_c loss_c gives every client exactly its own gradient (clients share no tensor); the
   inner-product backbones under the ID method skip autograd and use the same gradients written
   out (gradients.py); the SGD step touches only the clients with a sample at this position;
3. uploads Delta_u = start - end of the shared local copies (the round's accumulated update),
   row-sparse for item tables, plus the private tensors the method reports;
4. private tensors are written back to the clients' stacked storage.

For SGD this equals a sequential loop over clients with full model copies (``oracle.py``): a row a
client does not touch gets zero gradient there, and repeated items share one local row here.
Privatising the uploads and aggregating them is the round's business (rounds.py, server.py).
"""
from __future__ import annotations

import bisect
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import backbones, gradients
from .rows import add_rows, gather_rows
from .server import UploadBatch


class Batch(NamedTuple):
    """One mini-batch position of a chunk, for its active clients ``act`` (A of them): (A, B)
    ``slots`` (each sample's row among the chunk's rows), ``y`` labels, ``valid`` (False on
    padding), ``weight`` 1 / n_B on valid samples (sum_b weight_b BCE_b is the client's mean);
    ``epoch`` the local epoch it belongs to."""

    act: object
    slots: torch.Tensor
    y: torch.Tensor
    valid: torch.Tensor
    weight: torch.Tensor
    epoch: int = 0


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
    """The chunk's mini-batch positions, epoch by epoch, as ``Batch`` tuples.

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
            yield Batch(act, slots_e[act, lo:hi], labels_e[act, lo:hi], valid_all[act, lo:hi],
                        weight_all[act, lo:hi], epoch)


def train_chunk(state, plan, config, t: int, downloads=None):
    """Train one chunk of clients for one round (module docstring).

    Returns ``(UploadBatch, per-client mean loss (C,))`` and writes the clients' private tensors
    back into ``state.private`` (and the method's buffers). A mini-batch step touches only its
    active clients and the rows of its items: the gradient of a row read by several samples is
    accumulated (``rows.add_rows``), exactly as autograd would accumulate it in a full-table copy.
    """
    spec = state.spec
    plan = plan.to(state.device)
    session = state.method.chunk_session(state, plan, config, t, downloads)
    local, start = _local_copies(state, plan, spec, skip=session.held)
    row_names = set(spec.tables) | (set(spec.private_tables) - set(spec.tuned_from))
    phases = spec.phases or (tuple(local) + tuple(session.held),)
    step = _Step(local, row_names, session, spec, config)
    loss_sum = torch.zeros(plan.n_clients, dtype=torch.float64, device=state.device)
    batches_done = torch.zeros(plan.n_clients, dtype=torch.float64, device=state.device)
    train_batch = _closed_form_batch if session.closed_form else _autograd_batch
    def view(act, slots):                   # the current local copies, read without autograd
        return _batch_view(local, row_names, act, slots, (), autograd=False)

    for batch in _mini_batches(plan, state.dtype):
        session.begin_batch(batch, view)
        loss = train_batch(state.backbone, step, batch, phases, t, config)
        loss_sum[batch.act] += loss.double()
        batches_done[batch.act] += 1
    uploads = _uploads(state, plan, local, start, session)
    session.finish(state)
    _write_private(state, plan, local, spec, t)
    return uploads, loss_sum / batches_done.clamp(min=1)


class _Step:
    """theta_c <- theta_c - lr * grad_c for the active clients of a batch: the engine's local copies
    (a row's gradient accumulated over the batch's samples of the same item) or, for a tensor the
    method holds (``session.held``), the session's own step."""

    def __init__(self, local, row_names, session, spec, config):
        self.local, self.row_names, self.session = local, row_names, session
        self.lr = {name: spec.step_size(name, config) for name in list(local) + list(session.held)}

    @torch.no_grad()
    def __call__(self, names, grads, act, slots) -> None:
        for name, g in zip(names, grads):
            if g is None:          # an input the loss does not read (FedMR without the ID input)
                continue
            if name in self.session.held:
                self.session.step(name, act, slots, g, self.lr[name])
            elif name in self.row_names:
                add_rows(self.local[name], slots, g, -self.lr[name])
            elif isinstance(act, slice):
                self.local[name][act].add_(g, alpha=-self.lr[name])
            else:
                self.local[name].index_add_(0, act, g, alpha=-self.lr[name])   # act: distinct clients


def _closed_form_batch(backbone, step, batch, phases, t, config) -> torch.Tensor:
    """One mini-batch position with the written-out gradients (gradients.py, G1-G3): the batch's
    rows are read once, and a later phase re-reads only what an earlier phase moved. Returns the
    per-client loss (A,) of the first phase."""
    act, slots = batch.act, batch.slots
    view = _batch_view(step.local, step.row_names, act, slots, (), autograd=False)
    first = None
    for k, phase in enumerate(phases):
        def extra(s, rec_loss, k=k):       # the method's loss term on the logits, if any
            return step.session.extra_loss(s, rec_loss, act, batch, k)

        loss, grads = gradients.loss_and_grads(backbone, view, phase, batch.y, batch.weight,
                                               batch.valid, t, config, with_loss=k == 0,
                                               logit_term=extra if step.session.has_extra_loss else None)
        step(phase, grads, act, slots)
        if k == 0:
            first = loss
        if k + 1 < len(phases):
            view.update(_batch_view({n: step.local[n] for n in phase}, step.row_names, act, slots, (),
                                    autograd=False))
    return first


def _autograd_batch(backbone, step, batch, phases, t, config) -> torch.Tensor:
    """One mini-batch position through autograd: per phase, the tensors it trains become fresh
    leaves, the loss of client c is the mean BCE of the backbone's score of the method's item
    representation (+ FedRAP's regulariser + the method's extra loss), and ONE backward on
    sum_c loss_c gives every client its own gradient. Returns the per-client loss (A,) of the
    first phase."""
    session, act = step.session, batch.act
    n_batch = batch.slots.shape[1]
    slots = session.read_slots(act, batch.slots)                 # (A, B') the batch's rows first
    first = None
    for k, phase in enumerate(phases):
        leaves = _batch_view(step.local, step.row_names, act, slots, phase)
        items, held_leaves = session.items(leaves, act, slots, n_batch, phase)
        view = leaves if slots is batch.slots else {
            name: (v[:, :n_batch] if name in step.row_names else v) for name, v in leaves.items()}
        logits = backbones.score(backbone, view, items)                         # (A, B)
        # loss_c = mean over c's valid samples of BCE(sigma(s), y) (+ FedRAP's regulariser)
        bce = F.binary_cross_entropy_with_logits(logits, batch.y, reduction="none")
        loss = (bce * batch.weight).sum(1)                                      # (A,)
        reg = backbones.regulariser(backbone, view, batch.valid, t, config)
        if reg is not None:
            loss = loss + reg
        extra = session.extra_loss(logits, loss.detach(), act, batch, k)       # (A,) or None
        if extra is not None:
            loss = loss + extra[0]
        # one backward on sum_c loss_c: client c's tensors only receive client c's gradient
        trained = [name for name in phase if name in leaves]
        names = trained + list(held_leaves)
        grads = torch.autograd.grad(loss.sum(), [leaves[n] for n in trained] + list(held_leaves.values()),
                                    allow_unused=True)
        step(names, grads, act, slots)
        if k == 0:
            first = loss.detach()
    return first


@torch.no_grad()
def _uploads(state, plan, local, start, session) -> UploadBatch:
    """Delta_u = start - end for every shared tensor (item tables row-sparse), the held tensors'
    updates from the session, and the private tensors the method reports."""
    spec = state.spec
    batch = UploadBatch.for_rule(spec.rule, plan.sizes, plan.clients)
    held = session.uploads()
    for name in state.global_:
        if name in held:
            batch.values[name] = held[name]                                     # (C, ...)
            continue
        # Delta_u = theta_u(start) - theta_u(end)
        batch.values[name] = start[name] - local[name].detach()                 # (Q, d) or (C, ...)
        if name in spec.tables:
            batch.rows[name] = plan.rows.clone()
            batch.owners[name] = plan.row_owner.clone()
    for name in spec.reported:
        batch.reports[name] = local[name].detach().clone()                      # (C, ...)
    return batch


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
