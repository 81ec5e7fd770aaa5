"""Training negatives: uniform over the items NOT in the user's training set, redrawn every call
(under the cold-item split, not among the cold items either).

book/methods.md, "Protocol": negatives are drawn uniformly at random from the items a user has not
trained on (the user's held-out validation and test items may be drawn: a client cannot know its
future), and redrawn every round; never a fixed or sorted list (book/methods.md, "Defects", item 4).

Membership test: every training pair (u, i) is one int64 key ``u * n + i``; the keys are sorted, so
"is (u, c) a training pair?" is one ``torch.searchsorted`` for a whole batch. Sampling is rejection
sampling: draw c uniformly in 0..n-1, redraw the entries that hit a training item; only the
rejection rounds loop in Python. Users who trained on most of the catalogue would need many rounds,
so after ``max_rounds`` rounds the entries still rejected are drawn exactly by inversion (below).
Both paths give a uniform draw over the user's complement, so the mix does too.
"""
from __future__ import annotations

import torch

from ..errors import DatasetError
from .dataset import Dataset


class NegativeSampler:
    """Uniform negatives per user over the complement of the user's training set.

    ``sample(users, generator)`` returns one negative per entry of ``users``; the generator must
    live on the sampler's device (``torch.Generator(device=...)``).
    """

    def __init__(self, dataset: Dataset, device: str | torch.device = "cpu", max_rounds: int = 8):
        self.device = torch.device(device)
        self.n_items = int(dataset.n_items)
        self.max_rounds = int(max_rounds)
        n = self.n_items
        indptr = torch.as_tensor(dataset.train_indptr, dtype=torch.int64)    # (U+1,)
        items = torch.as_tensor(dataset.train_indices, dtype=torch.int64)    # (nnz,)
        sizes = indptr[1:] - indptr[:-1]                                     # (U,)
        owner = torch.repeat_interleave(torch.arange(len(sizes)), sizes)     # (nnz,)
        cold = getattr(dataset, "cold_items", None)
        if cold is not None and len(cold):
            # the cold-item split: cold items are never drawn either (held out of training
            # entirely), so they join every user's excluded set
            cold = torch.as_tensor(cold, dtype=torch.int64)
            U = len(sizes)
            keys = torch.unique(torch.cat([owner * n + items,
                                           torch.arange(U).repeat_interleave(len(cold)) * n
                                           + cold.repeat(U)]))               # sorted
            owner, items = keys // n, keys % n
            sizes = torch.bincount(owner, minlength=U)
            indptr = torch.zeros(U + 1, dtype=torch.int64)
            indptr[1:] = torch.cumsum(sizes, 0)
        # keys u * n + i of the training pairs, sorted (CSR order already is; sort to be safe)
        self.keys = torch.sort(owner * n + items).values.to(self.device)     # (nnz,)
        # inversion table: before the j-th training item t_j of a user (0-based, sorted) lie
        # t_j - j complement items; keys u * n + (t_j - j) are sorted too
        rank_in_user = torch.arange(len(items)) - indptr[:-1][owner]          # (nnz,)
        self.gap_keys = torch.sort(owner * n + items - rank_in_user).values.to(self.device)
        self.indptr = indptr.to(self.device)                                  # (U+1,)
        self.n_candidates = (n - sizes).to(self.device)                      # (U,)
        full = torch.nonzero(sizes >= n).flatten()
        self._full_users = set(full.tolist())
        self._user_ids = dataset.user_ids

    def _is_training_pair(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(m,) bool: is items[k] in the training set of users[k]?"""
        query = users * self.n_items + items                                  # (m,)
        if len(self.keys) == 0:
            return torch.zeros_like(query, dtype=torch.bool)
        pos = torch.searchsorted(self.keys, query).clamp(max=len(self.keys) - 1)  # (m,)
        return self.keys[pos] == query

    def _item_of_rank(self, users: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """The ``ranks``-th (0-based) item of each user's complement, in item order:
        item = r + #{j : t_j - j <= r} (the training items that precede the r-th complement item)."""
        before = torch.searchsorted(self.gap_keys, users * self.n_items + ranks, right=True)
        return ranks + (before - self.indptr[users])                          # (m,)

    def _sample_by_inversion(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Exact uniform draw: a uniform rank r among the user's n - s_u complement items."""
        counts = self.n_candidates[users].to(torch.float64)                 # (m,)
        u01 = torch.rand(users.shape, generator=generator, device=self.device, dtype=torch.float64)
        r = torch.minimum((u01 * counts).long(), self.n_candidates[users] - 1)  # (m,)
        return self._item_of_rank(users, r)

    def sample(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One negative item per entry of ``users`` (LongTensor (m,)) -> LongTensor (m,)."""
        users = users.to(self.device, torch.int64)                           # (m,)
        if self._full_users:
            hit = self._full_users.intersection(torch.unique(users).tolist())
            if hit:
                u = min(hit)
                raise DatasetError(f"user '{self._user_ids[u]}' (index {u}) trains on all {self.n_items} "
                                   f"items: no negative item to sample")
        items = torch.randint(0, self.n_items, users.shape, generator=generator, device=self.device)
        todo = torch.arange(len(users), device=self.device)                  # entries still rejected
        for _ in range(self.max_rounds):
            rejected = self._is_training_pair(users[todo], items[todo])
            todo = todo[rejected]
            if len(todo) == 0:
                return items
            items[todo] = torch.randint(0, self.n_items, todo.shape, generator=generator,
                                        device=self.device)
        rejected = self._is_training_pair(users[todo], items[todo])
        todo = todo[rejected]
        if len(todo):
            items[todo] = self._sample_by_inversion(users[todo], generator)
        return items
