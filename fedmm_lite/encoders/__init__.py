"""Frozen item encoders and their feature cache (chapter 2, "Encoding").

    from fedmm_lite.encoders import encode_dataset
    summary = encode_dataset(dataset, "clip-random+minilm")   # dataset.features now filled

Modules: ``base`` (the encoder interface, image reading), ``clip`` (open_clip: ``clip``,
``clip-random``; ``base`` also has the ``pixels`` thumbnails), ``text`` (MiniLM titles), ``registry`` (tags -> encoders), ``cache``
(<dataset>/features/<tag>/, keyed and resumable), ``pipeline`` (encode_dataset, imputation, CLI).
"""
from .base import ItemEncoder, PairEncoder, PixelEncoder
from .cache import FeatureCache, dataset_fingerprint
from .clip import ClipConfig, ClipEncoder
from .pipeline import (PLACEHOLDER_TITLE, EncodeSummary, cmd_encode, default_offline_encoder,
                       encode_dataset, impute_missing_images)
from .registry import ENCODER_HELP, build_encoder
from .text import MiniLMEncoder

__all__ = ["ItemEncoder", "PairEncoder", "PixelEncoder", "FeatureCache", "dataset_fingerprint", "ClipConfig",
           "ClipEncoder", "MiniLMEncoder", "PLACEHOLDER_TITLE", "EncodeSummary", "cmd_encode",
           "default_offline_encoder", "encode_dataset", "impute_missing_images", "ENCODER_HELP",
           "build_encoder"]
