"""Tables and figures of the reproduction chapter: the papers' published figures, our saved runs
beside them, and the curves of the peers' protocol on MovieLens-100K.

The published figures below are copied from the papers' tables (test HR@50, vanilla backbone ->
with the method): FedMR's on the NineRec sets (Li et al., references.bib ``li2024fedmr``) and
GFMFR's on Amazon subsets (``gfmfr2026``). Our runs are the JSON files the bench scripts write (``run --json`` format for
bench/results/fedmr and gfmfr; bench/ml100k_reproduction.py's format for bench/results/ml100k).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

# test HR@50, (vanilla, with FedMR): FedMR's main table
FEDMR_PAPER = {
    "fedavg": {"KU": (.1127, .5147), "Dance": (.0782, .1007), "Food": (.0696, .0948), "Movie": (.0552, .0564)},
    "fcf": {"KU": (.2255, .5539), "Dance": (.0676, .0699), "Food": (.0820, .0918), "Movie": (.0581, .0667)},
    "fedncf": {"KU": (.1176, .1961), "Dance": (.0221, .0708), "Food": (.0548, .0843), "Movie": (.0185, .0406)},
    "pfedrec": {"KU": (.0637, .2157), "Dance": (.0252, .0392), "Food": (.0327, .0836), "Movie": (.0170, .0413)},
    "fedrap": {"KU": (.4706, .4824), "Dance": (.0682, .0895), "Food": (.0696, .1142), "Movie": (.0453, .0586)},
}
# test HR@50, (vanilla, with GFMFR): GFMFR's main table
GFMFR_PAPER = {
    "fedncf": {"Beauty": (.1450, .2067), "Tools_and_Home": (.1893, .2062), "Toys_and_Games": (.2858, .3072),
               "Digital_Music": (.2249, .2521), "Office_Products": (.0015, .0255)},
    "pfedrec": {"Beauty": (.1427, .2024), "Tools_and_Home": (.1596, .2269), "Toys_and_Games": (.1412, .2979),
                "Digital_Music": (.1287, .2943), "Office_Products": (.0111, .0614)},
    "fedrap": {"Beauty": (.1423, .1949), "Tools_and_Home": (.1641, .2587), "Toys_and_Games": (.0616, .2730),
               "Digital_Music": (.0531, .2852), "Office_Products": (.0118, .0647)},
}


def paper_gain_table(paper: dict) -> pd.DataFrame:
    """Published HR@50 as 'vanilla -> method (ratio)', one row per backbone, one column per dataset."""
    return pd.DataFrame({b: {data: f"{v:.4f} -> {m:.4f} ({m / v:.2f}x)" for data, (v, m) in cells.items()}
                         for b, cells in paper.items()}).T


def _run_file(folder: Path, stem: str) -> Path | None:
    """The saved run ``<stem>-r<rounds>.json`` of ``folder`` (the longest when several)."""
    found = sorted(folder.glob(f"{stem}-r*.json"),
                   key=lambda p: int(re.search(r"-r(\d+)\.json$", p.name).group(1))
                   if re.search(r"-r(\d+)\.json$", p.name) else -1)
    found = [p for p in found if re.fullmatch(rf"{re.escape(stem)}-r\d+\.json", p.name)]
    return found[-1] if found else None


def measured_gain_table(folder: str | Path, method: str, backbones=tuple(FEDMR_PAPER),
                        metric: str = "hr@50") -> pd.DataFrame:
    """Our test ``metric`` at the validation-selected round, vanilla and with ``method``, per backbone
    that has both runs in ``folder`` (``<backbone>-id-r<R>.json`` and ``<backbone>-<method>-r<R>.json``,
    FedMR's main run being ``-fedmr-mix-``), with one binomial standard error over the test users."""
    folder = Path(folder)
    rows = {}
    for backbone in backbones:
        vanilla = _run_file(folder, f"{backbone}-id")
        treated = _run_file(folder, f"{backbone}-{method}") or _run_file(folder, f"{backbone}-{method}-mix")
        if vanilla is None or treated is None:
            continue
        v, m = json.loads(vanilla.read_text()), json.loads(treated.read_text())
        users = v["dataset"]["users"]
        pv, pm = v["test"][metric], m["test"][metric]
        se = lambda p: math.sqrt(p * (1 - p) / max(users, 1))  # noqa: E731
        rows[backbone] = {f"vanilla {metric}": pv, "± se": se(pv), f"+ {method} {metric}": pm,
                          "± se ": se(pm), "ratio": pm / pv if pv else float("nan"),
                          "rounds": m["config"]["rounds"]}
    return pd.DataFrame.from_dict(rows, orient="index")


def direction_table(paper: dict, measured: dict) -> pd.DataFrame:
    """Does the method help, backbone by backbone: the papers' datasets (how many of them show a gain)
    beside each of our datasets (gain beyond two standard errors, loss beyond two, or neither).
    ``measured``: our dataset name -> ``measured_gain_table``."""
    rows = {}
    for backbone, cells in paper.items():
        gains = sum(m > v for v, m in cells.values())
        row = {"papers": f"gain on {gains} of {len(cells)}"}
        for name, table in measured.items():
            if backbone not in table.index:
                row[name] = "-"
                continue
            r = table.loc[backbone]
            diff, se = r.iloc[2] - r.iloc[0], math.hypot(r.iloc[1], r.iloc[3])
            row[name] = ("gain" if diff > 2 * se else "loss" if diff < -2 * se else "within noise") + \
                f" ({r['ratio']:.2f}x)"
        rows[backbone] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# ----------------------------------------------------------------------------- MovieLens-100K curves
def load_ml100k_runs(folder: str | Path) -> dict:
    """label -> record of every bench/ml100k_reproduction.py run in ``folder`` (none: empty)."""
    folder = Path(folder)
    runs = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "history" in record and "settings" in record:
            runs[record["label"]] = record
    return runs


def selection_table(runs: dict, key: str = "hr@10_sampled") -> pd.DataFrame:
    """Per run: its settings that differ between runs, the validation-selected round, valid and test
    ``key`` there (and test NDCG@10), and seconds."""
    rows = {}
    for label, r in runs.items():
        s = r["settings"]
        rows[label] = {"lr": s.get("lr"), "item_lr": s.get("item_lr"), "local epochs": s.get("local_epochs"),
                       "negatives": s.get("negatives"), "pool": s.get("sampled_pool"),
                       "round (valid)": r["best_round"], "valid HR@10": r["valid"][key],
                       "test HR@10": r["test"][key], "test NDCG@10": r["test"]["ndcg@10_sampled"],
                       "seconds": r["seconds"]}
    return pd.DataFrame.from_dict(rows, orient="index")


def curves_figure(ours: dict, official: dict | None = None, split: str = "test",
                  title: str = "", ax=None) -> plt.Figure:
    """``split`` HR@10 (sampled) over rounds: our runs (label -> record) and the official code's
    measured rounds (label -> list of {round, valid_hr@10, test_hr@10})."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.6))
    else:
        fig = ax.figure
    for label, record in ours.items():
        h = record["history"]
        ax.plot([e["round"] for e in h], [e[f"{split}_hr@10_sampled"] for e in h], label=f"ours: {label}")
        best = record["best_round"]
        ax.scatter([best], [record["test" if split == "test" else "valid"]["hr@10_sampled"]], s=18)
    for label, rounds in (official or {}).items():
        ax.plot([e["round"] for e in rounds], [e[f"{split}_hr@10"] for e in rounds], "k--" if
                "pfedrec" in label.lower() else "k:", label=f"official: {label}")
    ax.set_xlabel("round")
    ax.set_ylabel(f"{split} HR@10 (target among 100)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def fedrap_collapse_figure(official_rounds: list, ours: dict) -> plt.Figure:
    """FedRAP: the official code's test HR@10 and |training loss| over rounds, beside ours (label ->
    record): the unbounded -lambda (D_u - C)^2 term against ours, clipped at tau."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    rounds = [e["round"] for e in official_rounds]
    axes[0].plot(rounds, [e["test_hr@10"] for e in official_rounds], "k:", label="official FedRAP")
    axes[1].semilogy(rounds, [abs(e["train_loss"]) for e in official_rounds], "k:", label="official FedRAP")
    for label, record in ours.items():
        h = [e for e in record["history"] if e["train_loss"] is not None]
        axes[0].plot([e["round"] for e in record["history"]],
                     [e["test_hr@10_sampled"] for e in record["history"]], label=f"ours: {label}")
        axes[1].semilogy([e["round"] for e in h], [abs(e["train_loss"]) for e in h], label=f"ours: {label}")
    axes[0].set_ylabel("test HR@10 (target among 100)")
    axes[1].set_ylabel("|mean training loss| (log scale)")
    for ax in axes:
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
    fig.suptitle("FedRAP on MovieLens-100K: the official code's loss has no floor; ours is bounded")
    fig.tight_layout()
    return fig


