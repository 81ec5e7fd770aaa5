"""Evaluation: full-ranking HR@K and NDCG@K under leave-one-out (book/methods.md, "Protocol").

For user u and split s (valid or test) the target is the held-out item t_u. The candidates are all
n items except the user's training items H_u and the *other* held-out item (the test item when
validating, the validation item when testing); the target is always a candidate. Then

    rank_u    = 1 + #{ j candidate, j != t_u : score_u(j) >= score_u(t_u) }   (ties count against t_u)
    HR@K      = mean_u 1[rank_u <= K]
    NDCG@K    = mean_u 1[rank_u <= K] / log2(1 + rank_u)                     (one relevant item)

Ties counting against the target is what makes a constant model score HR ~ 0 rather than 1; a
random model scores HR@K ~ K / (n - |H_u| - 1) (``random_expectation``), the ``--rounds 0``
calibration check of the book.

``evaluate`` scores users in chunks of ``chunk_size``, so memory is O(chunk_size * n) whatever the
number of users: the exclusion mask of a chunk is built from the training CSR with one
``index_put``, never as a dense users x items mask for everybody.

``sampled_evaluate`` is the optional sampled protocol (target + 99 sampled non-interacted items),
kept only to compare with the PFedRec / FedRAP papers; it is optimistic compared with full ranking.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch

from .errors import OptionError

if TYPE_CHECKING:   # metrics only reads a Dataset's arrays; no import-time dependency on data/
    from .data.dataset import Dataset

ScoreFn = Callable[[torch.Tensor], torch.Tensor]   # users (c,) -> scores (c, n)


class NonFiniteScores(ValueError):
    """A model's scores are NaN or infinite: it diverged (a ranking of them would mean nothing)."""

SPLITS = ("valid", "test")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor,
                 exclude_mask: torch.Tensor) -> torch.Tensor:
    """Rank of each target among its candidates (book/methods.md, "Protocol": full ranking).

    ``scores`` (c, n), ``targets`` (c,) item indices, ``exclude_mask`` (c, n) bool, True for items
    that are not candidates (training items, the other held-out item). The target itself is never
    counted, whether or not it is masked. Ties count against the target, so a constant model puts
    every target last. Raises ``ValueError`` when a score is NaN (a diverged model would otherwise
    rank its targets first, since every comparison with NaN is False).
    """
    if scores.dim() != 2 or targets.shape != (scores.shape[0],) or exclude_mask.shape != scores.shape:
        raise ValueError(f"target_ranks: expected scores (c, n), targets (c,), exclude_mask (c, n); "
                         f"got {tuple(scores.shape)}, {tuple(targets.shape)}, "
                         f"{tuple(exclude_mask.shape)}")
    if exclude_mask.dtype != torch.bool:
        raise ValueError(f"target_ranks: exclude_mask must be bool, got {exclude_mask.dtype}")
    nan_rows = torch.isnan(scores).any(dim=1)                              # (c,)
    if bool(nan_rows.any()):
        rows = torch.nonzero(nan_rows).flatten()[:5].tolist()
        raise ValueError(f"target_ranks: scores contain NaN in {int(nan_rows.sum())} of "
                         f"{scores.shape[0]} rows (first rows {rows}); the model diverged or "
                         f"score_fn is broken")
    rows = torch.arange(scores.shape[0], device=scores.device)            # (c,)
    target_score = scores[rows, targets].unsqueeze(1)                      # (c, 1)
    # counted_j = 1[score_j >= score_t] * 1[j candidate] * 1[j != t]
    counted = scores >= target_score                                       # (c, n) bool
    counted.masked_fill_(exclude_mask, False)                              # in place: no (c, n) temp
    counted[rows, targets] = False
    # rank = 1 + sum_j counted_j   (an int32 sum avoids an int64 copy of the (c, n) mask)
    return 1 + counted.sum(dim=1, dtype=torch.int32).long()                # (c,) int64


