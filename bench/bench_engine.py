"""Benchmark (a): the batched engine against the per-client oracle, same configuration, on CPU.

For every ID backbone, on the ``world-full`` preset (by default), one training round is timed with
``engine="batched"`` (all clients, chunk by chunk, a leading client axis) and with
``engine="oracle"`` (the per-client correctness reference: one client after the other). By default both train
every client for ``--rounds`` rounds (3); with ``--loop-clients N`` the loop trains only N clients
(``sample_ratio = N / U``) and its seconds per round are extrapolated to all U clients (its cost is
linear in the number of clients, which never interact within a round); the table says so.
Evaluation is excluded from both timings.

    .venv/bin/python bench/bench_engine.py --threads 1              # world-full, every backbone, CPU
    .venv/bin/python bench/bench_engine.py --backbones pfedrec --threads 1

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

from fedmm_lite.data import load_dataset                      # noqa: E402
from fedmm_lite.timing import compare_metrics, time_engine     # noqa: E402
from fedmm_lite.fed.config import default_config              # noqa: E402

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")


def machine_fields() -> dict:
    """Where and when a figure was taken: torch version, processor, GPU name, UTC date."""
    return {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def emit(table: str, report: dict, json_path: str | None) -> int:
    """Print the markdown table and the JSON report; also write the JSON to ``json_path``."""
    print(table)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    return 0


def compare_engines(dataset, base, loop_clients: int, label: str) -> dict:
    """One configuration with both engines; the loop on ``loop_clients`` clients (0 = all),
    its seconds per round extrapolated linearly to every client (clients never interact)."""
    users = dataset.n_users
    batched = time_engine(dataset, dataclasses.replace(base, engine="batched"))
    loop_ratio = 1.0 if loop_clients <= 0 else min(1.0, loop_clients / users)
    loop = time_engine(dataset, dataclasses.replace(base, engine="oracle", sample_ratio=loop_ratio))
    updates_per_round = batched["client_updates"] / base.rounds
    batched_spr = batched["seconds_per_round"]
    loop_spr = updates_per_round / loop["client_updates_per_second"]   # extrapolated to all clients
    agreement = (compare_metrics(batched["metrics"], loop["metrics"], users) if loop_ratio == 1.0
                 else {"metrics_agree": None})   # different clients trained: nothing to compare
    return {"backbone": label, "users": users, "items": dataset.n_items,
            "local_epochs": base.local_epochs, "batch_size": base.batch_size,
            "chunk_size": base.chunk_size, "batched": batched, "loop": loop,
            "loop_extrapolated": loop_ratio < 1.0,
            "batched_seconds_per_round": batched_spr, "loop_seconds_per_round": loop_spr,
            "speedup": loop_spr / batched_spr, **agreement}


def bench_backbone(dataset, backbone: str, args) -> dict:
    base = default_config(backbone, rounds=args.rounds, device=args.device, seed=args.seed,
                          eval_every=args.rounds)
    if args.local_epochs:
        base = dataclasses.replace(base, local_epochs=args.local_epochs)
    return compare_engines(dataset, base, args.loop_clients, backbone)


def markdown(rows: list[dict]) -> str:
    head = ("| backbone | batched s/round | loop s/round | speed-up | loop clients timed |\n"
            "|---|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        timed = r["loop"]["client_updates"]
        note = f"{timed} of {r['users']} (extrapolated)" if r["loop_extrapolated"] else f"{timed} (all)"
        lines.append(f"| {r['backbone']} | {r['batched_seconds_per_round']:.2f} | "
                     f"{r['loop_seconds_per_round']:.1f} | {r['speedup']:.1f}x | {note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-epochs", type=int, default=None, help="default: the backbone's tuned H")
    p.add_argument("--loop-clients", type=int, default=0,
                   help="clients the loop trains per round (0 = all, the default; fewer are "
                        "extrapolated)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    dataset = load_dataset(args.data, seed=args.seed)
    return bench_backbones("bench_engine", dataset, args, bench_backbone, markdown)


def bench_backbones(name: str, dataset, args, bench_one, table) -> int:
    """``bench_one(dataset, backbone, args)`` for each of ``args.backbones`` (progress on stderr),
    then the markdown ``table`` of the rows on stdout and the report's JSON (``emit``)."""
    rows = []
    for backbone in args.backbones.split(","):
        print(f"[{name}] {backbone} ...", file=sys.stderr, flush=True)
        rows.append(bench_one(dataset, backbone, args))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    report = {"data": dataset.stats()["name"], "users": dataset.n_users, "items": dataset.n_items,
              "device": args.device, "threads": args.threads, **machine_fields(), "rows": rows}
    return emit(table(rows), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
