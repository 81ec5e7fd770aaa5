"""What a client stores, trains and sends, and what a round costs in time (the efficiency chapter).

Counts come from a run's state (``state.py``'s five categories), never from a formula of our own,
so they follow the code:

- learnable per client: the client's copy of the shared model (it trains all of it) plus its
  private trainable tensors, except a private table that is the client's tuned copy of a shared one
  (PFedRec's E_u is its copy of E after training: ``spec.tuned_from``);
- stored on the client: the learnable tensors, the private buffers (GFMFR's moving averages) and
  the frozen item features a method downloads once (FedMR's F_m);
- down per round: the shared model and what the method sends (GFMFR's group teacher, n values);
  up per round: the whole shared update (dense) and the reported tensors (GFMFR's P_u). A client
  that sends only the rows it trained sends less: ``rows_up`` counts those rows;
- one-off download: the frozen features.

Bytes are scalars times the width of the dtype (float32: 4). The papers' own counts are written out
part by part (``fedmr_paper_layout``, ``gfmfr_paper_client``) so that the chapter can put them
beside ours; ``paper_millions`` rounds as the papers' tables appear to (up, to two decimals).
Timing (``measure_seconds``) runs real rounds through ``rounds.run_round`` with a trainer that
clocks the client side.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .data.dataset import Dataset

BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ClientCost:
    """Per client, in scalars (``bytes`` converts)."""

    backbone: str
    method: str
    shared: int             # the global model a client receives and trains a copy of
    private: int            # private trainable tensors (user vectors, D_u, routers), no tuned copies
    buffers: int            # private non-trainable state (GFMFR's moving average)
    features: int           # frozen item features kept on the client (FedMR)
    method_down: int        # what the method sends a client each round (GFMFR's teacher)
    reported: int           # private tensors also uploaded each round (GFMFR's P_u)

    @property
    def learnable(self) -> int:
        """Scalars a client trains: its copy of the shared model and its private tensors."""
        return self.shared + self.private

    @property
    def stored_model(self) -> int:
        return self.learnable + self.buffers

    @property
    def stored(self) -> int:
        """Everything kept on the client between rounds: model, buffers, features."""
        return self.stored_model + self.features

    @property
    def down_per_round(self) -> int:
        return self.shared + self.method_down

    @property
    def up_per_round(self) -> int:
        return self.shared + self.reported

    @property
    def feature_download(self) -> int:
        """One-off: the frozen item features (FedMR), downloaded before the first round."""
        return self.features

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(learnable=self.learnable, stored_model=self.stored_model, stored=self.stored,
                   down_per_round=self.down_per_round, up_per_round=self.up_per_round,
                   feature_download=self.feature_download)
        return out

    def bytes(self, dtype: str = "float32") -> dict:
        """The scalar counts of ``as_dict`` times the width of ``dtype``."""
        width = BYTES[dtype]
        return {k: v * width for k, v in self.as_dict().items() if isinstance(v, int)}


def _per_client(tensor, n_users: int) -> int:
    return int(tensor.numel()) // max(n_users, 1)


def client_cost(state) -> ClientCost:
    """The counts of ``ClientCost`` for one client of ``state`` (every client holds the same)."""
    spec, U = state.spec, state.n_users
    shared = sum(int(v.numel()) for v in state.global_.values())
    copies = set(spec.tuned_from)                     # PFedRec's E_u: the client's copy of E
    private = sum(_per_client(v, U) for k, v in state.private.items() if k not in copies)
    buffers = sum(_per_client(v, U) for v in state.buffers.values())
    reported = sum(_per_client(state.private[k], U) for k in spec.reported)
    method = state.method
    teacher = state.server.only.get("teacher") if method.name == "gfmfr" else None
    method_down = int(teacher.shape[1]) if teacher is not None else 0   # n values of one group
    return ClientCost(state.backbone, method.name, shared, private, buffers,
                      int(method.feature_download_scalars), method_down, reported)


def parts(state) -> dict:
    """name -> (category, scalars per client) of every tensor a client holds or receives once:
    "shared" (the global model), "private", "tuned copy" (PFedRec's E_u, not counted as learnable),
    "buffer", "features" (FedMR's frozen F_m). The sums by category give ``client_cost``."""
    spec, U = state.spec, state.n_users
    out = {name: ("shared", int(v.numel())) for name, v in state.global_.items()}
    for name, v in state.private.items():
        out[name] = ("tuned copy" if name in spec.tuned_from else "private", _per_client(v, U))
    out.update({name: ("buffer", _per_client(v, U)) for name, v in state.buffers.items()})
    for name, f in getattr(state.method, "features", {}).items():
        if state.method.feature_download_scalars:
            out[f"F_{name}"] = ("features", int(f.numel()))
    return out


def rows_up(dataset: Dataset, state, neg_ratio: int) -> float:
    """Mean scalars a client uploads per round when it sends only the item-table rows it trained
    (its positives and at most ``neg_ratio`` negatives each, capped at n) plus the small shared
    modules and its reports, against ``client_cost(state).up_per_round`` for the dense update."""
    spec = state.spec
    rows = np.minimum(np.asarray(dataset.train_sizes) * (1 + neg_ratio), dataset.n_items)   # (U,)
    per_row = sum(int(state.global_[t].shape[1]) for t in spec.tables)
    small = sum(int(state.global_[k].numel()) for k in state.global_ if k not in spec.tables)
    reported = sum(_per_client(state.private[k], state.n_users) for k in spec.reported)
    return float(rows.mean() * per_row + small + reported)


def fedmr_rows_per_round(sizes, local_epochs: int, batch_size: int, neg_ratio: int,
                         router_input: str = "exact") -> dict:
    """Item rows a FedMR client reads in one round, per client (arrays like ``sizes``, the
    training-set sizes n_u): ``batch``, the rows of its mini-batches, E (1 + neg_ratio) n_u; and
    ``history``, the rows of H_u that Eq. (5)'s router input reads: all n_u of them at every
    local step with the exact input (E ceil((1 + neg_ratio) n_u / B) steps, so about
    E (1 + neg_ratio) n_u^2 / B rows: the square of the history), once per local epoch with the
    "epoch" estimate (E n_u, without gradient), none with the "batch" estimate. Each row is
    mapped by Eq. (1) and passed through the strategies, forward and backward."""
    n = np.asarray(sizes, dtype=np.int64)
    samples = (1 + neg_ratio) * n
    steps = local_epochs * -(-samples // batch_size)                 # E ceil(samples / B)
    history = {"exact": steps * n, "epoch": local_epochs * n, "batch": 0 * n}
    if router_input not in history:
        raise ValueError(f"fedmr_rows_per_round: router_input {router_input!r}; exact | epoch | batch")
    return {"batch": local_epochs * samples, "history": history[router_input], "steps": steps}


# --------------------------------------------------------------------------- a state of any size
def sized_dataset(n_users: int, n_items: int, feature_dims: dict | None = None,
                  train_per_user: int = 10, seed: int = 0) -> Dataset:
    """A random leave-one-out dataset of the given size (and random frozen features of the given
    widths): enough to build a state and count it at the papers' sizes."""
    rng = np.random.default_rng(seed)
    k = min(train_per_user, n_items - 2)
    indptr, indices, valid, test = [0], [], [], []
    for _ in range(n_users):
        items = rng.choice(n_items, size=k + 2, replace=False)
        indices += sorted(items[:k].tolist())
        indptr.append(len(indices))
        valid.append(items[k])
        test.append(items[k + 1])
    data = Dataset(name=f"sized-{n_users}x{n_items}", user_ids=np.array([str(u) for u in range(n_users)]),
                   item_ids=np.array([str(i) for i in range(n_items)]), titles=[""] * n_items,
                   image_paths=[None] * n_items, train_indptr=np.array(indptr, dtype=np.int64),
                   train_indices=np.array(indices, dtype=np.int64),
                   valid_items=np.array(valid, dtype=np.int64), test_items=np.array(test, dtype=np.int64))
    data.features = {m: rng.normal(size=(n_items, D)).astype(np.float32)
                     for m, D in (feature_dims or {}).items()}
    return data


def cost_at_size(backbone: str, method: str, n_users: int, n_items: int,
                 feature_dims: dict | None = None, **config) -> ClientCost:
    """``client_cost`` of a fresh state of ``backbone`` / ``method`` at the given size."""
    from .fed.config import default_config
    from .fed.state import new_state

    dims = feature_dims if feature_dims is not None else (
        {"image": 512, "text": 512} if method != "id" else None)
    data = sized_dataset(n_users, n_items, dims)
    return client_cost(new_state(default_config(backbone, method=method, device="cpu", **config), data))


# ------------------------------------------------------------------------------ the papers' layouts
def fedmr_paper_layout(n_items: int, d: int = 64, encoder_dim: int = 512, modalities: int = 3,
                       strategies: int = 3, router_hidden: int = 64) -> dict:
    """FedMR's published multimodal model (MMFedAvg) part by part, as its code lays it out: an ID
    table as wide as the encoder's features (``encoder_dim``), one mapping per modality to d, a
    router over the strategies, the MLP and gate strategies on the concatenated modalities, and the
    score head. At KU size (560 items) the parts sum to FedMR's Table 5 figure, 455,620."""
    D, M, K, h = encoder_dim, modalities, strategies, router_hidden
    return {
        "item table (n x D)": n_items * D,
        "mappings (M x (D d + d))": M * (D * d + d),
        "router (M d -> h -> K)": (M * d * h + h) + (h * K + K),
        "MLP (M d -> 2d -> d)": (M * d * 2 * d + 2 * d) + (2 * d * d + d),
        "gate (M d -> d -> M d)": (M * d * d + d) + (d * M * d + M * d),
        "head (d -> 1)": d + 1,
    }


def gfmfr_paper_client(n_items: int, d: int = 64) -> dict:
    """A GFMFR client over PFedRec as GFMFR's Table 3 counts it (fits its four figures with
    ``paper_millions``): the model is the item table and the score function; a round carries the
    item table, the group teacher's n values and the prediction function P_u; no features."""
    return {"stored features": 0, "model": n_items * d + d + 1, "download features": 0,
            "per-round traffic": n_items * d + n_items + d + 1}


def paper_millions(scalars: float) -> float:
    """Millions of scalars rounded UP to two decimals: the rounding under which GFMFR's Table 3
    agrees with the counts of ``gfmfr_paper_client`` (to the nearest, Beauty's .03 would be .02)."""
    return math.ceil(round(scalars / 1e4, 6)) / 100


# ---------------------------------------------------------------------------------------- timing
class _ClockedTrainer:
    """A trainer module (engine or oracle) whose ``train_chunk`` is timed: the client side."""

    def __init__(self, trainer, device):
        self.trainer, self.device, self.seconds = trainer, device, 0.0

    def train_chunk(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.trainer.train_chunk(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return out


def _clocked(plans, trainer: _ClockedTrainer):
    """The chunk plans, with the time spent drawing each (negatives, shuffles: the clients' work in
    a deployment) added to the trainer's clock."""
    plans = iter(plans)
    while True:
        start = time.perf_counter()
        try:
            plan = next(plans)
        except StopIteration:
            trainer.seconds += time.perf_counter() - start
            return
        trainer.seconds += time.perf_counter() - start
        yield plan


def measure_seconds(dataset: Dataset, config, rounds: int = 2, warmup: int = 1) -> dict:
    """Client seconds per local epoch (per client, amortised over the chunk a batched engine trains
    at once; drawing the plan counts as the client's) and server seconds per round (what the server
    sends, aggregation, the method's server step, privatising), measured over ``rounds`` rounds
    after ``warmup``; with the round's and one evaluation's seconds."""
    from .fed.rounds import FederatedRun, plan_round, run_round

    run = FederatedRun(dataset, config)
    client = server = evaluation = 0.0
    participants = 0
    for t in range(1, warmup + rounds + 1):
        trainer = _ClockedTrainer(run.trainer, run.device)
        start = time.perf_counter()
        chosen, plans = plan_round(dataset, run.config, run.generator, run.sampler, run.sizes,
                                   run.state.method.mixes_sizes)
        run_round(run.state, _clocked(plans, trainer), run.config, t, trainer, run.noise,
                  run.noise_generator)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        total = time.perf_counter() - start
        if t > warmup:
            client += trainer.seconds
            server += total - trainer.seconds
            participants += int(chosen.shape[0])
    start = time.perf_counter()
    run.evaluate(rounds)
    evaluation = time.perf_counter() - start
    per_round = (client + server) / rounds
    return {"client_seconds_per_epoch": client / max(participants, 1) / run.config.local_epochs,
            "server_seconds_per_round": server / rounds, "round_seconds": per_round,
            "evaluation_seconds": evaluation, "rounds": rounds}
