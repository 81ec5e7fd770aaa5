"""The round loop: sample clients, train them (batched engine or per-client loop), aggregate, evaluate.

``run_federated(dataset, config) -> RunResult``. Round 0 evaluates the untrained model; then for
t = 1..T: sample ceil(beta * U) participants, order them by training-set size (a chunk then holds
clients of similar size and little padding; the order changes no client's result), draw each
chunk's plan (plan.py) from the run's generator, train (engine.py or oracle.py), let the server
aggregate, and every ``eval_every`` rounds evaluate valid and test with full ranking. The reported
round is the one with the best VALIDATION HR@50 (earliest on ties); test is read at that round,
never used to select.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import resolve_device
from ..data import NegativeSampler
from ..metrics import evaluate
from . import backbones, engine, oracle
from ..errors import OptionError
from .config import FedConfig, validate
from .pitfalls import FixedLowestNegatives
from .plan import chunks, make_plan, sample_participants
from .privacy import parse_noise

KS = (10, 20, 50)
SELECT_ON = "hr@50"


@dataclass
class RunResult:
    """What a run returns (CONTRIBUTING.md); ``to_json`` gives the FIXED keys of design.md."""

    config: FedConfig
    history: list = field(default_factory=list)   # per evaluated round: round, valid, test, train_loss, seconds
    best_round: int = 0
    valid: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    seconds: float = 0.0
    client_updates: int = 0                        # local trainings done (participants summed over rounds)
    params_per_client: int = 0                     # scalars a client holds (shared model + private part)
    upload_scalars_per_round: int = 0              # scalars uploaded per round, all participants together
    upload_scalars_per_client: int = 0             # scalars one client uploads per round (full shared update)
    state: object = None                           # final FedState (global and private tensors)
    feature_download_scalars: int = 0              # FedMR: frozen features a client downloads once
    router_weights: object = None                  # FedMR: (U, K) final private router weights pi_u
    strategies: tuple = ()                         # FedMR: names of the K strategies (router order)

    def to_json(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "best_round": self.best_round,
            "valid": self.valid,
            "test": self.test,
            "history": self.history,
            "seconds": self.seconds,
            "client_updates": self.client_updates,
            "client_updates_per_second": self.client_updates / self.seconds if self.seconds > 0 else 0.0,
            "peak_memory_mb": None,                # filled by the caller (commands.py)
            "params_per_client": self.params_per_client,
            "upload_scalars_per_round": self.upload_scalars_per_round,
            "upload_scalars_per_client": self.upload_scalars_per_client,
            "feature_download_scalars": self.feature_download_scalars,
        }


def select_best(history: list, key: str = SELECT_ON) -> dict:
    """The history entry with the best validation ``key`` (earliest on ties). Never looks at test."""
    best = history[0]
    for entry in history[1:]:
        if entry["valid"][key] > best["valid"][key]:
            best = entry
    return best


def popularity_scores(dataset, device, dtype=torch.float32) -> torch.Tensor:
    """(n,) training interactions per item: the non-federated most-popular reference."""
    counts = np.bincount(np.asarray(dataset.train_indices), minlength=dataset.n_items)
    return torch.as_tensor(counts, dtype=dtype, device=device)


def _evaluate_both(score_fn, dataset, config, device) -> tuple[dict, dict]:
    kw = dict(ks=KS, chunk_size=config.eval_chunk_size, device=device)
    return (evaluate(score_fn, dataset, "valid", **kw), evaluate(score_fn, dataset, "test", **kw))


def _progress(total: int, enabled: bool, label: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:   # progress is optional; the run is the same without it
        return None
    return tqdm(total=total, desc=label, file=sys.stderr, leave=False)


def run_federated(dataset, config: FedConfig, progress: bool = True) -> RunResult:
    """Train and evaluate one configuration (module docstring).

    Deterministic for a seed on the same device: all randomness comes from the run's CPU
    generators; on CUDA the run switches PyTorch's deterministic algorithms on (and back after),
    so accumulating row updates gives the same sums every time.
    """
    config = validate(config)
    device = resolve_device(config.device)
    if device.type != "cuda":
        return _run(dataset, config, device, progress)
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _run(dataset, config, device, progress)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


CHUNK_SPREAD = 2.0      # the longest client of a chunk has at most twice the samples of its shortest


def plan_round(dataset, config: FedConfig, generator: torch.Generator, sampler, sizes: torch.Tensor):
    """One round's participants (sorted by training-set size) and their chunk plans, drawn lazily.

    Chunks hold clients of similar size (``plan.chunks``); FedMR also pads every client's history
    H_u to the longest of its chunk, so its clients never mix freely."""
    participants = sample_participants(dataset.n_users, config.sample_ratio, generator)
    participants = participants[torch.argsort(sizes[participants], stable=True)]
    mix_above = float("inf") if config.method == "fedmr" else config.batch_size
    plans = (make_plan(dataset, chunk, sampler, config.neg_ratio, config.local_epochs,
                       config.batch_size, generator)
             for chunk in chunks(participants, config.chunk_size,
                                 sizes[participants] * (1 + config.neg_ratio), config.chunk_samples,
                                 spread=CHUNK_SPREAD, mix_above=mix_above))
    return participants, plans


def _run(dataset, config: FedConfig, device: torch.device, progress: bool) -> RunResult:
    t0 = time.perf_counter()
    result = RunResult(config=config)
    if config.backbone == "popularity":
        pop = popularity_scores(dataset, device)
        valid, test = _evaluate_both(lambda users: pop.expand(len(users), -1), dataset, config, device)
        result.history = [dict(round=0, valid=valid, test=test, train_loss=None,
                               seconds=time.perf_counter() - t0)]
        result.valid, result.test = valid, test
        result.seconds = time.perf_counter() - t0
        return result

    generator = torch.Generator().manual_seed(config.seed)               # plan and initialisation
    noise_generator = torch.Generator().manual_seed(config.seed + 1_000_003)  # upload noise only
    noise = parse_noise(config.noise)
    if config.method == "fedmr" and not getattr(dataset, "features", None):
        raise OptionError(f"--method fedmr: dataset {dataset.name} has no item features; "
                          f"encode it first (encoders.encode_dataset or --encoder)")
    state = backbones.init_state(config.backbone, dataset.n_users, dataset.n_items, config,
                                 generator, device, dataset=dataset)
    # fresh uniform negatives every round; "fixed" reproduces defect 4 for the book's demonstration
    sampler = (FixedLowestNegatives if config.negatives == "fixed" else NegativeSampler)(dataset, "cpu")
    trainer = engine if config.engine == "batched" else oracle

    def score_fn(users):
        return backbones.full_scores(state, users)

    def record(t: int, loss):
        valid, test = _evaluate_both(score_fn, dataset, config, device)
        result.history.append(dict(round=t, valid=valid, test=test, train_loss=loss,
                                   seconds=time.perf_counter() - t0))

    sizes = torch.as_tensor(np.diff(np.asarray(dataset.train_indptr)), dtype=torch.long)   # (U,)
    record(0, None)
    bar = _progress(config.rounds, progress, f"{config.backbone} rounds")
    for t in range(1, config.rounds + 1):
        participants, plans = plan_round(dataset, config, generator, sampler, sizes)
        loss = trainer.train_round(state, plans, config, t, noise, noise_generator)
        if not np.isfinite(loss):
            raise FloatingPointError(f"round {t}: training loss is {loss} for backbone "
                                     f"{config.backbone}; lower --lr / item_lr")
        result.client_updates += int(participants.shape[0])
        if t % config.eval_every == 0 or t == config.rounds:
            record(t, loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", hr50=f"{result.history[-1]['valid']['hr@50']:.4f}")
    if bar is not None:
        bar.close()

    best = select_best(result.history)
    result.best_round, result.valid, result.test = best["round"], best["valid"], best["test"]
    result.seconds = time.perf_counter() - t0
    held, uploaded = backbones.count_parameters(state)
    result.params_per_client = held
    result.upload_scalars_per_client = uploaded
    per_round = max(1, min(dataset.n_users, int(np.ceil(config.sample_ratio * dataset.n_users - 1e-9))))
    result.upload_scalars_per_round = uploaded * per_round
    result.state = state
    if state.fusion is not None:
        result.feature_download_scalars = state.fusion.feature_scalars
        result.strategies = tuple(state.fusion.strategies)
        if state.fusion.routed:
            users = torch.arange(dataset.n_users, device=device)
            result.router_weights = torch.cat([backbones.router_weights(state, u).cpu()
                                               for u in users.split(config.eval_chunk_size)])
    return result
