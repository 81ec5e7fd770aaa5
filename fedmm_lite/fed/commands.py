"""Handlers of the FIXED command line (design.md): ``python -m fedmm_lite run`` and ``bench``.

``cli.py`` parses the options and turns a ``FedmmError`` into one line on stderr (exit status 2);
this module checks the values, builds a ``FedConfig``, loads the data, runs the engine and prints
one JSON object. Every bad value is refused *before* any data is loaded or any training starts,
with a message that names the option.

``run`` writes (stdout, and ``--json PATH`` when given) the FIXED keys ``config``, ``best_round``,
``valid``, ``test``, ``history``, ``seconds``, ``client_updates_per_second``, ``peak_memory_mb``,
``params_per_client``, ``upload_scalars_per_round``, plus ``dataset`` (its statistics) and
``random_expectation`` (what a random ranker scores on the test split: the ``--rounds 0``
calibration reference, algorithms.md section 1).

``bench`` runs the same configuration twice, with the batched engine and with the per-client loop
(the correctness oracle), and prints both timings, their ratio and whether the final metrics agree.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import OptionError

MODALITIES = ("id", "text", "image")
# Defaults of the multimodal-only options as cli.py declares them; any other value needs fedmr/gfmfr.
_MULTIMODAL_DEFAULTS = {"strategy": "mix", "modalities": "id,text,image", "groups": None, "encoder": None}
_NOT_BUILT = ("gfmfr",)
KS = (10, 20, 50)


# ---------------------------------------------------------------------------------------------
# option checks (one clear line each, naming the option)
# ---------------------------------------------------------------------------------------------
def _check_method(args) -> None:
    if args.method in _NOT_BUILT:
        raise OptionError(f"--method {args.method}: this method is not built yet in this version of "
                          f"fedmm_lite (available: id, fedmr)")


def _check_multimodal_options(args) -> None:
    """``--strategy/--modalities/--groups/--encoder`` only mean something for fedmr/gfmfr."""
    modalities = getattr(args, "modalities", None)
    if modalities is not None:
        names = [m.strip() for m in modalities.split(",")]
        unknown = [m for m in names if m not in MODALITIES]
        if unknown or not all(names):
            raise OptionError(f"--modalities {modalities!r}: unknown modality {unknown[0] if unknown else ''!r} "
                              f"(choose from {', '.join(MODALITIES)}, comma separated)")
    if getattr(args, "groups", None) is not None and args.groups < 1:
        raise OptionError(f"--groups {args.groups}: must be a positive integer")
    if getattr(args, "method", "id") != "id":
        return
    for name, default in _MULTIMODAL_DEFAULTS.items():
        value = getattr(args, name, default)
        if value != default:
            raise OptionError(f"--{name} {value}: applies to --method fedmr/gfmfr only, not to --method id")


def _check_device(args) -> None:
    from ..config import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:           # resolve_device's own message names --device
        raise OptionError(str(err)) from None
    except RuntimeError:                # torch.device could not parse it
        raise OptionError(f"--device {args.device}: not a device (use auto | cpu | cuda | cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise OptionError(f"--device {args.device}: use auto | cpu | cuda | cuda:N")


def _check_json_path(args) -> Path | None:
    if not getattr(args, "json_path", None):
        return None
    path = Path(args.json_path).expanduser()
    if path.is_dir():
        raise OptionError(f"--json {args.json_path}: is a folder, expected a file path")
    if not path.parent.is_dir():
        raise OptionError(f"--json {args.json_path}: folder {str(path.parent)!r} does not exist")
    return path


# ---------------------------------------------------------------------------------------------
# building the configuration
# ---------------------------------------------------------------------------------------------
# FedConfig field <- argparse attribute; only options the user gave override the tuned defaults.
_OVERRIDES = {"rounds": "rounds", "local_epochs": "local_epochs", "sample_ratio": "sample_ratio",
              "lr": "lr", "batch_size": "batch_size", "neg_ratio": "neg_ratio",
              "chunk_size": "chunk_size"}


def build_config(args, **extra):
    """``default_config(backbone, **overrides)`` from the options given (None = tuned default).
    ``default_config`` validates every value (rounds, sample ratio, noise, ...) and raises an
    ``OptionError`` naming the option."""
    from .config import default_config

    overrides = {field: getattr(args, attr) for field, attr in _OVERRIDES.items()
                 if getattr(args, attr, None) is not None}
    overrides.update(seed=args.seed, device=args.device, method=getattr(args, "method", "id"))
    if getattr(args, "noise", None) is not None:
        overrides["noise"] = args.noise
    if overrides["method"] == "fedmr":
        overrides["strategy"] = getattr(args, "strategy", None) or "mix"
        modalities = getattr(args, "modalities", None) or "id,text,image"
        overrides["modalities"] = tuple(m.strip() for m in modalities.split(","))
    overrides.update(extra)
    return default_config(args.backbone, **overrides)


def _config_dict(config) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


# ---------------------------------------------------------------------------------------------
# JSON output
# ---------------------------------------------------------------------------------------------
def _clean(obj):
    """JSON-safe copy: numpy and torch scalars to Python, NaN/inf to None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(obj: dict, path: Path | None) -> None:
    """Print one JSON object on stdout and, when ``path`` is given, write it there too."""
    text = json.dumps(_clean(obj), indent=2)
    if path is not None:
        path.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def random_expectation_of(dataset, split: str = "test", ks=KS) -> dict:
    """Mean HR@K / NDCG@K of a uniformly random ranker over the dataset's users (the ``--rounds 0``
    reference): user u has N_u = n - |H_u| - 1 candidates (metrics.random_expectation)."""
    from ..metrics import random_expectation

    n_candidates = dataset.n_items - dataset.train_sizes - 1          # (U,)
    sizes, users = np.unique(n_candidates, return_counts=True)         # distinct N_u, how many users
    out = {}
    for k in ks:
        for metric in ("hr", "ndcg"):
            values = np.array([random_expectation(int(c), k, metric) for c in sizes])
            out[f"{metric}@{k}"] = float((values * users).sum() / users.sum())
    out["split"] = split
    return out


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
def check_run_options(args) -> Path | None:
    """The checks of ``run`` that ``default_config`` does not do (which method, multimodal-only
    options, device, output path); returns the ``--json`` path (or None)."""
    _check_method(args)
    _check_multimodal_options(args)
    _check_device(args)
    return _check_json_path(args)


