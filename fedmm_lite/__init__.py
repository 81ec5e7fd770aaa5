"""fedmm_lite: the helper package of the book "Federated Multimodal Recommendation, Hands-on".

Rooms with one job each; data flows down the list (CONTRIBUTING.md has the map):
``data`` (dataset folder format, world generator, split, negative sampling) -> ``encoders`` (frozen
item encoders and their feature cache) -> ``metrics`` -> ``fed`` (the federated round, backbones,
methods, the batched engine and its per-client oracle, privacy, server) -> ``timing`` ->
``viz_data`` / ``viz_*`` (the chapters' figures); ``commands`` and ``cli`` are the command line.
"""
from .config import data_home, quick_mode, resolve_device

__version__ = "0.1.0"
__all__ = ["data_home", "quick_mode", "resolve_device", "__version__"]
