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
``index_put``, never as a dense users x items mask for everybody. ``evaluate_splits`` ranks several
splits (valid and test) from ONE score matrix per chunk: a model is scored once per evaluation
point, whatever the number of splits and protocols read from the scores.

The sampled protocol (target + 99 sampled non-interacted items, HR@10 / NDCG@10; keys
``*_sampled``) exists only to compare with the PFedRec / FedRAP papers; it is optimistic compared
with full ranking. Its negatives (``sample_negatives``) come from one of two pools:

- ``"prior"`` (the default): items the user never interacted with up to the held-out item, i.e.
  outside its training set and not the target; for validation the (later) test item may be drawn;
- ``"official"``: what the PFedRec / FedRAP codes draw from, outside every interaction of the user,
  validation and test items included. A mild leak: the validation negatives are chosen knowing the
  test item (it is never drawn), so model selection reads a little of the test split.
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


def _chunk_train_entries(users: torch.Tensor, indptr: torch.Tensor,
                         indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols), each (nnz_chunk,): the chunk's training items as entries of a (c, n) matrix,
    from the CSR. Entry e of user row r sits at ``indptr[u_r] + (e - first entry of row r)`` in
    ``indices``."""
    c = users.shape[0]
    starts = indptr[users]                                                  # (c,)
    lengths = indptr[users + 1] - starts                                    # (c,)
    rows = torch.repeat_interleave(torch.arange(c, device=users.device), lengths)  # (nnz_chunk,)
    row_first = torch.cumsum(lengths, 0) - lengths                          # (c,)
    within = torch.arange(rows.shape[0], device=users.device) - row_first[rows]    # (nnz_chunk,)
    return rows, indices[starts[rows] + within]


def _chunk_exclusion_mask(users: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor,
                          other: torch.Tensor | None, n_items: int) -> torch.Tensor:
    """(c, n) bool mask of the chunk's training items and other held-out items (``other`` (c,), or
    None for none), from the CSR."""
    c = users.shape[0]
    rows, cols = _chunk_train_entries(users, indptr, indices)
    mask = torch.zeros(c, n_items, dtype=torch.bool, device=users.device)   # (c, n)
    mask.index_put_((rows, cols), torch.ones_like(rows, dtype=torch.bool))
    if other is not None:
        mask[torch.arange(c, device=users.device), other] = True
    return mask


def masked_ranks(masked: torch.Tensor, target_score: torch.Tensor, targets: torch.Tensor,
                 other: torch.Tensor) -> torch.Tensor:
    """``target_ranks`` of ``targets`` (c,) excluding the training items and ``other`` (c,), from
    scores whose training entries were set to -inf (``masked`` (c, n)) and the targets' own scores
    ``target_score`` (c,): count every entry at or above the target, then take back the target
    itself and the other held-out item when they were counted. The masked matrix serves every split."""
    rows = torch.arange(masked.shape[0], device=masked.device)              # (c,)
    t = target_score.unsqueeze(1)                                           # (c, 1)
    # #{j : s_j >= s_t} over non-training items (an int32 sum avoids an int64 copy of the mask)
    count = (masked >= t).sum(dim=1, dtype=torch.int32).long()             # (c,)
    count -= (masked[rows, targets] >= target_score).long()                 # the target itself
    count -= ((masked[rows, other] >= target_score) & (other != targets)).long()   # the other item
    return 1 + count


def _check_scores(scores, chunk: torch.Tensor, n: int, device) -> torch.Tensor:
    """``score_fn``'s answer for ``chunk``, checked: a (c, n) tensor of finite values, on ``device``."""
    if not isinstance(scores, torch.Tensor) or scores.shape != (chunk.shape[0], n):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
        raise ValueError(f"evaluate: score_fn must return a tensor of shape "
                         f"({chunk.shape[0]}, {n}) (users, items), got {shape}")
    scores = scores.to(device)                                                   # (c, n)
    bad_rows = ~torch.isfinite(scores).all(dim=1)
    if bool(bad_rows.any()):
        bad = chunk[bad_rows][:5].tolist()
        raise NonFiniteScores(f"scores are NaN or infinite for {int(bad_rows.sum())} users "
                              f"(first user indices {bad})")
    return scores


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Rank of each target among itself and its sampled negatives (the sampled protocol).

    ``scores`` (c, n), ``targets`` (c,), ``negatives`` (c, m) item indices. rank = 1 + #{sampled j :
    score_j >= score_t}: ties count against the target, as in ``target_ranks``. (c,) int64."""
    # candidate column 0 is the target, columns 1.. the sampled negatives
    candidates = torch.cat([targets.unsqueeze(1), negatives], dim=1)            # (c, 1 + m)
    cand_scores = scores.gather(1, candidates)                                  # (c, 1 + m)
    no_mask = torch.zeros_like(cand_scores, dtype=torch.bool)                   # (c, 1 + m)
    zeros = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)  # (c,)
    return target_ranks(cand_scores, zeros, no_mask)


@torch.no_grad()
def evaluate_splits(score_fn: ScoreFn, dataset: Dataset, splits: Sequence[str] = SPLITS,
                    ks: Iterable[int] = (10, 20, 50), chunk_size: int = 1024,
                    device: str | torch.device = "cpu", users=None, return_ranks: bool = False,
                    sampled: dict | None = None, sampled_ks: Iterable[int] = (10,)) -> dict:
    """Full-ranking HR@K / NDCG@K of ``score_fn`` on each of ``splits``, from one score matrix per
    chunk of users (book/methods.md, "Protocol").

    ``score_fn(users)`` gets a LongTensor (c,) of user indices on ``device`` (c <= ``chunk_size``)
    and returns scores (c, n) for all items; it is called ONCE per chunk, whatever the number of
    splits. For each split the training items and the other held-out item are excluded, then
    ``target_ranks`` and ``hr_ndcg`` apply. ``users`` (optional) restricts evaluation to those user
    indices, in that order. ``sampled`` (optional) maps a split to its sampled negatives (U, m)
    (``sample_negatives``): that split then also gets the sampled protocol's ``hr@K_sampled`` /
    ``ndcg@K_sampled`` for K in ``sampled_ks``, from the same scores.

    Returns ``{split: {'hr@K', 'ndcg@K', ...}}``, and per split ``'ranks'`` (numpy (m,) int64, in
    user order) when ``return_ranks``.
    """
    splits = list(splits)
    items = {split: _split_items(dataset, split) for split in splits}
    if not splits or len(set(splits)) != len(splits):
        raise OptionError(f"metrics: splits must be distinct names among {', '.join(SPLITS)}, got {splits}")
    ks = _check_ks(ks)
    sampled = dict(sampled or {})
    unknown = sorted(set(sampled) - set(splits))
    if unknown:
        raise OptionError(f"metrics: sampled negatives for {unknown}, which are not evaluated")
    if sampled:
        sampled_ks = _check_ks(sampled_ks)
    if chunk_size < 1:
        raise OptionError(f"metrics: chunk_size must be >= 1, got {chunk_size}")
    user_idx = _user_index(dataset, users)
    if user_idx.size == 0:
        raise ValueError("evaluate: no users to evaluate")
    device = torch.device(device)
    n = dataset.n_items
    as_long = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=device)  # noqa: E731
    indptr, indices = as_long(dataset.train_indptr), as_long(dataset.train_indices)  # (U+1,), (nnz,)
    targets = {split: as_long(t) for split, (t, _) in items.items()}                 # (U,) each
    others = {split: as_long(o) for split, (_, o) in items.items()}                  # (U,) each
    negatives = {split: as_long(neg) for split, neg in sampled.items()}              # (U, m) each
    for split, neg in negatives.items():
        if neg.dim() != 2 or neg.shape[0] != dataset.n_users:
            raise ValueError(f"evaluate: sampled negatives of {split} must be (users, m) = "
                             f"({dataset.n_users}, m), got {tuple(neg.shape)}")
    users_all = as_long(user_idx)                                                    # (m,)

    ranks = {split: [] for split in splits}
    ranks_sampled = {split: [] for split in negatives}
    for lo in range(0, users_all.shape[0], chunk_size):
        chunk = users_all[lo:lo + chunk_size]                                        # (c,)
        scores = _check_scores(score_fn(chunk), chunk, n, device)                    # (c, n)
        rows = torch.arange(chunk.shape[0], device=device)
        # training items are never candidates: -inf cannot reach a (finite) target's score
        masked = scores.index_put(_chunk_train_entries(chunk, indptr, indices),
                                  torch.tensor(-math.inf, dtype=scores.dtype, device=device))
        for split in splits:
            target = targets[split][chunk]                                           # (c,)
            target_score = scores[rows, target]                                      # (c,)
            ranks[split].append(masked_ranks(masked, target_score, target, others[split][chunk]))
            if split in negatives:
                ranks_sampled[split].append(sampled_ranks(scores, target, negatives[split][chunk]))
    out: dict = {}
    for split in splits:
        ranks_t = torch.cat(ranks[split]).cpu()                                      # (m,)
        out[split] = hr_ndcg(ranks_t, ks)
        if split in ranks_sampled:
            metrics = hr_ndcg(torch.cat(ranks_sampled[split]).cpu(), sampled_ks)
            out[split].update({f"{name}_sampled": value for name, value in metrics.items()})
        if return_ranks:
            out[split]["ranks"] = ranks_t.numpy()
    return out


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
    ``evaluate_splits`` does several splits from one scoring.
    """
    return evaluate_splits(score_fn, dataset, (split,), ks=ks, chunk_size=chunk_size, device=device,
                           users=users, return_ranks=return_ranks)[split]


