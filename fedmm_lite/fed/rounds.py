"""The federated round, the one every caller uses (the command line, the chapters, benches, tests).

A round t = 1..T (book/methods.md, "Protocol"):

1. plan: sample ceil(beta * U) participants, order them by training-set size (a chunk then holds
   clients of similar size and little padding; the order changes no client's result) and draw each
   chunk's plan (plan.py: negatives, shuffles, batches) from the run's generator;
2. the clients train: the batched engine (engine.py) or the per-client oracle (oracle.py) turns a
   chunk's plan into its uploads and writes the clients' private state back, nothing else;
3. the uploads are privatised (privacy.py) before the server sees them;
4. the server aggregates them with the backbone's rule and runs the method's server step
   (server.py), from its own state and the uploads only;
5. every ``eval_every`` rounds (and at the last), valid and test are evaluated with full ranking
   (and, under ``protocol="sampled"``, the sampled protocol too), both from one score matrix per
   chunk of users (``metrics.evaluate_splits``).

Under ``dp`` (privacy.py) participants are Poisson-sampled, uploads are clipped and noised (by each
client, or by the server), the accountant (accounting.py) records epsilon after every round, and
with ``target_epsilon`` the run stops before a round would pass it. Every round also measures the
L2 and L1 norms of the clients' uploads before privatising (``upload_norms``: what a noise scale
must be compared with; the server never sees them).

``FederatedRun(dataset, config)`` holds a run's state; iterating it yields one ``RoundRecord`` per
round (round 0 evaluates the untrained model), so a caller can time, draw a progress bar or stop
early without patching anything. ``run_federated`` consumes it and selects the round with the best
VALIDATION HR@50 (earliest on ties; under the sampled protocol the best validation HR@10_sampled,
the papers' rule); test is read at that round, never used to select.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
# torch.use_deterministic_algorithms (round_arithmetic) imports this lazily the first time, about
# 0.9 s: loaded with this module, so that no round's time includes it (and see cli._load)
import torch._inductor.config  # noqa: F401

from ..config import flush_denormals, progress_bar, resolve_device
from ..errors import OptionError
from ..data import NegativeSampler
from ..metrics import NonFiniteScores, evaluate_cold, evaluate_splits, sample_negatives
from . import engine, oracle
from .config import FedConfig, validate
from .method import full_scores, make_method
from .pitfalls import FixedLowestNegatives, HeldOutExcludedNegatives
from .plan import chunks, make_plan, sample_participants
from .accounting import Accountant
from .privacy import dp_spec, parse_noise, poisson_participants, privatise, upload_norms
from .server import ServerRound
from .state import count_parameters, init_state

KS = (10, 20, 50)
SELECT_ON = "hr@50"
SELECT_ON_SAMPLED = "hr@10_sampled"    # the sampled protocol selects as the PFedRec/FedRAP codes do
TRAINERS = {"batched": engine, "oracle": oracle}
SAMPLERS = {"fresh": NegativeSampler, "fixed": FixedLowestNegatives, "official": HeldOutExcludedNegatives}
CHUNK_SPREAD = 2.0      # the longest client of a chunk has at most twice the samples of its shortest
NOISE_SEED_OFFSET = 1_000_003   # the upload noise has a generator of its own: seed + this


@dataclass
class RoundRecord:
    """What one round produced. ``valid``/``test`` are None when the round was not evaluated."""

    round: int
    train_loss: float | None          # mean over participants of their mean mini-batch loss
    train_seconds: float              # clients, privatising and server; evaluation excluded
    participants: int
    valid: dict | None = None
    test: dict | None = None
    server: dict = field(default_factory=dict)   # the method's server-step diagnostics
    epsilon: float | None = None                  # under dp: epsilon spent so far (accounting.py)
    upload_norms: dict = field(default_factory=dict)  # L2 / L1 norms of the uploads, before privatising


def plan_round(dataset, config: FedConfig, generator: torch.Generator, sampler, sizes: torch.Tensor,
               mixes_sizes: bool = True, spread: float | None = None, poisson: bool = False):
    """One round's participants (sorted by training-set size) and their chunk plans, drawn lazily.

    Chunks hold clients of similar size (``plan.chunks``); a method that pads every client's
    history to the longest of its chunk (FedMR: ``mixes_sizes`` False) never mixes them freely, and
    may ask for a tighter ``spread`` (None: ``CHUNK_SPREAD``).
    ``poisson`` (under dp): each client independently with probability beta, possibly none."""
    draw = poisson_participants if poisson else sample_participants
    participants = draw(dataset.n_users, config.sample_ratio, generator)
    participants = participants[torch.argsort(sizes[participants], stable=True)]
    mix_above = config.batch_size if mixes_sizes else float("inf")
    plans = (make_plan(dataset, chunk, sampler, config.neg_ratio, config.local_epochs,
                       config.batch_size, generator)
             for chunk in chunks(participants, config.chunk_size,
                                 sizes[participants] * (1 + config.neg_ratio), config.chunk_samples,
                                 spread=spread or CHUNK_SPREAD, mix_above=mix_above))
    return participants, plans


def popularity_scores(dataset, device, dtype=torch.float32) -> torch.Tensor:
    """(n,) training interactions per item: the non-federated most-popular reference."""
    counts = np.bincount(np.asarray(dataset.train_indices), minlength=dataset.n_items)
    return torch.as_tensor(counts, dtype=dtype, device=device)


@contextlib.contextmanager
def round_arithmetic():
    """The arithmetic a round trains and a model is evaluated under (``run_round``,
    ``FederatedRun.evaluate``; the previous settings back after):

    - PyTorch's deterministic algorithms, so that accumulating row updates gives the same sums
      every time, on every device: on CUDA, and on a CPU with more than one torch thread, where
      otherwise two runs with one seed differed (GFMFR on world-quick with 2 threads; with 1
      thread, or deterministic, they are identical);
    - denormal floats (magnitude below about 1.2e-38) flushed to zero on the CPU. A saturated
      sigmoid leaves gradients that small, and a CPU multiplies them about 100 times slower than
      other numbers: one (4, 64, 362) x (4, 362, 384) product took 80 ms with such values against
      0.4 ms. Measured on world-full, FedMR Mix, one thread, 4 rounds: the same global model to
      the last bit, 8.0 s a round before, 6.6 s after (bench/README.md). The setting belongs to a
      thread: here it reaches the calling thread, which does all the work with one torch thread;
      worker threads inherit it only when they start after it is set (the CLI sets it first);
    - without the deterministic mode's filling of every new tensor with NaN
      (``torch.utils.deterministic.fill_uninitialized_memory``): a guard against reading memory
      never written, which this code does not do (a run that did would not repeat itself, and the
      same-seed tests would fail). The fill cost 6-7 % of a round on world-full, ID and FedMR
      alike (bench/README.md), for the same model to the last bit."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        with flush_denormals():
            yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def run_round(state, plans, config, t: int, trainer=engine, noise=None,
              noise_generator: torch.Generator | None = None, dp=None, norms: list | None = None,
              observe=None) -> tuple[float, dict]:
    """Steps 2-4 of round ``t`` for the chunks ``plans`` (module docstring): each chunk's clients
    receive what the server sends them (the global model, the method's downloads) and train
    (``trainer``: engine or oracle); their uploads are privatised (``noise``, or ``dp``: a
    ``privacy.DpSpec``) and reach the server, which aggregates and runs the method's server step.
    ``norms`` (a list) receives each chunk's (L2, L1) upload norms before privatising;
    ``observe(uploads, plan)`` sees each chunk's uploads as the server receives them (the leakage
    attack, leakage.py). Returns (mean client loss, the server step's diagnostics)."""
    method = state.method
    shapes = {name: tuple(v.shape) for name, v in state.global_.items()}
    central = dp is not None and dp.mode == "central"
    server = ServerRound(state.server, method, "uniform" if dp is not None and dp.active else state.spec.rule,
                         config, t, keep_uploads=method.keeps_uploads, dp=dp, generator=noise_generator,
                         expected_clients=config.sample_ratio * state.n_users if central else None,
                         tables=state.spec.tables)
    losses = []
    with round_arithmetic():    # the same sums on every device and any number of threads
        for plan in plans:
            downloads = method.downloads(state.server, plan.clients)
            uploads, loss = trainer.train_chunk(state, plan, config, t, downloads)
            if norms is not None:
                norms.append(upload_norms(uploads, state.spec.tables))
            uploads = privatise(uploads, noise, noise_generator, shapes, state.spec.tables, dp)
            if observe is not None:
                observe(uploads, plan)
            server.receive(uploads)
            losses.append(loss.cpu())
        diagnostics = server.close()
    return (float(torch.cat(losses).mean()) if losses else float("nan")), diagnostics


