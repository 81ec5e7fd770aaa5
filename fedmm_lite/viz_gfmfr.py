"""Tables and figures of GFMFR runs for the chapter "Grouping clients and distilling group
preferences: GFMFR".

Everything reads ``RunResult`` objects of ``method="gfmfr"`` (their ``details``: the assignment
history and the final teacher) and, on the world, its planted ground truth; nothing trains, except
the explorer's callback when its button is clicked.

- ``cluster_dynamics_figure``: the group of each of a sample of users across rounds (the paper's
  Figure 4), with the adjusted Rand index against the planted groups per round;
- ``group_match_table``: learned groups against planted groups (counts);
- ``planted_taste``: how much a planted group likes each item (the world's generator weights);
- ``teacher_taste_table`` / ``teacher_taste_figure``: each group's teacher probabilities against the
  planted taste of the group it matches;
- ``group_tables``: the group-level item tables Q_l = S_phi(E_G[l], F) of a final state, and
  ``group_tables_umap_figure``: Q_l of every group in one UMAP, beside the backbone's global table;
- ``explorer``: an ipywidgets panel (groups, schedule, ablation -> a quick run and its plots).
"""
from __future__ import annotations

from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from . import viz_runs
from .fed.gfmfr import planted_ari

# the world generator's taste weights w_{g,a} (data/world.py) for the planted taste of an item
from .data.world import TASTE_WEIGHTS


def _planted(dataset):
    truth = getattr(dataset, "ground_truth", None)
    if not truth:
        raise ValueError("needs a dataset with planted groups (the world)")
    return truth


def cluster_dynamics_figure(result, dataset=None, users: int = 100, seed: int = 0) -> plt.Figure:
    """Left: the group of ``users`` sampled users (rows, sorted by planted group, then by final
    group) in every round (columns); white = not grouped yet. Right: the adjusted Rand index
    between learned and planted groups per round (world only)."""
    A = np.asarray(result.details["assignments"])                               # (rounds, U)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(A.shape[1], size=min(users, A.shape[1]), replace=False))
    truth = getattr(dataset, "ground_truth", None) if dataset is not None else None
    planted = np.asarray(truth["user_group"])[chosen] if truth else np.zeros(len(chosen), int)
    order = np.lexsort((A[-1, chosen], planted))
    grid = A[:, chosen[order]].T.astype(float)                                   # (users, rounds)
    grid[grid < 0] = np.nan
    panels = 2 if truth else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    cmap = plt.get_cmap("tab10", max(int(np.nanmax(grid)) + 1, 1) if np.isfinite(grid).any() else 1)
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap)
    ax.set_xlabel("round")
    ax.set_ylabel(f"{len(chosen)} users" + (" (sorted by planted group)" if truth else ""))
    ax.set_xticks(range(A.shape[0]), [str(t + 1) for t in range(A.shape[0])], fontsize=7)
    if truth:
        for edge in np.flatnonzero(np.diff(planted[order])) + 0.5:
            ax.axhline(edge, color="black", linewidth=1)
        ari = planted_ari(A, dataset)
        axes[0][1].plot(range(1, len(ari) + 1), ari, marker="o")
        axes[0][1].xaxis.get_major_locator().set_params(integer=True)
        axes[0][1].set_xlabel("round")
        axes[0][1].set_ylabel("adjusted Rand index vs planted groups")
        axes[0][1].set_ylim(-0.05, 1.05)
        axes[0][1].grid(alpha=0.3)
    ax.set_title("group of each user, round by round", fontsize=10)
    fig.tight_layout()
    return fig


def group_match_table(result, dataset) -> pd.DataFrame:
    """Users per (planted group, learned group) at the last round."""
    truth = _planted(dataset)
    last = np.asarray(result.details["assignments"])[-1]
    planted = np.asarray(truth["user_group"])
    names = list(truth["group_names"])
    table = pd.crosstab(pd.Series([names[g] for g in planted], name="planted group"),
                        pd.Series(last, name="learned group"))
    return table


def planted_taste(dataset) -> np.ndarray:
    """(planted groups, n): sum_a w_{g,a} 1[v_a(i) is one of group g's preferred values], the part
    of the world's affinity that a whole planted group shares."""
    truth = _planted(dataset)
    attributes, values, prefs = truth["item_attributes"], truth["attribute_values"], truth["group_preference"]
    out = np.zeros((len(truth["group_names"]), dataset.n_items))
    for g, (name, modality) in enumerate(zip(truth["group_names"], truth["group_modality"])):
        for attr, weight in TASTE_WEIGHTS[modality].items():
            # item attributes are indices into attribute_values; preferences are value names
            preferred = [list(map(str, values[attr])).index(str(v)) for v in prefs[name][attr]]
            out[g] += weight * np.isin(np.asarray(attributes[attr]), preferred)
    return out


def _matched_planted_group(result, dataset) -> dict:
    """learned group -> the planted group most of its members belong to."""
    table = group_match_table(result, dataset)
    names = list(_planted(dataset)["group_names"])
    return {int(l): names.index(table[l].idxmax()) for l in table.columns}


