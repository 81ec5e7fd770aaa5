"""The federated engine (book/methods.md; CONTRIBUTING.md has the map of these rooms).

``config`` (FedConfig, tuned defaults), ``rounds`` (the round every caller uses), ``plan`` (the
randomness of a round), ``state`` (the five categories of tensors), ``backbones`` (the score
functions, what is shared / private), ``method`` (the hooks a method adds; the ID method),
``fedmr`` + ``fusion`` + ``feature_maps`` (FedMR), ``engine`` (clients as a batch dimension),
``oracle`` (the per-client reference it must match), ``privacy`` (privatising uploads), ``server``
(aggregation rules and the server's round).
"""
from .config import BACKBONE_DEFAULTS, BACKBONES, FedConfig, default_config, validate
from .privacy import NoiseSpec, parse_noise
from .rounds import FederatedRun, RoundRecord, RunResult, run_federated

__all__ = ["BACKBONE_DEFAULTS", "BACKBONES", "FedConfig", "default_config", "validate",
           "FederatedRun", "RoundRecord", "RunResult", "run_federated", "NoiseSpec", "parse_noise"]
