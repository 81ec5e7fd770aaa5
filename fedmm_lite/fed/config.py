"""The configuration of one federated run: a frozen dataclass, overridden with ``dataclasses.replace``.

Learning-rate convention (book/methods.md, "Backbones"). Every client loss is a MEAN over the client's
mini-batch, and every update is plain SGD. Two step sizes:

- ``lr`` moves the parameters every sample of a batch touches: user vectors, score functions
  (w_u, b_u), the FedNCF tower;
- ``item_lr`` moves the rows of GLOBAL item tables (Q, E, C; FedNCF's two tables). A row is
  touched by a handful of samples of a batch, so its gradient is ~1/batch_size of a user vector's,
  and the server's averaging dilutes it again by the fraction of clients that trained on it. The
  reference codes fold both effects into ``lr * n`` (n items); we keep the two step sizes apart and
  tune both on validation. The tuned ``item_lr`` is indeed of the order of n (world-full: 866).
  Private tables (FedRAP's D_u) are never averaged, so they take ``lr``: given ``item_lr`` = 1000
  (world-quick, 100 rounds) max |D_u| reached 168 and validation HR@50 stayed at chance (0.378).

``server_lr`` is the server step applied to the averaged update (1 = plain averaging; FCF tunes it).
Defaults were tuned on the validation split of ``world-full`` (seed 0), never on test: see
``BACKBONE_DEFAULTS``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import quick_mode
from ..errors import OptionError
from .privacy import dp_spec, parse_noise
from .server_opt import DEFAULT_LR as SERVER_OPT_LR
from .server_opt import OPTIMISERS as SERVER_OPTIMISERS

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap", "popularity")
ENGINES = ("batched", "oracle")
MAX_NEG_RATIO = 100           # a client trains on (1 + neg_ratio) n_u samples a round: keep it bounded
MAX_SEED = 2**32 - 1
MAP_FORMS = ("auto", "kernel", "explicit")
METHODS = ("id", "fedmr", "gfmfr")
GROUPINGS = ("kmeans", "spectral", "agglomerative")
LAMBDA_SCHEDULES = ("ours", "scale-align", "smooth", "progressive", "cosine")
GFMFR_ABLATIONS = ("none", "random-group", "single-group", "multiple-agg")
FUSION_STRATEGIES = ("mix", "sum", "mlp", "gate")
# FedMR Eq. (5)'s router input during local training (fedmr.py): exact, or one of two estimates
ROUTER_INPUTS = ("exact", "epoch", "batch")
PROTOCOLS = ("full", "sampled")
SAMPLED_POOLS = ("prior", "official")
# FedMR's module step, chosen on VALIDATION HR@50 of world-quick (FedAvg, 5 rounds, H = 1, quick
# mode; the backbone's item_lr and lr kept): fusion_lr 0.1: 0.650 | 0.5: 0.639; item_lr 100 instead
# of 1000 with fusion_lr 0.1: 0.400. With a random (not identity) A_id and raw thumbnail features,
# item_lr 1000 diverged (NaN in round 3). A brief search only (2 shared CPU cores).
FUSION_LR = 0.1
FUSION_MODALITIES = ("id", "text", "image")

# Per-backbone step sizes (lr, item_lr, server_lr), chosen by the best validation HR@50 on world-full
# (1200 users, 866 items; seed 0) after 20 rounds with the other FedConfig defaults (H = 5, batch 64,
# 4 negatives, beta = 1), never on test. Search: python -m fedmm_lite.fed.tune --rounds 20 '{...}'.
# Validation HR@50 at the best round (round), most-popular reference 0.429:
#   fedavg  item_lr 10: 0.278 (20) | 100: 0.402 (20) | 1000: 0.512 (20) | 3000: 0.509 (11); lr 0.1
#           with item_lr 1000: 0.451 (20)
#   fcf     item_lr 1000, server_lr 1: 0.523 (19) | server_lr 3: 0.510 (15)
#   fedncf  lr 0.1, item_lr 300: 0.410 (7) | 1000: 0.413 (7) (below most-popular: lr not searched)
#   pfedrec item_lr 10: 0.125 (20) | 1000: 0.515 (20) | 3000: 0.512 (16)
#   fedrap  item_lr 1000: 0.513 (20) (lambda 0.1, mu 0.01, tau 1: not tuned)
# Only 20 of the default 100 rounds were searched (2 shared CPU cores). Where two steps were close
# at 20 rounds (fedavg, pfedrec: 1000 vs 3000) the smaller one, still rising, was kept. FedAvg with
# these defaults over 100 rounds (eval every 5): valid HR@50 peaks at 0.512 (round 20), then drifts
# down to 0.42 by round 100 without diverging; validation-based selection reports round 20.
BACKBONE_DEFAULTS = {
    "fedavg": dict(lr=0.5, item_lr=1000.0, server_lr=1.0),
    "fcf": dict(lr=0.5, item_lr=1000.0, server_lr=1.0),
    "fedncf": dict(lr=0.1, item_lr=1000.0, server_lr=1.0),
    "pfedrec": dict(lr=0.5, item_lr=1000.0, server_lr=1.0),
    "fedrap": dict(lr=0.5, item_lr=1000.0, server_lr=1.0),
    "popularity": dict(lr=0.0, item_lr=0.0, server_lr=1.0),
}


@dataclass(frozen=True)
class FedConfig:
    """One federated run. ``None`` step sizes mean the backbone's tuned default (``BACKBONE_DEFAULTS``)."""

    backbone: str = "fedavg"      # fedavg | fcf | fedncf | pfedrec | fedrap | popularity
    method: str = "id"            # id | fedmr | gfmfr (method.py, fedmr.py, gfmfr.py)
    rounds: int = 100             # communication rounds T (0 = evaluate the untrained model)
    local_epochs: int = 5         # H, passes over the client's samples per round (GFMFR: 5)
    sample_ratio: float = 1.0     # beta, fraction of clients sampled per round
    batch_size: int = 64          # samples (positives + negatives) per local mini-batch
    neg_ratio: int = 4            # negatives per positive, redrawn every round
    lr: float | None = None       # step for client-side parameters (p_u, w_u, b_u, D_u, the tower)
    item_lr: float | None = None  # step for the rows of global item tables
    server_lr: float | None = None  # server step on the averaged update (1 = plain averaging)
    dim: int = 64                 # d, latent size
    chunk_size: int = 1024        # at most this many clients trained at once by the batched engine
    chunk_samples: int = 1 << 20  # and at most this many padded samples (clients x longest): memory bound
    eval_every: int = 1           # evaluate valid and test every this many rounds
    protocol: str = "full"        # full (rank all items; select on valid HR@50) | sampled (target + 99
                                  # sampled negatives, select on valid HR@10_sampled: the PFedRec/FedRAP papers)
    sampled_pool: str = "prior"   # sampled protocol's negatives: prior | official (a mild leak; metrics.py)
    seed: int = 0                 # one seed makes a run repeatable on the same device
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    engine: str = "batched"       # batched (engine.py) | oracle (oracle.py, the per-client reference)
    noise: str = "none"           # none | gaussian:STD | laplace:SCALE on every upload
    negatives: str = "fresh"      # fresh | fixed (published defect 4, for the pitfall demo only) |
                                  # official (the PFedRec/FedRAP codes' leak: held-out items never drawn)
    init_std: float = 0.1         # N(0, init_std^2) initialisation of embeddings and score vectors
    ncf_layers: tuple = (64, 32)  # FedNCF tower widths after the (2d,) input
    fedrap_lambda: float = 0.1    # FedRAP lambda (differentiation weight, reached as tanh(t/10) * lambda)
    fedrap_mu: float = 0.01       # FedRAP mu (L1 on C, reached as tanh(t/10) * mu)
    fedrap_bound: float = 1.0     # tau: (D_u - C)^2 is clipped at tau, so -lambda * term >= -lambda * tau
    private_dtype: str = "float32"  # storage of the per-client tables E_u / D_u (float32 | bfloat16 | float16)
    dtype: str = "float32"        # compute dtype of parameters (tests use float64)
    eval_chunk_size: int = 256    # users scored at once during evaluation
    # FedMR (method "fedmr": fedmr.py, fusion.py; book/methods.md, "FedMR")
    strategy: str = "mix"         # mix (router over sum, mlp, gate) | sum | mlp | gate (one, no router)
    modalities: tuple = ("id", "text", "image")  # inputs fused; dropping one removes its mapping and term
    router_hidden: int = 16       # width of the private router MLP (K d -> hidden -> K)
    fusion_lr: float | None = None  # step of the global mapping and strategy modules (None = FUSION_LR)
    feature_map_lr: float | None = None  # step of the feature mappings A_text, A_image alone (None = fusion step)
    feature_map_form: str = "auto"  # the engine's per-client A_m: auto | kernel | explicit (feature_maps.py)
    router_input: str = "exact"   # Eq. (5) in training: exact (H_u, every step) | epoch | batch (estimates)
    feature_dim: int | None = None  # None: the encoder's features; k: their first k principal components
    fusion_server: str = "sgd"    # server optimiser of the fusion modules: sgd | momentum | adam (server_opt.py)
    fusion_server_lr: float | None = None  # its step eta (None: server_opt.DEFAULT_LR; sgd: server_lr)
    fusion_server_beta1: float = 0.9   # momentum / Adam's first-moment decay
    fusion_server_beta2: float = 0.99  # Adam's second-moment decay
    fusion_server_tau: float = 1e-8    # Adam's adaptivity floor tau (below the updates' scale)
    fusion_server_id: bool = True      # the server optimiser steps A_id too (False: plain averaging)
    # GFMFR (method "gfmfr": gfmfr.py, grouping.py; book/methods.md, "GFMFR")
    groups: int = 3               # g, client groups (the world plants three)
    grouping: str = "kmeans"      # kmeans | spectral | agglomerative, on the prediction functions P_u
    lambda_schedule: str = "ours"  # ours (SmoothCoef x increasing ramp) | scale-align | smooth | progressive | cosine
    gfmfr_ablation: str = "none"  # none | random-group | single-group (g = 1) | multiple-agg (one S_phi per group)
    server_epochs: int = 20       # full-batch epochs of the aggregation module S_phi per round
    aggregation_lr: float = 0.01  # Adam step of S_phi and the group embeddings E_G (server side)
    smooth_decay: float = 0.9     # SmoothCoef: m_u <- decay m_u + (1 - decay) L_rec / L_dis, per client
    # L_rec / L_dis capped here, so lambda_t <= ratio_cap (inf = the paper as written). Chosen on
    # VALIDATION HR@50 of world-full (PFedRec + GFMFR "ours", 20 rounds, eval every 2, seed 0):
    # cap 1: diverged (round 11); 0.3: 0.417 (round 12, then collapsed); 0.1: 0.526; 0.03: 0.534
    # (ID alone 0.519). At 0.1 the "smooth" schedule (no ramp) diverged in round 11, at 0.03 it did not.
    ratio_cap: float = 0.03
    # Clipped Gaussian DP of the uploads (privacy.py, accounting.py; chapter "Privacy, honestly")
    dp: str = "none"              # none | local (each client noises) | central (DP-FedAvg: the server noises)
    clip: float | None = None     # S, L2 bound of a client's whole upload (required with dp)
    noise_multiplier: float | None = None  # z, noise std z * S (required with dp)
    delta: float | None = None    # the delta of (epsilon, delta); None = 1e-5 under dp
    target_epsilon: float | None = None    # stop before a round would take epsilon past this

    def fusion_step(self, name: str | None = None) -> float:
        """Step of FedMR's global fusion module ``name``: ``fusion_lr``, or ``FUSION_LR``; the
        feature mappings A_text and A_image take ``feature_map_lr`` when it is set (a labelled
        option: the content pathway stepped apart from A_id and the strategies)."""
        if self.feature_map_lr is not None and name in ("A_text", "A_image"):
            return self.feature_map_lr
        return FUSION_LR if self.fusion_lr is None else self.fusion_lr

    def fusion_server_step(self) -> float:
        """Step eta of the fusion modules' server optimiser (``fusion_server``)."""
        if self.fusion_server_lr is not None:
            return self.fusion_server_lr
        return SERVER_OPT_LR.get(self.fusion_server, 1.0)

    def step_sizes(self) -> tuple[float, float, float]:
        """(lr, item_lr, server_lr) with the backbone's defaults filled in."""
        d = BACKBONE_DEFAULTS[self.backbone]
        return (d["lr"] if self.lr is None else self.lr,
                d["item_lr"] if self.item_lr is None else self.item_lr,
                d["server_lr"] if self.server_lr is None else self.server_lr)


