"""Item pictures: where an ``items.csv`` image path may point, and whether a picture can be read.

One place decides both, so that ``info`` (the load report of ``split.build_dataset``), ``encode``
(``encoders.pipeline``) and the figures agree on every picture:

- ``path_inside(root, image)``: the file an image field names, or None when it leaves the dataset
  folder (``../``, an absolute path, or a symbolic link whose target lies outside). ``read_folder``
  refuses such a row: a dataset must not make the package read files elsewhere on the machine.
- ``read_picture(path) -> (status, picture)``, status one of ``IMAGE_STATUSES``:
  *missing* = no path given, or no file there; *unreadable* = a file that PIL cannot decode in
  full (garbage, truncated, a text file) or whose header claims more than ``Image.MAX_IMAGE_PIXELS``
  pixels (a "decompression bomb": a few bytes that would decode to gigabytes); *ok* = decoded.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

IMAGE_STATUSES = ("ok", "missing", "unreadable")

# Errors PIL raises on a corrupt, truncated or oversized picture (UnidentifiedImageError and
# "image file is truncated" are OSErrors; some broken headers raise ValueError or SyntaxError;
# Image.open raises DecompressionBombError above twice MAX_IMAGE_PIXELS).
IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def path_inside(root: str | os.PathLike, image: str) -> Path | None:
    """``root / image`` when it resolves (following links) to a place inside ``root``, else None."""
    root = Path(root).resolve()
    try:
        path = (root / image).resolve()  # an absolute ``image`` replaces ``root``: then it is outside
    except (OSError, RuntimeError):      # a loop of symbolic links: it leads nowhere inside
        return None
    return path if path.is_relative_to(root) else None


def read_picture(path: str | os.PathLike | None) -> tuple[str, Image.Image | None]:
    """``("ok", RGB picture)``, ``("missing", None)`` or ``("unreadable", None)``; never raises.

    The picture is fully decoded (``convert`` forces it), so a truncated file shows up here and not
    later inside an encoder. The size in the header is checked before decoding.
    """
    if path is None or not Path(path).is_file():
        return "missing", None
    limit = Image.MAX_IMAGE_PIXELS  # None when a user switched PIL's check off
    try:
        with warnings.catch_warnings():
            # between the limit and twice it PIL only warns; refused just below, so no need to print
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                if limit is not None and img.width * img.height > limit:
                    return "unreadable", None
                return "ok", img.convert("RGB")
    except IMAGE_READ_ERRORS:
        return "unreadable", None


def image_status(path: str | os.PathLike | None) -> str:
    """'ok', 'missing' or 'unreadable' (see ``read_picture``)."""
    return read_picture(path)[0]
