"""The in-memory dataset every later stage uses: one user = one client, items indexed 0..n-1.

Training items are stored as one CSR structure over users (``train_indptr``, ``train_indices``),
item indices sorted within each user, so that the whole population is two flat arrays: the engine
gathers the rows of a chunk of clients at once, and the negative sampler tests membership with one
``searchsorted``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class LoadReport:
    """What loading dropped, imputed or could not read; shown by ``info`` and the Data chapter."""

    interactions_read: int = 0
    duplicate_interactions_removed: int = 0
    users_dropped_too_few: int = 0      # fewer than ``min_user_interactions`` (after k-core)
    users_dropped_kcore: int = 0
    users_dropped_cold: int = 0          # cold-item split: fewer than the minimum of warm interactions
    items_dropped_kcore: int = 0
    items_without_interactions: int = 0  # listed in items.csv, never interacted with: dropped
    missing_images: list[str] = field(default_factory=list)     # item ids: no image given / file absent
    unreadable_images: list[str] = field(default_factory=list)  # item ids: file present but corrupt
    missing_titles: list[str] = field(default_factory=list)     # item ids with an empty title

    def as_dict(self) -> dict:
        return {
            "interactions_read": self.interactions_read,
            "duplicate_interactions_removed": self.duplicate_interactions_removed,
            "users_dropped_too_few": self.users_dropped_too_few,
            "users_dropped_kcore": self.users_dropped_kcore,
            "users_dropped_cold": self.users_dropped_cold,
            "items_dropped_kcore": self.items_dropped_kcore,
            "items_without_interactions": self.items_without_interactions,
            "missing_images": len(self.missing_images),
            "unreadable_images": len(self.unreadable_images),
            "missing_titles": len(self.missing_titles),
        }


@dataclass
class Dataset:
    """A leave-one-out split of implicit feedback (book/methods.md, "Protocol").

    Per user u (index 0..U-1): training items ``train_indices[train_indptr[u]:train_indptr[u+1]]``
    (sorted item indices), one validation item ``valid_items[u]`` (second newest) and one test item
    ``test_items[u]`` (newest).
    """

    name: str
    user_ids: np.ndarray            # (U,) original user ids, as str
    item_ids: np.ndarray            # (n,) original item ids, as str
    titles: list[str]               # (n,) "" where the title is missing
    image_paths: list[Path | None]  # (n,) None where no readable image exists
    train_indptr: np.ndarray        # (U+1,) int64
    train_indices: np.ndarray       # (nnz,) int64, sorted within each user
    valid_items: np.ndarray         # (U,) int64
    test_items: np.ndarray          # (U,) int64
    root: Path | None = None        # the dataset folder (features/ cache lives under it)
    features: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (n, D) float32
    feature_encoder: str | None = None   # tag of the encoder that produced ``features``
    ground_truth: dict | None = None     # planted structure (world only), see data/world.py
    # cold-item split (split.py, ``cold_fraction``): items held out of training entirely
    cold_items: np.ndarray | None = None     # (n_cold,) sorted item indices; None = no cold split
    cold_indptr: np.ndarray | None = None    # (U+1,) each user's interactions with cold items ...
    cold_indices: np.ndarray | None = None   # (nnz_cold,) ... oldest first
    cold_test_items: np.ndarray | None = None  # (U,) the newest of them (-1: the user has none)
    report: LoadReport = field(default_factory=LoadReport)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_train(self) -> int:
        return int(self.train_indptr[-1])

    @property
    def train_sizes(self) -> np.ndarray:
        """(U,) number of training items per user."""
        return np.diff(self.train_indptr)

    def train_items(self, user: int) -> np.ndarray:
        """Sorted training item indices of one user."""
        return self.train_indices[self.train_indptr[user]:self.train_indptr[user + 1]]

    def train_user_of_each_interaction(self) -> np.ndarray:
        """(nnz,) the user index of each entry of ``train_indices``."""
        return np.repeat(np.arange(self.n_users), self.train_sizes)

    def stats(self) -> dict:
        """Statistics in the papers' format (users, items, interactions, sparsity)."""
        interactions = self.n_train + 2 * self.n_users + (0 if self.cold_indices is None
                                                          else len(self.cold_indices))
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": interactions,
            "sparsity": 1.0 - interactions / (self.n_users * self.n_items),
            "train_per_user_min": int(self.train_sizes.min()) if self.n_users else 0,
            "train_per_user_max": int(self.train_sizes.max()) if self.n_users else 0,
            "missing_images": len(self.report.missing_images) + len(self.report.unreadable_images),
            "missing_titles": len(self.report.missing_titles),
            **({} if self.cold_items is None else {
                "cold_items": int(len(self.cold_items)),
                "cold_test_users": int((self.cold_test_items >= 0).sum())}),
            "report": self.report.as_dict(),
        }


def stats_table(datasets: list[Dataset]):
    """The papers' dataset table: users, items, interactions, sparsity (one row per dataset)."""
    import pandas as pd

    rows = []
    for ds in datasets:
        s = ds.stats()
        rows.append({"dataset": s["name"], "#users": s["users"], "#items": s["items"],
                     "#interactions": s["interactions"], "sparsity": f"{s['sparsity']:.2%}"})
    return pd.DataFrame(rows).set_index("dataset")
