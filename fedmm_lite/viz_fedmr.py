"""Tables and figures of FedMR runs for the book's chapter 5 (fusing modalities per user).

Everything here reads ``RunResult`` objects (fed/rounds.py) and their final ``state``; nothing trains
a model, except the explorer widget's callback, and only when its button is clicked.

- ``vanilla_vs_fedmr_table`` / ``vanilla_vs_fedmr_figure``: each backbone alone and with FedMR, test
  HR@50 / NDCG@50 at the validation-selected round;
- ``ablation_table``: runs against a reference run (modality and strategy ablations, noise);
- ``router_group_table`` / ``router_group_figure``: the private router weights pi_u averaged over the
  world's planted user groups (``fedmr.planted_router_weights``);
- ``mapped_representations`` / ``representation_gaps`` / ``representation_umap_figure``: the item
  inputs after FedMR's mapping layers (Eq. (1): h_m = A_m x_m, all in R^d), for the global ID view
  or one user's personalised view (FedRAP: D_u + C), their pairwise modality gaps, the mean
  cosine of each item's vectors in two sets (``matched_cosines``) and a UMAP;
- ``explorer``: an ipywidgets panel (backbone, strategy, modalities -> a quick run and its plots);
- ``ladder_figure``: the headroom ladder (``headroom.ladder_table``) as bars with one standard error;
- ``relative_update_table`` / ``relative_update_figure``: how far each round moved each global
  tensor, relative to its size (the server step's diagnostic, fedmr.py): the step-size lesson;
- ``cold_table``: the cold-item metrics of runs on a cold-item split (``metrics.evaluate_cold``).
"""
from __future__ import annotations

from typing import Callable, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from . import viz_runs
from .fed import fusion
from .fed.fedmr import planted_router_weights
from .viz_features import l2_normalise, modality_gap

# The backbone's global item table, FedMR's ID input e_i before personalisation.
GLOBAL_ID_TABLE = {"fedavg": "Q", "fcf": "Q", "fedncf": "Q_gmf", "pfedrec": "E", "fedrap": "C"}


# ------------------------------------------------------------------------------------ run tables
def vanilla_vs_fedmr_table(vanilla: Mapping[str, object], fedmr: Mapping[str, object],
                           k: int = 50, n_users: int | None = None) -> pd.DataFrame:
    """One row per backbone: test HR@k / NDCG@k of the backbone alone and with FedMR, each at its
    own validation-selected round, and the change FedMR makes; with ``n_users`` also one binomial
    standard error of HR@k (``headroom.standard_error``) and the change in standard errors."""
    from .headroom import standard_error

    rows = {}
    for name, plain in vanilla.items():
        mm = fedmr[name]
        a, b = plain.test[f"hr@{k}"], mm.test[f"hr@{k}"]
        rows[name] = {"round (valid) alone": plain.best_round, f"HR@{k} alone": a,
                      f"NDCG@{k} alone": plain.test[f"ndcg@{k}"],
                      "round (valid) FedMR": mm.best_round, f"HR@{k} FedMR": b,
                      f"NDCG@{k} FedMR": mm.test[f"ndcg@{k}"], f"change HR@{k}": b - a}
        if n_users:
            se = standard_error(a, n_users)
            rows[name][f"SE HR@{k}"] = se
            rows[name]["change in SE"] = (b - a) / se if se > 0 else float("nan")
    return pd.DataFrame.from_dict(rows, orient="index")


def vanilla_vs_fedmr_figure(table: pd.DataFrame, k: int = 50,
                            reference: Mapping[str, float] | None = None) -> plt.Figure:
    """Grouped bars of ``vanilla_vs_fedmr_table``: HR@k and NDCG@k, alone vs with FedMR."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    x = np.arange(len(table))
    for ax, metric in zip(axes, (f"HR@{k}", f"NDCG@{k}")):
        ax.bar(x - 0.2, table[f"{metric} alone"], 0.4, label="backbone alone")
        ax.bar(x + 0.2, table[f"{metric} FedMR"], 0.4, label="with FedMR")
        if metric.startswith("HR"):
            for j, (name, value) in enumerate((reference or {}).items()):
                ax.axhline(value, color="grey", ls=["--", ":"][j % 2], lw=1, label=name)
        ax.set_xticks(x, table.index)
        ax.set_ylabel(f"test {metric} (valid-selected round)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def ablation_table(results: Mapping[str, object], reference: str, k: int = 50) -> pd.DataFrame:
    """``viz_runs.comparison_table`` of the runs with the change of test HR@k against ``reference``."""
    table = viz_runs.comparison_table(results, ks=(k,))
    table[f"change test HR@{k}"] = table[f"test HR@{k}"] - table.loc[reference, f"test HR@{k}"]
    return table


# ---------------------------------------------------------------------------------------- router
def router_group_table(result, dataset) -> pd.DataFrame:
    """Mean final router weight pi_u per strategy over each planted user group (rows), with the
    group's planted modality and size. Raises ValueError without a router or ground truth."""
    planted = planted_router_weights(result.details, dataset)
    if planted is None or result.details.get("router_weights") is None:
        raise ValueError("router_group_table: needs a FedMR Mix run (a router) on a dataset with "
                         "planted groups (world)")
    return pd.DataFrame.from_dict(planted, orient="index")


