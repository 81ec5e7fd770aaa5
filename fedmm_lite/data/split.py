"""From validated tables to the leave-one-out ``Dataset`` (book/methods.md, "Protocol").

Steps, in this order, all vectorised with numpy:
1. de-duplicate (user, item) pairs, keeping the earliest timestamp;
2. k-core filter on users and items, repeated until stable (only when ``k_core > 0``);
3. drop users with fewer than ``min_user_interactions`` interactions (counted, never a crash);
4. drop catalogue items that no remaining user interacted with (counted);
5. index users and items by sorted original id (see ``_sorted_ids``);
6. leave-one-out by timestamp: newest -> test, second newest -> validation, the rest -> train;
   ties (one user, one timestamp) are broken by ``ties``:
   - ``"item"`` (the default): by item id in the order of step 5, the larger id counting as the
     newer one (of two items seen at the newest timestamp, the larger id is the test item);
   - ``"file"``: by row order in interactions.csv, the EARLIER row counting as the newer one. This
     is what the PFedRec and FedRAP codes do (pandas ``rank(method='first', ascending=False)`` on
     the timestamp, in file order), offered so that a comparison with them holds out the same
     items; on ml-100k 415 of 943 users have ties at their newest timestamp;
7. check titles and images: an empty title, an empty image field or an absent file is *missing*, a
   file that PIL cannot decode (or a decompression bomb) is *unreadable* (``images.image_status``,
   the same test ``encode`` applies); both are recorded in the ``LoadReport`` and the image path is
   set to ``None`` (the encoders impute the mean feature).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from ..errors import DatasetError, OptionError
from .dataset import Dataset, LoadReport
from .folder import RawData
from .images import image_status


def _sorted_ids(ids: np.ndarray) -> np.ndarray:
    """Sort original ids deterministically: numerically when every id is an integer
    (so ``2`` comes before ``10``; equal numbers such as ``7`` and ``07`` then by text),
    otherwise as plain text (so ``item10`` comes before ``item2``)."""
    ids = np.asarray(ids, dtype=object)
    as_text = pd.Series(ids, dtype=str)
    if len(ids) and as_text.str.fullmatch(r"[+-]?\d{1,18}").all():
        numbers = as_text.astype(np.int64).to_numpy()
        order = np.lexsort((as_text.to_numpy(dtype=str), numbers))
    else:
        order = np.argsort(as_text.to_numpy(dtype=str), kind="stable")
    return ids[order].astype(str)


def _k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the interactions kept by the k-core filter.

    ``users``, ``items``: (nnz,) integer codes. Repeatedly removes the interactions of every user and
    every item with fewer than ``k`` interactions, until no count is below ``k``.
    """
    keep = np.ones(len(users), dtype=bool)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    while True:
        user_count = np.bincount(users[keep], minlength=n_users)  # (users,)
        item_count = np.bincount(items[keep], minlength=n_items)  # (items,)
        weak = keep & ((user_count[users] < k) | (item_count[items] < k))
        if not weak.any():
            return keep
        keep &= ~weak


def _check_image(root: Path, image: str, decode: bool) -> str:
    """'ok', 'missing' or 'unreadable' (``images.image_status``); without ``decode`` only whether
    the file exists."""
    path = root / image if image else None
    if decode:
        return image_status(path)
    return "ok" if path is not None and path.is_file() else "missing"


def _empty_message(name: str, report: LoadReport, k_core: int, min_user: int, n_users: int,
                   n_items: int) -> str:
    parts = [f"{report.interactions_read} interactions read ({n_users} users, {n_items} items with "
             f"interactions)", f"{report.duplicate_interactions_removed} duplicates removed"]
    if k_core > 0:
        parts.append(f"the {k_core}-core filter dropped {report.users_dropped_kcore} users and "
                     f"{report.items_dropped_kcore} items")
    parts.append(f"{report.users_dropped_too_few} users had fewer than {min_user} interactions")
    hint = ("leave-one-out needs at least 3 interactions per user (train, validation, test): add "
            "interactions to interactions.csv")
    weaker = (["k_core=0"] if k_core > 0 else []) + (["min_user_interactions=3"] if min_user > 3 else [])
    if weaker:  # the filters are Python arguments only; the command line has no option for them
        hint += f"; or, in Python, load a weaker filter: load_dataset(..., {', '.join(weaker)})"
    return f"{name}: empty after filtering: " + "; ".join(parts) + "; " + hint


TIES = ("item", "file")


