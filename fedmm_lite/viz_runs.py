"""Figures and tables of federated runs for the book's chapters 3 and 4.

Everything here reads ``RunResult`` objects (fed/rounds.py) or their ``history`` lists; nothing
trains a model. Model selection follows book/methods.md, "Protocol" (``select_best``: the round with
the best VALIDATION HR@50). ``best_on_test`` exists only to show the published pitfall of picking
the reported round on test (book/methods.md, "Defects", item 5); no experiment selects with it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .fed import backbones
from .fed.rounds import SELECT_ON, select_best


def best_on_test(history: list, key: str = SELECT_ON) -> dict:
    """The history entry with the best TEST ``key`` (earliest on ties): the optimistic pitfall."""
    best = history[0]
    for entry in history[1:]:
        if entry["test"][key] > best["test"][key]:
            best = entry
    return best


def selection_table(results: Mapping[str, object], key: str = SELECT_ON) -> pd.DataFrame:
    """Per run: test ``key`` at the validation-selected round (honest) and at the test-selected round.

    Columns: ``valid-selected round``, ``test (valid-selected)``, ``test-selected round``,
    ``test (test-selected)``, ``optimism`` = the difference of the two test numbers (>= 0).
    """
    rows = {}
    for label, result in results.items():
        honest = select_best(result.history, key)
        cheat = best_on_test(result.history, key)
        rows[label] = {"valid-selected round": honest["round"],
                       f"test {key} (valid-selected)": honest["test"][key],
                       "test-selected round": cheat["round"],
                       f"test {key} (test-selected)": cheat["test"][key],
                       "optimism": cheat["test"][key] - honest["test"][key]}
    return pd.DataFrame.from_dict(rows, orient="index")


def comparison_table(results: Mapping[str, object], ks=(50,)) -> pd.DataFrame:
    """One row per run: the selected round, test HR@K / NDCG@K there, valid HR@50, seconds; and,
    when a run stopped at a divergence (``run_federated(..., on_divergence="stop")``), the round
    it diverged in (a column only then)."""
    rows = {}
    for label, result in results.items():
        row = {"best round (valid)": result.best_round}
        for k in ks:
            row[f"test HR@{k}"] = result.test[f"hr@{k}"]
            row[f"test NDCG@{k}"] = result.test[f"ndcg@{k}"]
        row[f"valid {SELECT_ON.upper()}"] = result.valid[SELECT_ON]
        row["seconds"] = result.seconds
        rows[label] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    diverged = {label: (getattr(result, "diverged", None) or {}).get("round")
                for label, result in results.items()}
    if any(r is not None for r in diverged.values()):
        table["diverged in round"] = pd.Series(diverged, dtype="Int64")
    return table


def curve(history: list, split: str = "valid", key: str = SELECT_ON) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, values) of ``split``'s ``key`` along a run's history."""
    rounds = np.array([h["round"] for h in history])
    values = np.array([h[split][key] for h in history])
    return rounds, values


def learning_curves(results: Mapping[str, object], key: str = SELECT_ON, splits=("valid",),
                    x: str = "round", reference: Mapping[str, float] | None = None,
                    mark_best: bool = True, ax=None) -> plt.Figure:
    """Validation (and optionally test) ``key`` per evaluated round, one line per run.

    ``x="client_updates"`` puts local trainings done (rounds x participants) on the x axis, to
    compare runs with different sampling ratios at equal client work. ``reference`` draws
    horizontal lines (e.g. ``{"popularity": 0.44, "random": 0.06}``). ``mark_best`` puts a dot at
    the validation-selected round.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    styles = {"valid": "-", "test": ":"}
    for i, (label, result) in enumerate(results.items()):
        colour = f"C{i}"
        per_round = _participants_per_round(result)
        for split in splits:
            rounds, values = curve(result.history, split, key)
            xs = rounds * per_round if x == "client_updates" else rounds
            ax.plot(xs, values, styles.get(split, "-"), color=colour,
                    label=label if split == splits[0] else None)
        if mark_best:
            best = select_best(result.history, key)
            bx = best["round"] * per_round if x == "client_updates" else best["round"]
            ax.plot([bx], [best[splits[0]][key]], "o", color=colour)
    for j, (name, value) in enumerate((reference or {}).items()):
        ax.axhline(value, color="grey", ls=["--", "-.", ":"][j % 3], lw=1, label=name)
    ax.set_xlabel("client updates (rounds x participants)" if x == "client_updates" else "round")
    what = " / ".join(f"{s} ({styles.get(s, '-')})" for s in splits) if len(splits) > 1 else splits[0]
    ax.set_ylabel(f"{what} {key.upper()}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _participants_per_round(result) -> int:
    rounds = max(int(result.config.rounds), 1)
    return max(1, int(round(result.client_updates / rounds)))


def fedrap_schedule(config, rounds: int) -> pd.DataFrame:
    """FedRAP's curriculum lambda_t, mu_t for t = 0..rounds (backbones.fedrap_weights)."""
    t = np.arange(rounds + 1)
    weights = np.array([backbones.fedrap_weights(int(r), config) for r in t])   # (T+1, 2)
    return pd.DataFrame({"round": t, "lambda_t": weights[:, 0], "mu_t": weights[:, 1]})


