"""Benchmarks (b) and (c): rounds per second and peak memory on the ``world-large`` preset.

``world-large`` is the Office_Products scale (about 6,300 clients x 4,500 items). For PFedRec and
FedRAP (by default) it trains ``--rounds`` rounds with the batched engine (no evaluation in
between) and reports training seconds per round, rounds per second, client updates per second
and peak memory during training; then it times one full-ranking test evaluation of
``--eval-users`` users and extrapolates the cost of one evaluation point (valid and test, all
users). Peak memory:

- on CPU the peak resident set size of the process during the run (``fedmm_lite.resources``);
- on CUDA ``torch.cuda.max_memory_allocated`` during the run.

``--device auto`` (the default) picks CUDA when present, so the same command measures (c) on a GPU
machine unchanged:

    .venv/bin/python bench/bench_large.py                        # CPU here, CUDA where present
    .venv/bin/python bench/bench_large.py --device cpu --rounds 1 --private-dtype bfloat16

Prints a markdown table on stdout, then the JSON of every measurement (progress on stderr).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import emit, machine_fields                   # noqa: E402
from fedmm_lite.config import resolve_device                  # noqa: E402
from fedmm_lite.data import load_dataset                      # noqa: E402
from fedmm_lite.fed.config import default_config              # noqa: E402
from fedmm_lite.fed.method import full_scores                 # noqa: E402
from fedmm_lite.fed.rounds import FederatedRun                # noqa: E402
from fedmm_lite.fed.state import count_parameters             # noqa: E402
from fedmm_lite.metrics import evaluate                       # noqa: E402
from fedmm_lite.resources import PeakMemory                   # noqa: E402


def train_rounds(dataset, config, device: torch.device) -> tuple[list[float], object]:
    """Train ``config.rounds`` rounds with the batched engine, timing each; no evaluation.

    The rounds of ``FederatedRun`` (the round every caller uses), without its full-ranking
    evaluations, which on world-large cost more than the training and are timed apart
    (``time_evaluation``)."""
    run = FederatedRun(dataset, config)
    seconds = [run.train_round(t).train_seconds for t in range(1, config.rounds + 1)]
    return seconds, run.state


def time_evaluation(dataset, state, config, device, users: int) -> dict:
    """Seconds of a full-ranking evaluation (test split) of the first ``users`` users, and the
    extrapolation to all users for one evaluation point (valid and test)."""
    users = min(users, dataset.n_users)
    chosen = np.arange(users)
    start = time.perf_counter()
    evaluate(lambda u: full_scores(state, u), dataset, "test",
             chunk_size=config.eval_chunk_size, device=device, users=chosen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"eval_users_timed": users, "eval_seconds_timed": seconds,
            "eval_point_seconds_extrapolated": 2 * seconds * dataset.n_users / max(users, 1)}


def bench_backbone(dataset, backbone: str, args, device: torch.device) -> dict:
    overrides = {"rounds": args.rounds, "device": str(device), "seed": args.seed,
                 "engine": "batched"}
    if args.local_epochs:
        overrides["local_epochs"] = args.local_epochs
    if args.chunk_size:
        overrides["chunk_size"] = args.chunk_size
    if args.private_dtype:
        overrides["private_dtype"] = args.private_dtype
    config = default_config(backbone, **overrides)
    with PeakMemory(device) as memory:
        seconds, state = train_rounds(dataset, config, device)
    train = sum(seconds)
    per_round = train / len(seconds)
    held, uploaded = count_parameters(state)
    row = {"backbone": backbone, "device": str(device), "rounds": config.rounds,
           "private_dtype": config.private_dtype, "local_epochs": config.local_epochs,
           "batch_size": config.batch_size, "chunk_size": config.chunk_size,
           "seconds_each_round": seconds, "seconds_per_round": per_round,
           "rounds_per_second": 1.0 / per_round,
           "client_updates_per_second": dataset.n_users * config.sample_ratio / per_round,
           "params_per_client": held, "upload_scalars_per_client": uploaded,
           **memory.as_dict()}
    if args.eval_users > 0:
        row.update(time_evaluation(dataset, state, config, device, args.eval_users))
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| backbone | device | private dtype | s/round | rounds/s | client updates/s "
             "| peak memory MB (at start) | one evaluation point s (extrapolated) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ev = r.get("eval_point_seconds_extrapolated")
        lines.append(f"| {r['backbone']} | {r['device']} | {r['private_dtype']} | "
                     f"{r['seconds_per_round']:.2f} | {r['rounds_per_second']:.3f} | "
                     f"{r['client_updates_per_second']:.0f} | {r['peak_memory_mb']:.0f} "
                     f"({r['peak_memory_start_mb']:.0f}, {r['peak_memory_kind']}) | "
                     f"{'-' if ev is None else f'{ev:.0f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-large")
    p.add_argument("--backbones", default="pfedrec,fedrap")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-epochs", type=int, default=None, help="default: the backbone's tuned H")
    p.add_argument("--chunk-size", type=int, default=None, help="default: the engine's")
    p.add_argument("--private-dtype", default=None,
                   help="storage of per-client tables E_u / D_u: float32 (default) | bfloat16 | float16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-users", type=int, default=500,
                   help="time a test evaluation of this many users and extrapolate (0 = skip)")
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    start = time.perf_counter()
    dataset = load_dataset(args.data, seed=args.seed)
    load_seconds = time.perf_counter() - start
    rows = []
    for backbone in args.backbones.split(","):
        print(f"[bench_large] {backbone} on {device} ...", file=sys.stderr, flush=True)
        rows.append(bench_backbone(dataset, backbone, args, device))
        print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    report = {"data": dataset.stats()["name"], "users": dataset.n_users, "items": dataset.n_items,
              "interactions": dataset.stats()["interactions"], "load_seconds": load_seconds,
              "device": str(device), "threads": args.threads, **machine_fields(), "rows": rows}
    return emit(markdown(rows), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
