"""Measuring runs: training seconds, client updates per second, peak memory and final metrics of one
configuration, and whether two engines' metrics agree (the ``bench`` command, bench/ scripts and the
chapters' speed figures use these; book/methods.md, "Cost").
"""
from __future__ import annotations

import time

from .config import resolve_device
from .fed.rounds import run_federated
from .resources import PeakMemory


def final_metrics(result) -> dict:
    """Valid and test metrics of the last evaluated round (not the selected one: two engines must
    agree round by round, whichever round validation would pick)."""
    last = result.history[-1]
    return {"valid": dict(last["valid"]), "test": dict(last["test"])}


def time_engine(dataset, config, progress: bool = True) -> dict:
    """Run one configuration; its training seconds (evaluation excluded, as the rounds measure
    them), client updates per second, peak memory and final metrics."""
    start = time.perf_counter()
    with PeakMemory(resolve_device(config.device)) as memory:
        result = run_federated(dataset, config, progress=progress)
    wall = time.perf_counter() - start
    train = result.train_seconds
    rounds = max(int(config.rounds), 1)
    return {"engine": config.engine, "wall_seconds": wall, "train_seconds": train,
            "seconds_per_round": train / rounds,
            "client_updates": int(result.client_updates),
            "client_updates_per_second": result.client_updates / train if train > 0 else None,
            **memory.as_dict(), "metrics": final_metrics(result)}


def compare_metrics(a: dict, b: dict, n_users: int) -> dict:
    """Largest absolute difference of two runs' final metrics, and whether it is within one user's
    hit (1 / U): float rounding between the two engines may move a target across a cut-off."""
    diffs = [abs(a[split][key] - b[split][key]) for split in ("valid", "test") for key in a[split]]
    max_diff = max(diffs) if diffs else 0.0
    # 1 / U, plus float rounding: k1 / U - k2 / U can exceed 1 / U by an ulp
    tolerance = (1.0 + 1e-9) / max(n_users, 1)
    return {"max_abs_diff": max_diff, "tolerance": tolerance, "metrics_agree": max_diff <= tolerance}
