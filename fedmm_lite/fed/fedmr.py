"""FedMR as a method (book/methods.md, "FedMR"): the fusion module of fusion.py inside the round.

What FedMR adds to a backbone (state.py's categories):
- global, averaged with the backbone's rule: the mapping layers A_m and the strategies' parameters
  (``fusion.module_names``), stepped with ``fusion_lr``;
- private trainable: the router (R_1, r_1, R_2, r_2) of each user, kept across rounds, never
  uploaded (a single strategy has none: its weight is 1);
- frozen inputs, not parameters: the item features F_m (standardised once, downloaded once) and each
  user's training items H_u (the router's input, the client's own data).

The item representation a client scores with is z_i (Eq. (6)) in place of the backbone's ID rows,
in local training (``FedMRChunk`` for the batched engine, ``FedMRClient`` for the oracle) and at
evaluation (``eval_items``). In the batched engine each client's copies of the feature mappings are
held by ``feature_maps.py`` (kernel or explicit form, both exact); a mini-batch with a router also
reads the rows of the user's training items (Eq. (5)'s input, recomputed under the current
parameters at every step, as the method states it).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..errors import OptionError
from . import backbones, fusion
from .backbones import DTYPES
from .feature_maps import feature_maps
from .method import ChunkSession, ClientSession, IdMethod


class FedMRChunk(ChunkSession):
    """A chunk of clients under FedMR in the batched engine."""

    def __init__(self, state, plan, config, t: int, downloads=None):
        super().__init__(state, plan, config, t, downloads)
        fedmr = state.method
        self.fedmr = fedmr
        # each client's feature mappings A_m,u, held the cheaper of two exact ways (feature_maps.py)
        self.maps = feature_maps(fedmr.features, state.global_, plan, tuple(fedmr.features),
                                 config.feature_map_form)
        self.map_of = {f"A_{m}": m for m in self.maps}
        self.held = tuple(self.map_of)
        self.pos_slots = self.pos_mask = None
        if fedmr.routed:
            # the router reads the user's training items H_u: the first n_u samples of the plan
            P = int(plan.sizes.max())
            self.pos_slots = plan.slots[:, :P]                                   # (C, P)
            self.pos_mask = (torch.arange(P, device=plan.slots.device).unsqueeze(0)
                             < plan.sizes.unsqueeze(1))                          # (C, P)

    @property
    def closed_form(self) -> bool:
        return False

    def read_slots(self, act, slots):
        if self.pos_slots is None:
            return slots
        # rows read: the batch's items, then the user's training items (the router's input)
        return torch.cat([slots, self.pos_slots[act]], 1)                        # (A, B + P)

    def items(self, leaves, act, slots, n_batch, phase):
        mapped, grad_leaves = {}, {}
        for name, m in self.map_of.items():
            # FedMR Eq. (1) for the features: h_m of the rows read, a leaf when A_m steps now
            mapped[m] = self.maps[m].mapped(act, slots).requires_grad_(name in phase)
            if name in phase:
                grad_leaves[name] = mapped[m]
        pos_mask = None if self.pos_mask is None else self.pos_mask[act]
        # FedMR Eq. (6): z_i = sum_k pi_u,k s_k(i) replaces the item embedding
        z, _ = fusion.fuse(self.fedmr, leaves, backbones.id_rows(self.backbone, leaves), {},
                           n_batch, pos_mask, mapped)
        return z, grad_leaves

    def step(self, name, act, slots, grad, lr):
        # dL/dh_m -> the client's A_m (feature_maps.py)
        self.maps[self.map_of[name]].step(act, slots, grad, lr)

    def uploads(self):
        return {name: self.maps[m].upload() for name, m in self.map_of.items()}      # (C, d, D_m)


class FedMRClient(ClientSession):
    """One client under FedMR in the per-client oracle: full copies of every module."""

    def __init__(self, state, user, config, t, downloads=None):
        super().__init__(state, user, config, t, downloads)
        self.fedmr = state.method
        if self.fedmr.routed:
            self.history = torch.nonzero(self.fedmr.history[user]).flatten()     # (P,) H_u

    def items(self, m, ids, rows, n_batch):
        feats = {mod: f[rows] for mod, f in self.fedmr.features.items()}
        mask = torch.ones(len(self.history), dtype=torch.bool, device=rows.device)
        z, _ = fusion.fuse(self.fedmr, m, ids, feats, n_batch, mask)
        return z


class FedMR(IdMethod):
    """FedMR's mixing fusion on top of an ID backbone (module docstring)."""

    name = "fedmr"
    mixes_sizes = False   # every client's history is padded to its chunk's longest: similar sizes only
    chunk_session = FedMRChunk
    client_session = FedMRClient

    def __init__(self, config, dataset):
        if not getattr(dataset, "features", None):
            raise OptionError(f"--method fedmr: dataset {dataset.name} has no item features; "
                              f"encode it first (encoders.encode_dataset or --encoder)")
        dtype = DTYPES[config.dtype]
        self.strategies = fusion.strategy_names(config.strategy)
        self.modalities = tuple(config.modalities)
        self.modules = fusion.module_names(config.strategy, self.modalities)
        self.router = fusion.router_names(config.strategy)
        # frozen inputs: standardised features (downloaded once) and the training items H_u
        self.features = {m: fusion.standardise(torch.as_tensor(np.asarray(dataset.features[m])).to(dtype))
                         for m in self.modalities if m != "id"}                  # (n, D_m)
        indptr = torch.as_tensor(np.asarray(dataset.train_indptr), dtype=torch.long)
        history = torch.zeros(dataset.n_users, dataset.n_items, dtype=torch.bool)   # (U, n)
        rows = torch.repeat_interleave(torch.arange(dataset.n_users), indptr[1:] - indptr[:-1])
        history[rows, torch.as_tensor(np.asarray(dataset.train_indices), dtype=torch.long)] = True
        self.history = history
        self.encoder = getattr(dataset, "feature_encoder", None)

    @property
    def routed(self) -> bool:
        return len(self.strategies) > 1

    @property
    def feature_download_scalars(self) -> int:
        return sum(int(f.numel()) for f in self.features.values())

    def to(self, device) -> "FedMR":
        """Move the frozen inputs to ``device`` (in place; the state moves with its method)."""
        self.features = {k: v.to(device) for k, v in self.features.items()}
        self.history = self.history.to(device)
        return self

    def extend_spec(self, spec, config):
        phases = spec.phases
        if phases is not None:
            # PFedRec: the router joins the score-function step, the shared modules the item step
            phases = (tuple(phases[0]) + self.router, tuple(phases[1]) + self.modules)
        return replace(spec, method_modules=self.modules,
                       private_vectors=tuple(spec.private_vectors) + self.router, phases=phases)

    def init_tensors(self, config, dataset, generator, dtype):
        widths = {m: int(f.shape[1]) for m, f in self.features.items()}
        g, p = fusion.init_tensors(config, widths, dataset.n_users, generator, dtype)
        return {"global": g, "private": p}

    def eval_items(self, state, users, id_tables):
        z, _ = fusion.fuse_all_items(self, self._params(state, users), id_tables, self.history[users])
        return z

    def _params(self, state, users) -> dict:
        return {**state.global_, **{k: state.private[k][users] for k in self.router}}

    @torch.no_grad()
    def router_weights(self, state, users: torch.Tensor) -> torch.Tensor | None:
        """Each user's router weights pi_u (c, K) as evaluation uses them (None: no router)."""
        if not self.routed:
            return None
        _, pi = fusion.fuse_all_items(self, self._params(state, users),
                                      backbones.eval_id_tables(state, users), self.history[users])
        return pi

    def details(self, state, config) -> dict:
        pi = None
        if self.routed:
            users = torch.arange(state.n_users, device=state.device)
            pi = torch.cat([self.router_weights(state, u).cpu() for u in users.split(config.eval_chunk_size)])
        return {"strategies": tuple(self.strategies), "router_weights": pi}

    def json_fields(self, details, dataset) -> dict:
        out = {"strategies": list(details["strategies"]), "encoder": self.encoder}
        pi = details["router_weights"]
        if pi is not None:
            out["router_weights_mean"] = {k: float(w) for k, w in zip(details["strategies"],
                                                                   np.asarray(pi).mean(0))}
        planted = planted_router_weights(details, dataset)
        if planted is not None:
            out["planted"] = planted
        return out


def planted_router_weights(details: dict, dataset) -> dict | None:
    """On data with planted ground truth (the world): for each planted group, the mean final router
    weight pi_u per strategy over the group's users. A single strategy has no router: its weight
    is 1 for everyone. None without ground truth."""
    truth = getattr(dataset, "ground_truth", None)
    if not truth or not details.get("strategies"):
        return None
    groups = np.asarray(truth["user_group"])                                   # (U,)
    names = list(truth["group_names"])
    modality = list(truth.get("group_modality", [""] * len(names)))
    pi = details.get("router_weights")
    pi = np.ones((len(groups), 1)) if pi is None else np.asarray(pi, dtype=np.float64)   # (U, K)
    out = {}
    for g, name in enumerate(names):
        members = groups == g
        if not members.any():
            continue
        mean = pi[members].mean(0)
        out[name] = {"modality": modality[g], "users": int(members.sum()),
                     **{k: float(w) for k, w in zip(details["strategies"], mean)}}
    return out