def side_by_side_table(result: dict) -> pd.DataFrame:
    """The measured side-by-side run (bench/bench_official.py's JSON) as a table with ratios."""
    theirs, ours, R = result["official"], result["ours"], result["rounds"]
    ran = theirs.get("rounds_run", R)
    scale = R / ran
    their_rounds = [r["round_seconds"] for r in theirs["rounds"] if r.get("round_seconds")]
    best = theirs["rounds"][0]
    for entry in theirs["rounds"][1:]:
        if entry["valid_hr@10"] >= best["valid_hr@10"]:
            best = entry
    rows = {
        "seconds per round (wall, median)": (float(np.median(their_rounds)), float(np.median(ours["round_seconds"]))),
        f"total wall seconds, {R} rounds" + (f" (official: {ran} run, scaled)" if ran != R else ""):
            (theirs["wall_seconds"] * scale, ours["wall_seconds"]),
        "CPU seconds, whole run" + (" (official scaled)" if ran != R else ""):
            (theirs["cpu_seconds"] * scale, ours["cpu_seconds"]),
        "peak memory, MB": (theirs["peak_rss_mb"], ours["peak_rss_mb"]),
        "test HR@10 at the validation-selected round": (best["test_hr@10"], ours["test"]["hr@10_sampled"]),
        "test NDCG@10 there": (best["test_ndcg@10"], ours["test"]["ndcg@10_sampled"]),
    }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["official", "ours"])
    table["official / ours"] = table["official"] / table["ours"]
    return table