def teacher_taste_table(result, dataset) -> pd.DataFrame:
    """For each learned group: the planted group it matches, the Spearman correlation of its teacher
    probabilities with that group's planted taste, and the mean teacher probability on the items
    the planted group likes (taste > 0) and on the others."""
    from scipy.stats import spearmanr

    teacher = np.asarray(result.details["teacher"])                              # (g, n)
    taste = planted_taste(dataset)
    names = list(_planted(dataset)["group_names"])
    rows = []
    for l, g in _matched_planted_group(result, dataset).items():
        if not np.isfinite(teacher[l]).all():
            continue
        liked = taste[g] > 0
        rows.append({"learned group": l, "matches planted": names[g],
                     "Spearman(teacher, taste)": spearmanr(teacher[l], taste[g]).statistic,
                     "teacher on liked items": teacher[l][liked].mean(),
                     "teacher on other items": teacher[l][~liked].mean()})
    return pd.DataFrame(rows).set_index("learned group")


def teacher_taste_figure(result, dataset) -> plt.Figure:
    """Box plots of each group's teacher probabilities by the planted taste level of the items."""
    teacher = np.asarray(result.details["teacher"])
    taste = planted_taste(dataset)
    names = list(_planted(dataset)["group_names"])
    matched = [(l, g) for l, g in _matched_planted_group(result, dataset).items()
               if np.isfinite(teacher[l]).all()]
    fig, axes = plt.subplots(1, len(matched), figsize=(3.8 * len(matched), 3.2), squeeze=False)
    for ax, (l, g) in zip(axes[0], matched):
        levels = np.unique(taste[g])
        ax.boxplot([teacher[l][taste[g] == v] for v in levels], showfliers=False)
        ax.set_xticks(range(1, len(levels) + 1), [f"{v:g}" for v in levels])
        ax.set_xlabel(f"planted taste of '{names[g]}'")
        ax.set_title(f"learned group {l}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("teacher probability")
    fig.tight_layout()
    return fig


@torch.no_grad()
def group_tables(state) -> np.ndarray:
    """Q_l = S_phi(E_G[l], F) of every group from a final GFMFR state: (g, n, d T)."""
    method = state.method
    groups = torch.arange(method.g, device=state.device)
    return method.aggregate(state.server.only, groups).cpu().numpy()


def group_tables_umap_figure(result, dataset=None, seed: int = 0, n_neighbors: int = 15) -> plt.Figure:
    """One UMAP of the group-level item tables Q_l (every group) and the backbone's global item
    table: does each group see the items its own way, and how far from the shared table?"""
    from .viz_fedmr import umap_points

    Q = group_tables(result.state)                                              # (g, n, d T)
    state = result.state
    name = state.spec.tables[0]
    d = state.global_[name].shape[1]
    sets = [Q[l, :, :d] for l in range(Q.shape[0])] + [state.global_[name].cpu().numpy()]
    labels = [f"Q_{l} (group {l})" for l in range(Q.shape[0])] + [f"global {name}"]
    points = umap_points(sets, seed=seed, n_neighbors=n_neighbors)
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    start = 0
    for label, rows in zip(labels, sets):
        ax.scatter(points[start:start + len(rows), 0], points[start:start + len(rows), 1], s=4,
                   label=label, alpha=0.6)
        start += len(rows)
    ax.legend(fontsize=7, markerscale=3)
    ax.set_title("group item tables and the global table (UMAP)", fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def explorer(train: Callable, groups=(1, 2, 3, 5), schedules=("ours", "scale-align", "smooth",
             "progressive", "cosine"), ablations=("none", "random-group", "single-group", "multiple-agg")):
    """An ipywidgets panel: pick g, the lambda schedule and an ablation, click "run" to call
    ``train(groups, schedule, ablation) -> RunResult`` and plot its validation curve and the ARI per
    round. Nothing trains until the button is clicked. Returns the panel."""
    import ipywidgets as widgets

    pick_g = widgets.Dropdown(options=list(groups), value=3 if 3 in groups else groups[0], description="g")
    pick_s = widgets.Dropdown(options=list(schedules), value=schedules[0], description="schedule")
    pick_a = widgets.Dropdown(options=list(ablations), value=ablations[0], description="ablation")
    button = widgets.Button(description="run (quick)", button_style="primary")
    out = widgets.Output()

    def on_click(_):
        with out:
            out.clear_output()
            result = train(pick_g.value, pick_s.value, pick_a.value)
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
            viz_runs.learning_curves({"GFMFR": result}, ax=axes[0])
            A = np.asarray(result.details["assignments"])
            sizes = np.stack([np.bincount(row[row >= 0], minlength=result.details["groups"]) for row in A])
            axes[1].stackplot(range(1, len(A) + 1), sizes.T)
            axes[1].set_xlabel("round")
            axes[1].set_ylabel("users per group")
            fig.tight_layout()
            plt.show()

    button.on_click(on_click)
    panel = widgets.VBox([widgets.HBox([pick_g, pick_s, pick_a]), button, out])
    panel.controls = {"groups": pick_g, "schedule": pick_s, "ablation": pick_a, "button": button,
                      "output": out}
    return panel
