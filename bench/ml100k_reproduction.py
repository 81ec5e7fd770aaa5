"""Ours on MovieLens-100K under the PFedRec / FedRAP codes' own protocol, and the step sizes chosen
on validation. Results (one JSON per run, with the curve over rounds) go to bench/results/ml100k/.

    .venv/bin/python bench/ml100k_reproduction.py run pfedrec-official-settings
    .venv/bin/python bench/ml100k_reproduction.py tune pfedrec     # the validation grid of TUNE
    .venv/bin/python bench/ml100k_reproduction.py table            # the markdown tables

Every run evaluates valid and test at every round, selects the round on VALIDATION (the sampled
protocol's HR@10, the official codes' rule) and reads test there. The data: the ``ml-100k`` preset
(``$FEDMM_ML100K``, ../shared/data/ml-100k, or the public archive downloaded), split with
``ties="file"`` (the official codes' leave-one-out). Runs are sequential, one thread.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "ml100k"
sys.path.insert(0, str(ROOT))

# The official codes' settings in our terms (README of each code, all other arguments default).
# PFedRec: d 32, 1 local epoch, batch 256, 4 negatives, lr 0.1 (score function), item step
# lr * n * lr_eta = 0.1 * 1682 * 80 = 13,456, all 943 clients every round, 100 rounds.
PFEDREC = dict(backbone="pfedrec", dim=32, local_epochs=1, batch_size=256, neg_ratio=4, lr=0.1,
               item_lr=13456.0, sample_ratio=1.0, rounds=100)
# FedRAP: d 32, up to 10 local epochs, batch 2048 (one batch a client), 4 negatives, lr_args 1000
# for both item tables (ours: item_lr for C; D_u takes lr, see book/methods.md), lambda 0.1,
# mu 1e-3, 100 rounds. Its score-function step 1e-4 cannot be set apart from D_u's in ours.
FEDRAP = dict(backbone="fedrap", dim=32, local_epochs=10, batch_size=2048, neg_ratio=4,
              item_lr=1000.0, fedrap_lambda=0.1, fedrap_mu=1e-3, sample_ratio=1.0, rounds=100)
# The official protocol: the target among 99 negatives drawn outside every interaction (the
# official pool), training negatives that never draw a held-out item (the official leak), ties of
# the leave-one-out split broken by file order.
OFFICIAL = dict(protocol="sampled", sampled_pool="official", negatives="official")
# The same sampled protocol without either leak.
CLEAN = dict(protocol="sampled", sampled_pool="prior", negatives="fresh")

RUNS = {
    "pfedrec-official-settings": {**PFEDREC, **OFFICIAL},
    "pfedrec-official-settings-clean": {**PFEDREC, **CLEAN},
    # one leak at a time: fresh training negatives, the official pool; and the reverse
    "pfedrec-official-settings-fresh-negatives": {**PFEDREC, **OFFICIAL, "negatives": "fresh"},
    "pfedrec-official-settings-prior-pool": {**PFEDREC, **OFFICIAL, "sampled_pool": "prior"},
    "fedrap-official-settings": {**FEDRAP, **OFFICIAL, "lr": 0.5},
    "fedrap-official-settings-clean": {**FEDRAP, **CLEAN, "lr": 0.5},
}
# Step sizes searched on validation (the grid of each backbone); the other settings as above.
TUNE = {
    "pfedrec": ({**PFEDREC, **OFFICIAL}, {"lr": [0.1, 0.5, 1.0], "item_lr": [4000.0, 13456.0]}),
    "pfedrec-clean": ({**PFEDREC, **CLEAN}, {"lr": [0.1, 0.5, 1.0], "item_lr": [4000.0, 13456.0]}),
    # FedRAP at its own settings costs about 30 s a round here (10 local epochs): its grid uses
    # PFedRec's (1 local epoch, batch 256), and the run at FedRAP's settings is one more candidate
    "fedrap": ({**FEDRAP, **OFFICIAL, "local_epochs": 1, "batch_size": 256},
               {"lr": [0.1, 0.5], "item_lr": [4000.0, 13456.0]}),
}


def load_ml100k():
    """The ml-100k preset split as the official codes split it (its converter registered in Python
    when the installed package predates the entry point)."""
    from fedmm_lite.data import converters, load_dataset, register_converter

    if converters.find_converter("ml-100k") is None:
        from data_prep.ml100k import convert
        register_converter("ml-100k", convert)
    return load_dataset("ml-100k", ties="file")


def compact(history: list) -> list:
    """The curve: per evaluated round, the sampled protocol's and full ranking's metrics."""
    keys = ("hr@10_sampled", "ndcg@10_sampled", "hr@10", "hr@50", "ndcg@50")
    def r6(x):
        return None if x is None else float(f"{x:.6g}")
    return [{"round": h["round"], "train_loss": r6(h["train_loss"]), "seconds": round(h["seconds"], 3),
             "train_seconds": round(h["train_seconds"], 3),
             **{f"{split}_{k}": r6(h[split][k]) for split in ("valid", "test") for k in keys}}
            for h in history]


def run_one(label: str, settings: dict, dataset=None, out: Path = OUT) -> dict:
    import torch

    from fedmm_lite.fed.config import FedConfig
    from fedmm_lite.fed.rounds import run_federated

    torch.set_num_threads(1)
    dataset = dataset if dataset is not None else load_ml100k()
    config = FedConfig(**{"device": "cpu", "seed": 0, "eval_every": 1, **settings})
    start = time.perf_counter()
    result = run_federated(dataset, config, progress=False)
    record = {"label": label, "settings": settings, "best_round": result.best_round,
              "valid": result.valid, "test": result.test, "seconds": time.perf_counter() - start,
              "train_seconds": result.train_seconds, "rounds": config.rounds,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "history": compact(result.history)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{label}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{label}: best round {result.best_round}, valid HR@10 (sampled) "
          f"{result.valid['hr@10_sampled']:.4f}, test HR@10 {result.test['hr@10_sampled']:.4f} "
          f"NDCG@10 {result.test['ndcg@10_sampled']:.4f}; {record['seconds']:.0f} s", flush=True)
    return record


def tune(name: str, out: Path = OUT) -> None:
    """Every point of the grid (skipping those already written), then the validation choice."""
    base, grid = TUNE[name]
    dataset = load_ml100k()
    names = sorted(grid)
    for values in itertools.product(*(grid[k] for k in names)):
        point = dict(zip(names, values))
        label = f"tune-{name}-" + "-".join(f"{k}{v:g}" for k, v in point.items())
        if not (out / f"{label}.json").is_file():
            run_one(label, {**base, **point}, dataset, out)
    print(tune_table(name, out))


def tune_table(name: str, out: Path = OUT) -> str:
    # this grid's runs only: "tune-pfedrec-*" also matches "tune-pfedrec-clean-*"
    first = f"tune-{name}-{sorted(TUNE[name][1])[0]}"
    records = [json.loads(p.read_text()) for p in sorted(out.glob(f"{first}*.json"))]
    if not records:
        return f"(no tuning runs of {name} in {out})"
    best = max(records, key=lambda r: r["valid"]["hr@10_sampled"])
    lines = [f"| {name}: lr | item_lr | best round | valid HR@10 | test HR@10 | test NDCG@10 |",
             "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["settings"]["lr"], r["settings"]["item_lr"])):
        mark = " (chosen)" if r is best else ""
        lines.append(f"| {r['settings']['lr']:g}{mark} | {r['settings']['item_lr']:g} | {r['best_round']} "
                     f"| {r['valid']['hr@10_sampled']:.4f} | {r['test']['hr@10_sampled']:.4f} "
                     f"| {r['test']['ndcg@10_sampled']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="one of the named runs")
    p.add_argument("label", choices=sorted(RUNS))
    p.add_argument("--set", default="{}", help="JSON of FedConfig fields to override (label gets them)")
    p = sub.add_parser("tune", help="the validation grid of a backbone")
    p.add_argument("name", choices=sorted(TUNE))
    sub.add_parser("table", help="print the tuning tables")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.command == "run":
        extra = json.loads(args.set)
        label = args.label + "".join(f"-{k}{v}" for k, v in extra.items())
        run_one(label, {**RUNS[args.label], **extra})
    elif args.command == "tune":
        tune(args.name)
    else:
        print("\n\n".join(tune_table(name) for name in TUNE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
