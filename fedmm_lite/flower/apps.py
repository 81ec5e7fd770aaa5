"""The Flower apps: a ``ClientApp`` around ``node.Node`` and a ``ServerApp`` around
``server.run_federation``, speaking Flower's message API (flwr 1.x: ``Message``, ``RecordDict``,
``Grid``).

Messages (every tensor an ``Array`` of an ``ArrayRecord``, codec.py):

| type | server -> node | node -> server |
|---|---|---|
| query | nothing | ``fedmm.node``: partition-id, num-partitions (the node's own config) |
| train | ``fedmm.run`` (the run spec, round t, K users), ``fedmm.global`` (the global model), ``fedmm.client.k`` (user k's id, its part of the plan, its downloads) | ``fedmm.upload.k`` (user k's ``UploadBatch``), ``fedmm.loss`` (ids, mean losses) |
| evaluate | ``fedmm.run``, ``fedmm.global`` | ``fedmm.ranks`` (valid and test rank of each user it hosts) |

A node's private state lives in its ``Context.state["fedmm.node.<run>"]`` between messages, in
simulation (Flower keeps each virtual node's context) and in deployment (the SuperNode keeps it):
it is read at the start of a message and written back at its end, never put in a reply.

``client_app`` and ``server_app`` are what a deployment names (deploy.py writes the app's
pyproject.toml); ``server_app_for`` builds a ServerApp for one run in this process (simulation.py).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .codec import (from_record, plan_to_tensors, record_bytes, tensors_to_plan, tensors_to_upload,
                    to_record, upload_to_tensors)
from .node import RunSpec, node_for

STATE_KEY = "fedmm.node"     # + the run spec's hash: one Context may serve several runs (simulate_many)


def _state_key(spec_json: str) -> str:
    return f"{STATE_KEY}.{hashlib.sha256(spec_json.encode()).hexdigest()[:16]}"

# ======================================================================================== client
client_app = ClientApp()


def _node(message: Message, context: Context):
    """This node's ``Node`` with the private state its Context kept (a fresh one: the run's)."""
    run = message.content["fedmm.run"]
    node = node_for(str(run["spec"]), int(context.node_config["partition-id"]),
                    int(context.node_config["num-partitions"]))
    key = _state_key(str(run["spec"]))
    for other in [k for k in context.state.keys() if k.startswith(STATE_KEY) and k != key]:
        del context.state[other]                  # an earlier run's state on this node
    node.import_state(from_record(context.state[key]) if key in context.state else node.initial)
    return node, run


@client_app.query()
def hello(message: Message, context: Context) -> Message:
    """Which partition of the users this node hosts (its ``--node-config``)."""
    node = ConfigRecord({"partition-id": int(context.node_config["partition-id"]),
                         "num-partitions": int(context.node_config["num-partitions"])})
    return Message(RecordDict({"fedmm.node": node}), reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Round t for this node's participating users (node.Node.train)."""
    node, run = _node(message, context)
    global_ = from_record(message.content["fedmm.global"])
    users, parts, downloads = [], [], []
    for k in range(int(run["clients"])):
        tensors = from_record(message.content[f"fedmm.client.{k}"])
        users.append(int(tensors["user"][0]))
        if "plan/clients" in tensors:
            parts.append(tensors_to_plan(tensors))
        down = {key[len("down/"):]: v for key, v in tensors.items() if key.startswith("down/")}
        downloads.append(down or None)
    if not parts:                                  # plan "node": this node plans for its users
        parts = node.draw_parts(torch.tensor(users))
    batches, losses = node.train(global_, parts, downloads, int(run["round"]))
    context.state[_state_key(str(run["spec"]))] = to_record(node.export_state())
    content = RecordDict({f"fedmm.upload.{k}": to_record(upload_to_tensors(b)) for k, b in enumerate(batches)})
    content["fedmm.loss"] = to_record({"users": torch.tensor(users), "losses": losses})
    return Message(content, reply_to=message)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """The ranks of this node's users' held-out items (node.Node.evaluate)."""
    node, _ = _node(message, context)
    ranks = node.evaluate(from_record(message.content["fedmm.global"]))
    return Message(RecordDict({"fedmm.ranks": to_record(ranks)}), reply_to=message)


