"""FedMR's feature mapping layers in the batched engine: each client's copy of A_m, two exact ways.

FedMR Eq. (1) maps a frozen feature row F[j] (D_m,) with a global matrix: h(j) = A_m F[j] (d,).
During local training every client moves its own copy A_m,u, and these are the largest modules
(d x D_m: 64 x 768 for thumbnails). A chunk holds them in whichever of two forms is cheaper:

``ExplicitMap``: the matrices themselves, (C, d, D_m). A step maps its L rows at L D_m d and
    moves A_m,u by the outer products: A_m,u <- A_m,u - lr sum_b delta_b F[i_b]^T.

``KernelMap``: coefficients over the client's own rows. A client reads only its rows I_u (the
    plan's touched items: its batch items and its history H_u), and SGD only ever adds outer
    products with them, so after any number of local steps

        A_m,u = A_m + sum_{r in I_u} c_r F[r]^T        (c_r in R^d: the client's coefficients)

    and every mapped feature it needs is

        h_u(j) = A_m F[j] + sum_r c_r (F[r] . F[j]) = base[j] + (K_u c)[j],   K_u = F[I_u] F[I_u]^T.

    The kernel trick: a row costs |I_u| d instead of D_m d, a client's state is |I_u| x d instead
    of d x D_m (a chunk of 600 light clients: 2 MB instead of 300 MB), and the upload
    Delta_u = start - end = -sum_r c_r F[r]^T is formed once, at the end of the round.

The kernel entries F[r] . F[j] are read from the features' Gram matrix F F^T (computed once per
run: the features are frozen) and base[j] = A_m F[j] from F A_m^T (once per round: every chunk
of a round starts from the same A_m), both held by the FedMR method.

``feature_maps`` picks, per chunk and modality, the kernel form while the chunk's largest |I_u|
is at most D_m (light clients: world-full's typical client reads ~100 rows of 768-wide features)
and the explicit form beyond (a MovieLens client with 1,133 training items reads ~1,850 rows; its
kernel rows cost more than the matrix). The per-client loop oracle (oracle.py) keeps explicit
copies; the equivalence tests compare both forms with it.
"""
from __future__ import annotations

import torch

from .rows import add_rows, gather_rows

FORMS = ("auto", "kernel", "explicit")


def _clients(act, n_clients: int, device) -> torch.Tensor:
    """The active clients as indices (A,) (``act`` is a slice of a suffix or an index tensor)."""
    if isinstance(act, slice):
        return torch.arange(act.start or 0, n_clients, device=device)
    return act


