"""The cost of Flower: seconds per round of the Flower app in Flower's simulation engine against the
batched engine (one run each, as a ratio), and the message sizes per client against the efficiency
accounting (``state.count_parameters``).

    .venv/bin/python bench/bench_flower.py                                   # world-quick and world-full
    .venv/bin/python bench/bench_flower.py --data world-quick --rounds 2 --json out.json

Both sides run the same ``FedConfig`` (tuned defaults, ``--rounds`` rounds, evaluation only at the
last round) and the same plan (the server draws it): the Flower side trains every participant with
the per-client oracle's step on its node, so its seconds per round include the oracle's cost
(bench_engine.py measures that alone), the messages and Ray's scheduling. Timing covers training
only (plan, messages, local training, aggregation), not evaluation. Needs the flower extra.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["world-quick", "world-full"])
    parser.add_argument("--backbone", default="fedavg")
    parser.add_argument("--method", default="id")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="virtual SuperNodes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)

    import torch

    from fedmm_lite.fed import run_federated
    from fedmm_lite.fed.config import default_config
    from fedmm_lite.flower.node import RunSpec, load_run_dataset
    from fedmm_lite.flower.simulation import message_sizes, simulate_many

    torch.set_num_threads(args.threads)
    specs = [RunSpec(data, default_config(args.backbone, method=args.method, rounds=args.rounds,
                                          eval_every=args.rounds, device="cpu"), args.clients)
             for data in args.data]
    rows = []
    engine = {}
    for spec in specs:
        dataset = load_run_dataset(spec)
        result = run_federated(dataset, spec.config, progress=False)
        engine[spec.data] = result
    started = time.perf_counter()
    flower = simulate_many(specs, cpus=min(os.cpu_count() or 1, args.clients))
    wall = time.perf_counter() - started
    for spec, (result, stats, _, dataset) in zip(specs, flower):
        batched = engine[spec.data]
        sizes = message_sizes(stats)
        rows.append({
            "data": spec.data, "users": dataset.n_users, "items": dataset.n_items,
            "participants_per_round": result.client_updates // args.rounds,
            "batched_s_per_round": batched.train_seconds / args.rounds,
            "flower_s_per_round": result.train_seconds / args.rounds,
            "ratio": (result.train_seconds / batched.train_seconds) if batched.train_seconds > 0 else None,
            "same_test_metrics": result.test == batched.test,
            "upload_scalars_per_client (count_parameters)": batched.upload_scalars_per_client,
            **sizes,
        })
    print(f"{args.backbone} ({args.method}), {args.rounds} rounds, {args.clients} virtual SuperNodes, "
          f"{args.threads} torch thread(s); simulation wall time {wall:.0f} s (Ray start included)\n")
    print("| data | clients/round | batched s/round | Flower sim s/round | ratio | upload payload scalars "
          "per client (count_parameters) | upload bytes per client | model download bytes per message | "
          "plan bytes per client |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['data']} | {r['participants_per_round']} | {r['batched_s_per_round']:.3f} | "
              f"{r['flower_s_per_round']:.2f} | {r['ratio']:.0f}x | "
              f"{r['upload_payload_scalars_per_client']:.0f} ({r['upload_scalars_per_client (count_parameters)']}) | "
              f"{r['upload_bytes_per_client']:.0f} | {r['download_model_bytes_per_message']:.0f} | "
              f"{r['download_plan_bytes_per_client']:.0f} |")
    out = {"backbone": args.backbone, "method": args.method, "rounds": args.rounds, "clients": args.clients,
           "threads": args.threads, "rows": rows}
    print(json.dumps(out, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
