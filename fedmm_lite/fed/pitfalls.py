"""Published defects, reproduced on purpose so that the book can show what they do to the numbers.

Nothing here is used unless a configuration asks for it by name (``FedConfig.negatives="fixed"``);
the correct behaviour is the default everywhere.

book/methods.md, "Defects", item 4: negatives taken as the lowest-id items the user has not
interacted with, identical every round. The model then only ever learns that a handful of
low-id items are bad, and every other item is never contrasted with the positives.
"""
from __future__ import annotations

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
