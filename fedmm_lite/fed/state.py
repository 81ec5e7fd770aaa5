"""The state of a federated run, split where the privacy boundary runs.

Five categories of tensors (a method adds to any of them; ``BackboneSpec`` names them):

- global (``server.global_``): the shared model, sent to the round's clients; their updates are
  averaged with the backbone's rule (item tables, the NCF tower, FedMR's fusion modules);
- reported (``spec.reported``): private tensors a client ALSO uploads each round for the method's
  server step, never averaged (GFMFR's prediction functions, which the server groups);
- server-only (``server.only``): tensors that never leave the server (GFMFR's group embeddings and
  aggregation module, the assignment history);
- private trainable (``private``): per-client tensors (U, ...) trained locally and kept on the client
  across rounds (user vectors, score functions, FedRAP's D_u, PFedRec's E_u, FedMR's routers);
- private non-trainable (``buffers``): per-client state that is not a parameter (GFMFR's moving
  averages of the distillation weight).

The server side of a round (server.py) receives ``state.server`` and the uploads, nothing else: it
cannot read a private tensor, by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import backbones
from .backbones import DTYPES, BackboneSpec


@dataclass
class ServerState:
    """What the server holds: the global model and its server-only tensors."""

    global_: dict                              # name -> tensor, the shared model
    only: dict = field(default_factory=dict)   # name -> server-only tensor or record (never sent)

    def to(self, device) -> "ServerState":
        return ServerState({k: v.to(device) for k, v in self.global_.items()},
                           {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.only.items()})


@dataclass
class FedState:
    """A run's tensors: the server's, and every client's private ones with a leading client axis."""

    backbone: str
    spec: BackboneSpec           # the backbone's tensor categories, extended by the method
    method: object               # the method (method.py): ID, FedMR, ...
    server: ServerState
    private: dict                # name -> (U, ...) trainable, client side
    buffers: dict                # name -> (U, ...) non-trainable, client side
    joined: torch.Tensor         # (U,) bool: has the client trained at least once
    dtype: torch.dtype = torch.float32

    @property
    def global_(self) -> dict:
        return self.server.global_

    @global_.setter
    def global_(self, value: dict) -> None:
        self.server.global_ = value

    @property
    def device(self) -> torch.device:
        return self.joined.device

    @property
    def n_users(self) -> int:
        return int(self.joined.shape[0])

    def to(self, device) -> "FedState":
        return replace(self, method=self.method.to(device), server=self.server.to(device),
                       private={k: v.to(device) for k, v in self.private.items()},
                       buffers={k: v.to(device) for k, v in self.buffers.items()},
                       joined=self.joined.to(device))


def init_state(config, dataset, generator: torch.Generator, device, method) -> FedState:
    """Initial tensors: the backbone's, then the method's, drawn on CPU from ``generator`` in a
    fixed order and moved to ``device``; per-client item tables are allocated on ``device``."""
    spec = method.extend_spec(backbones.SPECS[config.backbone], config)
    global_, private = backbones.init_tensors(config.backbone, dataset.n_users, dataset.n_items,
                                              config, generator)
    added = method.init_tensors(config, dataset, generator, DTYPES[config.dtype])
    global_.update(added.get("global", {}))
    private.update(added.get("private", {}))
    state = FedState(config.backbone, spec, method, ServerState(global_, added.get("server", {})),
                     private, added.get("buffers", {}), torch.zeros(dataset.n_users, dtype=torch.bool),
                     DTYPES[config.dtype]).to(device)
    sizes = getattr(dataset, "train_sizes", None)
    if sizes is None and getattr(dataset, "train_indptr", None) is not None:
        sizes = np.diff(np.asarray(dataset.train_indptr))
    state.private.update(backbones.private_tables(config.backbone, dataset.n_users, dataset.n_items,
                                                  config, sizes, device))
    return state


def count_parameters(state: FedState) -> tuple[int, int]:
    """(scalars a client holds: the shared model + its private part, scalars it uploads a round).

    The upload is the whole shared update plus what the method reports (its dense size: a client
    that uploads only the rows it trained uploads fewer, see the efficiency chapter)."""
    shared = sum(v.numel() for v in state.global_.values())
    n_users = state.n_users
    per_client = lambda d: sum(v.numel() // max(n_users, 1) for v in d.values())   # noqa: E731
    reported = sum(state.private[name].numel() // max(n_users, 1) for name in state.spec.reported)
    return shared + per_client(state.private) + per_client(state.buffers), shared + reported


def new_state(config, dataset, generator: torch.Generator | None = None, device="cpu") -> FedState:
    """A fresh state for ``config`` on ``dataset`` with its method: what ``FederatedRun`` starts
    from (tests and chapters that drive rounds by hand start here)."""
    from .method import make_method

    generator = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    return init_state(config, dataset, generator, device, make_method(config, dataset))
