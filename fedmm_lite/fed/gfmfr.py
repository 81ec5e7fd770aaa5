"""GFMFR as a method (book/methods.md, "GFMFR"): group-wise multimodal fusion on the server and
preference-guided distillation on the clients, on top of an ID backbone.

Per round t (the backbone's own training and aggregation run as usual):

1. Each participant also uploads its prediction function P_u (``spec.reported``: the score
   function (w_u, b_u) of PFedRec and FedRAP, (p_u, b_u) of FedAvg and FCF; FedNCF's tower and
   output layer are already uploaded as module updates, and its user vectors are reported for the
   teacher). Under ``--noise`` these are noised like every upload: the server never sees clean ones.
2. Grouping (grouping.py): the participants are clustered by P_u (FedNCF: the tower and output
   layer) into g groups, and the labels aligned with the previous round's groups (Hungarian);
   a client not sampled keeps its group. Server-only: the assignment history.
3. Targets: C_l = mean over the round's members of group l of their uploaded item tables
   (the start table minus each member's update).
4. Aggregation module: S_phi(E_G[l], F) maps a group embedding and the frozen item features to an
   item table; E_G and S_phi (server-only, warm-started across rounds) minimise
   mean_l MSE(S_phi(E_G[l], F), C_l) for ``server_epochs`` full-batch Adam steps;
   Q_l = S_phi(E_G[l], F).
5. Teacher: E_M,l = sigma(P_bar_l(Q_l)), the group members' mean prediction function applied to the
   group's item table (``backbones.score``). Each client then receives its group's row.
6. From the round after the first grouping, a client trains on L_rec + lambda_t KL(q || p) over its
   samples, with p its own prediction and q its group's teacher:
       KL([q, 1-q] || [p, 1-p]) = BCE(s, q) - H(q),   d KL / d s = sigma(s) - q,
   lambda_t from the schedule (``distillation_weight``): ScaleAlign L_rec / L_dis (detached,
   capped at ``ratio_cap``: ``scale_ratio``, see there),
   SmoothCoef its moving average m_u (a per-client buffer), ProgressiveScale the ratio times the
   increasing ramp t / T, "ours" (the paper's choice) m_u times the ramp; "cosine" is the published
   code's decreasing cos(pi t / 2T), kept for comparison.

Deliberate differences from the published code: the ramp increases (the code's cosine decreases),
the moving average is kept per client (the code shared one across all clients), and a client
sampled for the first time gets the teacher of the group whose centre is nearest to the current
global prediction function (the code crashed for clients that missed the previous round).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import OptionError
from . import backbones, fusion
from .backbones import DTYPES, USER_VECTOR, linear_init
from .grouping import align_labels, cluster, reduce, standardise_columns
from .method import ChunkSession, ClientSession, IdMethod

# an item table's branch in backbones.score: Q_l stands in for it in the teacher
TABLE_BRANCH = {"Q": "item", "E": "item", "C": "item", "Q_gmf": "gmf", "Q_mlp": "mlp"}
EPS = 1e-8


def teacher_params(backbone: str) -> tuple:
    """What P_bar_l holds: everything ``backbones.score`` reads besides the item representation."""
    if backbone in USER_VECTOR:
        return (USER_VECTOR[backbone], "b")
    return ("p_gmf", "p_mlp") + backbones.SPECS[backbone].prediction


def ramp(t: int, rounds: int, schedule: str) -> float:
    """a(t): the increasing ramp t / T ("ours", "progressive"), the published decreasing
    cos(pi t / 2T) ("cosine"), or 1."""
    if schedule in ("ours", "progressive"):
        return t / max(rounds, 1)
    if schedule == "cosine":
        return math.cos(math.pi * t / (2 * max(rounds, 1)))
    return 1.0


def distillation_weight(schedule: str, ratio: torch.Tensor, smoothed: torch.Tensor, a_t: float):
    """lambda_t per client from L_rec / L_dis (``ratio``) and its moving average (``smoothed``)."""
    if schedule == "scale-align":
        return ratio
    if schedule == "progressive":
        return ratio * a_t
    if schedule == "smooth":
        return smoothed
    return smoothed * a_t                               # "ours" and "cosine"


def scale_ratio(rec_loss: torch.Tensor, dis: torch.Tensor, cap: float) -> torch.Tensor:
    """ScaleAlign's ratio L_rec / L_dis (detached), capped at ``cap`` (book/methods.md, "GFMFR";
    ``cap`` = inf is the paper as written). Why a cap: a student that already agrees with its
    teacher has L_dis -> 0 and the ratio -> infinity. And even a bounded lambda can destabilise
    plain SGD: BCE's gradient vanishes as a prediction saturates, lambda (p - q) does not, so each
    sample pulls its logit to an interior point p* where a step of the item row moves the logit by
    about eta |u|^2 lambda p*(1 - p*) / n_B times the error; with the backbones' item step eta of the
    order of n this overshoots once lambda is large (measured: world-full, lambda 0.1 from round 2
    diverged in round 11, 0.03 did not)."""
    return torch.clamp(rec_loss / (dis.detach() + EPS), max=cap)


def smooth(previous: torch.Tensor, ratio: torch.Tensor, decay: float) -> torch.Tensor:
    """SmoothCoef: m <- decay m + (1 - decay) ratio; the first value (NaN before) is the ratio."""
    return torch.where(torch.isnan(previous), ratio, decay * previous + (1 - decay) * ratio)


def kl_to_teacher(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL([q, 1-q] || [p, 1-p]) per sample with p = sigma(logits): BCE(logits, q) - H(q)."""
    entropy = -(torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q))
    return F.binary_cross_entropy_with_logits(logits, q, reduction="none") - entropy


