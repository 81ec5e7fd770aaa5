"""PFedRec's private tuned tables E_u, stored as what they are: a shared snapshot plus a few rows.

After local training, client u keeps E_u = its copy of the global table E after the round
(book/methods.md, "Backbones": PFedRec). That copy differs from the E it received only on the rows it
trained: its positives and that round's negatives, at most (1 + neg_ratio) n_u items. So

    E_u = E^(t_u)  with rows  i in I_u  replaced by the client's tuned values,

where t_u is the last round u trained in and E^(t) the global table at the start of round t (one
snapshot shared by every client of that round). ``TunedTables`` stores exactly that: the snapshots
still referenced, and for each client a fixed slice of a row pool of capacity
min(n, (1 + neg_ratio) n_u). Compared with a dense (U, n, d) tensor this writes only the tuned rows
each round and holds sum_u cap_u rows instead of U n (world-large: about 0.5M rows instead of
28M). Reading ``tables[users]`` rebuilds the dense (c, n, d) tables evaluation scores with.
"""
from __future__ import annotations

import torch


class TunedTables:
    """Per-client tables E_u (U, n, d) as snapshot + tuned rows. Index it like the dense tensor it
    stands for: ``tables[u]`` (n, d), ``tables[users]`` (c, n, d) (a client that never trained
    reads zeros: it has no E_u yet)."""

    def __init__(self, capacity: torch.Tensor, n_items: int, dim: int, dtype, device="cpu"):
        capacity = torch.as_tensor(capacity, dtype=torch.long).clamp(min=0, max=n_items)   # (U,)
        self.n_users, self.n_items, self.dim = int(capacity.shape[0]), int(n_items), int(dim)
        self.dtype = dtype
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), capacity.cumsum(0)]).to(device)
        pool = int(self.offsets[-1])
        self.items = torch.full((pool,), -1, dtype=torch.long, device=device)   # item of a slot, -1 empty
        self.rows = torch.zeros(pool, dim, dtype=dtype, device=device)          # tuned values
        self.snapshot_of = torch.full((self.n_users,), -1, dtype=torch.long, device=device)  # (U,)
        self.snapshots = torch.zeros(0, n_items, dim, dtype=dtype, device=device)   # (S, n, d)
        self.rounds: list[int] = []                                              # round of each snapshot

    # --- the dense view ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return (self.n_users, self.n_items, self.dim)

    @property
    def device(self):
        return self.rows.device

    def numel(self) -> int:
        """Scalars of the dense tables this stands for (U n d): what the clients hold, together."""
        return self.n_users * self.n_items * self.dim

    def __getitem__(self, users):
        single = isinstance(users, int) or (torch.is_tensor(users) and users.dim() == 0)
        users = torch.arange(self.n_users, device=self.device)[users]
        users = users.reshape(-1)
        out = self.tables(users)
        return out[0] if single else out

    def tables(self, users: torch.Tensor) -> torch.Tensor:
        """Dense E_u for ``users`` (c,): snapshot E^(t_u), then the tuned rows. (c, n, d)."""
        users = users.to(self.device)
        c = users.shape[0]
        out = torch.zeros(c, self.n_items, self.dim, dtype=self.dtype, device=self.device)
        snap = self.snapshot_of[users]                                           # (c,)
        has = snap >= 0
        if bool(has.any()):
            out[has] = self.snapshots[snap[has]]
        slots, owner = self._slots_of(users)                                     # (k,), (k,)
        item = self.items[slots]
        used = item >= 0
        out[owner[used], item[used]] = self.rows[slots[used]]
        return out

    DOT_BLOCK = 32      # users whose tuned rows are multiplied at once in ``dot`` (cache-sized)

    def dot(self, users: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """E_u[i] . v_u for every item: (c, n) from ``vectors`` (c, d), without building the dense
        (c, n, d) tables: one (c_k, d) x (d, n) product per snapshot k the users start from, then
        the tuned rows' dot products written over their entries. Equals
        ``einsum("cnd,cd->cn", self.tables(users), vectors)`` (computed in ``vectors.dtype``)."""
        users = users.to(self.device)
        c, n, dt = users.shape[0], self.n_items, vectors.dtype
        # (c n + 1,): the scores, then one spare entry that receives the empty slots' values
        buffer = torch.zeros(c * n + 1, dtype=dt, device=self.device)
        out = buffer[:-1].view(c, n)                                              # (c, n)
        snap = self.snapshot_of[users]                                           # (c,)
        for k in torch.unique(snap[snap >= 0]).tolist():
            rows = torch.nonzero(snap == k).flatten()                            # (c_k,)
            # E^(t_u)[i] . v_u for all i: (c_k, d) x (d, n)
            out[rows] = vectors[rows] @ self.snapshots[k].to(dt).T
        for lo in range(0, c, self.DOT_BLOCK):
            block = users[lo:lo + self.DOT_BLOCK]                                # (b,)
            first, last = self.offsets[block], self.offsets[block + 1]
            count = last - first                                                 # (b,)
            if bool((first[1:] == last[:-1]).all()):   # consecutive users: their slots are a slice
                slots = slice(int(first[0]), int(last[-1]))
            else:
                slots, _ = self._slots_of(block)
            item = self.items[slots]                                             # (k,), -1 = empty
            # tuned rows: E_u[i] . v_u = rows[slot] . v_owner
            value = torch.linalg.vecdot(self.rows[slots].to(dt),
                                        vectors[lo:lo + block.shape[0]].repeat_interleave(count, 0))
            owner = torch.repeat_interleave(torch.arange(lo, lo + block.shape[0], device=self.device),
                                            count)                               # (k,) rows of out
            where = torch.where(item >= 0, owner * n + item, c * n)              # (k,) into buffer
            buffer[where] = value
        return out

    def _slots_of(self, users: torch.Tensor):
        """Pool slots of ``users`` (c,), and the position in ``users`` of each slot's owner."""
        lo, hi = self.offsets[users], self.offsets[users + 1]
        count = hi - lo                                                          # (c,)
        owner = torch.repeat_interleave(torch.arange(users.shape[0], device=self.device), count)
        first = torch.cumsum(count, 0) - count
        slots = lo[owner] + torch.arange(owner.shape[0], device=self.device) - first[owner]
        return slots, owner

    # --- writing -----------------------------------------------------------------------------
    @torch.no_grad()
    def write(self, t: int, start_table: torch.Tensor, clients: torch.Tensor,
              row_owner: torch.Tensor, row_items: torch.Tensor, values: torch.Tensor) -> None:
        """Round ``t``'s E_u of ``clients`` (C,): they started from ``start_table`` (n, d) and tuned
        rows ``row_items`` (Q,) of client ``clients[row_owner]`` to ``values`` (Q, d). Rows are
        grouped by client (as a ``ChunkPlan`` keeps them), distinct within a client."""
        clients = clients.to(self.device)
        k = self._snapshot(t, start_table)
        self.snapshot_of[clients] = k
        slots, _ = self._slots_of(clients)
        self.items[slots] = -1                                                   # forget last round's rows
        counts = torch.bincount(row_owner, minlength=clients.shape[0])           # (C,)
        capacity = self.offsets[clients + 1] - self.offsets[clients]
        if bool((counts > capacity).any()):
            raise ValueError("TunedTables.write: a client tuned more rows than its capacity "
                             "min(n, (1 + neg_ratio) n_u); was neg_ratio raised after init_state?")
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(row_owner.shape[0], device=self.device) - first[row_owner]
        dest = self.offsets[clients][row_owner] + rank                           # (Q,)
        self.items[dest] = row_items
        self.rows[dest] = values.to(self.dtype)

    @torch.no_grad()
    def write_one(self, t: int, start_table: torch.Tensor, user: int, row_items: torch.Tensor,
                  values: torch.Tensor) -> None:
        """``write`` for a single client (the per-client loop): slices, no index arithmetic."""
        if getattr(self, "_bounds", None) is None:
            self._bounds = self.offsets.tolist()                                 # python ints: no sync
        lo, hi = self._bounds[user], self._bounds[user + 1]
        q = int(row_items.shape[0])
        if q > hi - lo:
            raise ValueError("TunedTables.write_one: the client tuned more rows than its capacity "
                             "min(n, (1 + neg_ratio) n_u); was neg_ratio raised after init_state?")
        self.snapshot_of[user] = self._snapshot(t, start_table)
        self.items[lo:hi] = -1
        self.items[lo:lo + q] = row_items
        self.rows[lo:lo + q] = values.to(self.dtype)

    def _snapshot(self, t: int, table: torch.Tensor) -> int:
        """Index of round t's snapshot, taken at the round's first write (which also drops the
        snapshots no client references any more: at most one stale snapshot is ever held)."""
        if not self.rounds or self.rounds[-1] != t:
            self._drop_unused_snapshots()
            self.snapshots = torch.cat([self.snapshots, table.detach().to(self.dtype).unsqueeze(0)])
            self.rounds.append(t)
        return len(self.rounds) - 1

    def _drop_unused_snapshots(self) -> None:
        used = torch.zeros(len(self.rounds), dtype=torch.bool, device=self.device)
        used[self.snapshot_of[self.snapshot_of >= 0]] = True
        if bool(used.all()):
            return
        keep = torch.nonzero(used).flatten()
        renumber = torch.full((len(self.rounds),), -1, dtype=torch.long, device=self.device)
        renumber[keep] = torch.arange(keep.shape[0], device=self.device)
        has = self.snapshot_of >= 0
        self.snapshot_of[has] = renumber[self.snapshot_of[has]]
        self.snapshots = self.snapshots[keep]
        self.rounds = [self.rounds[int(i)] for i in keep]

    # --- copies --------------------------------------------------------------------------------
    def clone(self) -> "TunedTables":
        new = TunedTables.__new__(TunedTables)
        new.__dict__.update({k: (v.clone() if torch.is_tensor(v) else list(v) if isinstance(v, list)
                                 else v) for k, v in self.__dict__.items()})
        return new

    def to(self, device=None, dtype=None) -> "TunedTables":
        new = self.clone()
        for k, v in new.__dict__.items():
            if torch.is_tensor(v):
                move = dtype if (dtype is not None and v.is_floating_point()) else None
                setattr(new, k, v.to(device=device, dtype=move))
        if dtype is not None:
            new.dtype = dtype
        return new

    def stored_scalars(self) -> int:
        """Scalars actually stored (pool + snapshots), against ``numel()`` for the dense form."""
        return self.rows.numel() + self.snapshots.numel()
