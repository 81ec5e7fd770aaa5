"""FedMR's results tables (issue "FedMR", item 5): vanilla versus FedMR, and FedMR's ablations.

Every configuration is one ``python -m fedmm_lite run ... --json`` in a fresh process (one torch
thread), its JSON kept under ``--out`` (default ``bench/results/fedmr``); a configuration whose
JSON exists is skipped, so the script resumes where it stopped. ``--table`` prints the markdown
tables from the JSON files found.

    .venv/bin/python bench/fedmr_results.py --data world-full --rounds 10          # run
    .venv/bin/python bench/fedmr_results.py --data world-full --rounds 10 --table  # tables

Groups (``--only``): ``main`` (the five backbones, vanilla ID and FedMR Mix), ``strategy`` (FedAvg
with Sum, MLP, Gate), ``modality`` (FedAvg FedMR without image, text or ID), ``noise`` (FedAvg,
vanilla and FedMR, Gaussian noise of variance 0.1 on every upload, as the FedMR paper's Table 4).
Test HR@50 / NDCG@50 are read at the round that validation selects.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")
NOISE = f"gaussian:{math.sqrt(0.1):.4f}"          # the paper's variance 0.1


def configurations(only: set) -> list[tuple[str, str, list]]:
    """(group, label, extra run arguments), in the order they run."""
    runs = []
    if "main" in only:
        for b in BACKBONES:
            runs.append(("main", f"{b}-fedmr-mix", ["--backbone", b, "--method", "fedmr"]))
            runs.append(("main", f"{b}-id", ["--backbone", b, "--method", "id"]))
    if "strategy" in only:
        for s in ("sum", "mlp", "gate"):
            runs.append(("strategy", f"fedavg-fedmr-{s}",
                         ["--backbone", "fedavg", "--method", "fedmr", "--strategy", s]))
    if "modality" in only:
        for dropped, kept in (("image", "id,text"), ("text", "id,image"), ("id", "text,image")):
            runs.append(("modality", f"fedavg-fedmr-no-{dropped}",
                         ["--backbone", "fedavg", "--method", "fedmr", "--modalities", kept]))
    if "noise" in only:
        runs.append(("noise", "fedavg-id-noise", ["--backbone", "fedavg", "--method", "id",
                                                  "--noise", NOISE]))
        runs.append(("noise", "fedavg-fedmr-mix-noise", ["--backbone", "fedavg", "--method", "fedmr",
                                                         "--noise", NOISE]))
    return runs


def run_all(args) -> None:
    out = Path(args.out) / args.data
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    wanted = set(args.labels.split(",")) if args.labels else None
    for group, label, extra in configurations(set(args.only.split(","))):
        if wanted is not None and label not in wanted:
            continue
        path = out / f"{label}-r{args.rounds}.json"
        if path.exists():
            print(f"[fedmr_results] {label}: done already ({path})", file=sys.stderr)
            continue
        cmd = [sys.executable, "-m", "fedmm_lite", "run", "--data", args.data, "--rounds",
               str(args.rounds), "--seed", str(args.seed), "--device", "cpu", "--json", str(path),
               *extra]
        print(f"[fedmr_results] {label}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
        print(f"[fedmr_results] {label}: exit {done.returncode} after "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def _load(out: Path, label: str, rounds: int) -> dict | None:
    path = out / f"{label}-r{rounds}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _cell(result: dict | None) -> str:
    if result is None:
        return "not run | | |"
    test = result["test"]
    return (f"{test['hr@50']:.4f} | {test['ndcg@50']:.4f} | {result['best_round']} | "
            f"{result.get('train_seconds', float('nan')):.0f}")


def tables(args) -> str:
    out = Path(args.out) / args.data
    lines = [f"### {args.data}, {args.rounds} rounds, seed {args.seed} (test at the validation-selected round)",
             "", "| backbone | vanilla HR@50 | NDCG@50 | round | train s | FedMR Mix HR@50 | NDCG@50 | round | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in BACKBONES:
        lines.append(f"| {b} | {_cell(_load(out, f'{b}-id', args.rounds))} | "
                     f"{_cell(_load(out, f'{b}-fedmr-mix', args.rounds))} |")
    lines += ["", "| FedAvg + FedMR variant | HR@50 | NDCG@50 | round | train s |", "|---|---:|---:|---:|---:|"]
    for label in ("fedavg-fedmr-mix", "fedavg-fedmr-sum", "fedavg-fedmr-mlp", "fedavg-fedmr-gate",
                  "fedavg-fedmr-no-image", "fedavg-fedmr-no-text", "fedavg-fedmr-no-id",
                  "fedavg-id", "fedavg-id-noise", "fedavg-fedmr-mix-noise"):
        lines.append(f"| {label} | {_cell(_load(out, label, args.rounds))} |")
    planted = []
    for b in BACKBONES:
        result = _load(out, f"{b}-fedmr-mix", args.rounds)
        if result and result.get("planted"):
            planted.append((b, result["planted"]))
    if planted:
        lines += ["", "| backbone | planted group (modality) | users | pi_sum | pi_mlp | pi_gate |",
                  "|---|---|---:|---:|---:|---:|"]
        for b, groups in planted:
            for name, g in groups.items():
                lines.append(f"| {b} | {name} ({g['modality']}) | {g['users']} | "
                             f"{g.get('sum', float('nan')):.3f} | {g.get('mlp', float('nan')):.3f} | "
                             f"{g.get('gate', float('nan')):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="main,strategy,modality,noise")
    p.add_argument("--labels", default="", help="comma list: run only these configurations")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "fedmr"))
    p.add_argument("--table", action="store_true", help="print the tables from the JSON files")
    args = p.parse_args(argv)
    if args.table:
        print(tables(args))
    else:
        run_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
