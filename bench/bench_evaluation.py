"""What one evaluation point costs next to one training round, for every backbone, and what it cost
before evaluation became one pass.

    .venv/bin/python bench/bench_evaluation.py                      # ml-100k, the official settings
    .venv/bin/python bench/bench_evaluation.py --settings defaults  # the package's defaults

An evaluation point is valid and test, every user, full ranking plus the sampled protocol
(``FederatedRun.evaluate``: one score matrix per chunk of users). "Two passes" is the evaluation as
it was: ``metrics.evaluate`` once per split, each scoring every user through the dense per-user
tables (``backbones.score`` on ``eval_id_tables``). Each figure is the median of ``--repeat``
measurements after one round of training, on one thread. Results: bench/results/ml100k/evaluation_<settings>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ml100k_reproduction import OFFICIAL, OUT, load_ml100k  # noqa: E402

from fedmm_lite.fed import backbones  # noqa: E402
from fedmm_lite.fed.config import FedConfig  # noqa: E402
from fedmm_lite.fed.rounds import KS, FederatedRun  # noqa: E402
from fedmm_lite.metrics import evaluate  # noqa: E402

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")
SETTINGS = {
    # PFedRec's official settings for every backbone (1 local epoch: the cheapest training round)
    "official": dict(dim=32, local_epochs=1, batch_size=256, neg_ratio=4, lr=0.1, sample_ratio=1.0),
    # the package's tuned defaults (5 local epochs, batch 64, d = 64)
    "defaults": dict(),
}


def two_pass(run: FederatedRun) -> tuple[dict, dict]:
    """The evaluation as it was: one full scoring of every user per split, dense per-user tables."""
    state = run.state

    def dense(users):
        return backbones.score(state.backbone, backbones.eval_params(state, users),
                               backbones.eval_id_tables(state, users))

    kw = dict(ks=KS, chunk_size=run.config.eval_chunk_size, device=run.device)
    return evaluate(dense, run.dataset, "valid", **kw), evaluate(dense, run.dataset, "test", **kw)


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(settings: str, repeat: int) -> dict:
    torch.set_num_threads(1)
    dataset = load_ml100k()
    rows = {}
    for backbone in BACKBONES:
        config = FedConfig(backbone=backbone, device="cpu", seed=0, rounds=repeat + 1,
                           **{**OFFICIAL, **SETTINGS[settings]})
        run = FederatedRun(dataset, config)
        train = []
        for t in range(1, repeat + 1):
            start = time.perf_counter()
            run.train_round(t)
            train.append(time.perf_counter() - start)
        one = median_seconds(lambda: run.evaluate(repeat), repeat)
        old = median_seconds(lambda: two_pass(run), repeat)
        rows[backbone] = {"train_round_seconds": statistics.median(train), "evaluation_seconds": one,
                          "two_pass_seconds": old}
        r = rows[backbone]
        print(f"{backbone}: round {r['train_round_seconds']:.3f} s, evaluation {one:.3f} s "
              f"({one / r['train_round_seconds']:.3f} of a round), two passes {old:.3f} s", flush=True)
    out = {"settings": settings, "config": {**OFFICIAL, **SETTINGS[settings]}, "repeat": repeat,
           "dataset": "ml-100k", "backbones": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"evaluation_{settings}.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def table(out: dict) -> str:
    lines = [f"| backbone ({out['settings']} settings) | training round s | evaluation point s | "
             "evaluation / round | two passes (before) s | before / now |", "|---|---|---|---|---|---|"]
    for backbone, r in out["backbones"].items():
        lines.append(f"| {backbone} | {r['train_round_seconds']:.3f} | {r['evaluation_seconds']:.3f} | "
                     f"{r['evaluation_seconds'] / r['train_round_seconds']:.3f} | "
                     f"{r['two_pass_seconds']:.3f} | {r['two_pass_seconds'] / r['evaluation_seconds']:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", choices=sorted(SETTINGS), default="official")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--table", action="store_true", help="print the table of the last run")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads((OUT / f"evaluation_{args.settings}.json").read_text())))
        return 0
    print(table(measure(args.settings, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