def hr_ndcg(ranks: torch.Tensor | np.ndarray | Sequence[int],
            ks: Iterable[int] = (10, 20, 50)) -> dict[str, float]:
    """HR@K and NDCG@K averaged over users, from 1-based ranks (book/methods.md, "Protocol").

    Keys ``hr@K`` and ``ndcg@K`` for each K in ``ks``. With one relevant item per user the ideal DCG
    is 1, so NDCG@K = 1[rank <= K] / log2(1 + rank).
    """
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu()
    ranks = torch.as_tensor(np.asarray(ranks), dtype=torch.float64).flatten()   # (users,)
    if ranks.numel() == 0:
        raise ValueError("hr_ndcg: no ranks given (no users evaluated)")
    if bool((ranks < 1).any()):
        raise ValueError("hr_ndcg: ranks are 1-based; got a rank below 1")
    out: dict[str, float] = {}
    for k in _check_ks(ks):
        hit = (ranks <= k).double()                                            # (users,)
        # HR@K = mean_u 1[rank_u <= K]
        out[f"hr@{k}"] = float(hit.mean())
        # NDCG@K = mean_u 1[rank_u <= K] / log2(1 + rank_u)
        out[f"ndcg@{k}"] = float((hit / torch.log2(1.0 + ranks)).mean())
    return out


def random_expectation(n_candidates: int, k: int, metric: str = "hr") -> float:
    """Expected HR@K (or NDCG@K) of a random ranker with ``n_candidates`` candidates, target included.

    The target's rank is uniform on 1..N, so HR@K = min(K, N) / N and
    NDCG@K = (1/N) sum_{r=1}^{min(K, N)} 1 / log2(1 + r). For the full-ranking protocol a user has
    N = n - |H_u| - 1 candidates; the ``--rounds 0`` calibration check compares with this.
    """
    if n_candidates < 1 or k < 1:
        raise ValueError(f"random_expectation: need n_candidates >= 1 and k >= 1, got "
                         f"{n_candidates}, {k}")
    top = min(k, n_candidates)
    if metric == "hr":
        # HR@K = min(K, N) / N
        return top / n_candidates
    if metric == "ndcg":
        # NDCG@K = (1/N) sum_{r<=min(K,N)} 1/log2(1+r)
        return sum(1.0 / math.log2(1 + r) for r in range(1, top + 1)) / n_candidates
    raise ValueError(f"random_expectation: metric must be 'hr' or 'ndcg', got {metric!r}")


def random_ranker(dataset: Dataset, split: str = "test", ks: Iterable[int] = (10, 20, 50)) -> dict:
    """Mean HR@K / NDCG@K of a uniformly random ranker over the dataset's users, on ``split``: the
    ``--rounds 0`` calibration reference. User u has N_u = n - |H_u| - 1 candidates
    (``random_expectation``)."""
    _split_items(dataset, split)                                               # validates split
    n_candidates = dataset.n_items - np.asarray(dataset.train_sizes) - 1         # (U,)
    sizes, users = np.unique(n_candidates, return_counts=True)                   # distinct N_u, how many
    out: dict = {}
    for k in _check_ks(ks):
        for metric in ("hr", "ndcg"):
            values = np.array([random_expectation(int(c), k, metric) for c in sizes])
            out[f"{metric}@{k}"] = float((values * users).sum() / users.sum())
    out["split"] = split
    return out


