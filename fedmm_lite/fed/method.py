"""The method interface: what a method adds to an ID backbone, as the hooks a round calls.

A round (rounds.py) is: plan -> the clients train -> their uploads are privatised -> the server
aggregates them -> the method's server step -> evaluation when due. The two trainers (engine.py, a
chunk of clients at once with a leading client axis; oracle.py, one client at a time on full
copies) never ask which method runs: they call these hooks.

- set-up: ``extend_spec`` (the tensors the method adds, by category, state.py) and ``init_tensors``;
- down: ``downloads`` (what the server sends a chunk of clients beyond the global model: GFMFR's
  group teacher);
- client side: ``chunk_session`` (batched engine) and ``client_session`` (oracle) give the item
  representation a client scores with, extra loss terms, the steps of tensors the method holds in a
  form of its own, and their uploads;
- server side: ``server_step`` after aggregation, from the round's uploads only;
- evaluation: ``eval_items``, the item representation users score with;
- results: ``details`` (diagnostics for the JSON and the chapters).

``IdMethod`` is the plain backbone: every hook is the identity. ``make_method`` builds the method a
configuration names (fedmr.py for FedMR).
"""
from __future__ import annotations

import torch

from . import backbones, gradients


class ChunkSession:
    """A chunk of clients in one round of the batched engine, as the ID method sees it.

    ``held``: global tensors the session holds in a form of its own instead of the engine's local
    copies (FedMR's feature mappings); the engine asks the session to step and upload them."""

    held: tuple = ()
    has_extra_loss = False      # True when ``extra_loss`` may return a term (GFMFR)

    def __init__(self, state, plan, config, t: int, downloads=None):
        self.backbone = state.backbone

    @property
    def closed_form(self) -> bool:
        """May the engine use the written-out gradients (gradients.py)? Inner-product backbones."""
        return gradients.has_closed_form(self.backbone)

    def begin_batch(self, batch, view) -> None:
        """Called before each mini-batch position (``engine.Batch``); ``view(act, slots)`` reads
        the chunk's current local copies (FedMR's router-input estimates, fedmr.py)."""

    def read_slots(self, act, slots: torch.Tensor) -> torch.Tensor:
        """The rows a mini-batch reads, (A, B') with the batch's own B first (FedMR adds H_u)."""
        return slots

    def items(self, leaves: dict, act, slots: torch.Tensor, n_batch: int, phase) -> tuple[dict, dict]:
        """(item representation per branch (A, B, d), {held tensor: a leaf that receives its
        gradient in this phase}) from the rows ``slots`` read (``read_slots``; ``leaves`` holds
        them). The ID method scores with the backbone's ID rows."""
        return backbones.id_rows(self.backbone, leaves), {}

    def extra_loss(self, logits: torch.Tensor, rec_loss: torch.Tensor, act, batch, phase_index: int):
        """A per-client loss term on the batch's logits (GFMFR's distillation), or None:
        ``(loss (A,), d loss / d logits (A, B))`` given the backbone's loss ``rec_loss`` (A,)
        (detached); the written-out gradients use the second, autograd the first."""
        return None

    def step(self, name: str, act, slots: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        raise KeyError(f"{type(self).__name__} holds no tensor {name!r}")

    def uploads(self) -> dict:
        """name -> Delta_u (C, ...) of every held tensor."""
        return {}

    def finish(self, state) -> None:
        """Write back what the method keeps on the clients (its buffers)."""


class ClientSession:
    """One client in one round of the per-client oracle (full copies), as the ID method sees it.

    ``history``: rows the client reads beyond its batch (FedMR's router input H_u), (P,)."""

    def __init__(self, state, user: int, config, t: int, downloads=None):
        self.history = torch.zeros(0, dtype=torch.long, device=state.device)

    def begin_epoch(self, epoch: int, m: dict, id_rows_of) -> None:
        """Called at the start of each local epoch with the client's full copies ``m``;
        ``id_rows_of(rows)`` gives their ID vectors per branch (the oracle's own formula)."""

    def items(self, m: dict, ids: dict, rows: torch.Tensor, n_batch: int) -> dict:
        """Item representation per branch (b, d) from the ID rows ``ids`` of ``rows`` = the batch's
        items then ``history``; ``m`` the client's full copies."""
        return {b: r[:n_batch] for b, r in ids.items()}

    def extra_loss(self, logits: torch.Tensor, rec_loss: torch.Tensor, items: torch.Tensor,
                   phase_index: int):
        """A loss term (scalar) on the batch's logits (b,) given the backbone's loss, or None."""
        return None

    def finish(self, state, user: int) -> None:
        """Write back what the method keeps on the client (its buffers)."""


class IdMethod:
    """The plain ID backbone: no tensor added, every hook the identity."""

    name = "id"
    mixes_sizes = True          # clients of any size may share a chunk (plan.chunks, mix_above)
    chunk_spread = None         # longest / shortest client of a chunk at most (None: rounds.CHUNK_SPREAD)
    keeps_uploads = False       # the server step reads the round's uploads (GFMFR), not only their mean
    divergence_hint = "lower --lr (or the item step, item_lr)"    # what helps when a run diverges
    chunk_session = ChunkSession
    client_session = ClientSession

    def __init__(self, config, dataset):
        pass

    def extend_spec(self, spec, config):
        return spec

    def init_tensors(self, config, dataset, generator, dtype) -> dict:
        """category ("global", "private", "buffers", "server") -> name -> initial tensor."""
        return {}

    def downloads(self, server, clients: torch.Tensor):
        """What the server sends ``clients`` (a chunk about to train) beyond the global model."""
        return None

    def server_step(self, server, uploads: list, start: dict, config, t: int) -> dict:
        """After aggregation; reads the server state, the round's uploads (``keeps_uploads``) and
        ``start``, the global model the clients received, only. Returns the round's diagnostics."""
        return {}

    def eval_items(self, state, users: torch.Tensor, id_tables: dict) -> dict:
        return id_tables

    def details(self, state, config) -> dict:
        """Diagnostics of the finished run (RunResult.details)."""
        return {}

    def json_fields(self, details: dict, dataset) -> dict:
        """Extra keys of the command line's JSON."""
        return {}

    @property
    def feature_download_scalars(self) -> int:
        """Frozen inputs a client downloads once (FedMR's item features)."""
        return 0

    def to(self, device):
        """Move what the method holds to ``device`` (the ID method holds nothing)."""
        return self


def method_class(name: str):
    """The class implementing method ``name`` (a method's module is imported only when it is used:
    GFMFR's grouping brings in scipy and scikit-learn, about a second of start-up)."""
    if name == "id":
        return IdMethod
    if name == "fedmr":
        from .fedmr import FedMR
        return FedMR
    if name == "gfmfr":
        from .gfmfr import GFMFR
        return GFMFR
    raise ValueError(f"unknown method {name!r}; choose one of id, fedmr, gfmfr")


def make_method(config, dataset):
    """The method a configuration names, set up for ``dataset``."""
    return method_class(config.method)(config, dataset)


@torch.no_grad()
def full_scores(state, users: torch.Tensor) -> torch.Tensor:
    """Logits (c, n) of every item for ``users`` (c,), from the stored state: the method's item
    representation through the backbone's score function (evaluation).

    A method that scores the ID tables as they are (it keeps ``IdMethod.eval_items``: the ID method,
    GFMFR) takes ``backbones.eval_scores``, the same logits without building PFedRec's or FedRAP's
    per-user (c, n, d) tables."""
    if type(state.method).eval_items is IdMethod.eval_items:
        return backbones.eval_scores(state, users)
    items = state.method.eval_items(state, users, backbones.eval_id_tables(state, users))
    return backbones.score(state.backbone, backbones.eval_params(state, users), items)