def build_dataset(raw: RawData, *, min_user_interactions: int = 3, k_core: int = 0,
                  check_images: bool = True, name: str | None = None, ties: str = "item",
                  cold_fraction: float = 0.0, cold_seed: int = 0) -> Dataset:
    """Filter ``raw`` and split it leave-one-out by timestamp (book/methods.md, "Protocol").

    ``min_user_interactions`` must be at least 3 (one train, one validation, one test item).
    ``ties`` ("item" | "file") breaks equal timestamps of a user (module docstring, step 6).
    ``check_images=False`` skips decoding image files (absent files are still counted as missing).
    ``cold_fraction`` > 0: the cold-item split (``_cold_split``). Raises ``DatasetError`` when no
    user is left, saying which filter removed what.
    """
    if min_user_interactions < 3:
        raise OptionError(f"min_user_interactions={min_user_interactions}: leave-one-out needs at least "
                          f"3 interactions per user (train, validation, test)")
    if k_core < 0:
        raise OptionError(f"k_core={k_core}: must be 0 (off) or a positive count")
    if ties not in TIES:
        raise OptionError(f"ties={ties!r}: choose one of {', '.join(TIES)}")
    if not 0.0 <= cold_fraction < 1.0:
        raise OptionError(f"--cold-items {cold_fraction}: a fraction of the items in [0, 1)")
    name = name or raw.root.name
    report = LoadReport(interactions_read=len(raw.interactions))

    # 1. de-duplicate (user, item), keeping the earliest timestamp
    row = np.arange(len(raw.interactions))  # (nnz_read,) file order, for ties="file"
    inter = raw.interactions.assign(_row=row).sort_values(["user_id", "item_id", "timestamp"],
                                                          kind="stable")
    inter = inter.drop_duplicates(["user_id", "item_id"], keep="first")
    report.duplicate_interactions_removed = report.interactions_read - len(inter)
    user_code, user_uniques = pd.factorize(inter["user_id"])  # (nnz,), (users,)
    item_code, item_uniques = pd.factorize(inter["item_id"])  # (nnz,), (items,)
    timestamp = inter["timestamp"].to_numpy()  # int64 (exact) or float64, as read_folder gave it
    file_row = inter["_row"].to_numpy()        # (nnz,) row of each interaction in the file
    n_users_read, n_items_read = len(user_uniques), len(item_uniques)

    # 2. k-core on users and items, until stable
    keep = np.ones(len(inter), dtype=bool)
    if k_core > 0 and len(inter):
        keep = _k_core(user_code, item_code, k_core)
        report.users_dropped_kcore = n_users_read - len(np.unique(user_code[keep]))
        report.items_dropped_kcore = n_items_read - len(np.unique(item_code[keep]))

    # 3. users with too few interactions for leave-one-out
    user_count = np.bincount(user_code[keep], minlength=n_users_read)  # (users,)
    too_few = (user_count > 0) & (user_count < min_user_interactions)
    report.users_dropped_too_few = int(too_few.sum())
    keep &= ~too_few[user_code]
    if not keep.any():
        raise DatasetError(_empty_message(name, report, k_core, min_user_interactions,
                                          n_users_read, n_items_read))
    user_code, item_code, timestamp = user_code[keep], item_code[keep], timestamp[keep]
    file_row = file_row[keep]

    # 4./5. remaining users and items, indexed by sorted original id
    user_ids = _sorted_ids(np.asarray(user_uniques)[np.unique(user_code)])
    item_ids = _sorted_ids(np.asarray(item_uniques)[np.unique(item_code)])
    report.items_without_interactions = len(raw.items) - len(item_ids) - report.items_dropped_kcore
    user_index = pd.Index(user_ids).get_indexer(np.asarray(user_uniques)[user_code])  # (nnz,)
    item_index = pd.Index(item_ids).get_indexer(np.asarray(item_uniques)[item_code])  # (nnz,)
    cold = None
    if cold_fraction > 0:
        user_ids, user_index, item_index, timestamp, cold = _cold_split(
            user_ids, user_index, item_index, timestamp, len(item_ids), cold_fraction, cold_seed,
            min_user_interactions, report, name)
    n_users = len(user_ids)

    # 6. leave-one-out: sort by (user, timestamp, tie key); the last entry of a user is its test
    # item. The tie key: the item index ("item"), or minus the file row ("file": earlier = newer)
    tie_key = item_index if ties == "item" else -file_row
    order = np.lexsort((tie_key, timestamp, user_index))
    user_sorted, item_sorted = user_index[order], item_index[order]  # (nnz,)
    counts = np.bincount(user_sorted, minlength=n_users)  # (users,) all >= min_user_interactions
    ends = np.cumsum(counts)  # (users,) one past each user's last entry
    test_items = item_sorted[ends - 1].astype(np.int64)   # (users,)
    valid_items = item_sorted[ends - 2].astype(np.int64)  # (users,)
    is_train = np.ones(len(order), dtype=bool)
    is_train[ends - 1] = False
    is_train[ends - 2] = False
    train_users, train_items = user_sorted[is_train], item_sorted[is_train]
    train_order = np.lexsort((train_items, train_users))  # items sorted within each user
    train_indices = train_items[train_order].astype(np.int64)  # (nnz_train,)
    train_indptr = np.zeros(n_users + 1, dtype=np.int64)
    train_indptr[1:] = np.cumsum(counts - 2)

    # 7. titles and images of the remaining items
    catalogue = raw.items.set_index("item_id").loc[item_ids]
    titles = catalogue["title"].tolist()
    report.missing_titles = [item for item, title in zip(item_ids, titles) if not title]
    image_paths: list[Path | None] = []
    for item, image in zip(item_ids, catalogue["image"].tolist()):
        status = _check_image(raw.root, image, check_images)
        if status == "missing":
            report.missing_images.append(item)
        elif status == "unreadable":
            report.unreadable_images.append(item)
        image_paths.append(raw.root / image if status == "ok" else None)

    dataset = Dataset(name=name, user_ids=user_ids, item_ids=item_ids, titles=titles,
                      image_paths=image_paths, train_indptr=train_indptr, train_indices=train_indices,
                      valid_items=valid_items, test_items=test_items, root=raw.root, report=report)
    if cold is not None:
        dataset.cold_items, dataset.cold_indptr, dataset.cold_indices, dataset.cold_test_items = cold
    return dataset