class FederatedRun:
    """One configuration on one dataset: its state and its rounds (module docstring).

    Deterministic for a seed on the same device: all randomness comes from the run's CPU
    generators (plan and initialisation; upload noise)."""

    def __init__(self, dataset, config: FedConfig):
        config = validate(config)
        if config.backbone == "popularity":              # nothing to train: no rounds are recorded
            config = dataclasses.replace(config, rounds=0)
        self.config = config
        self.dataset = dataset
        self.device = resolve_device(config.device)
        self.generator = torch.Generator().manual_seed(config.seed)                 # plan, init
        self.noise_generator = torch.Generator().manual_seed(config.seed + NOISE_SEED_OFFSET)
        self.noise = parse_noise(config.noise)
        self.dp = dp_spec(config)
        self.accountant = Accountant(self.dp, config.sample_ratio) if self.dp.active else None
        self.stopped_early = False          # stopped by target_epsilon before config.rounds
        if self.accountant is not None and not self.accountant.allows_another() and config.rounds > 0:
            raise OptionError(f"--target-epsilon {self.dp.target_epsilon}: one round already spends "
                              f"epsilon {self.accountant.epsilon_after(1):.3g} at --noise-multiplier "
                              f"{self.dp.noise_multiplier}; raise the target or the noise multiplier")
        self.participations = np.zeros(dataset.n_users, dtype=np.int64)   # rounds each user took part in
        self.state = None
        if config.backbone != "popularity":
            self.method = make_method(config, dataset)
            self.state = init_state(config, dataset, self.generator, self.device, self.method)
            # fresh uniform negatives every round; "fixed" reproduces defect 4 for the book's demo,
            # "official" the PFedRec/FedRAP codes' leak (pitfalls.py)
            self.sampler = SAMPLERS[config.negatives](dataset, "cpu")
            self.sizes = torch.as_tensor(np.diff(np.asarray(dataset.train_indptr)), dtype=torch.long)
            self.trainer = TRAINERS[config.engine]
        # the sampled protocol's negatives: drawn once per run, per split (metrics.sample_negatives)
        self.sampled = None
        if config.protocol == "sampled":
            self.sampled = {split: sample_negatives(dataset, seed=config.seed, split=split,
                                                    pool=config.sampled_pool)
                            for split in ("valid", "test")}

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores (c, n) of every item for ``users``: the current model as evaluation reads it."""
        if self.state is None:
            pop = popularity_scores(self.dataset, self.device)
            return pop.expand(len(users), -1)
        return full_scores(self.state, users)

    def evaluate(self, t: int = 0) -> tuple[dict, dict]:
        """(valid, test) metrics of the current model (after round ``t``): full ranking, plus the
        sampled protocol's keys under ``protocol="sampled"``. One scoring of every user serves both
        splits (``metrics.evaluate_splits``); under a cold-item split the held-out items' metrics
        join test's (``metrics.evaluate_cold``)."""
        kw = dict(chunk_size=self.config.eval_chunk_size, device=self.device)
        try:
            with round_arithmetic():
                out = evaluate_splits(self.score, self.dataset, ("valid", "test"), ks=KS,
                                      sampled=self.sampled, **kw)
                out["test"].update(evaluate_cold(self.score, self.dataset, ks=KS, **kw))
        except NonFiniteScores as err:      # a private tensor diverged: say so, not a traceback
            raise self._diverged(t, str(err)) from None
        return out["valid"], out["test"]

    def _diverged(self, t: int, what: str) -> FloatingPointError:
        """The error of a diverged run, with what helps: noise without clipping is unbounded next
        to the updates it is added to; otherwise the step sizes are too large."""
        config = self.config
        if self.noise.active:
            hint = (f"under --noise {config.noise}, which has no bound next to the updates it is added "
                    f"to: lower the noise scale, or clip the uploads and noise them to scale instead "
                    f"(--dp local|central --clip S --noise-multiplier z; chapter 'Privacy, honestly')")
        elif self.dp.active:
            where = "of the sum" if self.dp.mode == "central" else "of each upload"
            hint = (f"under --dp {self.dp.mode} (noise std {self.dp.std:g} per scalar {where}): lower "
                    f"--clip or --noise-multiplier, or the step sizes")
        else:
            hint = self.state.method.divergence_hint
        error = FloatingPointError(f"round {t}: the model diverged ({what}) for {config.backbone} "
                                   f"({config.method}); {hint}")
        error.round = t
        return error

    def train_round(self, t: int, observe=None) -> RoundRecord:
        """Round ``t`` without evaluation (module docstring, steps 1-4); ``observe`` as in
        ``run_round``."""
        start = time.perf_counter()
        participants, plans = plan_round(self.dataset, self.config, self.generator, self.sampler,
                                         self.sizes, self.state.method.mixes_sizes,
                                         self.state.method.chunk_spread, poisson=self.dp.active)
        # the uploads' norms are reported under noise or dp every round, otherwise with the rounds
        # that are evaluated (the history keeps them there): no full pass over uploads otherwise
        measured = self.noise.active or self.dp.active or self._evaluated(t)
        norms = [] if measured else None
        loss, diagnostics = run_round(self.state, plans, self.config, t, self.trainer, self.noise,
                                      self.noise_generator, self.dp, norms, observe)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if participants.numel() and not np.isfinite(loss):
            raise self._diverged(t, f"the training loss is {loss}")
        bad = [name for name, value in self.state.global_.items() if not bool(torch.isfinite(value).all())]
        if bad:
            raise self._diverged(t, f"the global {', '.join(bad)} hold NaN or infinite values")
        self.participations[participants.cpu().numpy()] += 1
        epsilon = None
        if self.accountant is not None:
            epsilon = self.accountant.spend(int(self.participations.max()))
        return RoundRecord(t, loss, time.perf_counter() - start, int(participants.shape[0]),
                           server=diagnostics, epsilon=epsilon,
                           upload_norms=self._norm_summary(norms or []))

    def _norm_summary(self, norms: list) -> dict:
        """Median and largest L2 and L1 norm of the round's uploads (before privatising); under dp
        the fraction of uploads that clipping shrank."""
        if not norms:
            return {}
        l2 = torch.cat([a for a, _ in norms]).cpu()
        l1 = torch.cat([b for _, b in norms]).cpu()
        out = {"l2_median": float(l2.median()), "l2_max": float(l2.max()),
               "l1_median": float(l1.median()), "l1_max": float(l1.max())}
        if self.dp.active:
            out["clipped_fraction"] = float((l2 > self.dp.clip).double().mean())
        return out

    def _evaluated(self, t: int) -> bool:
        """Whether round ``t`` is due for evaluation: every ``eval_every`` rounds and the last one
        (``__iter__`` also evaluates the round where a run stops early at its target epsilon)."""
        return t % self.config.eval_every == 0 or t == self.config.rounds

    def __iter__(self):
        """Round 0 (evaluation of the untrained model), then rounds 1..T, evaluated when due.
        (Training and evaluation each run under ``round_arithmetic``; the caller's code between
        rounds does not.)"""
        valid, test = self.evaluate()
        yield RoundRecord(0, None, 0.0, 0, valid, test)
        if self.state is None:                       # popularity: nothing to train
            return
        for t in range(1, self.config.rounds + 1):
            record = self.train_round(t)
            # target_epsilon: stop here when one more round could pass it (evaluated first)
            last = t == self.config.rounds
            if not last and self.accountant is not None and not self.accountant.allows_another():
                self.stopped_early = last = True
            if self._evaluated(t) or last:
                record.valid, record.test = self.evaluate(t)
            yield record
            if last:
                return


