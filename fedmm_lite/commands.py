"""Handlers of the FIXED command line: ``python -m fedmm_lite info | run | bench`` (cli.py parses).

``cli.py`` parses the options and turns a ``FedmmError`` into one line on stderr (exit status 2);
these handlers check the values, build a ``FedConfig``, load the data, run the round loop and write
one JSON object. Every bad value is refused *before* any data is loaded or any training starts,
with a message that names the option.

``run`` writes the FIXED keys ``config``, ``best_round``, ``valid``, ``test``, ``history``,
``seconds``, ``client_updates_per_second``, ``peak_memory_mb``, ``params_per_client``,
``upload_scalars_per_round``, plus ``dataset`` (its statistics), ``random_expectation`` (what a
random ranker scores on the test split: the ``--rounds 0`` calibration reference) and the method's
own keys (FedMR: strategies, router weights, ``planted`` on the world).

``bench`` runs the same configuration with the batched engine and with the per-client oracle and
prints both timings, their ratio and whether the final metrics agree.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from .errors import OptionError

MODALITIES = ("id", "text", "image")
# Defaults of the method-specific options as cli.py declares them; another value needs a method
# that uses the option (_OPTION_METHODS).
_MULTIMODAL_DEFAULTS = {"strategy": "mix", "modalities": "id,text,image", "groups": None, "encoder": None,
                        "grouping": None, "lambda_schedule": None, "gfmfr_ablation": None,
                        "ratio_cap": None, "router_input": None, "fusion_lr": None,
                        "feature_map_lr": None, "fusion_server": None, "fusion_server_lr": None,
                        "feature_dim": None}
_OPTION_METHODS = {"strategy": ("fedmr",), "modalities": ("fedmr",), "groups": ("gfmfr",),
                   "grouping": ("gfmfr",), "lambda_schedule": ("gfmfr",), "gfmfr_ablation": ("gfmfr",),
                   "ratio_cap": ("gfmfr",),
                   "encoder": ("fedmr", "gfmfr"), "router_input": ("fedmr",), "fusion_lr": ("fedmr",),
                   "feature_map_lr": ("fedmr",),
                   "fusion_server": ("fedmr",), "fusion_server_lr": ("fedmr",),
                   "feature_dim": ("fedmr",)}
_GFMFR_OPTIONS = ("groups", "grouping", "lambda_schedule", "gfmfr_ablation", "ratio_cap")
_FEDMR_OPTIONS = ("router_input", "fusion_lr", "feature_map_lr", "fusion_server", "fusion_server_lr",
                  "feature_dim")
_DP_OPTIONS = ("dp", "clip", "noise_multiplier", "delta", "target_epsilon")


# ---------------------------------------------------------------------------------------------
# option checks (one clear line each, naming the option)
# ---------------------------------------------------------------------------------------------
def _check_multimodal_options(args) -> None:
    """``--strategy/--modalities/--groups/--encoder`` only mean something for a multimodal method."""
    modalities = getattr(args, "modalities", None)
    if modalities is not None:
        names = [m.strip() for m in modalities.split(",")]
        unknown = [m for m in names if m not in MODALITIES]
        if unknown or not all(names):
            raise OptionError(f"--modalities {modalities!r}: unknown modality {unknown[0] if unknown else ''!r} "
                              f"(choose from {', '.join(MODALITIES)}, comma separated)")
    if getattr(args, "groups", None) is not None and args.groups < 1:
        raise OptionError(f"--groups {args.groups}: must be a positive integer")
    method = getattr(args, "method", "id")
    for name, default in _MULTIMODAL_DEFAULTS.items():
        value = getattr(args, name, default)
        if value != default and method not in _OPTION_METHODS[name]:
            raise OptionError(f"--{name.replace('_', '-')} {value}: applies to --method "
                              f"{'/'.join(_OPTION_METHODS[name])} only, not to --method {method}")


def _check_device(args) -> None:
    from .config import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:           # resolve_device's own message names --device
        raise OptionError(str(err)) from None
    except RuntimeError:                # torch.device could not parse it
        raise OptionError(f"--device {args.device}: not a device (use auto | cpu | cuda | cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise OptionError(f"--device {args.device}: use auto | cpu | cuda | cuda:N")


STDOUT = "-"     # ``--json -``: the JSON object on stdout


def _check_json_path(args) -> Path | str | None:
    """The ``--json`` target, checked writable BEFORE anything runs (a result is never lost to a
    bad path after an hour of training): None, ``STDOUT`` or a file path."""
    if not getattr(args, "json_path", None):
        return None
    if args.json_path == STDOUT:
        return STDOUT
    path = Path(args.json_path).expanduser()
    if path.is_dir():
        raise OptionError(f"--json {args.json_path}: is a folder, expected a file path")
    if not path.parent.is_dir():
        raise OptionError(f"--json {args.json_path}: folder {str(path.parent)!r} does not exist")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as err:
        raise OptionError(f"--json {args.json_path}: cannot write there ({err.strerror})") from None
    if not existed:
        path.unlink()
    return path


# ---------------------------------------------------------------------------------------------
# building the configuration
# ---------------------------------------------------------------------------------------------
# FedConfig field <- argparse attribute; only options the user gave override the tuned defaults.
_OVERRIDES = {"rounds": "rounds", "local_epochs": "local_epochs", "sample_ratio": "sample_ratio",
              "lr": "lr", "item_lr": "item_lr", "batch_size": "batch_size", "neg_ratio": "neg_ratio",
              "chunk_size": "chunk_size", "eval_every": "eval_every", "dim": "dim",
              "protocol": "protocol", "sampled_pool": "sampled_pool", "negatives": "negatives"}


def build_config(args, **extra):
    """``default_config(backbone, **overrides)`` from the options given (None = tuned default).
    ``default_config`` validates every value (rounds, sample ratio, noise, ...) and raises an
    ``OptionError`` naming the option."""
    from .fed.config import default_config

    overrides = {field: getattr(args, attr) for field, attr in _OVERRIDES.items()
                 if getattr(args, attr, None) is not None}
    overrides.update(seed=args.seed, device=args.device, method=getattr(args, "method", "id"))
    if getattr(args, "noise", None) is not None:
        overrides["noise"] = args.noise
    # differential privacy (fed/privacy.py): FedConfig.dp etc.; dp_spec refuses bad combinations
    overrides.update({name: getattr(args, name) for name in _DP_OPTIONS if getattr(args, name, None) is not None})
    if overrides["method"] == "fedmr":
        overrides["strategy"] = getattr(args, "strategy", None) or "mix"
        modalities = getattr(args, "modalities", None) or "id,text,image"
        overrides["modalities"] = tuple(m.strip() for m in modalities.split(","))
        overrides.update({name: getattr(args, name) for name in _FEDMR_OPTIONS
                          if getattr(args, name, None) is not None})
    if overrides["method"] == "gfmfr":
        overrides.update({name: getattr(args, name) for name in _GFMFR_OPTIONS
                          if getattr(args, name, None) is not None})
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


def write_json(obj: dict, target: Path | str | None, summary: str = "") -> None:
    """The JSON object to the file ``target`` with the one-line ``summary`` on stdout, or the JSON
    on stdout (``target`` None or ``STDOUT``). If the file cannot be written after all, the JSON
    goes to stdout so that the result is not lost, and the error names the option."""
    text = json.dumps(_clean(obj), indent=2) + "\n"
    if target is None or target == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        target.write_text(text)
    except OSError as err:
        sys.stdout.write(text)
        sys.stdout.flush()
        raise OptionError(f"--json {target}: cannot write it ({err.strerror}); the result was "
                          f"printed on stdout instead") from None
    sys.stdout.write((summary or f"result written to {target}") + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    """``python -m fedmm_lite info``: load a dataset and print its statistics as JSON."""
    from .data import load_dataset

    dataset = load_dataset(args.data, seed=args.seed)
    write_json(dataset.stats(), STDOUT)
    return 0


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
def check_run_options(args) -> Path | None:
    """The checks of ``run`` that ``default_config`` does not do (which method, multimodal-only
    options, device, output path); returns the ``--json`` path (or None)."""
    _check_multimodal_options(args)
    _check_device(args)
    return _check_json_path(args)


def encode_for(args, config, dataset) -> None:
    """A multimodal method needs frozen item features: ``--encoder`` (default: the best offline
    encoder), read from / written to the dataset's feature cache."""
    if config.method == "id":
        return
    from .encoders import encode_dataset

    encode_dataset(dataset, encoder=getattr(args, "encoder", None), device=config.device,
                   progress=True)


