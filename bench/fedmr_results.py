"""FedMR's results tables: vanilla versus FedMR, the step-size lesson, ablations, router-input
estimates, cold items, noise, and the headroom ladder.

Every configuration is one ``python -m fedmm_lite run ... --json`` in a fresh process (one torch
thread), its JSON kept under ``--out`` (default ``bench/results/fedmr``); a configuration whose
JSON exists is skipped, so the script resumes where it stopped. ``--table`` prints the markdown
tables from the JSON files found (the ladder needs ``fedmr_ladder.py``'s ladder.json).

    .venv/bin/python bench/fedmr_results.py --data world-full --rounds 20          # run
    .venv/bin/python bench/fedmr_results.py --data world-full --rounds 20 --table  # tables

Groups (``--only``): ``main`` (the five backbones, vanilla ID and FedMR Mix with the tuned
defaults), ``lesson`` (FedAvg + Mix and + Mix without ID under plain server averaging of the
fusion modules, the previous default), ``strategy`` (FedAvg with Sum, MLP, Gate), ``modality``
(FedAvg FedMR without image, text or ID), ``estimate`` (FedAvg + Mix with the router input
estimated per epoch or from the batch), ``fusion-lr`` (FedAvg + Mix with the fusion modules'
local step ``--fusion-lr`` at 1, 3 and 10 instead of 0.1, and with only the feature mappings'
step ``--feature-map-lr`` at 1 and 3; not in the default groups), ``sum`` (every backbone with
FedMR's Sum strategy alone; not in the default groups either), ``cold`` (vanilla and FedMR
Mix with 20% of the items held out of training, ``--cold-backbones``), ``noise`` (FedAvg,
vanilla and FedMR, Gaussian noise of variance 0.1 on every upload, the FedMR paper's Table 4).
Test HR@50 / NDCG@50 are read at the round that validation selects; one standard error is
binomial over the test users.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")
NOISE = f"gaussian:{math.sqrt(0.1):.4f}"          # the paper's variance 0.1
COLD = "0.2"
PLAIN = ["--fusion-server", "sgd"]                 # the fusion modules averaged plainly (old default)
FUSION_LRS = (1.0, 3.0, 10.0)                       # group "fusion-lr": FedAvg + Mix at these steps
FEATURE_MAP_LRS = (1.0, 3.0)                        # ... and with only A_text, A_image at these
GROUPS = "main,lesson,strategy,modality,estimate,cold,noise"   # "sum", "fusion-lr": on demand


def configurations(only: set, cold_backbones=("fedavg",)) -> list[tuple[str, str, list]]:
    """(group, label, extra run arguments), in the order they run."""
    runs = []
    mr = ["--method", "fedmr"]
    if "main" in only:
        for b in BACKBONES:
            runs.append(("main", f"{b}-fedmr-mix", ["--backbone", b, *mr]))
            runs.append(("main", f"{b}-id", ["--backbone", b, "--method", "id"]))
    if "lesson" in only:
        runs.append(("lesson", "fedavg-fedmr-mix-plain", ["--backbone", "fedavg", *mr, *PLAIN]))
        runs.append(("lesson", "fedavg-fedmr-no-id-plain", ["--backbone", "fedavg", *mr, *PLAIN,
                                                            "--modalities", "text,image"]))
    if "strategy" in only:
        for s in ("sum", "mlp", "gate"):
            runs.append(("strategy", f"fedavg-fedmr-{s}", ["--backbone", "fedavg", *mr, "--strategy", s]))
    if "modality" in only:
        for dropped, kept in (("image", "id,text"), ("text", "id,image"), ("id", "text,image")):
            runs.append(("modality", f"fedavg-fedmr-no-{dropped}",
                         ["--backbone", "fedavg", *mr, "--modalities", kept]))
    if "estimate" in only:
        for estimate in ("epoch", "batch"):
            runs.append(("estimate", f"fedavg-fedmr-mix-{estimate}",
                         ["--backbone", "fedavg", *mr, "--router-input", estimate]))
    if "cold" in only:
        for b in cold_backbones:
            runs.append(("cold", f"{b}-id-cold", ["--backbone", b, "--method", "id", "--cold-items", COLD]))
            runs.append(("cold", f"{b}-fedmr-mix-cold", ["--backbone", b, *mr, "--cold-items", COLD]))
    if "sum" in only:
        # FedMR with the Sum strategy alone (no router) on every backbone: the strategy the
        # routers of the main runs chose
        for b in BACKBONES:
            if b != "fedavg" or "strategy" not in only:
                runs.append(("sum", f"{b}-fedmr-sum", ["--backbone", b, *mr, "--strategy", "sum"]))
    if "fusion-lr" in only:
        # the fusion modules' local step (default 0.1, chosen on world-quick only): larger steps
        for step in FUSION_LRS:
            runs.append(("fusion-lr", f"fedavg-fedmr-mix-flr{step:g}",
                         ["--backbone", "fedavg", *mr, "--fusion-lr", f"{step:g}"]))
        # the feature mappings A_text, A_image alone at a larger step (the rest at the default)
        for step in FEATURE_MAP_LRS:
            runs.append(("fusion-lr", f"fedavg-fedmr-mix-fmlr{step:g}",
                         ["--backbone", "fedavg", *mr, "--feature-map-lr", f"{step:g}"]))
    if "noise" in only:
        runs.append(("noise", "fedavg-id-noise", ["--backbone", "fedavg", "--method", "id", "--noise", NOISE]))
        runs.append(("noise", "fedavg-fedmr-mix-noise", ["--backbone", "fedavg", *mr, "--noise", NOISE]))
    return runs


def run_all(args) -> None:
    out = Path(args.out) / args.data
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    wanted = set(args.labels.split(",")) if args.labels else None
    extra = ["--router-input", args.router_input] if args.router_input else []
    for group, label, run_args in configurations(set(args.only.split(",")), args.cold_backbones.split(",")):
        if wanted is not None and label not in wanted:
            continue
        path = out / f"{label}-r{args.rounds}.json"
        if path.exists():
            print(f"[fedmr_results] {label}: done already ({path})", file=sys.stderr)
            continue
        fedmr_extra = extra if "fedmr" in run_args and "--router-input" not in run_args else []
        cmd = [sys.executable, "-m", "fedmm_lite", "run", "--data", args.data, "--rounds",
               str(args.rounds), "--seed", str(args.seed), "--eval-every", str(args.eval_every),
               "--device", "cpu", "--json", str(path),
               *run_args, *fedmr_extra]
        print(f"[fedmr_results] {label}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
        print(f"[fedmr_results] {label}: exit {done.returncode} after "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def _load(out: Path, label: str, rounds: int) -> dict | None:
    path = out / f"{label}-r{rounds}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _se(result: dict) -> float:
    hr, users = result["test"]["hr@50"], result["dataset"]["users"]
    return math.sqrt(hr * (1 - hr) / users)


def _cell(result: dict | None) -> str:
    if result is None:
        return "not run | | | |"
    test = result["test"]
    stopped = result.get("diverged")
    where = f" (diverged in round {stopped['round']})" if stopped else ""
    return (f"{test['hr@50']:.4f} | {_se(result):.4f} | {test['ndcg@50']:.4f} | {result['best_round']}{where} | "
            f"{result.get('train_seconds', float('nan')):.0f}")


def _relative(result: dict, names=("Q", "A_id", "A_text", "A_image", "M_W1", "G_image")) -> str:
    steps = [h["server"]["relative_update"] for h in result["history"]
             if "relative_update" in h.get("server", {})]
    cells = []
    for name in names:
        values = [s[name] for s in steps if s.get(name) is not None]
        cells.append(f"{sum(values) / len(values):.2e}" if values else "-")
    return " | ".join(cells)


def tables(args) -> str:
    out = Path(args.out) / args.data
    r = args.rounds
    head = "| HR@50 | SE | NDCG@50 | round | train s |"
    lines = [f"### {args.data}, {r} rounds, seed {args.seed} (test at the validation-selected round)",
             "", "| backbone | ID HR@50 | SE | NDCG@50 | round | train s | FedMR Mix HR@50 | SE | NDCG@50 "
                 "| round | train s | change / SE |",
             "|---|" + "---:|" * 11]
    for b in BACKBONES:
        a, m = _load(out, f"{b}-id", r), _load(out, f"{b}-fedmr-mix", r)
        change = (f"{(m['test']['hr@50'] - a['test']['hr@50']) / _se(a):+.1f}" if a and m else "")
        lines.append(f"| {b} | {_cell(a)} | {_cell(m)} | {change} |")
    summed = [(b, _load(out, f"{b}-id", r), _load(out, f"{b}-fedmr-sum", r)) for b in BACKBONES]
    if any(m for _, _, m in summed):
        lines += ["", "| backbone | ID HR@50 | SE | NDCG@50 | round | train s | FedMR Sum HR@50 | SE | "
                      "NDCG@50 | round | train s | change / SE |", "|---|" + "---:|" * 11]
        for b, a, m in summed:
            change = (f"{(m['test']['hr@50'] - a['test']['hr@50']) / _se(a):+.1f}" if a and m else "")
            lines.append(f"| {b} | {_cell(a)} | {_cell(m)} | {change} |")
    lines += ["", f"| FedAvg + FedMR variant {head}", "|---|---:|---:|---:|---:|---:|"]
    for label in ("fedavg-fedmr-mix", "fedavg-fedmr-mix-plain", "fedavg-fedmr-mix-epoch",
                  "fedavg-fedmr-mix-batch", "fedavg-fedmr-sum", "fedavg-fedmr-mlp", "fedavg-fedmr-gate",
                  "fedavg-fedmr-no-image", "fedavg-fedmr-no-text", "fedavg-fedmr-no-id",
                  "fedavg-fedmr-no-id-plain", "fedavg-id", "fedavg-id-noise", "fedavg-fedmr-mix-noise",
                  *(f"fedavg-fedmr-mix-flr{step:g}" for step in FUSION_LRS),
                  *(f"fedavg-fedmr-mix-fmlr{step:g}" for step in FEATURE_MAP_LRS)):
        lines.append(f"| {label} | {_cell(_load(out, label, r))} |")
    lesson = [(label, _load(out, label, r)) for label in
              ("fedavg-fedmr-mix-plain", "fedavg-fedmr-mix", "fedavg-fedmr-no-id-plain", "fedavg-fedmr-no-id")]
    if any(res for _, res in lesson):
        lines += ["", "Mean over rounds of ||theta_t - theta_{t-1}|| / ||theta_{t-1}||:", "",
                  "| run | Q | A_id | A_text | A_image | M_W1 | G_image |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {label} | {_relative(res)} |" for label, res in lesson if res]
    cold = [(b, _load(out, f"{b}-id-cold", r), _load(out, f"{b}-fedmr-mix-cold", r)) for b in BACKBONES]
    cold = [c for c in cold if c[1] or c[2]]
    if cold:
        lines += ["", f"Cold items ({float(COLD):.0%} of the items held out of training):", "",
                  "| run | warm HR@50 | cold users | cold HR@10 among cold | random | cold HR@50 among cold "
                  "| random | cold HR@50 among all |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for b, a, m in cold:
            for label, res in ((f"{b} ID", a), (f"{b} FedMR Mix", m)):
                if res:
                    t = res["test"]
                    lines.append(f"| {label} | {t['hr@50']:.4f} | {t['cold_users']} | {t['cold_hr@10']:.4f} | "
                                 f"{t['cold_random_hr@10']:.4f} | {t['cold_hr@50']:.4f} | "
                                 f"{t['cold_random_hr@50']:.4f} | {t['cold_all_hr@50']:.4f} |")
    planted = [(b, res["planted"]) for b in BACKBONES
               if (res := _load(out, f"{b}-fedmr-mix", r)) and res.get("planted")]
    if planted:
        lines += ["", "| backbone | planted group (modality) | users | pi_sum | pi_mlp | pi_gate |",
                  "|---|---|---:|---:|---:|---:|"]
        for b, groups in planted:
            for name, g in groups.items():
                weights = " | ".join("-" if g.get(k) is None else f"{g[k]:.3f}" for k in ("sum", "mlp", "gate"))
                lines.append(f"| {b} | {name} ({g['modality']}) | {g['users']} | {weights} |")
    lines += ["", ladder(out, r)]
    return "\n".join(lines)


def ladder(out: Path, rounds: int) -> str:
    """The headroom ladder: ladder.json's fixed rungs and this script's federated runs."""
    from fedmm_lite import headroom

    path = out / "ladder.json"
    if not path.exists():
        return "(no ladder.json: run bench/fedmr_ladder.py)"
    fixed = json.loads(path.read_text())
    rows = list(fixed["rows"])
    for b in BACKBONES:
        for label, kind, name in ((f"{b}-id", "federated ID", f"federated {b}"),
                                  (f"{b}-fedmr-mix", "federated FedMR", f"federated {b} + FedMR Mix")):
            res = _load(out, label, rounds)
            if res:
                rows.append(headroom.run_rung(name, kind, res, fixed["users"]))
    table = headroom.ladder_table(rows)
    keep = ["kind", "test HR@50", "SE", "test NDCG@50", "valid HR@50"] + (
        ["gap closed"] if "gap closed" in table.columns else [])
    return table[keep].round(4).to_markdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1, help="evaluate valid and test every K rounds")
    p.add_argument("--only", default=GROUPS)
    p.add_argument("--labels", default="", help="comma list: run only these configurations")
    p.add_argument("--cold-backbones", default="fedavg", help="comma list of backbones for 'cold'")
    p.add_argument("--router-input", default=None, choices=("exact", "epoch", "batch"),
                   help="FedMR's router input for every FedMR run (default: exact)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "fedmr"))
    p.add_argument("--table", action="store_true", help="print the tables from the JSON files")
    args = p.parse_args(argv)
    if args.table:
        print(tables(args))
    else:
        run_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