@dataclass
class RunResult:
    """What a run returns (CONTRIBUTING.md); ``to_json`` gives the FIXED keys of the command line."""

    config: FedConfig
    history: list = field(default_factory=list)   # per evaluated round: round, valid, test, train_loss, seconds, ...
    best_round: int = 0
    valid: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    seconds: float = 0.0                           # wall time of the run, evaluation included
    train_seconds: float = 0.0                     # rounds only, evaluation excluded
    client_updates: int = 0                        # local trainings done (participants summed over rounds)
    params_per_client: int = 0                     # scalars a client holds (shared model + private part)
    upload_scalars_per_round: int = 0              # scalars uploaded per round, all participants together
    upload_scalars_per_client: int = 0             # scalars one client uploads per round (full shared update)
    feature_download_scalars: int = 0              # frozen inputs a client downloads once (FedMR's features)
    state: object = None                           # final FedState (global and private tensors)
    details: dict = field(default_factory=dict)    # the method's diagnostics (FedMR: router weights)
    diverged: dict | None = None                   # where the run diverged ({"round", "message"}), if it did
    privacy: dict = field(default_factory=dict)    # under --noise or --dp: settings, epsilon per round (accounting.py)

    def to_json(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "best_round": self.best_round,
            "valid": self.valid,
            "test": self.test,
            "history": self.history,
            "seconds": self.seconds,
            "train_seconds": self.train_seconds,
            "client_updates": self.client_updates,
            "client_updates_per_second": (self.client_updates / self.train_seconds
                                          if self.train_seconds > 0 else 0.0),
            "peak_memory_mb": None,                # filled by the caller (the command handlers)
            "params_per_client": self.params_per_client,
            "upload_scalars_per_round": self.upload_scalars_per_round,
            "upload_scalars_per_client": self.upload_scalars_per_client,
            "feature_download_scalars": self.feature_download_scalars,
            "diverged": self.diverged,
            **({"privacy": self.privacy} if self.privacy else {}),
        }