class GFMFRChunk(ChunkSession):
    """A chunk of clients under GFMFR in the batched engine: the distillation term."""

    def __init__(self, state, plan, config, t, downloads=None):
        super().__init__(state, plan, config, t, downloads)
        self.q_rows = None
        if downloads is not None:
            q = downloads["q"].to(state.device)                                   # (C, n)
            self.q_rows = q[plan.row_owner, plan.rows]                            # (Q,) teacher of each row
        self.clients = plan.clients
        self.smoothed = state.buffers["smoothed_ratio"][plan.clients].clone()     # (C,)
        self.schedule, self.decay, self.cap = config.lambda_schedule, config.smooth_decay, config.ratio_cap
        self.a_t = ramp(t, config.rounds, config.lambda_schedule)

    @property
    def has_extra_loss(self) -> bool:
        return self.q_rows is not None

    def extra_loss(self, logits, rec_loss, act, batch, phase_index):
        if self.q_rows is None:
            return None
        q = self.q_rows[batch.slots]                                              # (A, B)
        # L_dis = mean over the client's valid samples of KL(q || p)
        dis = (kl_to_teacher(logits, q) * batch.weight).sum(1)                    # (A,)
        ratio = scale_ratio(rec_loss, dis, self.cap)
        if phase_index == 0:
            self.smoothed[act] = smooth(self.smoothed[act], ratio, self.decay)
        lam = distillation_weight(self.schedule, ratio, self.smoothed[act], self.a_t)   # (A,)
        grad = lam.unsqueeze(1) * batch.weight * (torch.sigmoid(logits.detach()) - q)    # d(lam L_dis)/ds
        return lam * dis, grad

    def finish(self, state):
        state.buffers["smoothed_ratio"][self.clients] = self.smoothed