POOLS = ("prior", "official")
SAMPLED_NEGATIVES = 99


def sample_negatives(dataset: Dataset, n_negatives: int = SAMPLED_NEGATIVES, seed: int = 0,
                     split: str = "test", pool: str = "official") -> np.ndarray:
    """(U, n_negatives) items drawn per user uniformly without replacement from the sampled
    protocol's ``pool`` for ``split`` (module docstring):

    - ``"official"``: items the user never interacted with (not in training, not the validation
      item, not the test item), the same pool for both splits (the PFedRec / FedRAP codes; a mild
      leak for validation);
    - ``"prior"``: items the user had not interacted with up to the held-out item: not in training
      and not the target; for ``test`` the validation item is excluded too (it came before), for
      ``valid`` the later test item may be drawn.

    Deterministic for a ``seed`` (one ``np.random.Generator``, users in index order). With the
    official pool both splits get the same draw, as the FedRAP code does.
    """
    if pool not in POOLS:
        raise OptionError(f"metrics: pool must be one of {', '.join(POOLS)}, got {pool!r}")
    _split_items(dataset, split)                                                  # validates split
    n = dataset.n_items
    rng = np.random.default_rng(seed)
    out = np.empty((dataset.n_users, n_negatives), dtype=np.int64)
    allowed = np.ones(n, dtype=bool)                                              # (n,)
    for u in range(dataset.n_users):
        held = ([dataset.valid_items[u]] if pool == "prior" and split == "valid"
                else [dataset.valid_items[u], dataset.test_items[u]])
        seen = np.concatenate([dataset.train_items(u), held])
        allowed[seen] = False
        candidates = np.flatnonzero(allowed)                                      # (n - |seen|,)
        allowed[seen] = True
        if candidates.size < n_negatives:
            raise OptionError(f"metrics: n_negatives={n_negatives} but user {u} has only "
                              f"{candidates.size} items never interacted with")
        out[u] = rng.choice(candidates, size=n_negatives, replace=False)
    return out


