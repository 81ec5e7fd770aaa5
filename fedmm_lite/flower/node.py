"""One SuperNode: the client side of the round for the users it hosts (no flwr import).

A node hosts a partition of the users (``users_of``: the N nodes split the U users into N
contiguous blocks; with N = U a node is one user's device). What it holds and never sends:

- its users' data: their training items, validation and test items (``subset_users``);
- their private tensors (state.py's categories: user vectors and score functions, FedRAP's D_u,
  PFedRec's E_u, FedMR's routers, GFMFR's moving averages), kept between rounds in the node's
  ``Context.state`` (``export_state`` / ``import_state``), never in a message;
- its own noise generator (privacy.py), so the server cannot know the noise it removes nothing of.

Per round it receives the global model, each participating user's part of the round's plan
(``codec.client_part``) and the method's downloads, and returns each user's ``UploadBatch``:
``oracle.train_chunk`` (the per-client step on full copies, the package's reference) on a
one-client plan, then ``privacy.privatise``. At evaluation it scores its own users with
``method.full_scores`` and returns the rank of each held-out item (``metrics.evaluate``).

The initial private tensors are the run's: the node draws the whole initial state from the run's
seed (``state.new_state``, as ``FederatedRun`` does) and keeps its users' rows, so a federation
and the batched engine start from the same model.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import torch

from ..config import resolve_device
from ..data import NegativeSampler
from ..data.dataset import Dataset
from ..errors import OptionError
from ..fed import oracle
from ..fed.config import FedConfig, validate
from ..fed.method import full_scores, make_method
from ..fed.plan import make_plan
from ..fed.privacy import parse_noise, privatise
from ..fed.rounds import KS, NOISE_SEED_OFFSET
from ..fed.state import ServerState, init_state, new_state
from ..fed.tuned_tables import TunedTables
from ..metrics import evaluate

PLANS = ("server", "node")
TUNED_FIELDS = ("offsets", "items", "rows", "snapshot_of", "snapshots")


@dataclass(frozen=True)
class RunSpec:
    """What every process of a federation agrees on: the data, the configuration, the encoder
    of the item features, the number of nodes, and who draws the plan.

    ``plan``: "server" (the server draws each round's plan with the run's generator, exactly as
    ``rounds.plan_round`` does, and sends each user its part: a federation then equals the batched
    engine; the server must know the users' training sets to draw negatives outside them, a
    privilege of this reproduction) or "node" (each node draws its users' negatives and shuffles
    from its own generator; the server only samples participants: a real federation)."""

    data: str
    config: FedConfig
    nodes: int
    encoder: str | None = None
    plan: str = "server"

    def to_json(self) -> str:
        return json.dumps({"data": self.data, "config": dataclasses.asdict(self.config),
                           "nodes": self.nodes, "encoder": self.encoder, "plan": self.plan},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        d = json.loads(text)
        tuples = {f.name for f in dataclasses.fields(FedConfig) if isinstance(f.default, tuple)}
        config = FedConfig(**{k: (tuple(v) if k in tuples else v) for k, v in d["config"].items()})
        return cls(d["data"], validate(config), int(d["nodes"]), d["encoder"], d["plan"])

    def check(self, n_users: int) -> "RunSpec":
        if self.plan not in PLANS:
            raise OptionError(f"--plan {self.plan!r}: choose one of {', '.join(PLANS)}")
        if not 1 <= self.nodes <= n_users:
            raise OptionError(f"--clients {self.nodes}: must be from 1 to the dataset's {n_users} users")
        return self


_DATASETS: dict = {}


def load_run_dataset(spec: RunSpec) -> Dataset:
    """The run's dataset (cached per process), with item features when the method needs them."""
    from ..data import load_dataset

    key = (spec.data, spec.config.seed, spec.config.method != "id", spec.encoder)
    if key not in _DATASETS:
        dataset = load_dataset(spec.data, seed=spec.config.seed)
        if spec.config.method != "id":
            from ..encoders import encode_dataset

            encode_dataset(dataset, encoder=spec.encoder, device="cpu", progress=False)
        _DATASETS.clear()                     # one run's data per process is enough
        _DATASETS[key] = dataset
    return _DATASETS[key]