def result_json(result, dataset, memory) -> dict:
    """The FIXED JSON of a run: ``RunResult.to_json()`` completed with what the caller measures."""
    from .metrics import random_ranker

    out = dict(result.to_json())
    if result.state is not None:
        out.update(result.state.method.json_fields(result.details, dataset))
    lr, item_lr, server_lr = result.config.step_sizes()     # the tuned defaults filled in
    out["step_sizes"] = {"lr": lr, "item_lr": item_lr, "server_lr": server_lr}
    out.update(memory.as_dict())
    out["dataset"] = dataset.stats()
    out["random_expectation"] = random_ranker(dataset, "test")
    if result.config.protocol == "sampled":      # the target among itself + 99 negatives: N = 100
        from .metrics import SAMPLED_NEGATIVES, random_expectation
        for metric in ("hr", "ndcg"):
            out["random_expectation"][f"{metric}@10_sampled"] = random_expectation(
                SAMPLED_NEGATIVES + 1, 10, metric)
    return out


def _run(dataset, config):
    """``run_federated`` with a progress bar on stderr; a diverged run stops where it diverged
    (``RunResult.diverged``): its rounds so far are still written, then the error is one line."""
    from .fed.rounds import run_federated

    return run_federated(dataset, config, progress=True, on_divergence="stop")