def router_group_figure(result, dataset) -> plt.Figure:
    """Per strategy, the distribution of pi_u,k in each planted group (box plots side by side)."""
    truth = dataset.ground_truth
    groups = np.asarray(truth["user_group"])                                    # (U,)
    names = list(truth["group_names"])
    modality = list(truth.get("group_modality", [""] * len(names)))
    pi = np.asarray(result.details["router_weights"], dtype=np.float64)         # (U, K)
    fig, axes = plt.subplots(1, pi.shape[1], figsize=(3.6 * pi.shape[1], 3.4), squeeze=False)
    present = [g for g in range(len(names)) if (groups == g).any()]
    for k, ax in enumerate(axes[0]):
        ax.boxplot([pi[groups == g, k] for g in present], showfliers=False)
        ax.set_xticks(range(1, len(present) + 1),
                      [f"{names[g]}\n({modality[g]})" for g in present], fontsize=8)
        ax.set_title(f"router weight of {result.details['strategies'][k]}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("pi_u (final)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ mapped representations
@torch.no_grad()
def mapped_representations(state, user: int | None = None) -> dict[str, np.ndarray]:
    """FedMR Eq. (1) applied to every item: {modality: h_m (n, d)} from a final FedMR state.

    ``user=None``: the ID input is the backbone's global table (Q, E, C; FedNCF: the GMF table).
    ``user=u``: the ID input user u scores with: FedRAP D_u + C, PFedRec the tuned E_u (a client
    that never trained: E); other backbones have no personal ID view (ValueError)."""
    fedmr = state.method
    if fedmr.name != "fedmr":
        raise ValueError("mapped_representations: not a FedMR state (method 'fedmr')")
    g, p, dt = state.global_, state.private, state.dtype
    if user is None:
        ids = g[GLOBAL_ID_TABLE[state.backbone]]                                # (n, d)
    elif state.backbone == "fedrap":
        ids = p["D"][user].to(dt) + g["C"]                                      # (n, d)
    elif state.backbone == "pfedrec":
        ids = p["E_u"][user].to(dt) if bool(state.joined[user]) else g["E"]     # (n, d)
    else:
        raise ValueError(f"mapped_representations: {state.backbone} has no per-user ID view")
    h = fusion.map_inputs(g, ids, fedmr.features, fedmr.modalities)
    return {m: v.detach().cpu().numpy().astype(np.float64) for m, v in h.items()}


def representation_gaps(panel: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Pairwise gaps (distance between the centroids of the L2-normalised rows,
    ``viz_features.modality_gap``) between the point sets of one panel: a symmetric table."""
    labels = list(panel)
    out = pd.DataFrame(0.0, index=labels, columns=labels)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            out.loc[a, b] = out.loc[b, a] = modality_gap(panel[a], panel[b])
    return out


def matched_cosines(panel: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Mean cosine between the SAME item's rows in two point sets (all sets (n, d), rows aligned),
    for every pair of sets: 1 = each item's two vectors point the same way, 0 = unrelated. A gap
    between centroids says little when the sets are centred (``fusion.standardise``); this does."""
    labels = list(panel)
    unit = {k: l2_normalise(v) for k, v in panel.items()}                       # (n, d) each
    out = pd.DataFrame(1.0, index=labels, columns=labels)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            # mean_i cos(a_i, b_i)
            out.loc[a, b] = out.loc[b, a] = float((unit[a] * unit[b]).sum(1).mean())
    return out


def umap_points(arrays: list, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """2-D UMAP of the L2-normalised rows of all arrays together (seeded, single-threaded)."""
    import warnings

    import umap  # umap-learn; imported here because it takes seconds to import

    points = l2_normalise(np.vstack(arrays)).astype(np.float32)                # (sum n, d)
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random_state.*", category=UserWarning)
        return reducer.fit_transform(points)


def representation_umap_figure(panels: Mapping[str, Mapping[str, np.ndarray]], seed: int = 0,
                               embed: Callable | None = None) -> plt.Figure:
    """One panel per ``title -> {label: (n, d)}``: all point sets of the panel in one 2-D map
    (``embed(list_of_arrays, seed) -> (sum n, 2)``, default ``umap_points``), one colour each."""
    embed = embed or (lambda arrays, s: umap_points(arrays, seed=s))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.8), squeeze=False)
    markers = ["o", "^", "s", "D", "v", "P"]
    for ax, (title, panel) in zip(axes[0], panels.items()):
        arrays = list(panel.values())
        xy = np.asarray(embed(arrays, seed))                                    # (sum n, 2)
        start = 0
        for j, (label, a) in enumerate(panel.items()):
            part = xy[start:start + len(a)]
            start += len(a)
            ax.scatter(part[:, 0], part[:, 1], s=9, marker=markers[j % len(markers)],
                       c=f"C{j}", label=label, alpha=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------- explorer
def explorer(train: Callable, backbones=("fedavg", "fcf", "fedncf", "pfedrec", "fedrap"),
             strategies=("mix", "sum", "mlp", "gate"), modalities=("id", "text", "image")):
    """An ipywidgets panel: pick a backbone, a strategy and the modalities, click "run" to call
    ``train(backbone, strategy, modalities) -> RunResult`` and plot its validation curve (and the
    mean router weights for Mix). Nothing trains until the button is clicked. Returns the panel."""
    import ipywidgets as widgets

    pick_backbone = widgets.Dropdown(options=list(backbones), value=backbones[0], description="backbone")
    pick_strategy = widgets.Dropdown(options=list(strategies), value=strategies[0], description="strategy")
    pick_modalities = widgets.SelectMultiple(options=list(modalities), value=tuple(modalities),
                                             description="modalities", rows=len(modalities))
    button = widgets.Button(description="run (quick)", button_style="primary")
    out = widgets.Output()

    def on_click(_):
        mods = tuple(m for m in modalities if m in pick_modalities.value)
        with out:
            out.clear_output()
            if not mods:
                print("choose at least one modality")
                return
            result = train(pick_backbone.value, pick_strategy.value, mods)
            label = f"{pick_backbone.value} + FedMR {pick_strategy.value} ({', '.join(mods)})"
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
            viz_runs.learning_curves({label: result}, ax=axes[0])
            if result.details.get("router_weights") is not None:
                pi = np.asarray(result.details["router_weights"]).mean(0)
                axes[1].bar(list(result.details["strategies"]), pi)
                axes[1].set_ylabel("mean router weight")
            else:
                axes[1].text(0.5, 0.5, "one strategy: no router", ha="center", va="center")
                axes[1].set_axis_off()
            fig.suptitle(f"test HR@50 {result.test['hr@50']:.3f} at round {result.best_round}",
                         fontsize=10)
            fig.tight_layout()
            plt.show()

    button.on_click(on_click)
    panel = widgets.VBox([widgets.HBox([pick_backbone, pick_strategy]), pick_modalities, button, out])
    panel.controls = {"backbone": pick_backbone, "strategy": pick_strategy,
                      "modalities": pick_modalities, "button": button, "output": out}
    return panel


# ------------------------------------------------------------------------ headroom, steps, cold
LADDER_COLOURS = {"oracle": "tab:green", "popularity": "tab:grey", "central": "tab:purple",
                  "federated ID": "tab:blue", "federated FedMR": "tab:orange"}


def ladder_figure(table: pd.DataFrame, title: str = "") -> plt.Figure:
    """Horizontal bars of ``headroom.ladder_table``: test HR@50 with one standard error, coloured by
    the kind of rung (oracle, popularity, centralised, federated ID, federated FedMR)."""
    rows = table.iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    colours = [LADDER_COLOURS.get(k, "tab:cyan") for k in rows["kind"]]
    ax.barh(range(len(rows)), rows["test HR@50"], xerr=rows["SE"], color=colours, capsize=2)
    ax.set_yticks(range(len(rows)), rows.index, fontsize=8)
    ax.set_xlabel("test HR@50 (+- one standard error)")
    ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for k, c in LADDER_COLOURS.items() if k in set(rows["kind"])]
    ax.legend(handles, [k for k in LADDER_COLOURS if k in set(rows["kind"])], fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def relative_update_table(result, tensors=None) -> pd.DataFrame:
    """Per evaluated round (rows), ||theta_t - theta_{t-1}|| / ||theta_{t-1}|| of each global tensor
    (columns; ``tensors`` to pick some), from the server step's diagnostics (fedmr.py)."""
    rows = {h["round"]: h["server"]["relative_update"] for h in result.history
            if "relative_update" in h.get("server", {})}
    if not rows:
        raise ValueError("relative_update_table: no FedMR server diagnostics in this run's history")
    table = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    table.index.name = "round"
    return table if tensors is None else table[[t for t in tensors if t in table.columns]]


def relative_update_figure(results: Mapping[str, object], tensors=("Q", "A_id", "A_text", "A_image")) -> plt.Figure:
    """One panel per run: the relative update of ``tensors`` per round, log scale."""
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.4), sharey=True, squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        table = relative_update_table(result, tensors)
        for column in table.columns:
            ax.semilogy(table.index, table[column], marker="o", ms=3, label=column)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("||step|| / ||tensor|| per round")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def cold_table(results: Mapping[str, object], ks=(10, 50)) -> pd.DataFrame:
    """One row per run on a cold-item split: its validation-selected round, warm test HR@50, and
    the cold targets' HR@k among the cold items (next to a random ranker's) and among all items."""
    rows = {}
    for name, result in results.items():
        test = result.test if not isinstance(result, dict) else result["test"]
        best = result.best_round if not isinstance(result, dict) else result["best_round"]
        row = {"round (valid)": best, "warm test HR@50": test["hr@50"], "cold users": test.get("cold_users")}
        for k in ks:
            row[f"cold HR@{k} among cold"] = test.get(f"cold_hr@{k}")
            row[f"random HR@{k} among cold"] = test.get(f"cold_random_hr@{k}")
        row["cold HR@50 among all"] = test.get("cold_all_hr@50")
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
