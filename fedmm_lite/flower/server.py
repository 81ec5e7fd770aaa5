"""The server side of a federation and its round loop (no flwr import: the messages travel through
a ``transport``: Flower's Grid in ``apps.py``, or a loopback in tests).

Per round t (rounds.py's steps, the clients now on nodes):

1. plan: ``rounds.plan_round`` with the run's generator, exactly as ``FederatedRun`` draws it
   (``RunSpec.plan`` "server"); each participant's part goes to the node that hosts it, with the
   global model and the method's downloads (``method.downloads``, GFMFR's teacher). Plan "node":
   the server only samples the participants (the same draw), each node plans for its users;
2. the nodes train their users and send back each one's privatised ``UploadBatch``;
3. ``server.ServerRound`` receives them chunk by chunk in the plan's order (``codec.merge_uploads``
   rebuilds the batch a chunk of the oracle would give) and ``close`` applies the backbone's rule
   and the method's ``server_step`` (FedMR: its modules are averaged like the model; GFMFR:
   grouping, aggregation module, teacher): the server's own code, built from ``ServerState``;
4. when due, every node ranks its users' held-out items under the new global model and its private
   tensors; the server turns the ranks into HR/NDCG (``metrics.hr_ndcg``) over all users.

The server starts from ``FederatedRun(dataset, config)``: the same generator, the same initial
model; it then keeps the server state and drops every client tensor.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import progress_bar
from ..fed.rounds import KS, FederatedRun, RunResult, plan_round, select_best
from ..fed.server import ServerRound
from ..fed.state import count_parameters
from ..metrics import hr_ndcg
from .codec import client_downloads, client_part, merge_uploads
from .node import RunSpec, users_of


@dataclass
class TrainRequest:
    """What one node receives in round t: the global model, then per participating user either
    its part of the plan (plan "server") or just its id (plan "node"), and its downloads."""

    global_: dict
    clients: list = field(default_factory=list)       # global user ids, in the plan's order
    parts: list = field(default_factory=list)         # one-client ChunkPlans (plan "server")
    downloads: list = field(default_factory=list)     # per client: None or {name: tensor}


class ServerSide:
    """The server's state and rules for a run (module docstring)."""

    def __init__(self, spec: RunSpec, dataset):
        run = FederatedRun(dataset, spec.config)
        if run.state is None:
            raise ValueError("flower: the popularity reference has nothing to federate")
        self.spec, self.config, self.dataset = spec, run.config, dataset
        self.generator, self.sampler, self.sizes = run.generator, run.sampler, run.sizes
        self.method, self.spec_ = run.method, run.state.spec
        self.server = run.state.server                      # global model + server-only tensors
        self.held, self.uploaded = count_parameters(run.state)
        self.partition_of = np.zeros(dataset.n_users, dtype=np.int64)          # (U,) node of each user
        for p in range(spec.nodes):
            self.partition_of[users_of(p, spec.nodes, dataset.n_users)] = p
        # run.state (with every client's private tensors) is not kept: the server never reads it

    def requests(self, t: int) -> tuple[list, dict]:
        """Round t's chunks (lists of user ids, in the plan's order) and one request per node."""
        participants, plans = plan_round(self.dataset, self.config, self.generator, self.sampler,
                                         self.sizes, self.method.mixes_sizes, self.method.chunk_spread)
        requests: dict = {}
        chunks = []

        def request(u: int) -> TrainRequest:
            p = int(self.partition_of[u])
            if p not in requests:
                requests[p] = TrainRequest(self.server.global_)
            return requests[p]

        if self.spec.plan == "node":
            chunks.append([int(u) for u in participants])
            for u in chunks[0]:
                request(u).clients.append(u)
                request(u).downloads.append(client_downloads(
                    self.method.downloads(self.server, torch.tensor([u])), 0, 1))
            return chunks, requests
        for plan in plans:
            downloads = self.method.downloads(self.server, plan.clients)
            chunks.append([int(u) for u in plan.clients])
            for c, u in enumerate(chunks[-1]):
                r = request(u)
                r.clients.append(u)
                r.parts.append(client_part(plan, c))
                r.downloads.append(client_downloads(downloads, c, plan.n_clients))
        return chunks, requests

    def aggregate(self, t: int, chunks: list, uploads: dict, losses: dict) -> tuple[float, dict]:
        """Steps 3 of the module docstring from the users' ``uploads`` and ``losses`` (by user id);
        returns (mean client loss, the method's server-step diagnostics)."""
        server_round = ServerRound(self.server, self.method, self.spec_.rule, self.config, t,
                                   keep_uploads=self.method.keeps_uploads)
        ordered = []
        for chunk in chunks:
            server_round.receive(merge_uploads([uploads[u] for u in chunk]))
            ordered += [losses[u] for u in chunk]
        diagnostics = server_round.close()
        loss = float(torch.tensor(ordered, dtype=torch.float64).mean()) if ordered else float("nan")
        return loss, diagnostics

    def metrics(self, ranks: dict) -> tuple[dict, dict]:
        """(valid, test) HR/NDCG over every user from the nodes' ranks {partition: {split: (k,)}}."""
        out = []
        for split in ("valid", "test"):
            all_ranks = torch.zeros(self.dataset.n_users, dtype=torch.long)    # (U,)
            for p, reply in ranks.items():
                all_ranks[torch.as_tensor(users_of(p, self.spec.nodes, self.dataset.n_users))] = reply[split]
            if bool((all_ranks < 1).any()):
                raise ValueError("flower: some users were not evaluated (a node did not answer)")
            out.append(hr_ndcg(all_ranks, KS))
        return out[0], out[1]