def summary_line(out: dict, target) -> str:
    """One line for stdout when the JSON goes to a file."""
    c = out["config"]
    method = c["method"] if c["method"] != "id" else "ID"
    if c.get("protocol") == "sampled":
        selected = (f"valid HR@10 (sampled) {out['valid']['hr@10_sampled']:.4f}), test HR@10 (sampled) "
                    f"{out['test']['hr@10_sampled']:.4f} NDCG@10 (sampled) {out['test']['ndcg@10_sampled']:.4f}")
    else:
        selected = (f"valid HR@50 {out['valid']['hr@50']:.4f}), test HR@50 {out['test']['hr@50']:.4f} "
                    f"NDCG@50 {out['test']['ndcg@50']:.4f}")
    privacy = out.get("privacy") or {}
    spent = (f"; --dp {privacy['dp']}: epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g}"
             + (" (stopped at the target)" if privacy.get("stopped_at_target_epsilon") else "")
             if privacy.get("dp") else "")
    return (f"{c['backbone']} ({method}) on {out['dataset']['name']}: best round {out['best_round']} "
            f"({selected}{spent}; {out['seconds']:.1f} s; JSON in {target}")


def _cold_fraction(args) -> float:
    """``--cold-items``, checked before any data is loaded (0 without it)."""
    value = getattr(args, "cold_items", None)
    if value is None:
        return 0.0
    if not 0.0 < value < 1.0:
        raise OptionError(f"--cold-items {value}: a fraction of the items, strictly between 0 and 1")
    return float(value)


def cmd_run(args) -> int:
    """``python -m fedmm_lite run``: train and evaluate one configuration, print one JSON object."""
    json_path = check_run_options(args)
    config = build_config(args)        # validates the numbers and --noise: nothing loaded yet
    _cold_fraction(args)

    from .config import resolve_device
    from .data import load_dataset
    from .resources import PeakMemory

    if config.sampled_pool != "prior" and config.protocol != "sampled":
        raise OptionError(f"--sampled-pool {config.sampled_pool}: applies to --protocol sampled only")
    dataset = load_dataset(args.data, seed=args.seed, ties=getattr(args, "ties", None),
                           cold_fraction=_cold_fraction(args))
    encode_for(args, config, dataset)
    with PeakMemory(resolve_device(config.device)) as memory:
        result = _run(dataset, config)
    out = result_json(result, dataset, memory)
    out["ties"] = getattr(args, "ties", None) or "item"
    write_json(out, json_path, summary_line(out, json_path))
    if result.diverged:                      # the round names itself and says what helps
        raise OptionError(result.diverged["message"] + (f" (the rounds before it are in {json_path})"
                                                        if json_path not in (None, STDOUT) else ""))
    return 0


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    """``python -m fedmm_lite bench``: batched engine versus per-client oracle, same configuration."""
    from .data import load_dataset
    from .timing import compare_metrics, time_engine

    _check_device(args)
    json_path = _check_json_path(args)
    if args.rounds < 1:
        raise OptionError(f"--rounds {args.rounds}: bench needs at least one training round")
    base = build_config(args, eval_every=args.rounds)
    dataset = load_dataset(args.data, seed=args.seed)
    encode_for(args, base, dataset)
    try:
        batched = time_engine(dataset, dataclasses.replace(base, engine="batched"))
        reference = time_engine(dataset, dataclasses.replace(base, engine="oracle"))
    except FloatingPointError as err:
        raise OptionError(str(err)) from None
    agreement = compare_metrics(batched["metrics"], reference["metrics"], dataset.n_users)
    out = {
        "config": _config_dict(base),
        "dataset": {k: v for k, v in dataset.stats().items() if k != "report"},
        "rounds": int(base.rounds),
        "batched": batched,
        "oracle": reference,
        "speedup": (reference["seconds_per_round"] / batched["seconds_per_round"]
                    if batched["seconds_per_round"] > 0 else None),
        **agreement,
    }
    write_json(out, json_path, f"batched {batched['seconds_per_round']:.3f} s/round, oracle "
                               f"{reference['seconds_per_round']:.3f} s/round ({out['speedup']:.1f}x), "
                               f"metrics agree: {agreement['metrics_agree']}; JSON in {json_path}")
    return 0
