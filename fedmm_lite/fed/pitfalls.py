"""Published defects, reproduced on purpose so that the book can show what they do to the numbers.

Nothing here is used unless a configuration asks for it by name (``FedConfig.negatives="fixed"`` or
``"official"``); the correct behaviour is the default everywhere.

book/methods.md, "Defects", item 4: negatives taken as the lowest-id items the user has not
interacted with, identical every round. The model then only ever learns that a handful of
low-id items are bad, and every other item is never contrasted with the positives.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from ..data.sampling import NegativeSampler


class FixedLowestNegatives(NegativeSampler):
    """The defect: a user's k-th negative is its k-th lowest-id non-training item, every round.

    ``sample(users, generator)`` expects, as the plan asks, each user's requests as one contiguous
    run; the j-th request of a run gets complement rank ``j mod (n - |H_u|)``. The generator is
    ignored: that is the defect.
    """

    def sample(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        users = users.to(self.device, torch.int64)                                   # (m,)
        if users.numel() == 0:
            return users.clone()
        starts = torch.ones_like(users, dtype=torch.bool)                            # (m,)
        starts[1:] = users[1:] != users[:-1]
        run_start = torch.cummax(torch.where(starts, torch.arange(len(users), device=self.device),
                                             torch.zeros_like(users)), dim=0).values  # (m,)
        within = torch.arange(len(users), device=self.device) - run_start             # (m,)
        ranks = within % self.n_candidates[users]                                     # (m,)
        return self._item_of_rank(users, ranks)


class HeldOutExcludedNegatives(NegativeSampler):
    """The PFedRec and FedRAP codes' training negatives: fresh every round, uniform over the items
    the user NEVER interacted with, its validation and test items included (they sample from
    ``item_pool - all of the user's ratings`` before the split). A leak: a held-out item is never
    trained as a negative, so its rank improves; with the correct sampler (``NegativeSampler``) a
    user who trains on n_u items draws 4 n_u negatives a round and pushes its own test item down
    with probability about 4 n_u / (n - n_u) per round (on ml-100k about 0.25 for n_u = 100).
    Offered only to reproduce those codes' figures like for like (``FedConfig.negatives="official"``)."""

    def __init__(self, dataset, device="cpu", max_rounds: int = 8):
        super().__init__(_with_held_out_items(dataset), device, max_rounds)


def _with_held_out_items(dataset) -> SimpleNamespace:
    """The fields ``NegativeSampler`` reads, with each user's validation and test items added to
    its training items (CSR, sorted within each user)."""
    sizes = np.diff(np.asarray(dataset.train_indptr))                            # (U,)
    owner = np.concatenate([np.repeat(np.arange(dataset.n_users), sizes),
                            np.arange(dataset.n_users), np.arange(dataset.n_users)])
    items = np.concatenate([np.asarray(dataset.train_indices), dataset.valid_items,
                            dataset.test_items])
    order = np.lexsort((items, owner))
    indptr = np.zeros(dataset.n_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(sizes + 2)
    return SimpleNamespace(n_items=dataset.n_items, train_indptr=indptr,
                           train_indices=items[order].astype(np.int64), user_ids=dataset.user_ids)
