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
parameters at every step, as the method states it: ``router_input="exact"``). Two labelled
estimates make that cheaper (``FedMRChunk``): "epoch" (H_u's summary once per local epoch, held
fixed) and "batch" (the summary of the mini-batch's own positives); their accuracy cost is
measured in bench/README.md. The server steps the fusion modules with ``config.fusion_server``
(server_opt.py) and reports each global tensor's relative update per round (``server_step``).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..errors import OptionError
from . import backbones, fusion, server_opt
from .backbones import DTYPES
from .feature_maps import feature_maps
from .method import ChunkSession, ClientSession, IdMethod


class FedMRChunk(ChunkSession):
    """A chunk of clients under FedMR in the batched engine.

    The router's input (Eq. (5)) per ``config.router_input``: "exact" recomputes it at every step
    from the rows of H_u under the current parameters; "epoch" computes it the same way once per
    local epoch and holds it fixed (no gradient through it) for the epoch's steps; "batch"
    averages the strategy outputs of the mini-batch's own positives (rows read anyway). The last
    two are estimates (``ROUTER_INPUTS``); evaluation always uses the exact summary."""

    def __init__(self, state, plan, config, t: int, downloads=None):
        super().__init__(state, plan, config, t, downloads)
        fedmr = state.method
        self.fedmr = fedmr
        self.mode = config.router_input
        self.clients = plan.clients
        self.rows = plan.rows                                                    # (Q,) item of each row
        # each client's feature mappings A_m,u, held the cheaper of two exact ways (feature_maps.py)
        self.maps = feature_maps(fedmr.features, state.global_, plan, tuple(fedmr.features),
                                 config.feature_map_form, fedmr.grams(), fedmr.bases(state.global_))
        self.map_of = {f"A_{m}": m for m in self.maps}
        self.held = tuple(self.map_of)
        self.pos_slots = self.pos_mask = None
        self.x, self.epoch, self.batch = None, -1, None
        if fedmr.routed and self.mode != "batch":
            # the router reads the user's training items H_u: the first n_u samples of the plan
            P = int(plan.sizes.max())
            self.pos_slots = plan.slots[:, :P]                                   # (C, P)
            self.pos_mask = (torch.arange(P, device=plan.slots.device).unsqueeze(0)
                             < plan.sizes.unsqueeze(1))                          # (C, P)

    @property
    def closed_form(self) -> bool:
        return False

    def begin_batch(self, batch, view):
        self.batch = batch
        if self.mode == "epoch" and self.pos_slots is not None and batch.epoch != self.epoch:
            # the epoch's router input: Eq. (5) over H_u under the parameters at the epoch's start
            self.epoch = batch.epoch
            every = slice(0, len(self.clients))
            with torch.no_grad():
                rows = view(every, self.pos_slots)
                mapped = {m: f.mapped(every, self.pos_slots) for m, f in self.maps.items()}
                self.x = fusion.router_input(self.fedmr, rows, backbones.id_rows(self.backbone, rows),
                                             {}, self.pos_mask, mapped)          # (C, K d)

    def read_slots(self, act, slots):
        if self.pos_slots is None or self.mode != "exact":
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
        estimate = {}
        if self.fedmr.routed and self.mode == "epoch":
            estimate["router_input"] = self.x[act]                               # (A, K d), fixed
        elif self.fedmr.routed and self.mode == "batch":
            # the batch's positives: its valid rows whose item is one of the user's training items
            items = self.rows[slots]                                             # (A, B)
            owners = self.clients[act].unsqueeze(1)                              # (A, 1)
            estimate["batch_mask"] = self.batch.valid & self.fedmr.history[owners, items]
        pos_mask = None if self.pos_mask is None else self.pos_mask[act]
        # FedMR Eq. (6): z_i = sum_k pi_u,k s_k(i) replaces the item embedding
        z, _ = fusion.fuse(self.fedmr, leaves, backbones.id_rows(self.backbone, leaves), {},
                           n_batch, pos_mask, mapped, **estimate)
        return z, grad_leaves

    def step(self, name, act, slots, grad, lr):
        # dL/dh_m -> the client's A_m (feature_maps.py)
        self.maps[self.map_of[name]].step(act, slots, grad, lr)

    def uploads(self):
        return {name: self.maps[m].upload() for name, m in self.map_of.items()}      # (C, d, D_m)


class FedMRClient(ClientSession):
    """One client under FedMR in the per-client oracle: full copies of every module (the router
    input per ``config.router_input``, as ``FedMRChunk`` says, computed here from full copies)."""

    def __init__(self, state, user, config, t, downloads=None):
        super().__init__(state, user, config, t, downloads)
        self.fedmr = state.method
        self.mode = config.router_input
        self.user = user
        self.x = None
        self.own = torch.nonzero(self.fedmr.history[user]).flatten()             # (P,) H_u
        if self.fedmr.routed and self.mode == "exact":
            self.history = self.own                                              # rows read per step

    def begin_epoch(self, epoch, m, id_rows_of):
        if self.fedmr.routed and self.mode == "epoch":
            with torch.no_grad():
                feats = {mod: f[self.own] for mod, f in self.fedmr.features.items()}
                mask = torch.ones(len(self.own), dtype=torch.bool, device=self.own.device)
                self.x = fusion.router_input(self.fedmr, m, id_rows_of(self.own), feats, mask)

    def items(self, m, ids, rows, n_batch):
        feats = {mod: f[rows] for mod, f in self.fedmr.features.items()}
        mask = torch.ones(len(self.history), dtype=torch.bool, device=rows.device)
        estimate = {}
        if self.fedmr.routed and self.mode == "epoch":
            estimate["router_input"] = self.x
        elif self.fedmr.routed and self.mode == "batch":
            estimate["batch_mask"] = self.fedmr.history[self.user, rows[:n_batch]]
        z, _ = fusion.fuse(self.fedmr, m, ids, feats, n_batch, mask, **estimate)
        return z


class FedMR(IdMethod):
    """FedMR's mixing fusion on top of an ID backbone (module docstring)."""

    name = "fedmr"
    mixes_sizes = False   # every client's history is padded to its chunk's longest: similar sizes only
    chunk_spread = 1.1    # and its rows (kernel, history) too: chunks of near-equal clients pad little
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
        # (``feature_dim``: the first k principal components instead, a labelled option)
        self.features = {m: fusion.standardise(fusion.reduce(
            torch.as_tensor(np.asarray(dataset.features[m])).to(dtype), config.feature_dim))
            for m in self.modalities if m != "id"}                               # (n, D_m)
        indptr = torch.as_tensor(np.asarray(dataset.train_indptr), dtype=torch.long)
        history = torch.zeros(dataset.n_users, dataset.n_items, dtype=torch.bool)   # (U, n)
        rows = torch.repeat_interleave(torch.arange(dataset.n_users), indptr[1:] - indptr[:-1])
        history[rows, torch.as_tensor(np.asarray(dataset.train_indices), dtype=torch.long)] = True
        self.history = history
        self.encoder = getattr(dataset, "feature_encoder", None)
        self._grams = None            # modality -> F F^T (n, n), once per run (feature_maps.py)
        self._bases = {}              # modality -> (the global A_m, F A_m^T, A_m's version)

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
        self._grams, self._bases = None, {}
        return self

    def grams(self) -> dict:
        """modality -> F_m F_m^T (n, n), the kernel of the features (computed once, they are frozen)."""
        if self._grams is None:
            from .feature_maps import gram
            self._grams = {m: gram(F) for m, F in self.features.items()}
        return self._grams

    def bases(self, global_: dict) -> dict:
        """modality -> F_m A_m^T (n, d) of every item at the global A_m the clients received: the
        same for every chunk of a round, so computed once per round (a new tensor, or an in-place
        change of this one, marks the cache stale)."""
        out = {}
        for m, F in self.features.items():
            A = global_[f"A_{m}"]
            cached = self._bases.get(m)
            if cached is None or cached[0] is not A or cached[2] != A._version:
                cached = (A, F @ A.T, A._version)
                self._bases[m] = cached
            out[m] = cached[1]
        return out

    def extend_spec(self, spec, config):
        phases = spec.phases
        if phases is not None:
            # PFedRec: the router joins the score-function step, the shared modules the item step
            phases = (tuple(phases[0]) + self.router, tuple(phases[1]) + self.modules)
        server_only = tuple(spec.server_only) + tuple(
            server_opt.init_state(config.fusion_server, {m: torch.zeros(0) for m in self.modules}))
        return replace(spec, method_modules=self.modules,
                       private_vectors=tuple(spec.private_vectors) + self.router, phases=phases,
                       server_only=server_only)

    def init_tensors(self, config, dataset, generator, dtype):
        widths = {m: int(f.shape[1]) for m, f in self.features.items()}
        g, p = fusion.init_tensors(config, widths, dataset.n_users, generator, dtype)
        # the server optimiser's state of the fusion modules (server_opt.py; none for sgd)
        server = server_opt.init_state(config.fusion_server, {m: g[m] for m in self.modules})
        return {"global": g, "private": p, "server": server}

    def server_step(self, server, uploads, start, config, t):
        """The fusion modules' server optimiser (``config.fusion_server``, server_opt.py; sgd with a
        ``fusion_server_lr`` of its own too) on the round's averaged update, which the aggregation
        applied with eta_s: Delta_bar = (start - plain result) / eta_s. Returns, for every global tensor, how far the round moved it
        relative to its size, ||theta_t - theta_{t-1}|| / ||theta_{t-1}|| (the chapter's
        step-size diagnostic)."""
        if config.fusion_server != "sgd" or config.fusion_server_lr is not None:
            _, _, eta_s = config.step_sizes()
            if eta_s > 0:
                # (``fusion_server_id`` False: A_id keeps the plain averaged step; it multiplies the
                # item table, whose rows already take the backbone's item_lr)
                stepped = [m for m in self.modules if config.fusion_server_id or m != "A_id"]
                mean = {m: (start[m] - server.global_[m]) / eta_s for m in stepped}
                server.global_.update(server_opt.step(
                    config.fusion_server, start, mean, server.only, config.fusion_server_step(),
                    config.fusion_server_beta1, config.fusion_server_beta2, config.fusion_server_tau))
        # (None for a tensor that was all zeros: a bias at its initial value)
        return {"relative_update": {name: (float((server.global_[name] - value).norm() / value.norm())
                                           if bool(value.any()) else None)
                                    for name, value in start.items()}}

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
