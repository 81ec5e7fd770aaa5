"""Privacy-utility numbers (the chapter "Privacy, honestly"; bench/README.md, "Privacy").

For each configuration: one federated run on ``--data`` (test HR@50 at the round validation
selects; epsilon from the accountant, fed/accounting.py) and, on the same privatisation settings,
the upload-leakage attack (fed/leakage.py) on round 2's uploads of ``--attack-clients`` clients
(a separate short run: the attack reads single uploads, so the fraction of clients sampled does not
matter to it). GFMFR runs add the probe of the world's planted groups from the reported P_u.

Groups (``--only``):
- ``papers``: the papers' unclipped noise on every upload: Gaussian of variance 0.1 (FedMR Table 4,
  std 0.3162) and Laplace of scale 1..5 (GFMFR Table 2), with the measured upload norms and the
  epsilon those scales would give IF uploads were clipped at the largest measured norm
  (``accounting.papers_epsilon``; unclipped, there is none);
- ``central``: DP-FedAvg, the server clips at S and noises the sum, z in ``--multipliers``;
- ``local``: each client clips at S and noises its upload, z in ``--local-multipliers``.
S is the median L2 norm of the uploads measured in the model's own clean run (median over rounds
of the per-round median), so that about half the uploads are clipped.

Every configuration writes ``<out>/<data>/<label>-r<rounds>.json``; one that exists is skipped, so
the script resumes. ``--table`` prints the markdown tables. Run on one thread, one at a time:

    OMP_NUM_THREADS=1 .venv/bin/python bench/privacy_results.py --rounds 10 --models fedavg
    .venv/bin/python bench/privacy_results.py --rounds 10 --table
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {                       # label -> (backbone, method)
    "fedavg": ("fedavg", "id"), "fcf": ("fcf", "id"), "fedncf": ("fedncf", "id"),
    "pfedrec": ("pfedrec", "id"), "fedrap": ("fedrap", "id"),
    "fedmr": ("fedavg", "fedmr"), "gfmfr": ("fedavg", "gfmfr"),
}
PAPERS_GAUSSIAN = f"gaussian:{math.sqrt(0.1):.4f}"     # FedMR Table 4: N(0, 0.1), variance 0.1


def configurations(model: str, groups: set, args) -> list[tuple[str, dict]]:
    """(label, FedConfig overrides) in the order they run; the clean run first (it sets S)."""
    runs = [(f"{model}-clean", {})]
    if "papers" in groups:
        laplace = tuple(f"laplace:{b:g}" for b in args.laplace)
        runs += [(f"{model}-{n.replace(':', '')}", {"noise": n}) for n in (PAPERS_GAUSSIAN,) + laplace]
    if "central" in groups and model != "gfmfr":          # refused: GFMFR's server reads each upload
        runs += [(f"{model}-central-z{z:g}", {"dp": "central", "noise_multiplier": z}) for z in args.multipliers]
    if "local" in groups:
        runs += [(f"{model}-local-z{z:g}", {"dp": "local", "noise_multiplier": z}) for z in args.local_multipliers]
    return runs


def clip_from(clean: dict) -> float:
    """S: median over rounds of the per-round median L2 upload norm of the clean run."""
    return statistics.median(h["upload_norms"]["l2_median"] for h in clean["history"] if "upload_norms" in h)


def attack(dataset, config) -> dict:
    """The item attack on round 2 of a short run with the same privatisation (and the P_u probe
    under GFMFR when the world's planted groups are known)."""
    import numpy as np

    from fedmm_lite.fed import leakage
    from fedmm_lite.fed.rounds import FederatedRun

    short = dataclasses.replace(config, rounds=2, sample_ratio=ATTACK_RATIO, target_epsilon=None)
    run = FederatedRun(dataset, short)
    run.train_round(1)
    seen = leakage.observe_round(run, 2)
    shapes = {k: tuple(v.shape) for k, v in run.state.global_.items()}
    out = leakage.attack_uploads(seen, dataset, run.state.spec.tables, shapes,
                                 leakage.noise_std(run.noise, run.dp if run.dp.mode == "local" else None),
                                 max_clients=ATTACK_CLIENTS)
    truth = getattr(dataset, "ground_truth", None)
    if config.method == "gfmfr" and truth:
        clients, P = leakage.reported_functions(seen)
        out["probe"] = leakage.probe_groups(P, np.asarray(truth["user_group"])[clients])
    return out


ATTACK_RATIO = 0.25       # 300 of world-full's 1,200 clients upload in the attack's round
ATTACK_CLIENTS = 200


def run_one(dataset, model: str, label: str, overrides: dict, args, clip: float | None) -> dict:
    from fedmm_lite.fed.accounting import papers_epsilon
    from fedmm_lite.fed.config import default_config
    from fedmm_lite.fed.privacy import parse_noise
    from fedmm_lite.fed.rounds import run_federated

    backbone, method = MODELS[model]
    extra = dict(overrides)
    if args.item_lr is not None:
        extra["item_lr"] = args.item_lr
    if "dp" in extra:
        extra.update(clip=clip, delta=args.delta)
    config = default_config(backbone, method=method, rounds=args.rounds, eval_every=args.eval_every,
                            seed=args.seed, device="cpu", **extra)
    started = time.perf_counter()
    result = run_federated(dataset, config, progress=False)
    out = result.to_json()
    out.update(label=label, model=model, seconds=time.perf_counter() - started,
               dataset=dataset.name, attack=attack(dataset, config))
    noise = parse_noise(config.noise)
    if noise.active:
        norms = out["privacy"]["upload_norms_per_round"]
        kind = "l1" if noise.kind == "laplace" else "l2"
        for which, pick in (("max", max), ("median", statistics.median)):
            norm = pick(r[f"{kind}_{which}"] for r in norms)
            out["privacy"][f"if_clipped_at_{which}_norm"] = {
                "norm": norm, "which": f"{'largest' if which == 'max' else 'median'} {kind.upper()} norm of the uploads",
                "epsilon_per_round": papers_epsilon(noise.kind, noise.scale, norm, 1, args.delta),
                "epsilon": papers_epsilon(noise.kind, noise.scale, norm, len(norms), args.delta),
                "delta": args.delta, "papers_claim": "epsilon = 1 / scale per round ('unit sensitivity')"
                if noise.kind == "laplace" else "none stated"}
    return out


def diverged(dataset, model, label, overrides, args, clip, err) -> dict:
    """The record of a run that diverged: its configuration and the round's message."""
    from fedmm_lite.fed.config import default_config

    backbone, method = MODELS[model]
    extra = dict(overrides, **({"clip": clip, "delta": args.delta} if "dp" in overrides else {}))
    if args.item_lr is not None:
        extra["item_lr"] = args.item_lr
    config = default_config(backbone, method=method, rounds=args.rounds, eval_every=args.eval_every,
                            seed=args.seed, device="cpu", **extra)
    return {"label": label, "model": model, "config": dataclasses.asdict(config), "diverged": str(err)}


def run_all(args) -> None:
    from fedmm_lite.data import load_dataset
    from fedmm_lite.encoders import encode_dataset

    folder = Path(args.out) / args.data
    folder.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.data, seed=args.seed)
    groups = set(args.only.split(","))
    for model in args.models.split(","):
        if MODELS[model][1] != "id" and not getattr(dataset, "features", None):
            encode_dataset(dataset, progress=False)
        clip = None
        for label, overrides in configurations(model, groups, args):
            path = folder / f"{label}-r{args.rounds}.json"
            if path.exists():
                result = json.loads(path.read_text())
            else:
                print(f"[privacy_results] {label} ...", file=sys.stderr, flush=True)
                try:
                    result = run_one(dataset, model, label, overrides, args, clip)
                except FloatingPointError as err:          # a diverged run is a result too
                    result = diverged(dataset, model, label, overrides, args, clip, err)
                path.write_text(json.dumps(_clean(result), indent=1) + "\n")
                if "diverged" in result:
                    print(f"[privacy_results] {label}: {result['diverged']}", file=sys.stderr, flush=True)
                    continue
                print(f"[privacy_results] {label}: test HR@50 {result['test']['hr@50']:.4f}, "
                      f"attack recall {result['attack']['recall']:.3f}, {result['seconds']:.0f} s",
                      file=sys.stderr, flush=True)
            if label.endswith("-clean"):
                clip = clip_from(result)