def planted_router_weights(result, dataset) -> dict | None:
    """FedMR on data with planted ground truth (world): for each planted group, the mean final
    router weight pi_u per strategy over the group's users (design.md ``planted``). A single
    strategy has no router: its weight is 1 for everyone. None without ground truth or FedMR."""
    truth = getattr(dataset, "ground_truth", None)
    if not truth or not result.strategies:
        return None
    groups = np.asarray(truth["user_group"])                                   # (U,)
    names = list(truth["group_names"])
    modality = list(truth.get("group_modality", [""] * len(names)))
    if result.router_weights is None:
        pi = np.ones((len(groups), 1))
    else:
        pi = np.asarray(result.router_weights, dtype=np.float64)                # (U, K)
    out = {}
    for g, name in enumerate(names):
        members = groups == g
        if not members.any():
            continue
        mean = pi[members].mean(0)
        out[name] = {"modality": modality[g], "users": int(members.sum()),
                     **{k: float(w) for k, w in zip(result.strategies, mean)}}
    return out


def fedmr_json(result, dataset) -> dict:
    """FedMR's extra keys: strategies, mean router weights and ``planted`` (world only)."""
    if not result.strategies:
        return {}
    extra = {"strategies": list(result.strategies),
             "feature_download_scalars": result.feature_download_scalars,
             "encoder": getattr(dataset, "feature_encoder", None)}
    if result.router_weights is not None:
        extra["router_weights_mean"] = {k: float(w) for k, w in
                                        zip(result.strategies, np.asarray(result.router_weights).mean(0))}
    planted = planted_router_weights(result, dataset)
    if planted is not None:
        extra["planted"] = planted
    return extra


def encode_for(args, config, dataset) -> None:
    """FedMR needs frozen item features: ``--encoder`` (default: the best offline encoder),
    read from / written to the dataset's feature cache."""
    if config.method != "fedmr":
        return
    from ..encoders import encode_dataset

    encode_dataset(dataset, encoder=getattr(args, "encoder", None), device=config.device,
                   progress=True)


def result_json(result, dataset, memory) -> dict:
    """The FIXED JSON of a run: ``RunResult.to_json()`` completed with what the caller measures."""
    out = dict(result.to_json())
    out.update(fedmr_json(result, dataset))
    out.setdefault("config", _config_dict(result.config))
    lr, item_lr, server_lr = result.config.step_sizes()     # the tuned defaults filled in
    out["step_sizes"] = {"lr": lr, "item_lr": item_lr, "server_lr": server_lr}
    out.update(memory.as_dict())
    seconds = out.get("seconds", result.seconds)
    out.setdefault("client_updates_per_second",
                   result.client_updates / seconds if seconds and seconds > 0 else 0.0)
    out["dataset"] = dataset.stats()
    out["random_expectation"] = random_expectation_of(dataset, "test")
    return out