def users_of(partition: int, partitions: int, n_users: int) -> np.ndarray:
    """The users node ``partition`` of ``partitions`` hosts: a contiguous block of 0..U-1."""
    if not 0 <= partition < partitions <= n_users:
        raise OptionError(f"node partition-id {partition} of num-partitions {partitions}: need "
                          f"0 <= partition-id < num-partitions <= {n_users} users")
    return np.array_split(np.arange(n_users), partitions)[partition]


def subset_users(dataset: Dataset, users: np.ndarray) -> Dataset:
    """The dataset as node ``users`` sees it: their interactions only (renumbered 0..k-1 in the
    order given), every item and its public content (titles, pictures, features)."""
    users = np.asarray(users, dtype=np.int64)
    indptr = np.asarray(dataset.train_indptr)
    sizes = indptr[users + 1] - indptr[users]
    train = [np.asarray(dataset.train_indices[indptr[u]:indptr[u + 1]]) for u in users]
    return dataclasses.replace(
        dataset, user_ids=np.asarray(dataset.user_ids)[users],
        train_indptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        train_indices=(np.concatenate(train) if train else np.zeros(0)).astype(np.int64),
        valid_items=np.asarray(dataset.valid_items)[users], test_items=np.asarray(dataset.test_items)[users],
        ground_truth=None)