def _check_ks(ks: Iterable[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise OptionError(f"metrics: ks must be a non-empty list of positive integers, got {ks}")
    return ks


def _split_items(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets (U,), other held-out items (U,)) for ``split``."""
    if split == "valid":
        return dataset.valid_items, dataset.test_items
    if split == "test":
        return dataset.test_items, dataset.valid_items
    raise OptionError(f"metrics: split must be 'valid' or 'test', got {split!r}")


def _user_index(dataset: Dataset, users) -> np.ndarray:
    """(m,) int64 user indices to evaluate, checked against the dataset."""
    if users is None:
        return np.arange(dataset.n_users, dtype=np.int64)
    if isinstance(users, torch.Tensor):
        users = users.detach().cpu().numpy()
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if users.size and (users.min() < 0 or users.max() >= dataset.n_users):
        raise OptionError(f"metrics: users must be indices in 0..{dataset.n_users - 1}")
    return users


def _chunk_exclusion_mask(users: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor,
                          other: torch.Tensor, n_items: int) -> torch.Tensor:
    """(c, n) bool mask of the chunk's training items and other held-out items, from the CSR.

    The rows of the chunk are gathered with flat index arithmetic: entry e of user row r sits at
    ``indptr[u_r] + (e - first entry of row r)`` in ``indices``.
    """
    c = users.shape[0]
    starts = indptr[users]                                                  # (c,)
    lengths = indptr[users + 1] - starts                                    # (c,)
    rows = torch.repeat_interleave(torch.arange(c, device=users.device), lengths)  # (nnz_chunk,)
    row_first = torch.cumsum(lengths, 0) - lengths                          # (c,)
    within = torch.arange(rows.shape[0], device=users.device) - row_first[rows]    # (nnz_chunk,)
    cols = indices[starts[rows] + within]                                   # (nnz_chunk,)
    mask = torch.zeros(c, n_items, dtype=torch.bool, device=users.device)   # (c, n)
    mask.index_put_((rows, cols), torch.ones_like(rows, dtype=torch.bool))
    mask[torch.arange(c, device=users.device), other] = True
    return mask


@torch.no_grad()
def evaluate(score_fn: ScoreFn, dataset: Dataset, split: str = "valid",
             ks: Iterable[int] = (10, 20, 50), chunk_size: int = 1024,
             device: str | torch.device = "cpu", users=None,
             return_ranks: bool = False) -> dict:
    """Full-ranking HR@K / NDCG@K of ``score_fn`` on ``split`` (book/methods.md, "Protocol").

    ``score_fn(users)`` gets a LongTensor (c,) of user indices on ``device`` (c <= ``chunk_size``)
    and returns scores (c, n) for all items. For each user the training items and the other
    held-out item are excluded, then ``target_ranks`` and ``hr_ndcg`` apply. ``users`` (optional)
    restricts evaluation to those user indices, in that order. Returns ``{'hr@K', 'ndcg@K'}`` means
    over users and, when ``return_ranks``, ``'ranks'`` (numpy (m,) int64, in user order).
    """
    targets_np, other_np = _split_items(dataset, split)
    ks = _check_ks(ks)
    if chunk_size < 1:
        raise OptionError(f"metrics: chunk_size must be >= 1, got {chunk_size}")
    user_idx = _user_index(dataset, users)
    if user_idx.size == 0:
        raise ValueError("evaluate: no users to evaluate")
    device = torch.device(device)
    n = dataset.n_items
    indptr = torch.as_tensor(dataset.train_indptr, dtype=torch.long, device=device)    # (U+1,)
    indices = torch.as_tensor(dataset.train_indices, dtype=torch.long, device=device)  # (nnz,)
    targets_all = torch.as_tensor(targets_np, dtype=torch.long, device=device)         # (U,)
    other_all = torch.as_tensor(other_np, dtype=torch.long, device=device)             # (U,)
    users_all = torch.as_tensor(user_idx, dtype=torch.long, device=device)             # (m,)

    ranks = []
    for lo in range(0, users_all.shape[0], chunk_size):
        chunk = users_all[lo:lo + chunk_size]                                    # (c,)
        scores = score_fn(chunk)
        if not isinstance(scores, torch.Tensor) or scores.shape != (chunk.shape[0], n):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
            raise ValueError(f"evaluate: score_fn must return a tensor of shape "
                             f"({chunk.shape[0]}, {n}) (users, items), got {shape}")
        scores = scores.to(device)                                               # (c, n)
        bad_rows = ~torch.isfinite(scores).all(dim=1)
        if bool(bad_rows.any()):
            bad = chunk[bad_rows][:5].tolist()
            raise NonFiniteScores(f"scores are NaN or infinite for {int(bad_rows.sum())} users "
                                  f"(first user indices {bad})")
        mask = _chunk_exclusion_mask(chunk, indptr, indices, other_all[chunk], n)  # (c, n)
        ranks.append(target_ranks(scores, targets_all[chunk], mask))
    ranks_t = torch.cat(ranks).cpu()                                             # (m,)
    out: dict = hr_ndcg(ranks_t, ks)
    if return_ranks:
        out["ranks"] = ranks_t.numpy()
    return out


def sample_negatives(dataset: Dataset, n_negatives: int = 99, seed: int = 0) -> np.ndarray:
    """(U, n_negatives) items drawn per user uniformly without replacement from the items the user
    never interacted with (not in training, not the validation item, not the test item).

    Deterministic for a ``seed`` (one ``np.random.Generator``, users in index order), and the same
    for both splits, as in the sampled protocol of the PFedRec / FedRAP code.
    """
    n = dataset.n_items
    rng = np.random.default_rng(seed)
    out = np.empty((dataset.n_users, n_negatives), dtype=np.int64)
    allowed = np.ones(n, dtype=bool)                                              # (n,)
    for u in range(dataset.n_users):
        seen = np.concatenate([dataset.train_items(u),
                               [dataset.valid_items[u], dataset.test_items[u]]])
        allowed[seen] = False
        pool = np.flatnonzero(allowed)                                            # (n - |seen|,)
        allowed[seen] = True
        if pool.size < n_negatives:
            raise OptionError(f"metrics: n_negatives={n_negatives} but user {u} has only "
                              f"{pool.size} items never interacted with")
        out[u] = rng.choice(pool, size=n_negatives, replace=False)
    return out


@torch.no_grad()
def sampled_evaluate(score_fn: ScoreFn, dataset: Dataset, split: str = "test",
                     n_negatives: int = 99, k: int = 10, seed: int = 0,
                     chunk_size: int = 1024, device: str | torch.device = "cpu") -> dict:
    """Sampled-protocol HR@K / NDCG@K (PFedRec / FedRAP papers), labelled ``*_sampled``.

    Exists ONLY to compare with the numbers of the PFedRec and FedRAP papers, which rank the target
    among itself plus ``n_negatives`` (99) items sampled uniformly without replacement from the
    user's never-interacted items (``sample_negatives``). It is optimistic compared with the
    full-ranking ``evaluate`` (99 random rivals instead of all ~n), so never mix the two in a
    table. Ranks use the same rule as ``target_ranks`` (ties count against the target):
    rank = 1 + #{sampled j : score_j >= score_t}; HR@K = 1[rank <= K]; NDCG@K = HR@K/log2(1+rank).
    Returns ``{'hr@K_sampled', 'ndcg@K_sampled'}``.
    """
    targets_np, _ = _split_items(dataset, split)
    if chunk_size < 1:
        raise OptionError(f"metrics: chunk_size must be >= 1, got {chunk_size}")
    device = torch.device(device)
    negatives = sample_negatives(dataset, n_negatives, seed)                     # (U, 99)
    # candidate column 0 is the target, columns 1.. the sampled negatives
    candidates = np.concatenate([targets_np[:, None], negatives], axis=1)        # (U, 1 + 99)
    candidates_t = torch.as_tensor(candidates, dtype=torch.long, device=device)
    ranks = []
    for lo in range(0, dataset.n_users, chunk_size):
        chunk = torch.arange(lo, min(lo + chunk_size, dataset.n_users), device=device)  # (c,)
        scores = score_fn(chunk)
        if not isinstance(scores, torch.Tensor) or scores.shape != (chunk.shape[0], dataset.n_items):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
            raise ValueError(f"sampled_evaluate: score_fn must return a tensor of shape "
                             f"({chunk.shape[0]}, {dataset.n_items}), got {shape}")
        cand_scores = scores.to(device).gather(1, candidates_t[chunk])           # (c, 1 + 99)
        no_mask = torch.zeros_like(cand_scores, dtype=torch.bool)                # (c, 1 + 99)
        zeros = torch.zeros(chunk.shape[0], dtype=torch.long, device=device)     # (c,)
        ranks.append(target_ranks(cand_scores, zeros, no_mask))
    metrics = hr_ndcg(torch.cat(ranks).cpu(), [k])
    return {f"{name}_sampled": value for name, value in metrics.items()}


@torch.no_grad()
def evaluate_cold(score_fn: ScoreFn, dataset: Dataset, ks: Iterable[int] = (10, 20, 50),
                  chunk_size: int = 1024, device: str | torch.device = "cpu") -> dict:
    """The cold-item protocol (``split.build_dataset``'s ``cold_fraction``). Every user with a cold
    test item (its newest interaction with an item held out of training) ranks it, full ranking,
    ties against the target:

    - among the cold items: candidates are the cold items except the user's other cold
      interactions; keys ``cold_hr@K``, ``cold_ndcg@K``, and ``cold_random_hr@K``, the expected
      HR@K of a random ranker among the same candidates (an ID model, whose cold rows never
      trained, ranks there at chance);
    - among all items: candidates are all items except the user's training items, its warm
      validation and test items and its other cold interactions; ``cold_all_hr@K``,
      ``cold_all_ndcg@K``;
    and ``cold_users``, how many users were ranked. Empty without a cold split."""
    if getattr(dataset, "cold_items", None) is None:
        return {}
    ks = _check_ks(ks)
    device = torch.device(device)
    n = dataset.n_items
    cold_test = torch.as_tensor(dataset.cold_test_items, dtype=torch.long, device=device)    # (U,)
    users_all = torch.nonzero(cold_test >= 0).flatten()                                       # (m,)
    if users_all.numel() == 0:
        return {"cold_users": 0}
    is_cold = torch.zeros(n, dtype=torch.bool, device=device)
    is_cold[torch.as_tensor(dataset.cold_items, dtype=torch.long, device=device)] = True
    indptr = torch.as_tensor(dataset.train_indptr, dtype=torch.long, device=device)
    indices = torch.as_tensor(dataset.train_indices, dtype=torch.long, device=device)
    cold_ptr = torch.as_tensor(dataset.cold_indptr, dtype=torch.long, device=device)
    cold_idx = torch.as_tensor(dataset.cold_indices, dtype=torch.long, device=device)
    valid = torch.as_tensor(dataset.valid_items, dtype=torch.long, device=device)
    test = torch.as_tensor(dataset.test_items, dtype=torch.long, device=device)
    among_cold, among_all = [], []
    for lo in range(0, users_all.shape[0], chunk_size):
        chunk = users_all[lo:lo + chunk_size]                                      # (c,)
        c = chunk.shape[0]
        scores = score_fn(chunk).to(device)                                        # (c, n)
        if not bool(torch.isfinite(scores).all()):
            raise NonFiniteScores("scores are NaN or infinite on the cold items")
        mask = _chunk_exclusion_mask(chunk, indptr, indices, valid[chunk], n)      # (c, n)
        rows = torch.arange(c, device=device)
        mask[rows, test[chunk]] = True
        # the user's cold interactions (the target itself is never counted by target_ranks)
        mask |= _chunk_exclusion_mask(chunk, cold_ptr, cold_idx, cold_test[chunk], n)
        targets = cold_test[chunk]
        among_all.append(target_ranks(scores, targets, mask))
        among_cold.append(target_ranks(scores, targets, mask | ~is_cold.unsqueeze(0)))
    out = {"cold_users": int(users_all.shape[0])}
    for prefix, ranks in (("cold_", among_cold), ("cold_all_", among_all)):
        out.update({prefix + k: v for k, v in hr_ndcg(torch.cat(ranks).cpu(), ks).items()})
    # a random ranker among the cold candidates: N_u = n_cold - (the user's cold interactions - 1)
    per_user = (cold_ptr[1:] - cold_ptr[:-1])[users_all].cpu().numpy()            # (m,)
    n_cold = len(dataset.cold_items)
    for k in ks:
        out[f"cold_random_hr@{k}"] = float(np.mean([random_expectation(int(n_cold - p + 1), k)
                                                    for p in per_user]))
    return out