class GFMFRClient(ClientSession):
    """One client under GFMFR in the per-client oracle."""

    def __init__(self, state, user, config, t, downloads=None):
        super().__init__(state, user, config, t, downloads)
        self.q = None
        if downloads is not None:
            row = int(torch.nonzero(downloads["clients"] == user)[0])
            self.q = downloads["q"][row].to(state.device)                          # (n,)
        self.smoothed = state.buffers["smoothed_ratio"][user].clone()              # ()
        self.schedule, self.decay, self.cap = config.lambda_schedule, config.smooth_decay, config.ratio_cap
        self.a_t = ramp(t, config.rounds, config.lambda_schedule)

    def extra_loss(self, logits, rec_loss, items, phase_index):
        if self.q is None:
            return None
        dis = kl_to_teacher(logits, self.q[items]).mean()
        ratio = scale_ratio(rec_loss, dis, self.cap)
        if phase_index == 0:
            self.smoothed = smooth(self.smoothed, ratio, self.decay)
        return distillation_weight(self.schedule, ratio, self.smoothed, self.a_t) * dis

    def finish(self, state, user):
        state.buffers["smoothed_ratio"][user] = self.smoothed


class GFMFR(IdMethod):
    """GFMFR on top of an ID backbone (module docstring)."""

    name = "gfmfr"
    keeps_uploads = True
    divergence_hint = ("lower --ratio-cap (the bound of the distillation weight lambda_t) or the step "
                       "sizes (--lr, item_lr)")
    chunk_session = GFMFRChunk
    client_session = GFMFRClient

    def __init__(self, config, dataset):
        if not getattr(dataset, "features", None):
            raise OptionError(f"--method gfmfr: dataset {dataset.name} has no item features; "
                              f"encode it first (encoders.encode_dataset or --encoder)")
        self.backbone = config.backbone
        spec = backbones.SPECS[config.backbone]
        dtype = DTYPES[config.dtype]
        self.g = 1 if config.gfmfr_ablation == "single-group" else config.groups
        self.modalities = tuple(sorted(dataset.features))
        # server-side frozen inputs: the standardised item features of each modality
        self.features = {m: fusion.standardise(torch.as_tensor(np.asarray(dataset.features[m])).to(dtype))
                         for m in self.modalities}                                 # (n, D_m)
        self.tables = tuple(spec.tables)
        self.grouped = tuple(spec.prediction)                                      # what is clustered
        self.teacher_names = teacher_params(config.backbone)                      # what P_bar_l averages
        self.reported = tuple(n for n in self.teacher_names if n in spec.private_vectors)
        self.n_users, self.n_items, self.dim = dataset.n_users, dataset.n_items, config.dim
        self.modules = self.g if config.gfmfr_ablation == "multiple-agg" else 1
        self.encoder = getattr(dataset, "feature_encoder", None)

    def to(self, device) -> "GFMFR":
        self.features = {k: v.to(device) for k, v in self.features.items()}
        return self

    # --- set-up -----------------------------------------------------------------------------
    def extend_spec(self, spec, config):
        server_only = ("group", "teacher", "centres", "last_P", "has_P") + tuple(self._aggregator_names())
        return replace(spec, reported=self.reported, buffers=("smoothed_ratio",),
                       server_only=server_only)

    def _aggregator_names(self):
        names = ["S_proj_group", "S_bias_group"] if self.modules == 1 else []
        for m in self.modalities:
            names += [f"S_proj_{m}", f"S_bias_{m}"]
        return ["E_G"] * (self.modules == 1) + names + ["S_W1", "S_b1", "S_W2", "S_b2"]

    def init_tensors(self, config, dataset, generator, dtype):
        d, M = config.dim, self.modules
        width = d * len(self.tables)
        inputs = (["group"] if M == 1 else []) + list(self.modalities)
        dims = {"group": d, **{m: int(f.shape[1]) for m, f in self.features.items()}}
        s = {}
        if M == 1:
            s["E_G"] = torch.randn(self.g, d, generator=generator, dtype=torch.float64).to(dtype) * 0.1
        for name in inputs:
            # one projection per input: group vector, then each modality, to d
            s[f"S_proj_{name}"] = linear_init(d, dims[name], generator, dtype, (M,))     # (M, d, D)
            s[f"S_bias_{name}"] = torch.zeros(M, d, dtype=dtype)
        s["S_W1"] = linear_init(d, d * len(inputs), generator, dtype, (M,))              # (M, d, |in| d)
        s["S_b1"] = torch.zeros(M, d, dtype=dtype)
        s["S_W2"] = linear_init(width, d, generator, dtype, (M,))                        # (M, d T, d)
        s["S_b2"] = torch.zeros(M, width, dtype=dtype)
        k = self._p_width(config)
        server = {"group": torch.full((dataset.n_users,), -1, dtype=torch.long),
                  "teacher": torch.full((self.g, dataset.n_items), float("nan"), dtype=dtype),
                  "centres": torch.zeros(self.g, k, dtype=torch.float64),
                  "last_P": torch.zeros(dataset.n_users, k, dtype=torch.float64),
                  "has_P": torch.zeros(dataset.n_users, dtype=torch.bool), **s}
        buffers = {"smoothed_ratio": torch.full((dataset.n_users,), float("nan"), dtype=dtype)}
        return {"server": server, "buffers": buffers}

    def _p_width(self, config) -> int:
        """Length of a flattened P_u (the grouped tensors)."""
        d = config.dim
        if self.backbone in USER_VECTOR:
            return d + 1
        widths = (2 * d,) + tuple(config.ncf_layers)
        tower = sum(widths[k + 1] * widths[k] + widths[k + 1] for k in range(len(widths) - 1))
        return tower + d + widths[-1] + 1

    # --- down ----------------------------------------------------------------------------------
    def downloads(self, server, clients):
        """Each client's group teacher E_M,l (n probabilities); None before the first grouping.
        A client never grouped gets the group whose centre is nearest to the global prediction
        function (the population mean of the reported P_u; FedNCF: the global tower)."""
        teacher, group = server.only["teacher"], server.only["group"]
        if bool(torch.isnan(teacher).all()):
            return None
        clients = clients.to(group.device)
        mine = group[clients].clone()
        if bool((mine < 0).any()):
            mine[mine < 0] = self.nearest_group(server)
        return {"clients": clients, "q": teacher[mine]}                            # (C, n)

    def nearest_group(self, server) -> int:
        only = server.only
        if self.backbone in USER_VECTOR:
            reference = only["last_P"][only["has_P"]].mean(0)                       # (k,)
        else:
            reference = torch.cat([server.global_[n].reshape(-1) for n in self.grouped]).double()
        distance = (only["centres"] - reference.to(only["centres"].device)).norm(dim=1)   # (g,)
        distance[torch.isnan(only["teacher"]).all(1).to(distance.device)] = float("inf")
        return int(torch.argmin(distance))

    # --- the server step -------------------------------------------------------------------------
    def server_step(self, server, uploads, start, config, t):
        """Steps 2-5 of the module docstring, from ``uploads`` and ``start`` only."""
        t0 = time.perf_counter()
        only = server.only
        device = only["group"].device
        clients, P, teach = self._collect(uploads, start)
        clients = clients.to(device)
        labels = self._group(P, only["group"][clients].cpu().numpy(), config, t)  # (P,)
        members = torch.as_tensor(labels, device=device)                          # (P,) group of each
        only["group"][clients] = members
        only["history"] = only.get("history", []) + [only["group"].cpu().numpy().copy()]
        P_t = torch.as_tensor(P, device=device)                                   # (P, k)
        only["last_P"][clients] = P_t
        only["has_P"][clients] = True
        present = torch.bincount(members, minlength=self.g) > 0                   # (g,)
        for l in torch.nonzero(present).flatten().tolist():
            only["centres"][l] = P_t[members == l].mean(0)
        targets = self._targets(uploads, start, clients, members)                  # (g, n, d T)
        mse = self._train_aggregator(only, targets, present, config)
        self._teach(only, teach, members, present)
        sizes = np.bincount(labels, minlength=self.g).tolist()
        return {"group_sizes": sizes, "aggregation_mse": mse, "server_seconds": time.perf_counter() - t0}

    def _collect(self, uploads, start):
        """The round's participants (P,), their flattened prediction functions P_u (P, k) and the
        values each reports for the teacher (name -> (P, ...)), from the uploads."""
        clients, grouped, teach = [], [], {n: [] for n in self.teacher_names}
        for batch in uploads:
            clients.append(batch.clients)
            # P_u of a global module: the client's end copy, start - Delta_u (FedNCF's tower)
            value = {n: batch.reports[n] if n in batch.reports else start[n].unsqueeze(0) - batch.values[n]
                     for n in self.teacher_names}
            grouped.append(torch.cat([value[n].reshape(batch.n_clients, -1) for n in self.grouped], 1))
            for n in self.teacher_names:
                teach[n].append(value[n])
        P = torch.cat(grouped).double().cpu().numpy()                              # (P, k)
        return torch.cat(clients), P, {n: torch.cat(v) for n, v in teach.items()}

    def _group(self, P, previous, config, t) -> np.ndarray:
        seed = (config.seed * 1_000_003 + t) % (2 ** 32)
        if config.gfmfr_ablation == "random-group":
            labels = np.random.default_rng(seed).integers(self.g, size=P.shape[0])
        else:
            labels = cluster(reduce(standardise_columns(P), seed=seed), self.g, config.grouping, seed)
        return align_labels(previous, labels, self.g)

    def _targets(self, uploads, start, clients, members) -> torch.Tensor:
        """C_l = mean over the round's members of l of their uploaded item tables, every table
        side by side: (g, n, d T). A member's table is start - Delta_u (rows it did not train on
        are the start rows)."""
        counts = torch.bincount(members, minlength=self.g).clamp(min=1).to(start[self.tables[0]].dtype)
        parts, offset = [], 0
        for name in self.tables:
            n, d = start[name].shape
            total = torch.zeros(self.g * n, d, dtype=start[name].dtype, device=start[name].device)
            offset = 0
            for batch in uploads:
                group_of_row = members[offset + batch.owners[name]]                # (Q,)
                # total[l, i] += Delta_u[i] for every uploaded row i of every member u of l
                total.index_put_((group_of_row * n + batch.rows[name],), batch.values[name], accumulate=True)
                offset += batch.n_clients
            mean_delta = total.view(self.g, n, d) / counts.view(-1, 1, 1)
            parts.append(start[name].unsqueeze(0) - mean_delta)                    # (g, n, d)
        return torch.cat(parts, -1)

    def aggregate(self, s: dict, groups: torch.Tensor) -> torch.Tensor:
        """S_phi(E_G[l], F) for the groups ``groups`` (G,): their item tables (G, n, d T).

        One projection per input (x P_m^T + b_m to d), concatenated, then a two-layer MLP:
        S_phi = W_2 relu(W_1 [P_G E_G[l]; P_v F_v[i]; P_t F_t[i]] + b_1) + b_2. With one module
        per group (MultipleAgg) the group vector is not an input. The first layer is applied input
        by input, W_1 [x_G; x_v; x_t] = sum_k W_1[:, block k] x_k, so that with one shared module
        the item features go through it once, not once per group."""
        d = self.dim
        shared = self.modules == 1
        m = torch.zeros_like(groups) if shared else groups                         # module of each group
        W1 = s["S_W1"][m]                                                           # (G, d, |in| d)
        blocks = iter(range(0, W1.shape[-1], d))
        first = s["S_b1"][m].unsqueeze(1)                                           # (G, 1, d)
        if shared:
            e = s["E_G"][groups] @ s["S_proj_group"][0].T + s["S_bias_group"][0]   # (G, d) P_G E_G[l]
            k = next(blocks)
            first = first + torch.einsum("Gj,Gij->Gi", e, W1[..., k:k + d]).unsqueeze(1)
        for mod in self.modalities:
            Fm, k = self.features[mod], next(blocks)                                # (n, D_m)
            if shared:
                x = Fm @ s[f"S_proj_{mod}"][0].T + s[f"S_bias_{mod}"][0]             # (n, d), once
                first = first + (x @ W1[0, :, k:k + d].T).unsqueeze(0)              # (1, n, d)
            else:
                x = torch.einsum("nD,GdD->Gnd", Fm, s[f"S_proj_{mod}"][m]) + s[f"S_bias_{mod}"][m].unsqueeze(1)
                first = first + torch.einsum("Gnj,Gij->Gni", x, W1[..., k:k + d])
        hidden = torch.relu(first)                                                  # (G, n, d)
        return torch.einsum("Gni,Goi->Gno", hidden, s["S_W2"][m]) + s["S_b2"][m].unsqueeze(1)

    def _train_aggregator(self, only, targets, present, config) -> float:
        """E_G and S_phi minimise mean_l MSE(S_phi(E_G[l], F), C_l) over the groups with members
        this round: ``server_epochs`` full-batch Adam steps, warm-started from last round."""
        names = self._aggregator_names()
        leaves = {k: only[k].detach().clone().requires_grad_(True) for k in names}
        groups = torch.nonzero(present).flatten().to(targets.device)               # (G,)
        optimiser = torch.optim.Adam(list(leaves.values()), lr=config.aggregation_lr)
        loss = torch.tensor(float("nan"))
        for _ in range(config.server_epochs):
            optimiser.zero_grad()
            loss = F.mse_loss(self.aggregate(leaves, groups), targets[groups])
            loss.backward()
            optimiser.step()
        for k in names:
            only[k] = leaves[k].detach()
        return float(loss.detach())

    @torch.no_grad()
    def _teach(self, only, teach, members, present) -> None:
        """E_M,l = sigma(P_bar_l(Q_l)) for the groups with members this round (the others keep
        their teacher): P_bar_l the members' mean prediction function, Q_l = S_phi(E_G[l], F)."""
        groups = torch.nonzero(present).flatten().to(members.device)               # (G,)
        Q = self.aggregate(only, groups)                                            # (G, n, d T)
        d = self.dim
        items = {TABLE_BRANCH[name]: Q[..., k * d:(k + 1) * d] for k, name in enumerate(self.tables)}
        counts = torch.bincount(members, minlength=self.g).clamp(min=1)[groups]    # (G,)
        mean = {}
        for name, values in teach.items():
            # P_bar_l: the mean over the members of l of what they uploaded
            total = torch.zeros((self.g,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
            total.index_add_(0, members, values)
            mean[name] = total[groups] / counts.view((-1,) + (1,) * (values.dim() - 1))
        only["teacher"][groups] = torch.sigmoid(backbones.score(self.backbone, mean, items)).to(only["teacher"].dtype)

    # --- results ---------------------------------------------------------------------------------
    def details(self, state, config) -> dict:
        history = state.server.only.get("history", [])
        assignments = np.stack(history) if history else np.zeros((0, state.n_users), dtype=np.int64)
        return {"groups": self.g, "assignments": assignments,                       # (rounds, U)
                "teacher": state.server.only["teacher"].cpu().numpy()}

    def json_fields(self, details, dataset) -> dict:
        out = {"groups": details["groups"], "encoder": self.encoder,
               "assignments_first_100_users": details["assignments"][:, :100].tolist(),
               "download_scalars_per_client": int(self.n_items)}
        ari = planted_ari(details["assignments"], dataset)
        if ari is not None:
            out["planted"] = {"adjusted_rand_index": ari}
        return out


def planted_ari(assignments: np.ndarray, dataset) -> list | None:
    """Per round, the adjusted Rand index between the learned groups and the world's planted ones,
    over the users grouped so far (None without ground truth)."""
    truth = getattr(dataset, "ground_truth", None)
    if not truth or assignments.shape[0] == 0:
        return None
    from sklearn.metrics import adjusted_rand_score

    planted = np.asarray(truth["user_group"])
    out = []
    for row in assignments:
        seen = row >= 0
        out.append(float(adjusted_rand_score(planted[seen], row[seen])) if seen.any() else 0.0)
    return out