class Node:
    """The client side of one SuperNode (module docstring)."""

    def __init__(self, spec: RunSpec, partition: int, partitions: int):
        full = load_run_dataset(spec)
        config = spec.config
        self.spec, self.config, self.partition = spec, config, partition
        self.users = users_of(partition, partitions, full.n_users)                 # (k,) global ids
        self.local = {int(u): k for k, u in enumerate(self.users)}
        self.device = resolve_device(config.device)
        self.dataset = subset_users(full, self.users)
        # the run's initial tensors (the same seed as the batched engine); keep our users' rows
        initial = new_state(config, full)
        method = make_method(config, self.dataset)
        state = init_state(config, self.dataset, torch.Generator().manual_seed(config.seed), "cpu", method)
        rows = torch.as_tensor(self.users, dtype=torch.long)
        for name, value in initial.private.items():
            if isinstance(value, TunedTables):
                if value.snapshots.shape[0]:
                    raise ValueError(f"node: initial {name} is not empty")
                continue                                  # ours: empty, with our users' capacities
            state.private[name] = value[rows].clone()
        for name, value in initial.buffers.items():
            state.buffers[name] = value[rows].clone()
        self.shapes = {name: tuple(v.shape) for name, v in initial.global_.items()}
        state.server = ServerState({}, {})                # the node holds no server tensor
        self.state = state.to(self.device)
        self.noise = parse_noise(config.noise)
        # the node's own generators: its upload noise and (plan "node") its negatives and shuffles
        self.noise_generator = torch.Generator().manual_seed(
            config.seed + NOISE_SEED_OFFSET + 7919 * (partition + 1))
        self.plan_generator = torch.Generator().manual_seed(config.seed + 104_729 * (partition + 1))
        self.sampler = None
        self.initial = {k: v.clone() for k, v in self.export_state().items()}   # a new run's state

    # --- the round's work ------------------------------------------------------------------------
    def _local_ids(self, clients: torch.Tensor) -> torch.Tensor:
        try:
            return torch.tensor([self.local[int(u)] for u in clients], dtype=torch.long)
        except KeyError as err:
            raise ValueError(f"node {self.partition}: user {err.args[0]} is not hosted here") from None

    def draw_parts(self, clients: torch.Tensor) -> list:
        """Plan "node": this node's own plan for its participating ``clients`` (global ids), one
        part per client, from its own generator (``plan.make_plan``)."""
        if self.sampler is None:
            self.sampler = NegativeSampler(self.dataset, "cpu")
        from .codec import client_part

        c = self.config
        plan = make_plan(self.dataset, self._local_ids(clients), self.sampler, c.neg_ratio,
                         c.local_epochs, c.batch_size, self.plan_generator)
        plan.clients = clients.clone()
        return [client_part(plan, k) for k in range(plan.n_clients)]

    def train(self, global_: dict, parts: list, downloads: list, t: int) -> tuple[list, torch.Tensor]:
        """Round ``t`` for the users of ``parts`` (one-client plans, global ids): each trains with
        the oracle's per-client step from ``global_``; returns their privatised ``UploadBatch``es
        (addressed with their global ids) and mean losses (k,). Private tensors stay here."""
        self.state.server = ServerState({k: v.to(self.device) for k, v in global_.items()}, {})
        batches, losses = [], []
        for part, down in zip(parts, downloads):
            local = dataclasses.replace(part, clients=self._local_ids(part.clients))
            if down is not None and "clients" in down:       # a download addressed by user id
                down = {**down, "clients": self._local_ids(down["clients"]).to(self.device)}
            batch, loss = oracle.train_chunk(self.state, local, self.config, t, down)
            batch.clients = part.clients.clone()
            batches.append(privatise(batch, self.noise, self.noise_generator, self.shapes,
                                     self.state.spec.tables))
            losses.append(loss)
        self.state.server = ServerState({}, {})
        return batches, (torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64))

    def evaluate(self, global_: dict) -> dict:
        """Ranks (k,) of each user's held-out item, per split, under ``global_`` and the private
        tensors (full ranking, ``metrics.evaluate``)."""
        self.state.server = ServerState({k: v.to(self.device) for k, v in global_.items()}, {})
        out = {}
        for split in ("valid", "test"):
            result = evaluate(lambda users: full_scores(self.state, users), self.dataset, split, ks=KS,
                              chunk_size=self.config.eval_chunk_size, device=self.device,
                              return_ranks=True)
            out[split] = torch.as_tensor(result["ranks"], dtype=torch.long)
        self.state.server = ServerState({}, {})
        return out

    # --- what persists on the node between rounds (Context.state) ---------------------------
    def export_state(self) -> dict:
        """The node's private state as a flat dict of tensors (never sent to the server)."""
        out = {"joined": self.state.joined.cpu(),
               "noise_generator": self.noise_generator.get_state(),
               "plan_generator": self.plan_generator.get_state()}
        for name, value in self.state.private.items():
            if isinstance(value, TunedTables):
                for f in TUNED_FIELDS:
                    out[f"tuned/{name}/{f}"] = getattr(value, f).cpu()
                out[f"tuned/{name}/rounds"] = torch.tensor(value.rounds, dtype=torch.long)
            else:
                out[f"private/{name}"] = value.cpu()
        for name, value in self.state.buffers.items():
            out[f"buffers/{name}"] = value.cpu()
        return out

    def import_state(self, tensors: dict) -> None:
        """Restore what ``export_state`` saved (the previous round's private state, or
        ``self.initial`` for a node that has not trained yet); the tensors are copied."""
        dev = self.device
        tensors = {k: v.to(dev).clone() for k, v in tensors.items()}
        self.state.joined = tensors["joined"]
        self.noise_generator.set_state(tensors["noise_generator"].cpu())
        self.plan_generator.set_state(tensors["plan_generator"].cpu())
        for name, value in self.state.private.items():
            if isinstance(value, TunedTables):
                for f in TUNED_FIELDS:
                    setattr(value, f, tensors[f"tuned/{name}/{f}"])
                value.rounds = [int(r) for r in tensors[f"tuned/{name}/rounds"]]
                value._bounds = None                      # write_one's cached offsets
            else:
                self.state.private[name] = tensors[f"private/{name}"]
        for name in self.state.buffers:
            self.state.buffers[name] = tensors[f"buffers/{name}"]


_NODES: dict = {}


def node_for(spec_json: str, partition: int, partitions: int) -> Node:
    """The node object of this process for ``partition`` (built once; its private state is
    restored from the node's Context at every message, so any process may serve any node)."""
    key = (spec_json, partition, partitions)
    if key not in _NODES:
        for other in [k for k in _NODES if k[0] != spec_json]:
            del _NODES[other]                           # an earlier run's nodes
        _NODES[key] = Node(RunSpec.from_json(spec_json), partition, partitions)
    return _NODES[key]
