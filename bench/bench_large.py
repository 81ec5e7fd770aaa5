"""Benchmarks (b) and (c): rounds per second and peak memory on the ``world-large`` preset.

``world-large`` is the Office_Products scale (about 6,300 clients x 4,500 items). For PFedRec and
FedRAP (by default) it trains ``--rounds`` rounds with the batched engine and reports training
seconds per round, rounds per second, client updates per second, evaluation seconds (full ranking
of valid and test over all users) and peak memory:

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
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install

from fedmm_lite.config import resolve_device                  # noqa: E402
from fedmm_lite.data import load_dataset                      # noqa: E402
from fedmm_lite.fed.commands import training_clock           # noqa: E402
from fedmm_lite.fed.config import default_config              # noqa: E402
from fedmm_lite.fed.loop import run_federated                 # noqa: E402
from fedmm_lite.resources import PeakMemory                   # noqa: E402


def bench_backbone(dataset, backbone: str, args, device: torch.device) -> dict:
    overrides = {"rounds": args.rounds, "device": str(device), "seed": args.seed,
                 "eval_every": args.rounds, "engine": "batched"}
    if args.local_epochs:
        overrides["local_epochs"] = args.local_epochs
    if args.chunk_size:
        overrides["chunk_size"] = args.chunk_size
    if args.private_dtype:
        overrides["private_dtype"] = args.private_dtype
    config = default_config(backbone, **overrides)
    start = time.perf_counter()
    with PeakMemory(device) as memory, training_clock() as clock:
        result = run_federated(dataset, config, progress=args.progress)
    wall = time.perf_counter() - start
    train = clock["seconds"]
    per_round = train / max(config.rounds, 1)
    return {"backbone": backbone, "device": str(device), "rounds": config.rounds,
            "private_dtype": config.private_dtype,
            "local_epochs": config.local_epochs, "batch_size": config.batch_size,
            "chunk_size": config.chunk_size, "client_updates": int(result.client_updates),
            "train_seconds": train, "seconds_per_round": per_round,
            "rounds_per_second": 1.0 / per_round if per_round > 0 else None,
            "client_updates_per_second": result.client_updates / train if train > 0 else None,
            "evaluation_seconds": max(wall - train, 0.0), "wall_seconds": wall,
            "valid_hr@50_last": result.history[-1]["valid"]["hr@50"],
            "params_per_client": result.params_per_client,
            "upload_scalars_per_round": result.upload_scalars_per_round,
            **memory.as_dict()}


def markdown(rows: list[dict]) -> str:
    lines = ["| backbone | device | s/round | rounds/s | client updates/s | eval s (2 evals) "
             "| peak memory MB |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['device']} | {r['seconds_per_round']:.2f} | "
                     f"{r['rounds_per_second']:.3f} | {r['client_updates_per_second']:.0f} | "
                     f"{r['evaluation_seconds']:.1f} | {r['peak_memory_mb']:.0f} "
                     f"({r['peak_memory_kind']}) |")
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
    p.add_argument("--progress", action="store_true", help="show the engine's progress bar")
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
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    report = {"data": dataset.stats()["name"], "users": dataset.n_users, "items": dataset.n_items,
              "interactions": dataset.stats()["interactions"], "load_seconds": load_seconds,
              "device": str(device), "gpu": gpu, "threads": args.threads,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    print(markdown(rows))
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
