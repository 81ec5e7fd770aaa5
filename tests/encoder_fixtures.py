"""Shared helpers of test_encoders.py and test_feature_cache.py: a tiny CLIP and tiny datasets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fedmm_lite.data.dataset import Dataset

# A very small open_clip architecture (same code path as ViT-B-32, ~3M parameters, 32x32 pictures).
TINY = "fedmm-test-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_OTHER = "fedmm-test-tiny-wide"  # same layout, other widths: a checkpoint of TINY does not fit
TINY_OTHER_CONFIG = {**TINY_CONFIG, "embed_dim": 48}

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 40), (200, 40, 200), (40, 210, 210),
           (120, 120, 120), (250, 140, 0)]


def register_tiny_models(folder: Path) -> None:
    """Make TINY and TINY_OTHER known to open_clip (its registry is process-wide)."""
    import open_clip

    for name, config in ((TINY, TINY_CONFIG), (TINY_OTHER, TINY_OTHER_CONFIG)):
        if open_clip.get_model_config(name) is None:
            path = Path(folder) / f"{name}.json"
            path.write_text(json.dumps(config))
            open_clip.add_model_config(path)


def write_picture(path: Path, colour, shape: str = "square") -> Path:
    img = Image.new("RGB", (32, 32), (255, 255, 255))
    px = img.load()
    for x in range(32):
        for y in range(32):
            inside = (8 <= x < 24 and 8 <= y < 24) if shape == "square" else ((x - 16) ** 2 + (y - 16) ** 2 < 90)
            if inside:
                px[x, y] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_dataset(root: Path, n: int = 6, missing=(), unreadable=(), no_title=()) -> Dataset:
    """n items with coloured pictures under root/images; chosen items lack a picture or a title.

    ``missing``: image path None; ``unreadable``: a file of garbage bytes; ``no_title``: "".
    Three users with a trivial leave-one-out split (the encoders only read the item side).
    """
    root = Path(root)
    paths, titles = [], []
    for i in range(n):
        path = root / "images" / f"item{i}.png"
        if i in unreadable:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"this is not a png" * 10)
        elif i not in missing:
            write_picture(path, COLOURS[i % len(COLOURS)], "square" if i % 2 else "disc")
        paths.append(None if i in missing else path)
        titles.append("" if i in no_title else f"item number {i} in colour {COLOURS[i % len(COLOURS)]}")
    users = 3
    train = [np.array([0, 1]), np.array([2, 3]), np.array([1, 4])]
    return Dataset(
        name="tiny", user_ids=np.array([f"u{u}" for u in range(users)]),
        item_ids=np.array([f"i{i}" for i in range(n)]), titles=titles, image_paths=paths,
        train_indptr=np.cumsum([0] + [len(t) for t in train]).astype(np.int64),
        train_indices=np.concatenate(train).astype(np.int64),
        valid_items=np.array([2, 0, 5 % n], dtype=np.int64), test_items=np.array([3, 4, 0], dtype=np.int64),
        root=root)