def validate(config: FedConfig) -> FedConfig:
    """Raise ``OptionError`` naming the option when a value is out of range; return the config."""
    c = config
    if c.backbone not in BACKBONES:
        raise OptionError(f"--backbone {c.backbone!r}: choose one of {', '.join(BACKBONES)}")
    if c.method not in METHODS:
        raise OptionError(f"--method {c.method!r}: the ID engine supports {', '.join(METHODS)}")
    if c.negatives not in ("fresh", "fixed", "official"):
        raise OptionError(f"negatives {c.negatives!r}: fresh | fixed | official")
    if c.engine not in ENGINES:
        raise OptionError(f"engine {c.engine!r}: choose one of {', '.join(ENGINES)}")
    if c.protocol not in PROTOCOLS:
        raise OptionError(f"--protocol {c.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if c.sampled_pool not in SAMPLED_POOLS:
        raise OptionError(f"--sampled-pool {c.sampled_pool!r}: choose one of {', '.join(SAMPLED_POOLS)}")
    if c.feature_map_form not in MAP_FORMS:
        raise OptionError(f"feature_map_form {c.feature_map_form!r}: choose one of {', '.join(MAP_FORMS)}")
    checks = [
        (c.rounds >= 0, f"--rounds {c.rounds}: must be >= 0"),
        (c.local_epochs >= 1, f"--local-epochs {c.local_epochs}: must be >= 1"),
        (0.0 < c.sample_ratio <= 1.0, f"--sample-ratio {c.sample_ratio}: must be in (0, 1]"),
        (c.batch_size >= 1, f"--batch-size {c.batch_size}: must be >= 1"),
        (0 <= c.neg_ratio <= MAX_NEG_RATIO, f"--neg-ratio {c.neg_ratio}: must be from 0 to "
                                            f"{MAX_NEG_RATIO} negatives per positive (the papers use 1 to 4)"),
        (0 <= c.seed <= MAX_SEED, f"--seed {c.seed}: must be an integer from 0 to {MAX_SEED}"),
        (c.dim >= 1, f"--dim {c.dim}: must be >= 1"),
        (c.chunk_size >= 1, f"--chunk-size {c.chunk_size}: must be >= 1"),
        (c.chunk_samples >= 1, f"chunk_samples {c.chunk_samples}: must be >= 1"),
        (c.eval_every >= 1, f"eval_every {c.eval_every}: must be >= 1"),
        (c.eval_chunk_size >= 1, f"eval_chunk_size {c.eval_chunk_size}: must be >= 1"),
        (c.fedrap_bound > 0, f"fedrap_bound {c.fedrap_bound}: must be > 0"),
        (c.private_dtype in ("float32", "bfloat16", "float16", "float64"),
         f"private_dtype {c.private_dtype!r}: float32 | bfloat16 | float16 | float64"),
        (c.dtype in ("float32", "float64"), f"dtype {c.dtype!r}: float32 | float64"),
    ]
    for ok, message in checks:
        if not ok:
            raise OptionError(message)
    for name, value in zip(("--lr", "--item-lr", "server_lr"), (c.lr, c.item_lr, c.server_lr)):
        if value is not None and not value >= 0:
            raise OptionError(f"{name} {value}: must be >= 0")
    if c.method == "fedmr":
        mods = tuple(c.modalities)
        if c.strategy not in FUSION_STRATEGIES:
            raise OptionError(f"--strategy {c.strategy!r}: choose one of {', '.join(FUSION_STRATEGIES)}")
        if not mods or len(set(mods)) != len(mods) or any(m not in FUSION_MODALITIES for m in mods):
            raise OptionError(f"--modalities {','.join(map(str, mods))!r}: a non-empty subset of "
                              f"{', '.join(FUSION_MODALITIES)}, each once")
        if c.router_input not in ROUTER_INPUTS:
            raise OptionError(f"--router-input {c.router_input!r}: choose one of {', '.join(ROUTER_INPUTS)}")
        if c.feature_dim is not None and c.feature_dim < 1:
            raise OptionError(f"--feature-dim {c.feature_dim}: must be >= 1")
        if c.fusion_server not in SERVER_OPTIMISERS:
            raise OptionError(f"--fusion-server {c.fusion_server!r}: choose one of {', '.join(SERVER_OPTIMISERS)}")
        if c.fusion_server_lr is not None and not c.fusion_server_lr > 0:
            raise OptionError(f"--fusion-server-lr {c.fusion_server_lr}: must be > 0")
        if not (0 <= c.fusion_server_beta1 < 1 and 0 <= c.fusion_server_beta2 < 1 and c.fusion_server_tau > 0):
            raise OptionError("fusion_server_beta1/beta2 must be in [0, 1) and fusion_server_tau > 0")
        if c.router_hidden < 1:
            raise OptionError(f"router_hidden {c.router_hidden}: must be >= 1")
        if c.fusion_lr is not None and not c.fusion_lr >= 0:
            raise OptionError(f"fusion_lr {c.fusion_lr}: must be >= 0")
        if c.feature_map_lr is not None and not c.feature_map_lr >= 0:
            raise OptionError(f"feature_map_lr {c.feature_map_lr}: must be >= 0")
        if c.backbone == "popularity":
            raise OptionError("--method fedmr: needs a trained backbone, not popularity")
    if c.method == "gfmfr":
        checks = [
            (c.backbone != "popularity", "--method gfmfr: needs a trained backbone, not popularity"),
            (c.groups >= 1, f"--groups {c.groups}: must be >= 1"),
            (c.grouping in GROUPINGS, f"--grouping {c.grouping!r}: choose one of {', '.join(GROUPINGS)}"),
            (c.lambda_schedule in LAMBDA_SCHEDULES,
             f"--lambda-schedule {c.lambda_schedule!r}: choose one of {', '.join(LAMBDA_SCHEDULES)}"),
            (c.gfmfr_ablation in GFMFR_ABLATIONS,
             f"--gfmfr-ablation {c.gfmfr_ablation!r}: choose one of {', '.join(GFMFR_ABLATIONS)}"),
            (c.server_epochs >= 0, f"server_epochs {c.server_epochs}: must be >= 0"),
            (c.aggregation_lr > 0, f"aggregation_lr {c.aggregation_lr}: must be > 0"),
            (0.0 <= c.smooth_decay < 1.0, f"smooth_decay {c.smooth_decay}: must be in [0, 1)"),
            (c.ratio_cap > 0, f"--ratio-cap {c.ratio_cap}: must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)
    parse_noise(c.noise)
    dp_spec(c)
    return config


def default_config(backbone: str = "fedavg", **overrides) -> FedConfig:
    """The tuned defaults for ``backbone``; in quick mode 5 rounds of 1 local epoch (tests, laptops).

    ``overrides`` are FedConfig fields (``None`` values are ignored, so command-line options that
    were not given keep the defaults).
    """
    if backbone not in BACKBONES:
        raise OptionError(f"--backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")
    config = FedConfig(backbone=backbone)
    if quick_mode():
        config = dataclasses.replace(config, rounds=5, local_epochs=1)
    fields = {f.name for f in dataclasses.fields(FedConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise OptionError(f"default_config: unknown option(s) {', '.join(unknown)}")
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    return validate(config)
