"""Figures of the data (chapter 1): the item grid, degree distributions, the leave-one-out split,
the world's planted groups. Each function takes data, draws on a new matplotlib figure and
returns it, so that notebooks stay one line per figure and the same figure comes out every build.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .data.dataset import Dataset
from .data.images import read_picture


def item_grid(dataset: Dataset, n: int = 24, cols: int = 8, seed: int = 0,
              title_chars: int = 28) -> plt.Figure:
    """A grid of item images with their titles (a seeded sample of the catalogue)."""
    rng = np.random.default_rng(seed)
    items = np.sort(rng.choice(dataset.n_items, size=min(n, dataset.n_items), replace=False))
    rows = int(np.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.15 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i in zip(np.ravel(axes), items):
        picture = read_picture(dataset.image_paths[i])[1]
        if picture is not None:
            ax.imshow(picture)
        else:
            ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=8, color="grey")
        title = dataset.titles[i] or "(no title)"
        ax.set_title(_wrap(title[:title_chars * 2], title_chars), fontsize=7)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:2])


def degree_distributions(dataset: Dataset) -> plt.Figure:
    """Item popularity (rank-frequency, log-log: the long tail) and user activity (histogram)."""
    items = np.concatenate([dataset.train_indices, dataset.valid_items, dataset.test_items])
    item_degree = np.sort(np.bincount(items, minlength=dataset.n_items))[::-1]
    user_degree = dataset.train_sizes + 2
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.loglog(np.arange(1, len(item_degree) + 1), np.maximum(item_degree, 0.8), ".", ms=3)
    left.set_xlabel("item rank by popularity")
    left.set_ylabel("interactions")
    top = max(1, len(item_degree) // 10)
    share = item_degree[:top].sum() / max(1, item_degree.sum())
    left.set_title(f"items: top 10% hold {share:.0%} of interactions")
    bins = np.logspace(np.log10(max(1, user_degree.min())), np.log10(user_degree.max() + 1), 30)
    right.hist(user_degree, bins=bins)
    right.set_xscale("log")
    right.set_xlabel("interactions per user")
    right.set_ylabel("users")
    right.set_title(f"users: {user_degree.min()} to {user_degree.max()} interactions, "
                    f"median {int(np.median(user_degree))}")
    fig.suptitle(dataset.name)
    fig.tight_layout()
    return fig


def leave_one_out_timeline(interactions: pd.DataFrame, dataset: Dataset, user: int) -> plt.Figure:
    """One user's interactions on a time axis, coloured by the split they fall into."""
    user_id = dataset.user_ids[user]
    rows = interactions[interactions["user_id"] == user_id].sort_values(["timestamp", "item_id"])
    index_of = {item_id: i for i, item_id in enumerate(dataset.item_ids)}
    items = rows["item_id"].map(index_of).to_numpy()
    kind = np.where(items == dataset.test_items[user], "test",
                    np.where(items == dataset.valid_items[user], "valid", "train"))
    colours = {"train": "tab:blue", "valid": "tab:orange", "test": "tab:red"}
    fig, ax = plt.subplots(figsize=(10, 1.8))
    t = rows["timestamp"].to_numpy(dtype=float)
    for name, colour in colours.items():
        mask = kind == name
        ax.scatter(t[mask], np.zeros(mask.sum()), s=60, c=colour, label=f"{name} ({mask.sum()})")
    ax.set_yticks([])
    ax.set_xlabel("timestamp")
    ax.set_title(f"user {user_id}: the newest interaction is the test item, the one before it validation")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def planted_groups_table(dataset: Dataset) -> pd.DataFrame:
    """How strongly each planted group's taste shows in each item attribute (a lift).

    For user u and attribute a, the user's history predicts its test item's value v with
    probability p_u = (share of u's training items with value v); a taste-less user would get
    b_u = (share of all training interactions with value v). The table gives, per group,
    mean(p_u) / mean(b_u): 1 = the attribute says nothing about the group's next item, 2 = twice
    as predictive as popularity alone.
    """
    truth = dataset.ground_truth
    if truth is None:
        raise ValueError(f"{dataset.name} has no planted ground truth (only the world has)")
    groups = np.asarray(truth["user_group"])
    owner = dataset.train_user_of_each_interaction()                       # (nnz,)
    rows = []
    for g, name in enumerate(truth["group_names"]):
        members = np.flatnonzero(groups == g)
        row = {"group": name, "taste in": truth["group_modality"][g], "users": len(members)}
        for attr, values in truth["item_attributes"].items():
            values = np.asarray(values)
            n_values = int(values.max()) + 1
            train_values = values[dataset.train_indices]                   # (nnz,)
            base = np.bincount(train_values, minlength=n_values) / len(train_values)
            # per-user histogram of training values: (U, V)
            hist = np.zeros((dataset.n_users, n_values))
            np.add.at(hist, (owner, train_values), 1.0)
            hist /= dataset.train_sizes[:, None]
            target = values[dataset.test_items[members]]                   # (members,)
            p = hist[members, target]
            b = base[target]
            column = f"{attr} ({truth['attribute_modality'][attr]})"
            row[column] = float(p.mean() / b.mean()) if len(members) else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("group").round(2)
