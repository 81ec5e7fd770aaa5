"""GFMFR's results tables: vanilla versus GFMFR, its grouping, schedule and module ablations, the
number of groups, and Laplace noise (GFMFR's Table 2), with the planted groups recovered on the world.

    .venv/bin/python bench/gfmfr_results.py --data world-full --rounds 20          # run (resumes)
    .venv/bin/python bench/gfmfr_results.py --data world-full --rounds 20 --table  # tables

Groups (``--only``): ``main`` (FedNCF, PFedRec, FedRAP: ID alone and with GFMFR; FedMR's cell is
read from bench/results/fedmr when a run of the same length exists), and, on PFedRec (the paper's
ablation backbone): ``grouping`` (spectral, agglomerative), ``ablation`` (random-group,
single-group, multiple-agg), ``schedule`` (scale-align, smooth, progressive, cosine), ``groups``
(g = 1, 5, 10; 3 is the main run), ``laplace`` (scales 1 to 5 on every upload, as GFMFR Table 2;
0 is the main run). Every run evaluates every ``--eval-every`` rounds (default 2) and reports test
at the round validation selects among them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from results_queue import cell, load, run_queue

HERE = Path(__file__).resolve().parent
MAIN = ("fedncf", "pfedrec", "fedrap")
ABLATION = "pfedrec"


def configurations(only: set) -> list[tuple[str, list]]:
    """(label, extra run arguments), in the order they run."""
    runs = []
    if "main" in only:
        for b in MAIN:
            runs.append((f"{b}-gfmfr", ["--backbone", b, "--method", "gfmfr"]))
            runs.append((f"{b}-id", ["--backbone", b, "--method", "id"]))
    base = ["--backbone", ABLATION, "--method", "gfmfr"]
    if "grouping" in only:
        runs += [(f"{ABLATION}-gfmfr-{g}", base + ["--grouping", g]) for g in ("spectral", "agglomerative")]
    if "ablation" in only:
        runs += [(f"{ABLATION}-gfmfr-{a}", base + ["--gfmfr-ablation", a])
                 for a in ("random-group", "single-group", "multiple-agg")]
    if "schedule" in only:
        runs += [(f"{ABLATION}-gfmfr-lambda-{s}", base + ["--lambda-schedule", s])
                 for s in ("scale-align", "smooth", "progressive", "cosine")]
    if "groups" in only:
        runs += [(f"{ABLATION}-gfmfr-g{g}", base + ["--groups", str(g)]) for g in (1, 5, 10)]
    if "laplace" in only:
        runs += [(f"{ABLATION}-gfmfr-laplace{s}", base + ["--noise", f"laplace:{s}"]) for s in (1, 2, 3, 4, 5)]
    return runs


def _ari(result) -> str:
    ari = (result or {}).get("planted", {}).get("adjusted_rand_index")
    return "-" if not ari else f"{ari[-1]:.3f}"


def tables(args) -> str:
    out, data, R = Path(args.out), args.data, args.rounds
    fedmr = Path(args.fedmr_out)
    lines = [f"### {data}, {R} rounds, seed {args.seed} (test at the validation-selected round, ± one "
             f"standard error)", "",
             "| backbone | ID HR@50 | NDCG@50 | round | train s | FedMR HR@50 | NDCG@50 | round | train s "
             "| GFMFR HR@50 | NDCG@50 | round | train s | ARI (last round) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in MAIN:
        gf = load(out, data, f"{b}-gfmfr", R)
        lines.append(f"| {b} | {cell(load(out, data, f'{b}-id', R))} | "
                     f"{cell(load(fedmr, data, f'{b}-fedmr-mix', R))} | {cell(gf)} | {_ari(gf)} |")
    lines += ["", "| PFedRec + GFMFR variant | HR@50 | NDCG@50 | round | train s | ARI (last round) |",
              "|---|---:|---:|---:|---:|---:|"]
    variants = [("gfmfr", "K-Means, g = 3, ours (main)")]
    variants += [(f"gfmfr-{g}", f"grouping {g}") for g in ("spectral", "agglomerative")]
    variants += [(f"gfmfr-{a}", a) for a in ("random-group", "single-group", "multiple-agg")]
    variants += [(f"gfmfr-lambda-{s}", f"lambda {s}") for s in ("scale-align", "smooth", "progressive", "cosine")]
    variants += [(f"gfmfr-g{g}", f"g = {g}") for g in (1, 5, 10)]
    variants += [(f"gfmfr-laplace{s}", f"Laplace scale {s}") for s in (1, 2, 3, 4, 5)]
    variants += [("id", "PFedRec alone (ID)")]
    for suffix, name in variants:
        result = load(out, data, f"{ABLATION}-{suffix}", R)
        lines.append(f"| {name} | {cell(result)} | {_ari(result)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="main,grouping,ablation,schedule,groups,laplace")
    p.add_argument("--labels", default="", help="comma list: run only these configurations")
    p.add_argument("--out", default=str(HERE / "results" / "gfmfr"))
    p.add_argument("--fedmr-out", default=str(HERE / "results" / "fedmr"))
    p.add_argument("--table", action="store_true", help="print the tables from the JSON files")
    args = p.parse_args(argv)
    if args.table:
        print(tables(args))
        return 0
    run_queue(configurations(set(args.only.split(","))), Path(args.out), args.data, args.rounds,
              args.seed, common=["--eval-every", str(args.eval_every)],
              wanted=set(args.labels.split(",")) if args.labels else None, tag="gfmfr_results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
