"""The headroom ladder's fixed rungs for one dataset (fedmm_lite/headroom.py), as JSON.

Rungs: the Bayes oracle and the content-only oracle (world only: the generator's true logits),
popularity, and two centralised models trained with Adam on all the data at once, each tuned on
VALIDATION over a small grid (learning rate x weight decay, the best epoch of each): the ID model
(the FedAvg score function) and the content-aware model (FedMR's fusion architecture, Mix, in
place of the item embedding). The federated rungs come from ``fedmr_results.py``'s runs; its
``--table`` prints the whole ladder.

    .venv/bin/python bench/fedmr_ladder.py --data world-full          # writes results/fedmr/world-full/ladder.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install

from fedmm_lite import headroom                               # noqa: E402
from fedmm_lite.data import load_dataset                      # noqa: E402
from fedmm_lite.encoders import encode_dataset                # noqa: E402
from fedmm_lite.fed.rounds import popularity_scores           # noqa: E402

ID_GRID = [dict(lr=lr, weight_decay=wd) for lr in (0.001, 0.003, 0.01) for wd in (0.0, 1e-5, 1e-4)]
FUSION_GRID = [dict(lr=lr, weight_decay=wd) for lr in (0.001, 0.003) for wd in (1e-5, 1e-4)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cold-items", type=float, default=0.0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "fedmr"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, seed=args.seed, cold_fraction=args.cold_items)
    encoder = encode_dataset(dataset, progress=False).encoder
    pop = popularity_scores(dataset, "cpu").expand(dataset.n_users, -1)
    rows = headroom.standard_rungs(dataset, headroom.evaluate_scores(dataset, pop, "test"),
                                   headroom.evaluate_scores(dataset, pop, "valid"))
    central = {}
    for model, grid, options in (("id", ID_GRID, {}), ("fusion", FUSION_GRID, {"strategy": "mix"})):
        t0 = time.perf_counter()
        best, tried = headroom.tune_central(dataset, model, grid, epochs=args.epochs, seed=args.seed,
                                            **options)
        central[model] = {"best": dataclasses.asdict(best), "tried": tried,
                          "seconds": time.perf_counter() - t0}
        name = "centralised ID (Adam)" if model == "id" else "centralised FedMR fusion, Mix (Adam)"
        rows.append(headroom.rung(name, "central", best.test, dataset.n_users, best.valid,
                                  settings=best.settings, best_epoch=best.best_epoch))
        print(f"[fedmr_ladder] {name}: valid {best.valid['hr@50']:.4f}, test {best.test['hr@50']:.4f} "
              f"({best.settings}, epoch {best.best_epoch})", file=sys.stderr, flush=True)
    out = Path(args.out) / args.data
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-cold{args.cold_items:g}" if args.cold_items else ""
    path = out / f"ladder{suffix}.json"
    path.write_text(json.dumps({"data": args.data, "seed": args.seed, "encoder": encoder,
                                "users": dataset.n_users, "items": dataset.n_items,
                                "rows": rows, "central": central}, indent=1) + "\n")
    print(headroom.ladder_table(rows).round(4).to_markdown())
    print(f"[fedmr_ladder] written {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
