"""Benchmark: FedMR (Mix: sum, mlp, gate and the private router) batched engine vs per-client loop.

The same measurement as ``bench_engine.py`` (whose ``markdown`` table and approach it reuses), for
``method="fedmr"``: on ``world-full`` (by default) one training round is timed with
``engine="batched"`` (all clients, a leading client axis) and with ``engine="oracle"`` (the
per-client reference) on ``--loop-clients`` clients only, extrapolated linearly to all U clients (clients never
interact within a round). Evaluation is excluded from both timings. Item features come from
``encoders.encode_dataset`` (the default offline encoder unless ``--encoder``), encoded once before
any timing. On CUDA (``--device cuda``, or ``--device all`` when a GPU is present) the same pair of
timings is taken on the GPU.

    .venv/bin/python bench/bench_fedmr.py                             # world-full, fedavg, CPU
    .venv/bin/python bench/bench_fedmr.py --backbones fedavg,fedrap --device all

Prints a markdown table on stdout, then the JSON of every measurement (progress on stderr).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import compare_engines, emit, machine_fields, markdown  # noqa: E402
from fedmm_lite.data import load_dataset                      # noqa: E402
from fedmm_lite.encoders import encode_dataset                # noqa: E402
from fedmm_lite.fed.config import default_config              # noqa: E402


def bench_fedmr(dataset, backbone: str, device: str, args) -> dict:
    """One round of FedMR Mix with both engines on ``device``; the loop on a subset, extrapolated."""
    base = default_config(backbone, method="fedmr", strategy=args.strategy, rounds=args.rounds,
                          device=device, seed=args.seed, eval_every=args.rounds)
    if args.local_epochs:
        base = dataclasses.replace(base, local_epochs=args.local_epochs)
    return compare_engines(dataset, base, args.loop_clients,
                           f"{backbone}+fedmr-{args.strategy} ({device})")


def devices(choice: str) -> list[str]:
    if choice == "all":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [choice]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full")
    p.add_argument("--backbones", default="fedavg")
    p.add_argument("--strategy", default="mix", help="mix | sum | mlp | gate")
    p.add_argument("--encoder", default=None, help="default: encoders' default offline encoder")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--local-epochs", type=int, default=None, help="default: the backbone's tuned H")
    p.add_argument("--loop-clients", type=int, default=100,
                   help="clients the loop trains per round (0 = all; the loop is slow)")
    p.add_argument("--device", default="all", help="cpu | cuda | all (cpu, and cuda when present)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    dataset = load_dataset(args.data, seed=args.seed)
    summary = encode_dataset(dataset, encoder=args.encoder, progress=False)
    rows = []
    for device in devices(args.device):
        for backbone in args.backbones.split(","):
            print(f"[bench_fedmr] {backbone} on {device} ...", file=sys.stderr, flush=True)
            rows.append(bench_fedmr(dataset, backbone, device, args))
            print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    report = {"data": dataset.stats()["name"], "users": dataset.n_users, "items": dataset.n_items,
              "encoder": summary.encoder, "pretrained": summary.pretrained,
              "threads": args.threads, **machine_fields(), "rows": rows}
    return emit(markdown(rows), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