def _cold_split(user_ids, user_index, item_index, timestamp, n_items: int, fraction: float, seed: int,
                min_user: int, report: LoadReport, name: str):
    """The cold-item split: round(fraction n) items, drawn uniformly with ``seed``, are held out of
    training entirely (never a positive, never a negative: ``NegativeSampler`` skips them).
    Their interactions become each user's cold targets: the newest one is the user's cold test
    item (``Dataset.cold_test_items``, -1 for a user without one), all of them are kept apart
    (``cold_indptr``/``cold_indices``). The usual leave-one-out split then runs on the other
    (warm) interactions; a user left with fewer than ``min_user`` warm ones is dropped (counted
    in ``report.users_dropped_cold``). Returns the kept user ids, the warm interactions and
    (cold items, cold CSR, cold test items)."""
    k = int(round(fraction * n_items))
    if not 0 < k < n_items:
        raise OptionError(f"--cold-items {fraction}: holds out {k} of {n_items} items; choose a "
                          f"fraction that leaves at least one item on each side")
    cold_items = np.sort(np.random.default_rng(seed).choice(n_items, size=k, replace=False))
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[cold_items] = True
    held = is_cold[item_index]                                        # (nnz,) interaction is cold
    warm_count = np.bincount(user_index[~held], minlength=len(user_ids))  # (users,)
    keep = warm_count >= min_user
    report.users_dropped_cold = int((~keep).sum())
    if not keep.any():
        raise DatasetError(f"{name}: --cold-items {fraction} leaves no user with {min_user} warm "
                           f"interactions")
    new_index = np.cumsum(keep) - 1                                   # old user -> new user
    kept = keep[user_index]
    user_index, item_index, timestamp, held = (user_index[kept], item_index[kept], timestamp[kept],
                                               held[kept])
    user_index = new_index[user_index]
    n_users = int(keep.sum())
    cu, ci, ct = user_index[held], item_index[held], timestamp[held]
    order = np.lexsort((ci, ct, cu))                                  # by user, then time, then item
    cu, ci = cu[order], ci[order]
    counts = np.bincount(cu, minlength=n_users)
    cold_indptr = np.zeros(n_users + 1, dtype=np.int64)
    cold_indptr[1:] = np.cumsum(counts)
    cold_test = np.full(n_users, -1, dtype=np.int64)
    has = counts > 0
    cold_test[has] = ci[cold_indptr[1:][has] - 1]                     # the newest cold interaction
    cold_indices = ci.astype(np.int64)                                # (nnz_cold,) time order per user
    return (np.asarray(user_ids)[keep], user_index[~held], item_index[~held], timestamp[~held],
            (cold_items.astype(np.int64), cold_indptr, cold_indices, cold_test))