class ExplicitMap:
    """A_m,u held as it is: one (d, D_m) matrix per client of the chunk."""

    def __init__(self, features: torch.Tensor, A: torch.Tensor, plan):
        self.n_clients = plan.n_clients
        self.rows_features = features[plan.rows]                                 # (Q, D) the chunk's rows
        self.start = A                                                           # (d, D)
        self.weight = A.unsqueeze(0).expand((self.n_clients,) + tuple(A.shape)).clone()  # (C, d, D)

    def mapped(self, act, slots: torch.Tensor) -> torch.Tensor:
        """h_u(j) = A_m,u F[j] for the rows ``slots`` (A, L) of the active clients: (A, L, d)."""
        F = gather_rows(self.rows_features, slots)                              # (A, L, D)
        return F @ self.weight[act].transpose(1, 2)                              # (A, L, d)

    @torch.no_grad()
    def step(self, act, slots: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        """A_m,u <- A_m,u - lr sum_b delta_b F[i_b]^T (delta (A, L, d) = dL/dh)."""
        F = gather_rows(self.rows_features, slots)                              # (A, L, D)
        if isinstance(act, slice):
            # in place on the active clients' matrices (a contiguous block): no (A, d, D) temporary
            self.weight[act].baddbmm_(delta.transpose(1, 2), F, alpha=-lr)
        else:
            self.weight.index_add_(0, act, delta.transpose(1, 2) @ F, alpha=-lr)  # act: distinct clients

    @torch.no_grad()
    def upload(self) -> torch.Tensor:
        """Delta_u = start - end for every client of the chunk: (C, d, D). Written over the
        clients' matrices (the map is spent afterwards)."""
        return self.weight.neg_().add_(self.start)


class KernelMap:
    """A_m,u held as the global A_m plus coefficients c over the client's own rows (module doc).

    ``gram`` F F^T (n, n) and ``base`` F A_m^T (n, d) of every item, when given, are read instead
    of computed for the chunk's rows (FedMR computes the first once per run, the second once per
    round: both are the same for every chunk)."""

    UPLOAD_BLOCK = 1 << 22         # scalars of gathered feature rows per block of the upload

    def __init__(self, features: torch.Tensor, A: torch.Tensor, plan, gram: torch.Tensor | None = None,
                 base: torch.Tensor | None = None):
        C = plan.n_clients
        owner = plan.row_owner                                                   # (Q,)
        counts = torch.bincount(owner, minlength=C)                              # (C,)
        first = torch.cumsum(counts, 0) - counts
        self.n_clients, self.R = C, max(int(counts.max()), 1) if C else 1
        self.position = torch.arange(owner.shape[0], device=owner.device) - first[owner]  # (Q,)
        self.features = features                                                 # (n, D)
        items = torch.zeros(C, self.R, dtype=torch.long, device=owner.device)    # (C, R) I_u, padded with 0
        items[owner, self.position] = plan.rows
        self.items = items
        # base[j] = A_m F[j] of the chunk's rows
        self.base = (features[plan.rows] @ A.T) if base is None else base[plan.rows]   # (Q, d)
        if gram is None:
            padded = features[items]                                             # (C, R, D) F[I_u]
            self.kernel = padded @ padded.transpose(1, 2)                        # (C, R, R) K_u
        else:
            # K_u = F[I_u] F[I_u]^T read from the Gram matrix (a padded position's coefficient
            # stays 0: it is never a sample's row, so its kernel entries are never used)
            self.kernel = gram[items.unsqueeze(2), items.unsqueeze(1)]           # (C, R, R)
        self.coef = torch.zeros(C, self.R, A.shape[0], dtype=features.dtype, device=features.device)  # (C, R, d)

    def mapped(self, act, slots: torch.Tensor) -> torch.Tensor:
        """h_u(j) = base[j] + (K_u c)[j] for the rows ``slots`` (A, L) of the active clients: (A, L, d)."""
        pos = self.position[slots]                                               # (A, L) within I_u
        K = self.kernel[act]                                                     # (A, R, R)
        K_rows = torch.gather(K, 1, pos.unsqueeze(-1).expand(-1, -1, self.R))    # (A, L, R)
        return torch.baddbmm(gather_rows(self.base, slots), K_rows, self.coef[act])   # (A, L, d)

    @torch.no_grad()
    def step(self, act, slots: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        """A_m,u <- A_m,u - lr sum_b delta_b F[i_b]^T, i.e. c_(i_b) -= lr delta_b (repeats add up)."""
        clients = _clients(act, self.n_clients, self.position.device)            # (A,)
        index = clients.unsqueeze(1) * self.R + self.position[slots]             # (A, L)
        add_rows(self.coef.view(-1, self.coef.shape[-1]), index, delta, -lr)     # (C R, d)

    @torch.no_grad()
    def upload(self) -> torch.Tensor:
        """Delta_u = start - end = -sum_r c_r F[r]^T for every client of the chunk: (C, d, D),
        formed a block of clients at a time (the feature rows F[I_u] are gathered per block)."""
        C, d, D = self.n_clients, self.coef.shape[-1], self.features.shape[1]
        out = torch.empty(C, d, D, dtype=self.coef.dtype, device=self.coef.device)
        block = max(1, self.UPLOAD_BLOCK // max(self.R * D, 1))
        minus_c = self.coef.neg().transpose(1, 2)                                # (C, d, R)
        for lo in range(0, C, block):
            hi = min(lo + block, C)
            torch.bmm(minus_c[lo:hi], self.features[self.items[lo:hi]], out=out[lo:hi])
        return out


def gram(features: torch.Tensor) -> torch.Tensor:
    """F F^T (n, n): every kernel entry F[r] . F[j] (``KernelMap``), computed once per run."""
    return features @ features.T


def feature_maps(features: dict, global_: dict, plan, modalities, form: str = "auto",
                 grams: dict | None = None, bases: dict | None = None) -> dict:
    """modality -> the chunk's per-client A_m (module doc). ``form``: "auto" picks per modality the
    kernel form while the chunk's largest |I_u| <= D_m, the explicit form beyond; "kernel" or
    "explicit" forces one (``FedConfig.feature_map_form``: tests and benches compare them).
    ``grams`` / ``bases``: modality -> F F^T and F A_m^T of every item (optional, see KernelMap)."""
    if form not in FORMS:
        raise ValueError(f"feature_maps: form {form!r}; choose one of {', '.join(FORMS)}")
    counts = torch.bincount(plan.row_owner, minlength=plan.n_clients)
    most_rows = int(counts.max()) if plan.n_clients else 0                       # max |I_u|
    maps = {}
    for m in modalities:
        F, A = features[m], global_[f"A_{m}"]
        kernel = form == "kernel" or (form == "auto" and most_rows <= F.shape[1])
        if kernel:
            maps[m] = KernelMap(F, A, plan, (grams or {}).get(m), (bases or {}).get(m))
        else:
            maps[m] = ExplicitMap(F, A, plan)
    return maps