def selection_key(config: FedConfig) -> str:
    """The validation metric that selects the round: HR@50 (full ranking) or HR@10_sampled."""
    return SELECT_ON_SAMPLED if config.protocol == "sampled" else SELECT_ON


def select_best(history: list, key: str = SELECT_ON) -> dict:
    """The history entry with the best validation ``key`` (earliest on ties). Never looks at test."""
    best = history[0]
    for entry in history[1:]:
        if entry["valid"][key] > best["valid"][key]:
            best = entry
    return best


def _record_rounds(run, result, t0, norms_per_round, bar) -> None:
    """Every round of ``run``, recorded into ``result`` as it comes (``run_federated``)."""
    key = selection_key(run.config)
    for record in run:
        result.train_seconds += record.train_seconds
        result.client_updates += record.participants
        if record.valid is not None:
            entry = dict(round=record.round, valid=record.valid, test=record.test,
                         train_loss=record.train_loss, seconds=time.perf_counter() - t0,
                         train_seconds=result.train_seconds)
            if record.server:
                entry["server"] = record.server
            if record.upload_norms:
                entry["upload_norms"] = record.upload_norms
            if record.epsilon is not None:
                entry["epsilon"] = record.epsilon
            result.history.append(entry)
        if record.upload_norms and (run.noise.active or run.dp.active):
            norms_per_round.append(record.upload_norms)
        if record.round > 0:
            bar.update(1)
            bar.set_postfix(loss=f"{record.train_loss:.4f}",
                            valid=f"{result.history[-1]['valid'][key]:.4f}")