# ======================================================================================== server
class GridTransport:
    """``server.run_federation``'s transport over a Flower ``Grid``: one message per node and
    round, the replies decoded back into the package's objects. Keeps message sizes (``stats``)."""

    def __init__(self, grid: Grid, spec: RunSpec, wait_s: float = 300.0):
        self.grid, self.spec = grid, spec
        self.spec_json = spec.to_json()
        self.node_of = self._connect(wait_s)          # partition -> node id
        self.stats = {"download_model_bytes": [], "download_client_bytes": [], "upload_client_bytes": [],
                      "upload_payload_scalars": [], "download_model_scalars": []}

    def _send(self, contents: dict, kind: str) -> dict:
        """{node id: RecordDict} -> {node id: reply content}; a node's error is raised here."""
        messages = [Message(content, dst_node_id=node_id, message_type=kind)
                    for node_id, content in contents.items()]
        out = {}
        for reply in self.grid.send_and_receive(messages):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                raise RuntimeError(f"flower: node {node_id} failed: {reply.error.reason}")
            out[node_id] = reply.content
        if len(out) != len(contents):
            raise RuntimeError(f"flower: {len(contents) - len(out)} node(s) did not reply")
        return out

    def _send_partitions(self, contents: dict, kind: str) -> dict:
        """``_send`` addressed by partition: {partition: content} -> {partition: reply content}."""
        partition_of = {node_id: p for p, node_id in self.node_of.items()}
        replies = self._send({self.node_of[p]: c for p, c in contents.items()}, kind)
        return {partition_of[node_id]: content for node_id, content in replies.items()}

    def _connect(self, wait_s: float) -> dict:
        """Wait for ``spec.nodes`` SuperNodes and learn which partition each hosts."""
        deadline = time.monotonic() + wait_s
        ids = []
        while len(ids) < self.spec.nodes:
            ids = sorted(self.grid.get_node_ids())
            if len(ids) >= self.spec.nodes:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"flower: {len(ids)} of {self.spec.nodes} SuperNodes connected "
                                   f"after {wait_s:.0f} s")
            time.sleep(0.2)
        replies = self._send({i: RecordDict() for i in ids}, MessageType.QUERY)
        node_of = {}
        for node_id, content in replies.items():
            cfg = content["fedmm.node"]
            if int(cfg["num-partitions"]) != self.spec.nodes:
                raise RuntimeError(f"flower: node {node_id} says num-partitions={cfg['num-partitions']}, "
                                   f"the run has {self.spec.nodes} nodes")
            node_of[int(cfg["partition-id"])] = node_id
        if sorted(node_of) != list(range(self.spec.nodes)):
            raise RuntimeError(f"flower: partitions {sorted(node_of)} connected, expected 0..{self.spec.nodes - 1}")
        return node_of

    def _run_record(self, t: int, clients: int = 0) -> ConfigRecord:
        return ConfigRecord({"spec": self.spec_json, "round": int(t), "clients": int(clients)})

    def train(self, t: int, requests: dict) -> dict:
        contents = {}
        for p, request in requests.items():
            model = to_record(request.global_)
            content = RecordDict({"fedmm.run": self._run_record(t, len(request.clients)), "fedmm.global": model})
            self.stats["download_model_bytes"].append(record_bytes(model))
            self.stats["download_model_scalars"].append(sum(int(v.numel()) for v in request.global_.values()))
            for k, u in enumerate(request.clients):
                tensors = {"user": torch.tensor([u])}
                if request.parts:
                    tensors.update(plan_to_tensors(request.parts[k]))
                for name, value in (request.downloads[k] or {}).items():
                    tensors[f"down/{name}"] = value
                content[f"fedmm.client.{k}"] = record = to_record(tensors)
                self.stats["download_client_bytes"].append(record_bytes(record))
            contents[p] = content
        out = {}
        for p, content in self._send_partitions(contents, MessageType.TRAIN).items():
            loss = from_record(content["fedmm.loss"])
            users = [int(u) for u in loss["users"]]
            uploads = {}
            for k, u in enumerate(users):
                record = content[f"fedmm.upload.{k}"]
                tensors = from_record(record)
                uploads[u] = tensors_to_upload(tensors)
                self.stats["upload_client_bytes"].append(record_bytes(record))
                self.stats["upload_payload_scalars"].append(
                    sum(int(v.numel()) for key, v in tensors.items() if key.startswith(("values/", "reports/"))))
            out[p] = (uploads, {u: float(x) for u, x in zip(users, loss["losses"])})
        return out

    def evaluate(self, t: int, global_: dict) -> dict:
        model = to_record(global_)
        contents = {p: RecordDict({"fedmm.run": self._run_record(t), "fedmm.global": model})
                    for p in range(self.spec.nodes)}
        return {p: from_record(content["fedmm.ranks"])
                for p, content in self._send_partitions(contents, MessageType.EVALUATE).items()}


def run_on_grid(grid: Grid, spec: RunSpec, progress: bool = False, wait_s: float = 300.0):
    """One run on ``grid``: (RunResult, the transport's message sizes, the resolved spec, dataset)."""
    import dataclasses

    from .node import load_run_dataset
    from .server import run_federation

    dataset = load_run_dataset(spec)
    spec = dataclasses.replace(spec, encoder=getattr(dataset, "feature_encoder", None)).check(dataset.n_users)
    transport = GridTransport(grid, spec, wait_s)
    result = run_federation(spec, dataset, transport, progress=progress)
    return result, transport.stats, spec, dataset


def server_app_for(specs: list, out: list, progress: bool = False) -> ServerApp:
    """A ServerApp that runs ``specs`` one after the other on the same SuperNodes and appends
    each run's (RunResult, message sizes, resolved spec, dataset) to ``out`` (simulation in this
    process; the nodes need no restart between runs: the spec travels with every message)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for spec in specs:
            out.append(run_on_grid(grid, spec, progress))

    return app


server_app = ServerApp()


@server_app.main()
def deployed(grid: Grid, context: Context) -> None:
    """The deployed ServerApp: the run spec and where to write the result JSON come from the run
    config (``spec``: RunSpec JSON, ``result-path``; deploy.py writes them)."""
    from .simulation import flower_json

    spec = RunSpec.from_json(str(context.run_config["spec"]))
    result, stats, spec, dataset = run_on_grid(grid, spec, wait_s=float(context.run_config.get("wait-s", 300)))
    path = Path(str(context.run_config["result-path"]))
    text = json.dumps(flower_json(result, spec, dataset, stats), indent=2)
    partial = path.with_suffix(".partial")
    partial.write_text(text + "\n")
    partial.replace(path)                         # the file appears whole
