"""``python -m fedmm_lite flower-sim``: the Flower app in Flower's simulation engine (Ray backend),
N virtual SuperNodes in this machine's processes.

``simulate(spec)`` runs one configuration and returns what ``rounds.run_federated`` returns (a
``RunResult``: history, best round on validation, test there) plus the message sizes the transport
measured; ``flower_json`` is the command's JSON (``run``'s keys and a ``flower`` block).

It calls ``flwr.simulation.run_simulation``, which flwr 1.42 marks deprecated in favour of
``flwr run`` against a SuperLink started with ``--simulation``; it is kept because it runs the
ServerApp in this process (the result comes back as objects, not through a file), and the extra
pins flwr to the version tested here.
"""
from __future__ import annotations

import logging
import os
import warnings

import numpy as np

from . import require_flwr
from .node import PLANS, RunSpec


def simulate(spec: RunSpec, progress: bool = False, cpus: int | None = None, quiet: bool = True):
    """One run in Flower's simulation engine: (RunResult, message sizes, resolved spec, dataset)."""
    return simulate_many([spec], progress, cpus, quiet)[0]


def simulate_many(specs: list, progress: bool = False, cpus: int | None = None, quiet: bool = True) -> list:
    """Several runs, one after the other, in ONE start of Flower's simulation engine (the runs
    must agree on the number of nodes). Each virtual node's ClientApp gets one CPU; ``cpus`` (the
    CPUs Ray may use; default all, at most one per node) of them train at the same time.
    ``quiet``: Flower's log at ERROR level only and the nodes' output not copied here (a run's
    error still surfaces, as an exception)."""
    require_flwr(simulation=True)
    from flwr.simulation import run_simulation

    from .apps import client_app, server_app_for

    nodes = {spec.nodes for spec in specs}
    if len(nodes) != 1:
        raise ValueError("simulate_many: every run must have the same number of nodes")
    n = nodes.pop()
    cpus = cpus or max(1, min(os.cpu_count() or 1, n))
    out: list = []
    logger = logging.getLogger("flwr")
    level = logger.level
    init_args = {"num_cpus": cpus, "include_dashboard": False}
    if quiet:
        logger.setLevel(logging.ERROR)
        init_args["log_to_driver"] = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
            run_simulation(server_app_for(list(specs), out, progress), client_app, num_supernodes=n,
                           backend_config={"init_args": init_args,
                                           "client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    finally:
        logger.setLevel(level)
    if len(out) != len(specs):
        raise RuntimeError("flower-sim: the simulation ended without a result (its log above says why)")
    return out


def message_sizes(stats: dict) -> dict:
    """Per-client message sizes from a transport's ``stats`` (means over every message sent)."""
    def mean(key):
        values = stats.get(key) or []
        return float(np.mean(values)) if values else None

    return {"download_model_bytes_per_message": mean("download_model_bytes"),
            "download_model_scalars_per_message": mean("download_model_scalars"),
            "download_plan_bytes_per_client": mean("download_client_bytes"),
            "upload_bytes_per_client": mean("upload_client_bytes"),
            "upload_payload_scalars_per_client": mean("upload_payload_scalars")}


def flower_json(result, spec: RunSpec, dataset, stats: dict) -> dict:
    """``run``'s JSON keys for a federation, plus ``flower``: nodes, plan, seconds per round and
    the message sizes (upload payload scalars per client = ``upload_scalars_per_client``, the
    efficiency accounting's ``state.count_parameters``)."""
    out = dict(result.to_json())
    out["dataset"] = {k: v for k, v in dataset.stats().items() if k != "report"}
    rounds = max(result.config.rounds, 1)
    out["flower"] = {"nodes": spec.nodes, "plan": spec.plan, "encoder": spec.encoder,
                     "seconds_per_round": result.train_seconds / rounds, **message_sizes(stats)}
    return out


def cmd_flower_sim(args) -> int:
    """``python -m fedmm_lite flower-sim``: one run in Flower's simulation engine; JSON result."""
    from ..commands import _check_json_path, _check_multimodal_options, build_config, write_json
    from ..errors import OptionError

    require_flwr(simulation=True)
    _check_multimodal_options(args)
    json_path = _check_json_path(args)
    if args.plan not in PLANS:
        raise OptionError(f"--plan {args.plan!r}: choose one of {', '.join(PLANS)}")
    if args.clients < 1:
        raise OptionError(f"--clients {args.clients}: must be at least 1")
    config = build_config(args)
    spec = RunSpec(args.data, config, args.clients, getattr(args, "encoder", None), args.plan)
    from .node import load_run_dataset

    spec.check(load_run_dataset(spec).n_users)          # before Ray starts
    try:
        result, stats, spec, dataset = simulate(spec, progress=True)
    except FloatingPointError as err:
        raise OptionError(str(err)) from None
    out = flower_json(result, spec, dataset, stats)
    write_json(out, json_path, f"{config.backbone} ({config.method}) in Flower's simulation, {spec.nodes} "
                               f"nodes: best round {out['best_round']}, test HR@50 {out['test']['hr@50']:.4f}; "
                               f"{out['flower']['seconds_per_round']:.2f} s/round; JSON in {json_path}")
    return 0


def spec_from(data: str, nodes: int, plan: str = "server", encoder=None, **config) -> RunSpec:
    """A ``RunSpec`` from keyword options (``fed.config.default_config``'s): for the chapter and tests."""
    from ..fed.config import default_config

    backbone = config.pop("backbone", "fedavg")
    return RunSpec(data, default_config(backbone, **config), nodes, encoder, plan)

