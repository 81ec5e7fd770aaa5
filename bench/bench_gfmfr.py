"""Benchmark: a GFMFR round against its backbone's ID round, batched engine against the per-client
oracle, and the server step's share of a GFMFR round.

For each backbone (default PFedRec, FedRAP, FedNCF) on ``world-full``: ``--rounds`` rounds (default
3) of the ID backbone and of GFMFR with the batched engine, and of GFMFR with the per-client oracle,
every client every round, evaluation excluded. The first GFMFR round has no teacher yet (the server
groups after it), so the seconds per round are taken over rounds 2..R; the server step (grouping,
group targets, training S_phi, the teachers) is timed by GFMFR itself (``server_seconds`` of each
round's diagnostics). One torch thread by default.

    .venv/bin/python bench/bench_gfmfr.py --threads 1
    .venv/bin/python bench/bench_gfmfr.py --backbones pfedrec --device cuda

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

from bench_engine import bench_backbones                      # noqa: E402
from fedmm_lite.data import load_dataset                       # noqa: E402
from fedmm_lite.encoders import encode_dataset                 # noqa: E402
from fedmm_lite.fed.config import default_config               # noqa: E402
from fedmm_lite.fed.rounds import FederatedRun                 # noqa: E402


def time_rounds(dataset, config) -> dict:
    """Train ``config.rounds`` rounds (no evaluation); seconds per round over rounds 2..R, and the
    server step's seconds over the same rounds."""
    run = FederatedRun(dataset, config)
    records = [run.train_round(t) for t in range(1, config.rounds + 1)]
    timed = records[1:] if len(records) > 1 else records
    train = sum(r.train_seconds for r in timed)
    server = sum(r.server.get("server_seconds", 0.0) for r in timed)
    return {"engine": config.engine, "method": config.method, "rounds_timed": len(timed),
            "seconds_per_round": train / len(timed), "server_seconds_per_round": server / len(timed),
            "last_loss": records[-1].train_loss}


def bench_backbone(dataset, backbone: str, args) -> dict:
    base = default_config(backbone, rounds=args.rounds, device=args.device, seed=args.seed)
    ident = time_rounds(dataset, base)
    gf = dataclasses.replace(base, method="gfmfr")
    batched = time_rounds(dataset, gf)
    oracle = time_rounds(dataset, dataclasses.replace(gf, engine="oracle"))
    return {"backbone": backbone, "id": ident, "gfmfr_batched": batched, "gfmfr_oracle": oracle,
            "gfmfr_over_id": batched["seconds_per_round"] / ident["seconds_per_round"],
            "oracle_over_batched": oracle["seconds_per_round"] / batched["seconds_per_round"],
            "server_share": batched["server_seconds_per_round"] / batched["seconds_per_round"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| backbone | ID s/round | GFMFR s/round | GFMFR / ID | oracle s/round | oracle / batched "
             "| server s/round (share) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['id']['seconds_per_round']:.2f} | "
                     f"{r['gfmfr_batched']['seconds_per_round']:.2f} | {r['gfmfr_over_id']:.1f}x | "
                     f"{r['gfmfr_oracle']['seconds_per_round']:.1f} | {r['oracle_over_batched']:.1f}x | "
                     f"{r['gfmfr_batched']['server_seconds_per_round']:.2f} ({r['server_share']:.0%}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full")
    p.add_argument("--backbones", default="pfedrec,fedrap,fedncf")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, seed=args.seed)
    encode_dataset(dataset, progress=False)
    return bench_backbones("bench_gfmfr", dataset, args, bench_backbone, markdown)


if __name__ == "__main__":
    sys.exit(main())
