"""fedmm_lite: the helper package of the book "Federated Multimodal Recommendation, Hands-on".

Rooms with one job each; data flows down the list:
``data`` (dataset folder format, world generator, split, negative sampling) -> ``encoders`` (frozen
item encoders and their feature cache) -> ``fed`` (client population with a client axis, backbones,
server rules, round loop) -> ``metrics`` -> ``plots``; ``cli`` is the command line.
"""
from .config import data_home, quick_mode, resolve_device

__version__ = "0.1.0"
__all__ = ["data_home", "quick_mode", "resolve_device", "__version__"]
