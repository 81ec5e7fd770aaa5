"""Two checkouts of the package timed against each other: CPU seconds per training round.

For a refactoring that must not slow the engine down (the round function and the method interface
replaced the older engine loop): each configuration runs in a fresh child process per checkout,
``--rounds`` training rounds on ``world-full`` with the tuned defaults and one torch thread, and
reports the process CPU seconds spent in the round function (planning, local training, uploads,
aggregation; evaluation and start-up excluded). The two checkouts alternate, and their order flips
every repetition, so the load of a shared machine falls on both alike; the table keeps each side's
minimum over ``--reps`` repetitions (the least disturbed run) and the ratio new / old. The test
HR@50 of the last round is printed too: a refactoring must leave it unchanged.

    git worktree add /tmp/old <old commit>
    .venv/bin/python bench/bench_commits.py /tmp/old . --reps 3

Works with checkouts whose round is ``fed.engine.train_round`` (before) or ``fed.rounds.run_round``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CONFIGS = (("fedavg", "id", 3), ("fcf", "id", 3), ("fedncf", "id", 2), ("pfedrec", "id", 3),
           ("fedrap", "id", 3), ("fedavg", "fedmr", 2))

CHILD = r"""
import sys, time
root, backbone, method, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, root)
import torch
torch.set_num_threads(1)
from fedmm_lite.data import load_dataset
from fedmm_lite.fed.config import default_config
from fedmm_lite.fed import run_federated
data = load_dataset("world-full")
if method == "fedmr":
    from fedmm_lite.encoders import encode_dataset
    encode_dataset(data, progress=False)
spent = [0.0]
def timed(fn):
    def inner(*args, **kwargs):
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - start
    return inner
from fedmm_lite.fed import engine
if hasattr(engine, "train_round"):
    engine.train_round = timed(engine.train_round)
else:
    from fedmm_lite.fed import rounds as round_module
    round_module.run_round = timed(round_module.run_round)
config = default_config(backbone, method=method, rounds=rounds, eval_every=rounds, device="cpu", seed=0)
result = run_federated(data, config, progress=False)
print(spent[0] / rounds, result.history[-1]["test"]["hr@50"])
"""


def measure(root: Path, backbone: str, method: str, rounds: int) -> tuple[float, float]:
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), backbone, method, str(rounds)],
                          capture_output=True, text=True, env={**os.environ, **env}, check=True)
    seconds, hr = proc.stdout.split()[-2:]
    return float(seconds), float(hr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma list of backbone[:method], e.g. fedrap,fedavg:fedmr")
    args = parser.parse_args()
    configs = CONFIGS
    if args.only:
        wanted = {tuple((w + ":id").split(":")[:2]) for w in args.only.split(",")}
        configs = tuple(c for c in CONFIGS if (c[0], c[1]) in wanted)
    best: dict = {}
    for rep in range(args.reps):
        for backbone, method, rounds in configs:
            sides = ("old", "new") if rep % 2 == 0 else ("new", "old")
            for side in sides:
                seconds, hr = measure(getattr(args, side), backbone, method, rounds)
                key = (backbone, method, side)
                best[key] = (min(seconds, best.get(key, (float("inf"),))[0]), hr)
                print(f"rep {rep + 1} {side} {backbone}+{method}: {seconds:.3f} CPU s/round, "
                      f"test HR@50 {hr:.4f}", file=sys.stderr, flush=True)
    print("| configuration | old CPU s/round | new CPU s/round | new / old | test HR@50 old, new |")
    print("|---|---:|---:|---:|---|")
    for backbone, method, _ in configs:
        old, hr_old = best[(backbone, method, "old")]
        new, hr_new = best[(backbone, method, "new")]
        print(f"| {backbone}+{method} | {old:.3f} | {new:.3f} | {new / old:.2f} | {hr_old:.4f}, {hr_new:.4f} |")


if __name__ == "__main__":
    main()