@contextmanager
def training_clock():
    """Measure the seconds spent training, evaluation excluded: while the block runs, every call of
    ``engine.train_round`` / ``oracle.train_round`` (one round: its plans are drawn lazily inside,
    local training, uploads, aggregation) is timed and summed into ``clock["seconds"]``."""
    import torch

    from . import engine, oracle

    clock = {"seconds": 0.0, "rounds": 0}
    originals = {module: module.train_round for module in (engine, oracle)}

    def timed(train_round):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return train_round(*args, **kwargs)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock["seconds"] += time.perf_counter() - start
                clock["rounds"] += 1
        return wrapper

    for module, train_round in originals.items():
        module.train_round = timed(train_round)
    try:
        yield clock
    finally:
        for module, train_round in originals.items():
            module.train_round = train_round


def _run(dataset, config):
    """``run_federated`` with a progress bar on stderr; a diverged run becomes one clear line."""
    from .loop import run_federated

    try:
        return run_federated(dataset, config, progress=True)
    except FloatingPointError as err:       # the loop names the round and says to lower --lr
        raise OptionError(str(err)) from None


def cmd_run(args) -> int:
    """``python -m fedmm_lite run``: train and evaluate one configuration, print one JSON object."""
    json_path = check_run_options(args)
    config = build_config(args)        # validates the numbers and --noise: nothing loaded yet

    from ..config import resolve_device
    from ..data import load_dataset
    from ..resources import PeakMemory

    dataset = load_dataset(args.data, seed=args.seed)
    encode_for(args, config, dataset)
    with PeakMemory(resolve_device(config.device)) as memory, training_clock() as clock:
        result = _run(dataset, config)
    out = result_json(result, dataset, memory)
    out["train_seconds"] = clock["seconds"]         # evaluation excluded
    write_json(out, json_path)
    return 0


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------
def _final_metrics(result) -> dict:
    """Valid and test metrics of the last evaluated round (not the selected one: the two engines
    must agree round by round, whichever round validation would pick)."""
    last = result.history[-1]
    return {"valid": dict(last["valid"]), "test": dict(last["test"])}


def time_engine(dataset, config) -> dict:
    """Run one configuration and return its timing and final metrics."""
    from ..config import resolve_device
    from ..resources import PeakMemory

    start = time.perf_counter()
    with PeakMemory(resolve_device(config.device)) as memory, training_clock() as clock:
        result = _run(dataset, config)
    wall = time.perf_counter() - start
    train = clock["seconds"]
    rounds = max(int(config.rounds), 1)
    return {"engine": config.engine, "wall_seconds": wall, "train_seconds": train,
            "seconds_per_round": train / rounds,
            "client_updates": int(result.client_updates),
            "client_updates_per_second": result.client_updates / train if train > 0 else None,
            **memory.as_dict(), "metrics": _final_metrics(result)}


def compare_metrics(a: dict, b: dict, n_users: int) -> dict:
    """Largest absolute difference of the final metrics, and whether it is within one user's hit
    (1 / U): float rounding between the two engines may move a target across a cut-off."""
    diffs = [abs(a[split][key] - b[split][key]) for split in ("valid", "test") for key in a[split]]
    max_diff = max(diffs) if diffs else 0.0
    # 1 / U, plus float rounding: k1 / U - k2 / U can exceed 1 / U by an ulp
    tolerance = (1.0 + 1e-9) / max(n_users, 1)
    return {"max_abs_diff": max_diff, "tolerance": tolerance, "metrics_agree": max_diff <= tolerance}


def cmd_bench(args) -> int:
    """``python -m fedmm_lite bench``: batched engine versus per-client loop, same configuration."""
    _check_method(args)
    _check_device(args)
    json_path = _check_json_path(args)
    if args.rounds < 1:
        raise OptionError(f"--rounds {args.rounds}: bench needs at least one training round")

    from ..data import load_dataset

    base = build_config(args, eval_every=args.rounds)
    dataset = load_dataset(args.data, seed=args.seed)
    encode_for(args, base, dataset)
    batched = time_engine(dataset, dataclasses.replace(base, engine="batched"))
    loop = time_engine(dataset, dataclasses.replace(base, engine="loop"))
    agreement = compare_metrics(batched["metrics"], loop["metrics"], dataset.n_users)
    out = {
        "config": _config_dict(base),
        "dataset": {k: v for k, v in dataset.stats().items() if k != "report"},
        "rounds": int(base.rounds),
        "batched": batched,
        "loop": loop,
        "speedup": (loop["seconds_per_round"] / batched["seconds_per_round"]
                    if batched["seconds_per_round"] > 0 else None),
        **agreement,
    }
    write_json(out, json_path)
    return 0