def run_federation(spec: RunSpec, dataset, transport, progress: bool = False) -> RunResult:
    """Every round of a run over ``transport`` (``train(t, requests) -> {partition: (uploads by
    user, losses by user)}``, ``evaluate(t, global_) -> {partition: {split: ranks}}``), then model
    selection on validation, as ``rounds.run_federated`` does."""
    t0 = time.perf_counter()
    side = ServerSide(spec, dataset)
    config = side.config
    result = RunResult(config=config)
    valid, test = side.metrics(transport.evaluate(0, side.server.global_))
    result.history.append(dict(round=0, valid=valid, test=test, train_loss=None,
                               seconds=time.perf_counter() - t0, train_seconds=0.0))
    bar = progress_bar(config.rounds, f"{config.backbone} rounds (Flower)", progress)
    for t in range(1, config.rounds + 1):
        start = time.perf_counter()
        chunks, requests = side.requests(t)
        replies = transport.train(t, requests)
        uploads, losses = {}, {}
        for batches, loss in replies.values():
            uploads.update(batches)
            losses.update(loss)
        loss, diagnostics = side.aggregate(t, chunks, uploads, losses)
        result.train_seconds += time.perf_counter() - start
        result.client_updates += sum(len(c) for c in chunks)
        if not np.isfinite(loss):
            raise FloatingPointError(f"round {t}: the model diverged (the training loss is {loss}) "
                                     f"for {config.backbone} ({config.method})")
        if t % config.eval_every == 0 or t == config.rounds:
            valid, test = side.metrics(transport.evaluate(t, side.server.global_))
            entry = dict(round=t, valid=valid, test=test, train_loss=loss,
                         seconds=time.perf_counter() - t0, train_seconds=result.train_seconds)
            if diagnostics:
                entry["server"] = diagnostics
            result.history.append(entry)
        bar.update(1)
    bar.close()
    best = select_best(result.history)
    result.best_round, result.valid, result.test = best["round"], best["valid"], best["test"]
    result.seconds = time.perf_counter() - t0
    result.params_per_client, result.upload_scalars_per_client = side.held, side.uploaded
    per_round = max(1, min(dataset.n_users, int(np.ceil(config.sample_ratio * dataset.n_users - 1e-9))))
    result.upload_scalars_per_round = side.uploaded * per_round
    result.feature_download_scalars = side.method.feature_download_scalars
    result.details = {"global": {k: v.detach().cpu() for k, v in side.server.global_.items()}}
    return result


class Loopback:
    """A transport without Flower: every node in this process, called directly (tests; the
    chapter's first look). ``nodes`` maps partition -> ``Node``."""

    def __init__(self, nodes: dict):
        self.nodes = nodes

    def train(self, t: int, requests: dict) -> dict:
        out = {}
        for p, request in requests.items():
            node = self.nodes[p]
            parts = request.parts or node.draw_parts(torch.tensor(request.clients))
            batches, losses = node.train(request.global_, parts, request.downloads, t)
            out[p] = ({u: b for u, b in zip(request.clients, batches)},
                      {u: float(x) for u, x in zip(request.clients, losses)})
        return out

    def evaluate(self, t: int, global_: dict) -> dict:
        return {p: node.evaluate(global_) for p, node in self.nodes.items()}