def _clean(obj):
    from fedmm_lite.commands import _clean as clean
    return clean({k: v for k, v in obj.items() if k != "state"})


def _row(r: dict) -> str:
    if "diverged" in r:
        c = r["config"]
        setting = (f"{c['dp']} z={c['noise_multiplier']:g}, S={c['clip']:.3g}" if c.get("dp", "none") != "none"
                   else c["noise"])
        return f"| {r['model']} | {setting} | - | diverged: {r['diverged'].split(';')[0]} | | | | | |"
    p = r.get("privacy") or {}
    eps = p.get("epsilon")
    if p.get("dp"):
        eps_text = f"{eps:.3g}"
    elif p.get("noise"):
        eps_text = (f"none; if clipped at the median / largest norm: "
                    f"{p['if_clipped_at_median_norm']['epsilon']:.3g} / {p['if_clipped_at_max_norm']['epsilon']:.3g}")
    else:
        eps_text = "none (no noise)"
    a = r["attack"]
    probe = (f" | {a['probe']['accuracy']:.3f} (majority {a['probe']['majority_rate']:.3f})"
             if "probe" in a else " | -")
    setting = (f"{p['dp']} z={p['noise_multiplier']:g}, S={p['clip']:.3g}" if p.get("dp")
               else p.get("noise", "clean"))
    return (f"| {r['model']} | {setting} | {eps_text} | {r['test']['hr@50']:.4f} | {r['best_round']} | "
            f"{a['precision']:.3f} | {a['recall']:.3f} | {a['auc']:.3f}{probe} |")