def fedrap_schedule_figure(config, rounds: int) -> plt.Figure:
    """lambda_t and mu_t against the round, and the floor -lambda_t * tau of the bounded term."""
    table = fedrap_schedule(config, rounds)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(table["round"], table["lambda_t"], label=r"$\lambda_t$")
    axes[0].plot(table["round"], table["mu_t"], label=r"$\mu_t$")
    axes[0].set_xlabel("round t")
    axes[0].set_title(r"curriculum: tanh(t/10) x weight")
    axes[0].legend()
    axes[1].plot(table["round"], -table["lambda_t"] * config.fedrap_bound)
    axes[1].set_xlabel("round t")
    axes[1].set_title(rf"lowest value of $-\lambda_t\,\min(\mathrm{{gap}}, \tau)$, $\tau$={config.fedrap_bound:g}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def loss_curves(results: Mapping[str, object], ax=None) -> plt.Figure:
    """Mean client training loss per evaluated round (round 0 has none), one line per run."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
    for label, result in results.items():
        pairs = [(h["round"], h["train_loss"]) for h in result.history if h["train_loss"] is not None]
        if pairs:
            r, v = zip(*pairs)
            ax.plot(r, v, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("mean client training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sharing_table(state) -> pd.DataFrame:
    """What a backbone keeps on the client and what it uploads, from a run's final ``FedState``.

    One row per tensor: where it lives, its shape per client (private) or on the server (shared),
    and whether a client uploads (an update of) it. Built from the run's ``state.spec``.
    """
    spec = state.spec
    rows = []
    for name, value in state.global_.items():
        kind = "item table" if name in spec.tables else "small module"
        rows.append({"tensor": name, "kind": kind, "lives on": "server (a copy goes to clients)",
                     "shape": tuple(value.shape), "uploaded": "its update Delta_u"})
    for name, value in state.private.items():
        kind = "item table" if name in spec.private_tables else "user vector"
        rows.append({"tensor": name, "kind": kind, "lives on": "client only",
                     "shape": tuple(value.shape[1:]), "uploaded": "never"})
    return pd.DataFrame(rows).set_index("tensor")


def timing_bars(seconds: Mapping[str, float], title: str = "", ax=None) -> plt.Figure:
    """A bar chart of seconds per label, each bar annotated with its value."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    else:
        fig = ax.figure
    labels = list(seconds)
    values = [float(seconds[k]) for k in labels]
    bars = ax.bar(labels, values, color=[f"C{i}" for i in range(len(labels))])
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.2f} s", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("seconds")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def json_results_table(paths: Mapping[str, str | Path], metric: str = "hr@50") -> pd.DataFrame:
    """A table of saved runs (``python -m fedmm_lite run --json``, one file per label): test
    ``metric`` at the validation-selected round with one binomial standard error over the test
    users (sqrt(p (1 - p) / U)), NDCG@50, the round, the training seconds, and, for GFMFR on the
    world, the last round's adjusted Rand index of the learned groups. Missing files are skipped."""
    rows = {}
    for label, path in paths.items():
        path = Path(path)
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        p, users = r["test"][metric], r["dataset"]["users"]
        ari = (r.get("planted") or {}).get("adjusted_rand_index") if isinstance(r.get("planted"), dict) else None
        rows[label] = {f"test {metric}": p, "± se": math.sqrt(p * (1 - p) / max(users, 1)),
                       "test ndcg@50": r["test"]["ndcg@50"], "round (valid)": r["best_round"],
                       "train s": r.get("train_seconds"),
                       "ARI (last round)": ari[-1] if ari else None}
    return pd.DataFrame.from_dict(rows, orient="index")
