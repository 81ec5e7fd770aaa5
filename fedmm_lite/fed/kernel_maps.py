"""FedMR's feature mapping layers in the batched engine, without a (d, D_m) copy per client.

FedMR Eq. (1) maps a frozen feature row F[j] (D_m,) with a global matrix: h(j) = A_m F[j] (d,).
In local training a client reads only its own rows I_u (the plan's touched items: its batch
items and its history H_u), and plain SGD on A_m only ever adds outer products with them:

    A_m <- A_m - lr sum_b delta_b F[i_b]^T,   delta_b = dL/dh(i_b) (d,),  i_b in I_u.

So after any number of local steps the client's matrix is

    A_m,u = A_m + sum_{r in I_u} c_r F[r]^T        (c_r in R^d: the client's coefficients)

and every mapped feature it needs is

    h_u(j) = A_m F[j] + sum_r c_r (F[r] . F[j]) = base[j] + (K_u c)[j],   K_u = F[I_u] F[I_u]^T.

That is the kernel trick: a step costs |I_u| d per row instead of D_m d, a client's state is
|I_u| x d instead of d x D_m (a chunk of 600 light clients: 2 MB instead of 300 MB), and the
upload Delta_u = start - end = -sum_r c_r F[r]^T is formed once, at the end of the round. The
per-client loop oracle (oracle.py) keeps explicit (d, D_m) copies; the equivalence tests compare.
"""
from __future__ import annotations

import torch

from .rows import add_rows


class KernelMaps:
    """The mapping layers A_m of feature modalities for one chunk, as per-client coefficients."""

    def __init__(self, features: dict, global_: dict, plan, modalities):
        C = plan.n_clients
        owner = plan.row_owner                                                   # (Q,)
        counts = torch.bincount(owner, minlength=C)                              # (C,)
        first = torch.cumsum(counts, 0) - counts
        self.n_clients, self.R = C, max(int(counts.max()), 1) if C else 1
        self.position = torch.arange(owner.shape[0], device=owner.device) - first[owner]  # (Q,)
        self.base, self.kernel, self.coef, self.padded = {}, {}, {}, {}
        for m in modalities:
            F = features[m][plan.rows]                                           # (Q, D) the chunk's rows
            A = global_[f"A_{m}"]                                                # (d, D)
            self.base[m] = F @ A.T                                               # (Q, d) A_m F[j]
            padded = torch.zeros(C, self.R, F.shape[1], dtype=F.dtype, device=F.device)
            padded[owner, self.position] = F                                     # (C, R, D) F[I_u]
            self.padded[m] = padded
            self.kernel[m] = padded @ padded.transpose(1, 2)                     # (C, R, R) K_u
            self.coef[m] = torch.zeros(C, self.R, A.shape[0], dtype=F.dtype, device=F.device)  # (C, R, d)

    def _clients(self, act) -> torch.Tensor:
        if isinstance(act, slice):
            return torch.arange(act.start or 0, self.n_clients, device=self.position.device)
        return act

    def mapped(self, m: str, act, slots: torch.Tensor) -> torch.Tensor:
        """h_u(j) = base[j] + (K_u c)[j] for the rows ``slots`` (A, L) of the active clients: (A, L, d)."""
        pos = self.position[slots]                                               # (A, L) within I_u
        K = self.kernel[m][act]                                                  # (A, R, R)
        K_rows = torch.gather(K, 1, pos.unsqueeze(-1).expand(-1, -1, self.R))    # (A, L, R)
        return self.base[m][slots] + K_rows @ self.coef[m][act]                  # (A, L, d)

    @torch.no_grad()
    def step(self, m: str, act, slots: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        """A_m,u <- A_m,u - lr sum_b delta_b F[i_b]^T, i.e. c_(i_b) -= lr delta_b (repeats add up)."""
        clients = self._clients(act)                                             # (A,)
        index = clients.unsqueeze(1) * self.R + self.position[slots]             # (A, L)
        add_rows(self.coef[m].view(-1, self.coef[m].shape[-1]), index, delta, -lr)  # (C R, d)

    @torch.no_grad()
    def uploads(self, m: str) -> torch.Tensor:
        """Delta_u = start - end = -sum_r c_r F[r]^T for every client of the chunk: (C, d, D)."""
        return -(self.coef[m].transpose(1, 2) @ self.padded[m])