def _order(r: dict) -> tuple:
    """Model, then clean, Gaussian, Laplace by scale, central and local by multiplier."""
    c = r["config"]
    kind, _, value = (c.get("noise") or "none").partition(":")
    if c.get("dp", "none") != "none":
        kind, value = c["dp"], c["noise_multiplier"]
    rank = ("none", "gaussian", "laplace", "central", "local").index(kind)
    return list(MODELS).index(r["model"]), rank, float(value or 0)


def tables(args) -> str:
    folder = Path(args.out) / args.data
    results = [json.loads(p.read_text()) for p in sorted(folder.glob(f"*-r{args.rounds}.json"))]
    lines = [f"### {args.data}, {args.rounds} rounds, seed {args.seed}: test HR@50 at the validation-selected "
             f"round; attack on round 2 ({ATTACK_CLIENTS} clients); delta {args.delta:g}", "",
             "| model | setting | epsilon | test HR@50 | round | attack precision | recall | AUC | P_u probe |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=_order):
        lines.append(_row(r))
    clean = [r for r in results if r["label"].endswith("-clean")]
    if clean:
        lines += ["", "| model (clean run) | upload L2 median (round 1 / last) | L2 max | L1 median | L1 max |",
                  "|---|---:|---:|---:|---:|"]
        for r in clean:
            h = [e["upload_norms"] for e in r["history"] if "upload_norms" in e]
            lines.append(f"| {r['model']} | {h[0]['l2_median']:.3g} / {h[-1]['l2_median']:.3g} | "
                         f"{max(e['l2_max'] for e in h):.3g} | {statistics.median(e['l1_median'] for e in h):.3g} | "
                         f"{max(e['l1_max'] for e in h):.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="world-full")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--models", default="fedavg,fcf,pfedrec,fedrap,fedncf,fedmr,gfmfr")
    p.add_argument("--only", default="papers,central,local")
    p.add_argument("--multipliers", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 3.0, 10.0])
    p.add_argument("--local-multipliers", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 1.0])
    p.add_argument("--laplace", type=lambda s: [float(x) for x in s.split(",")], default=[1, 2, 3, 4, 5],
                   help="Laplace scales of the papers group (GFMFR Table 2: 1..5)")
    p.add_argument("--item-lr", type=float, default=None,
                   help="override the backbone's tuned item step (GFMFR on world-full diverged in "
                        "round 8 with FedAvg's 1000; 300 trains)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "privacy"))
    p.add_argument("--table", action="store_true")
    args = p.parse_args(argv)
    print(tables(args)) if args.table else run_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
