"""Benchmark: how much arithmetic a FedMR round does, against an ID round, and what that costs at
best on this CPU (the floor under the "FedMR round at most 10x the ID round" goal).

For each configuration, one warm-up round, then one round of ``FederatedRun.train_round`` under
PyTorch's ``FlopCounterMode``, which counts the floating-point operations of every matrix product
the round runs (mm, bmm, addmm, baddbmm; forward and backward; the in-place ``baddbmm_`` of the
explicit feature-map step by a rule given here) and keeps no event log, so a long round fits in
memory (``torch.profiler`` with ``record_shapes`` ran out of 24 GB on a movielens-posters round).
Elementwise work is left out, so the count is a lower bound on the round's arithmetic. The next
round is timed without the counter (the ID round, short and noisy: the median of the next five).
Then the core's attained throughput on batched matrix products of the shapes FedMR's fusion
multiplies (the most favourable case: one large product, no Python between) converts the count
into a floor in seconds: the same products cannot take less on this core, however they are
scheduled. Reported per configuration: GFLOP per round, the round's seconds, the floor, and the
floor as a multiple of the ID round's measured seconds.

    .venv/bin/python bench/fedmr_flops.py --data world-full --threads 1
    .venv/bin/python bench/fedmr_flops.py --data movielens-posters --variants id,exact,epoch

Prints a markdown table on stdout, then the JSON (progress on stderr).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import emit, machine_fields                 # noqa: E402
from fedmm_lite.data import load_dataset                      # noqa: E402
from fedmm_lite.encoders import encode_dataset                # noqa: E402
from fedmm_lite.fed.config import default_config              # noqa: E402
from fedmm_lite.fed.rounds import FederatedRun                # noqa: E402

VARIANTS = {"id": ("ID (backbone alone)", dict(method="id")),
            "sum": ("FedMR Sum (no router)", dict(method="fedmr", strategy="sum")),
            "exact": ("FedMR Mix, exact router input", dict(method="fedmr")),
            "epoch": ("FedMR Mix, router input per epoch (estimate)",
                      dict(method="fedmr", router_input="epoch")),
            # the per-client loop (oracle.py) on a quarter of the clients, scaled by 4 (clients
            # never interact: the work of a round is the sum of theirs)
            "loop": ("FedMR Mix, exact, per-client loop (1/4 of the clients, x4)",
                     dict(method="fedmr", engine="oracle", sample_ratio=0.25))}
SCALE = {"loop": 4.0}


def _in_place_product(self_shape, batch1_shape, batch2_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``baddbmm_`` (in place; the counter has no rule for it): the explicit feature-map
    step A_u <- A_u - lr delta^T F, (C, d, L) x (C, L, D): 2 C d L D."""
    C, d, L = batch1_shape
    return 2 * C * d * L * batch2_shape[-1]


def round_flops(run: FederatedRun, t: int, timed: int) -> tuple[float, float]:
    """(FLOPs of the matrix products of round ``t``, counted by PyTorch's ``FlopCounterMode``;
    the median seconds of the next ``timed`` rounds, timed without the counter)."""
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.baddbmm_: _in_place_product}) as counter:
        run.train_round(t)
    flops = float(counter.get_total_flops())
    seconds = []
    for k in range(1, timed + 1):
        start = time.perf_counter()
        run.train_round(t + k)
        seconds.append(time.perf_counter() - start)
    return flops, statistics.median(seconds)


def attained_gflops(d: int = 64, widths=(64, 192, 384, 768), clients: int = 64, rows: int = 128,
                    repeats: int = 20) -> dict:
    """The core's throughput (GFLOP/s) on one batched product (clients, rows, width) @ (clients,
    width, d), as FedMR's per-client mappings and strategies multiply, for each input width."""
    out = {}
    for w in widths:
        x, W = torch.randn(clients, rows, w), torch.randn(clients, w, d)
        torch.bmm(x, W)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.bmm(x, W)
            times.append(time.perf_counter() - start)
        out[w] = 2 * clients * rows * w * d / statistics.median(times) / 1e9
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full")
    p.add_argument("--backbone", default="fedavg")
    p.add_argument("--variants", default="id,sum,exact,epoch,loop")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, seed=args.seed)
    encoder = encode_dataset(dataset, progress=False).encoder
    rows = []
    for v in args.variants.split(","):
        run = FederatedRun(dataset, default_config(args.backbone, device="cpu", seed=args.seed,
                                                   rounds=8, **VARIANTS[v][1]))
        run.train_round(1)                                          # warm-up (lazy imports, caches)
        # the ID round is short and the machine's load varies: the median of five
        flops, seconds = round_flops(run, 2, timed=5 if v == "id" else 1)
        scale = SCALE.get(v, 1.0)
        rows.append({"variant": v, "gflop": scale * flops / 1e9, "seconds": scale * seconds})
        print(f"[fedmr_flops] {v}: {flops / 1e9:.1f} GFLOP, {seconds:.2f} s", file=sys.stderr, flush=True)
    peak = attained_gflops()
    best = max(peak.values())
    id_seconds = next((r["seconds"] for r in rows if r["variant"] == "id"), None)
    lines = [f"{args.data}, {args.backbone}, {args.threads} thread(s); best attained "
             f"{best:.1f} GFLOP/s on one batched product", "",
             "| configuration | GFLOP per round (matrix products) | measured s/round | floor s/round "
             "(GFLOP / best rate) | floor / measured ID round |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        r["floor_seconds"] = r["gflop"] / best
        r["floor_over_id_round"] = r["floor_seconds"] / id_seconds if id_seconds else None
        ratio = "" if r["floor_over_id_round"] is None else f"{r['floor_over_id_round']:.1f}x"
        lines.append(f"| {VARIANTS[r['variant']][0]} | {r['gflop']:.2f} | {r['seconds']:.2f} | "
                     f"{r['floor_seconds']:.2f} | {ratio} |")
    report = {"data": args.data, "backbone": args.backbone, "encoder": encoder,
              "threads": args.threads, "attained_gflops": peak, **machine_fields(), "rows": rows}
    return emit("\n".join(lines), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
