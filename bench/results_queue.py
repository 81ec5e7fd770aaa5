"""A queue of ``python -m fedmm_lite run ... --json`` configurations, resumable, and its table cells.

Each configuration runs in a fresh process (one torch thread) and keeps its JSON under
``out/<data>/<label>-r<rounds>.json``; one whose JSON exists is skipped, so a queue resumes where it
stopped. A run that diverges still writes its JSON (the rounds before, and where it diverged). ``cell`` formats a result read at the validation-selected round with one standard error of
its test HR@50 (binomial over the test users: sqrt(p (1 - p) / U)).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


def result_path(out: Path, data: str, label: str, rounds: int) -> Path:
    return Path(out) / data / f"{label}-r{rounds}.json"


def run_queue(runs, out: Path, data: str, rounds: int, seed: int, common=(), wanted=None,
              tag: str = "results") -> None:
    """Run every (label, extra arguments) of ``runs`` whose JSON is missing."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for label, extra in runs:
        if wanted is not None and label not in wanted:
            continue
        path = result_path(out, data, label, rounds)
        if path.exists():
            print(f"[{tag}] {label}: done already ({path})", file=sys.stderr)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "fedmm_lite", "run", "--data", data, "--rounds", str(rounds),
               "--seed", str(seed), "--device", "cpu", "--json", str(path), *common, *extra]
        print(f"[{tag}] {label}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
        print(f"[{tag}] {label}: exit {done.returncode} after {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)


def load(out: Path, data: str, label: str, rounds: int) -> dict | None:
    path = result_path(out, data, label, rounds)
    return json.loads(path.read_text()) if path.exists() else None


def standard_error(result: dict, metric: str = "hr@50") -> float:
    """One binomial standard error of a test hit rate over the dataset's users."""
    p, users = result["test"][metric], result["dataset"]["users"]
    return math.sqrt(p * (1 - p) / max(users, 1))


def cell(result: dict | None) -> str:
    """"HR@50 +- se | NDCG@50 | round | train s" of a result (4 table columns)."""
    if result is None:
        return "not run | | |"
    test = result["test"]
    diverged = result.get("diverged")
    mark = f" (diverged in round {diverged['round']})" if diverged else ""
    return (f"{test['hr@50']:.4f} ± {standard_error(result):.4f}{mark} | {test['ndcg@50']:.4f} | "
            f"{result['best_round']} | {result.get('train_seconds', float('nan')):.0f}")