def run_federated(dataset, config: FedConfig, progress: bool = True,
                  on_divergence: str = "raise") -> RunResult:
    """Train and evaluate one configuration: every round of ``FederatedRun``, then model selection
    on validation (module docstring). A diverged run raises ``FloatingPointError``; with
    ``on_divergence="stop"`` it stops there instead, selects among the rounds evaluated before, and
    says where it diverged in ``RunResult.diverged`` (nothing measured is lost)."""
    t0 = time.perf_counter()
    run = FederatedRun(dataset, config)
    result = RunResult(config=run.config)
    bar = progress_bar(run.config.rounds, f"{run.config.backbone} rounds", progress and run.state is not None)
    key = selection_key(run.config)
    norms_per_round = []
    try:
        _record_rounds(run, result, t0, norms_per_round, bar)
    except FloatingPointError as error:
        if on_divergence != "stop":
            raise
        result.diverged = {"round": getattr(error, "round", None), "message": str(error)}
    bar.close()
    best = select_best(result.history, key)
    result.best_round, result.valid, result.test = best["round"], best["valid"], best["test"]
    result.seconds = time.perf_counter() - t0
    if run.state is not None:
        held, uploaded = count_parameters(run.state)
        result.params_per_client = held
        result.upload_scalars_per_client = uploaded
        per_round = max(1, min(dataset.n_users,
                               int(np.ceil(run.config.sample_ratio * dataset.n_users - 1e-9))))
        result.upload_scalars_per_round = uploaded * per_round
        result.feature_download_scalars = run.method.feature_download_scalars
        result.state = run.state
        result.details = run.method.details(run.state, run.config)
    result.privacy = privacy_summary(run, norms_per_round)
    return result


def privacy_summary(run: FederatedRun, norms_per_round: list) -> dict:
    """The JSON's ``privacy`` object: under dp the accountant's settings and epsilon after every
    round; under the papers' --noise, that no epsilon holds (no clipping); both with the uploads'
    measured norms per round (before privatising). Empty for a run without either."""
    if run.accountant is not None:
        out = run.accountant.summary()
        out["stopped_at_target_epsilon"] = run.stopped_early
    elif run.noise.active:
        out = {"noise": run.config.noise, "epsilon": None,
               "why": "no clipping: an upload's norm, hence the sensitivity, is unbounded, so no "
                      "epsilon holds (accounting.papers_epsilon: what it would be if clipped)"}
    else:
        return {}
    out["upload_norms_per_round"] = norms_per_round
    return out
