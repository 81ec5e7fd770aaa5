"""FedMR's two step sizes on world-full: the server step of the fusion modules and the item step.

Chapter 5's section "A failure that taught something" reads these runs: FedAvg + FedMR (Mix) with
plain averaging of the fusion modules (the default), server momentum, FedAdam (with and without A_id
in the optimiser: ``fusion_server_id``), and a smaller item step; FedAvg alone for reference. Each
run selects its round on validation; a run that diverges keeps the rounds before
(``run_federated(on_divergence="stop")``) and records where it diverged. One JSON per run, the same
object as ``python -m fedmm_lite run --json``, in ``results/fedmr/world-full/<name>-r<rounds>.json``;
a run whose JSON exists is skipped (the script resumes).

    .venv/bin/python bench/fedmr_server_steps.py            # run what is missing (one thread)
    .venv/bin/python bench/fedmr_server_steps.py --table    # the markdown table
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))                  # run from a checkout without install
OUT = HERE / "results" / "fedmr" / "world-full"

# name -> (rounds, FedConfig overrides); method fedmr unless the overrides say otherwise
RUNS = {
    "fedavg-id": (40, dict(method="id")),
    "fedavg-fedmr-mix": (40, {}),
    "fedavg-fedmr-mix-momentum": (20, dict(fusion_server="momentum")),
    "fedavg-fedmr-mix-adam": (20, dict(fusion_server="adam")),
    "fedavg-fedmr-mix-adam0.01": (20, dict(fusion_server="adam", fusion_server_lr=0.01)),
    "fedavg-fedmr-mix-adam0.003-aid-plain": (20, dict(fusion_server="adam", fusion_server_lr=0.003,
                                                      fusion_server_id=False)),
    "fedavg-fedmr-mix-adam0.001-aid-plain": (20, dict(fusion_server="adam", fusion_server_lr=0.001,
                                                      fusion_server_id=False)),
    "fedavg-fedmr-mix-item_lr300": (40, dict(item_lr=300.0)),
    "fedavg-fedmr-mix-item_lr500": (40, dict(item_lr=500.0)),
}
A_IMAGE = "A_image"


def run_missing() -> None:
    import torch

    from fedmm_lite.commands import result_json
    from fedmm_lite.data import load_dataset
    from fedmm_lite.encoders import encode_dataset
    from fedmm_lite.fed.config import default_config
    from fedmm_lite.fed.rounds import run_federated
    from fedmm_lite.resources import PeakMemory

    torch.set_num_threads(1)
    data = load_dataset("world-full", seed=0)
    encode_dataset(data, progress=False)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (rounds, overrides) in RUNS.items():
        path = OUT / f"{name}-r{rounds}.json"
        if path.is_file():
            continue
        config = default_config("fedavg", **{"method": "fedmr", **overrides}, rounds=rounds,
                                eval_every=2, seed=0, device="cpu")
        start = time.time()
        with PeakMemory(torch.device("cpu")) as memory:
            result = run_federated(data, config, progress=False, on_divergence="stop")
        path.write_text(json.dumps(result_json(result, data, memory), indent=1) + "\n")
        print(f"{name}: best round {result.best_round}, valid HR@50 {result.valid['hr@50']:.4f}"
              f"{' (diverged in round %s)' % result.diverged['round'] if result.diverged else ''};"
              f" {time.time() - start:.0f} s", file=sys.stderr, flush=True)


def table() -> str:
    rows = ["| run | rounds | best validation HR@50 (round) | test HR@50 there | diverged in round | "
            "A_image moved per round (last evaluated) |", "|---|---:|---:|---:|---:|---:|"]
    for name, (rounds, _) in RUNS.items():
        path = OUT / f"{name}-r{rounds}.json"
        if not path.is_file():
            rows.append(f"| {name} | {rounds} | not run | | | |")
            continue
        out = json.loads(path.read_text())
        served = [e for e in out["history"] if "server" in e and A_IMAGE in e["server"].get("relative_update", {})]
        moved = f"{100 * served[-1]['server']['relative_update'][A_IMAGE]:.3f} %" if served else "-"
        diverged = (out.get("diverged") or {}).get("round") or "-"
        rows.append(f"| {name} | {rounds} | {out['valid']['hr@50']:.4f} ({out['best_round']}) | "
                    f"{out['test']['hr@50']:.4f} | {diverged} | {moved} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="print the table from the JSON files")
    args = parser.parse_args()
    if args.table:
        print(table())
    else:
        run_missing()


if __name__ == "__main__":
    main()
