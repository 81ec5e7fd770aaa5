"""The randomness of a round, drawn once by shared code: who takes part, negatives, shuffles, batches.

Both the batched engine and the per-client loop oracle consume the same ``ChunkPlan``, so they see
exactly the same random draws and can be compared parameter by parameter. Per round:

1. ``sample_participants``: ceil(beta * U) clients uniformly without replacement (sorted).
2. For each chunk of participants, ``make_plan``:
   - the client's samples: every training positive once (label 1) and ``neg_ratio`` fresh uniform
     negatives per positive (label 0) from the items NOT in its training set (``NegativeSampler``;
     held-out items may be drawn, book/methods.md "Protocol"); redrawn every round, never a fixed list;
   - one independent shuffle of the samples per local epoch;
   - mini-batches: position k of epoch e holds shuffled samples k*B .. (k+1)*B - 1. A client with
     fewer samples has a short or empty batch at that position (``valid`` mask): it must not move.
   - the unique item rows each client touches, stored flat for the whole chunk (``rows``, grouped
     by client, ``row_owner`` says whose), and for every sample the index of its item's row among
     them (``slots``): a negative may repeat within a client, and gradients of repeated items must
     land on ONE local row, as they would in a full-table copy. Flat (ragged) rows mean a chunk of
     a heavy client and many light ones costs its real rows, not clients x the heaviest's rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ChunkPlan:
    """The samples and batches of a chunk of C clients for one round (all tensors on CPU)."""

    clients: torch.Tensor    # (C,) user indices (distinct)
    sizes: torch.Tensor      # (C,) training-set sizes n_u (what FedAvg / FedNCF weigh by)
    items: torch.Tensor      # (C, L) item of each sample, padded with 0
    labels: torch.Tensor     # (C, L) 1 for positives, 0 for negatives and padding
    lengths: torch.Tensor    # (C,) samples per client, (1 + neg_ratio) * n_u
    rows: torch.Tensor       # (Q,) the unique items each client touches, client after client
    row_owner: torch.Tensor  # (Q,) position in ``clients`` of the client each row belongs to
    slots: torch.Tensor      # (C, L) index into ``rows`` of each sample's item (0 for padding)
    orders: torch.Tensor     # (H, C, L) per-epoch shuffle: valid samples first, in random order
    batch_size: int

    @property
    def n_clients(self) -> int:
        return int(self.clients.shape[0])

    def to(self, device) -> "ChunkPlan":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return ChunkPlan(**moved)


def sample_participants(n_users: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """ceil(ratio * n_users) distinct users, uniformly at random, sorted: (m,) LongTensor."""
    m = max(1, min(n_users, math.ceil(ratio * n_users - 1e-9)))
    return torch.sort(torch.randperm(n_users, generator=generator)[:m]).values


def chunks(participants: torch.Tensor, chunk_size: int, lengths: torch.Tensor | None = None,
           max_samples: int | None = None, spread: float | None = None,
           mix_above: float = float("inf")):
    """Consecutive slices of at most ``chunk_size`` participants.

    With ``lengths`` (samples per participant, ascending, same order) a slice also keeps
    - (its clients) x (its longest client's samples) <= ``max_samples``: the size of the chunk's
      padded (C, L) plan tensors (memory);
    - its longest client <= ``spread`` x its shortest, unless the shortest already has
      ``mix_above`` samples or more: a mini-batch position is as wide as its longest client
      allows, so a client with 20 samples beside one with 60 would fill 2/3 of its batch with
      padding. Once every client of a slice fills whole batches (``mix_above`` = the batch size),
      padding is at most one partial batch per epoch and clients may mix freely: fewer, fuller
      chunks mean fewer sequential mini-batch steps.
    A chunk always takes at least one client."""
    n = participants.shape[0]
    if lengths is None:
        for lo in range(0, n, chunk_size):
            yield participants[lo:lo + chunk_size]
        return
    lengths = [int(x) for x in lengths]
    lo = 0
    for hi in range(1, n + 1):
        if hi == n:
            break
        count, longest, shortest = hi - lo + 1, lengths[hi], lengths[lo]
        full = (count > chunk_size
                or (max_samples is not None and count * longest > max_samples)
                or (spread is not None and shortest < mix_above and longest > spread * shortest))
        if full:
            yield participants[lo:hi]
            lo = hi
    if lo < n:
        yield participants[lo:]


def _ragged_positions(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ragged rows of ``lengths`` (C,): (row of each entry, position within its row)."""
    row = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)            # (total,)
    first = torch.cumsum(lengths, 0) - lengths                                         # (C,)
    within = torch.arange(row.shape[0]) - first[row]                                   # (total,)
    return row, within


def make_plan(dataset, clients: torch.Tensor, sampler, neg_ratio: int, local_epochs: int,
              batch_size: int, generator: torch.Generator) -> ChunkPlan:
    """The plan of one chunk of clients for one round (module docstring). CPU tensors throughout."""
    clients = clients.to(torch.long).cpu()                                             # (C,)
    indptr = torch.as_tensor(np.asarray(dataset.train_indptr), dtype=torch.long)       # (U+1,)
    train = torch.as_tensor(np.asarray(dataset.train_indices), dtype=torch.long)       # (nnz,)
    n_items = int(dataset.n_items)
    C = clients.shape[0]
    sizes = indptr[clients + 1] - indptr[clients]                                      # (C,)

    # positives: the client's training items, each once
    pos_row, pos_within = _ragged_positions(sizes)
    pos_items = train[indptr[clients][pos_row] + pos_within]                           # (P,)
    # negatives: neg_ratio fresh uniform draws per positive, outside the training set
    n_neg = sizes * neg_ratio                                                          # (C,)
    neg_row, neg_within = _ragged_positions(n_neg)
    if neg_row.numel():
        neg_items = sampler.sample(clients[neg_row], generator).cpu()                  # (N,)
    else:
        neg_items = torch.zeros(0, dtype=torch.long)

    lengths = sizes + n_neg                                                            # (C,)
    width = int(lengths.max()) if C else 0
    items = torch.zeros(C, width, dtype=torch.long)                                    # (C, L)
    labels = torch.zeros(C, width)                                                     # (C, L)
    items[pos_row, pos_within] = pos_items
    labels[pos_row, pos_within] = 1.0
    items[neg_row, sizes[neg_row] + neg_within] = neg_items

    # unique touched rows per client: sorted unique keys (client, item), kept flat
    s_row, s_within = _ragged_positions(lengths)                                       # valid samples
    keys = s_row * n_items + items[s_row, s_within]                                    # (S,)
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)               # (Q,), (S,)
    rows = uniq % n_items                                                              # (Q,)
    row_owner = uniq // n_items                                                        # (Q,)
    slots = torch.zeros(C, width, dtype=torch.long)                                    # (C, L)
    slots[s_row, s_within] = inverse

    # one shuffle per epoch of each client's samples: sort the valid samples by (client, random
    # key), drawn for the S valid samples only (not the padded C x L); padding stays at the end
    orders = torch.arange(width).expand(local_epochs, C, width).clone()                # (H, C, L)
    for epoch in range(local_epochs):
        keys = s_row.to(torch.float64) + torch.rand(s_row.shape[0], generator=generator,
                                                    dtype=torch.float64)               # (S,)
        perm = torch.argsort(keys)                                                     # client by client
        orders[epoch, s_row, s_within] = s_within[perm]
    return ChunkPlan(clients, sizes, items, labels, lengths, rows, row_owner, slots, orders,
                     int(batch_size))
