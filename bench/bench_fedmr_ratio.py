"""Benchmark: one FedMR round against one round of the same backbone alone, in ONE run (a ratio).

For each dataset and backbone, every configuration gets its own ``FederatedRun`` and the rounds
are interleaved (ID round 1, FedMR round 1, ..., ID round 2, ...), so that the machine's load
falls on all of them alike (the shared CPU here varies 10-30% from minute to minute); each
``train_round`` is timed (planning, local training, uploads, aggregation; evaluation excluded).
Reported: the median seconds per round of each configuration over ``--rounds`` rounds and its
ratio to the ID round's median. Configurations: the backbone alone (``id``), FedMR Mix with the
exact router input (``exact``) and, as labelled estimates (fedmr.py), ``epoch`` and ``batch``;
``pca64*``: the same with the features reduced to 64 principal components (``feature_dim``).

    .venv/bin/python bench/bench_fedmr_ratio.py --data world-full,movielens-posters --threads 1

Prints a markdown table on stdout, then the JSON of every measurement (progress on stderr).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import emit, machine_fields                 # noqa: E402
from fedmm_lite.data import load_dataset                      # noqa: E402
from fedmm_lite.encoders import encode_dataset                # noqa: E402
from fedmm_lite.fed.config import default_config              # noqa: E402
from fedmm_lite.fed.rounds import FederatedRun                # noqa: E402

VARIANTS = {"id": dict(method="id"), "exact": dict(method="fedmr"),
            "epoch": dict(method="fedmr", router_input="epoch"),
            "batch": dict(method="fedmr", router_input="batch"),
            "pca64": dict(method="fedmr", feature_dim=64),
            "pca64-epoch": dict(method="fedmr", feature_dim=64, router_input="epoch"),
            "pca64-batch": dict(method="fedmr", feature_dim=64, router_input="batch")}


def bench(dataset, backbone: str, variants: list[str], rounds: int, seed: int, extra: dict) -> list[dict]:
    """Interleaved rounds of every variant; one row per variant with its median and ratio."""
    runs = {v: FederatedRun(dataset, default_config(backbone, device="cpu", seed=seed, rounds=rounds,
                                                    **VARIANTS[v], **extra))
            for v in variants}
    seconds = {v: [] for v in variants}
    for t in range(1, rounds + 1):
        for v, run in runs.items():
            start = time.perf_counter()
            run.train_round(t)
            seconds[v].append(time.perf_counter() - start)
            print(f"[bench_fedmr_ratio] {dataset.name} {backbone} {v} round {t}: "
                  f"{seconds[v][-1]:.2f} s", file=sys.stderr, flush=True)
    base = statistics.median(seconds["id"]) if "id" in seconds else None
    rows = []
    for v in variants:
        med = statistics.median(seconds[v])
        rows.append({"data": dataset.name, "backbone": backbone, "variant": v,
                     "seconds_per_round": seconds[v], "median_seconds": med,
                     "ratio_to_id": med / base if base else None})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| dataset | backbone | configuration | median s/round | rounds timed | x the ID round |",
             "|---|---|---|---:|---:|---:|"]
    names = {"id": "ID (backbone alone)", "exact": "FedMR Mix, exact",
             "epoch": "FedMR Mix, router input per epoch (estimate)",
             "batch": "FedMR Mix, router input from the batch (estimate)",
             "pca64": "FedMR Mix, exact, features reduced to 64 components (option)",
             "pca64-epoch": "FedMR Mix, 64 components, router input per epoch",
             "pca64-batch": "FedMR Mix, 64 components, router input from the batch"}
    for r in rows:
        ratio = "" if r["ratio_to_id"] is None else f"{r['ratio_to_id']:.1f}x"
        lines.append(f"| {r['data']} | {r['backbone']} | {names[r['variant']]} | "
                     f"{r['median_seconds']:.2f} | {len(r['seconds_per_round'])} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full,movielens-posters")
    p.add_argument("--backbones", default="fedavg")
    p.add_argument("--variants", default="id,exact,epoch,batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="default: the tuned one")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    extra = {} if args.batch_size is None else {"batch_size": args.batch_size}
    rows, encoders = [], {}
    for name in args.data.split(","):
        dataset = load_dataset(name, seed=args.seed)
        encoders[name] = encode_dataset(dataset, progress=False).encoder
        for backbone in args.backbones.split(","):
            rows += bench(dataset, backbone, args.variants.split(","), args.rounds, args.seed, extra)
    report = {"encoders": encoders, "threads": args.threads, "rounds": args.rounds,
              **machine_fields(), "rows": rows}
    return emit(markdown(rows), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
