"""The one interface every frozen item encoder follows, and the image reading they share.

An encoder turns item pictures and item titles into one feature matrix per modality:

    encoder.encode_images(images) -> (n, D_image) float32   # images: PIL images or file paths
    encoder.encode_titles(titles) -> (n, D_text)  float32   # titles: non-empty strings

It also says who it is without loading any weights (``describe()``, a JSON-able dict that keys the
feature cache) and whether each modality comes from pretrained weights (``pretrained``). Models are
loaded lazily on the first call, so that a cache hit never pays for loading them.

Missing inputs are the caller's business (``pipeline.encode_dataset`` imputes them): an encoder is
only ever handed readable pictures and real sentences.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence, Union

import numpy as np
from PIL import Image

from ..data.images import read_picture
from ..errors import DatasetError

ImageLike = Union[Image.Image, str, os.PathLike]


class ItemEncoder(Protocol):
    """What ``encode_dataset`` needs from an encoder (see the module docstring)."""

    tag: str                       # folder name under <dataset>/features/, e.g. "clip-random+minilm"
    pretrained: dict[str, bool]    # {"image": bool, "text": bool}

    def describe(self) -> dict:
        """JSON-able identity (architecture, weights, preprocessing); cheap: loads nothing."""

    def encode_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(n, D_image) float32 features of readable pictures."""

    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        """(n, D_text) float32 features of non-empty titles."""


def read_image(path: str | os.PathLike) -> Image.Image | None:
    """Open a picture as RGB, fully decoded; ``None`` when it is missing or unreadable
    (``data.images.read_picture`` decides)."""
    return read_picture(path)[1]


def as_rgb(image: ImageLike) -> Image.Image:
    """A PIL image as RGB; a path is opened (an unreadable one raises ``DatasetError``)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    img = read_image(image)
    if img is None:
        raise DatasetError(f"image {Path(image)}: missing or not a readable picture")
    return img


def batches(count: int, batch_size: int):
    """Consecutive ``(start, stop)`` ranges of at most ``batch_size`` covering ``range(count)``."""
    for start in range(0, count, batch_size):
        yield start, min(start + batch_size, count)


class PairEncoder:
    """Pictures from one encoder and titles from another, e.g. ``clip-random+minilm``."""

    def __init__(self, image_encoder, text_encoder):
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.tag = f"{image_encoder.tag}+{text_encoder.tag}"
        self.pretrained = {"image": image_encoder.pretrained["image"],
                           "text": text_encoder.pretrained["text"]}

    def describe(self) -> dict:
        return {"image": self.image_encoder.describe(), "text": self.text_encoder.describe()}

    def load(self) -> "PairEncoder":
        for encoder in (self.image_encoder, self.text_encoder):
            if hasattr(encoder, "load"):
                encoder.load()
        return self

    def encode_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        return self.image_encoder.encode_images(images)

    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        return self.text_encoder.encode_titles(titles)


class PixelEncoder:
    """Pictures as small colour thumbnails: an offline baseline with no model at all.

    x_i = vec(resize(picture_i, size x size, bilinear) / 255), D = 3 size^2. A linear probe on these
    recovers the world's colour, shape and style better than a randomly initialised CLIP does
    (random deep networks wash out layout); like clip-random it knows nothing about meaning.
    """

    tag = "pixels"
    pretrained = {"image": False, "text": False}

    def __init__(self, size: int = 16):
        self.size = size
        self.dim = 3 * size * size

    def describe(self) -> dict:
        return {"kind": "pixels", "size": self.size, "resample": "bilinear", "scale": "1/255"}

    def encode_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)  # (n, 3 * size^2)
        for i, img in enumerate(images):
            thumb = as_rgb(img).resize((self.size, self.size), Image.BILINEAR)
            # x_i = vec(thumbnail) / 255
            out[i] = np.asarray(thumb, dtype=np.float32).reshape(-1) / 255.0
        return out

    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        from ..errors import OptionError

        raise OptionError("--encoder pixels encodes pictures only; use pixels+minilm")
