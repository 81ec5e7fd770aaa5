"""The federated engine (algorithms.md sections 1, 2, 7; design.md "The engine").

Rooms: ``config`` (FedConfig, tuned defaults), ``plan`` (the randomness of a round), ``backbones``
(what is shared / private, scores), ``engine`` (clients as a batch dimension), ``oracle`` (the
per-client loop it must match), ``server`` (aggregation rules), ``privacy`` (upload noise),
``loop`` (rounds, evaluation, model selection), ``fusion`` (FedMR's mapping layers, strategies,
router and mix).
"""
from .config import BACKBONE_DEFAULTS, BACKBONES, FedConfig, default_config, validate
from .loop import RunResult, run_federated
from .privacy import NoiseSpec, parse_noise

__all__ = ["BACKBONE_DEFAULTS", "BACKBONES", "FedConfig", "default_config", "validate",
           "RunResult", "run_federated", "NoiseSpec", "parse_noise"]