def sampled_evaluate(score_fn: ScoreFn, dataset: Dataset, split: str = "test",
                     n_negatives: int = SAMPLED_NEGATIVES, k: int = 10, seed: int = 0,
                     chunk_size: int = 1024, device: str | torch.device = "cpu",
                     pool: str = "official") -> dict:
    """Sampled-protocol HR@K / NDCG@K (PFedRec / FedRAP papers), labelled ``*_sampled``.

    Exists ONLY to compare with the numbers of the PFedRec and FedRAP papers, which rank the target
    among itself plus ``n_negatives`` (99) items sampled uniformly without replacement from the
    user's never-interacted items (``sample_negatives``, ``pool``). It is optimistic compared with
    the full-ranking ``evaluate`` (99 random rivals instead of all ~n), so never mix the two in a
    table. Ranks use the same rule as ``target_ranks`` (ties count against the target):
    rank = 1 + #{sampled j : score_j >= score_t}; HR@K = 1[rank <= K]; NDCG@K = HR@K/log2(1+rank).
    Returns ``{'hr@K_sampled', 'ndcg@K_sampled'}``.
    """
    negatives = sample_negatives(dataset, n_negatives, seed, split, pool)        # (U, 99)
    out = evaluate_splits(score_fn, dataset, (split,), ks=(k,), chunk_size=chunk_size,
                          device=device, sampled={split: negatives}, sampled_ks=(k,))[split]
    return {key: value for key, value in out.items() if key.endswith("_sampled")}


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
