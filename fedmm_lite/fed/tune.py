"""Step-size search on the VALIDATION split (never test): how ``BACKBONE_DEFAULTS`` were chosen.

    python -m fedmm_lite.fed.tune --data world-full --rounds 20 \\
        '{"backbone": "fedavg", "item_lr": 1000, "lr": 0.5}' '{"backbone": "fedavg", "item_lr": 3000}'

Each argument is a JSON object of ``FedConfig`` overrides; one JSON line per configuration is
printed with the best validation HR@50, its round and the validation curve. Test metrics are not
printed: they play no part in choosing defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..data import load_dataset
from ..errors import OptionError
from .config import FedConfig, validate
from .rounds import run_federated


def _mean_relative_update(history: list) -> dict | None:
    """Mean over evaluated rounds of the server step's ``relative_update`` (FedMR), or None."""
    steps = [h["server"]["relative_update"] for h in history if "relative_update" in h.get("server", {})]
    if not steps:
        return None
    out = {}
    for k in steps[0]:
        values = [s[k] for s in steps if s.get(k) is not None]    # None: a tensor that was all zeros
        out[k] = round(sum(values) / len(values), 5) if values else None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedmm_lite.fed.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="world-full")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--encoder", default=None,
                        help="item features for multimodal methods (default: the best offline encoder)")
    parser.add_argument("configs", nargs="+", help="JSON objects of FedConfig overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    parsed = []
    for text in args.configs:
        try:
            parsed.append(json.loads(text))
        except json.JSONDecodeError as err:
            raise OptionError(f"tune: {text!r} is not a JSON object ({err})") from None
    if any(overrides.get("method", "id") != "id" for overrides in parsed):
        from ..encoders import encode_dataset
        encode_dataset(dataset, encoder=args.encoder, progress=False)
    for overrides in parsed:
        overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}
        config = validate(FedConfig(**{"rounds": args.rounds, "device": args.device, **overrides}))
        t0 = time.perf_counter()
        try:
            result = run_federated(dataset, config, progress=False)
        except FloatingPointError as err:        # a diverged step size is a result of the search
            print(json.dumps({"config": overrides, "diverged": str(err)}), flush=True)
            continue
        print(json.dumps({
            "config": overrides, "rounds": args.rounds, "best_round": result.best_round,
            "valid_hr@50": round(result.valid["hr@50"], 4),
            "valid_ndcg@50": round(result.valid["ndcg@50"], 4),
            "valid_hr@50_curve": [round(h["valid"]["hr@50"], 4) for h in result.history],
            "train_seconds": round(result.train_seconds, 1),
            # FedMR: ||theta_t - theta_{t-1}|| / ||theta_{t-1}|| per global tensor, mean over rounds
            "relative_update": _mean_relative_update(result.history),
            "seconds": round(time.perf_counter() - t0, 1),
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
