"""Shared test fixtures: an isolated data home and small dataset folders written on the fly.

- Every test session gets its own ``FEDMM_DATA_DIR`` (a temporary folder, removed at the end), set
  before any test module is imported, so tests and the subprocesses they start never write to
  ``~/.cache/fedmm_lite``.
- ``tiny_folder``: a small valid dataset folder with real PNG images (see its docstring).
- ``make_folder``: write any dataset folder from rows, including broken ones.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image

_DATA_HOME: str | None = None


def pytest_configure(config):
    global _DATA_HOME
    _DATA_HOME = tempfile.mkdtemp(prefix="fedmm_test_data_")
    os.environ["FEDMM_DATA_DIR"] = _DATA_HOME


def pytest_unconfigure(config):
    if _DATA_HOME:
        shutil.rmtree(_DATA_HOME, ignore_errors=True)


def write_png(path: Path, color: tuple[int, int, int], size: int = 8) -> None:
    """A real (tiny) PNG of one colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")


def write_folder(root: Path, interactions, items, images: dict | None = None) -> Path:
    """Write a dataset folder.

    ``interactions``: rows (user_id, item_id, timestamp) or None to omit the file; ``items``: rows
    (item_id, title, image) or None; a row may be a dict to write other columns (the header is then
    the dict's keys). ``images``: {relative path: (r, g, b) colour -> a real PNG | bytes -> written
    as is (e.g. garbage)}.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, rows, header in (("interactions.csv", interactions, ("user_id", "item_id", "timestamp")),
                               ("items.csv", items, ("item_id", "title", "image"))):
        if rows is None:
            continue
        rows = list(rows)
        if rows and isinstance(rows[0], dict):
            header, rows = tuple(rows[0]), [tuple(r.values()) for r in rows]
        with open(root / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    for rel, content in (images or {}).items():
        path = root / rel
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            write_png(path, content)
    return root


@pytest.fixture
def make_folder(tmp_path):
    """Factory: ``make_folder(interactions, items, images=None, name="data") -> Path``."""

    def make(interactions, items, images=None, name="data"):
        return write_folder(tmp_path / name, interactions, items, images)

    return make


TINY_USERS = 12
TINY_ITEMS = 20
TINY_PER_USER = 6


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A small valid dataset folder: 12 users (``u00``..``u11``), 20 items (``i00``..``i19``), 72
    interactions, every user with 6 distinct items (4 train, 1 valid, 1 test), every item with at
    least one interaction, a title and a real 8x8 PNG under ``images/``. Nothing is dropped when it
    is loaded with the defaults, so item index k is ``i{k:02d}`` and user index u is ``u{u:02d}``.

    User u interacts with items (3u + j) % 20, j = 0..5, at timestamps 1000 + 100u + j (increasing
    in j), so its test item is (3u + 5) % 20 and its validation item (3u + 4) % 20.
    """
    colors = ["red", "green", "blue", "yellow"]
    shapes = ["circle", "square", "star", "heart", "moon"]
    rgb = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 220, 30)}
    items, images = [], {}
    for i in range(TINY_ITEMS):
        color, shape = colors[i % 4], shapes[i % 5]
        items.append((f"i{i:02d}", f"{color} {shape} number {i}", f"images/i{i:02d}.png"))
        images[f"images/i{i:02d}.png"] = tuple(min(255, c + 1 * i) for c in rgb[color])
    interactions = [(f"u{u:02d}", f"i{(3 * u + j) % TINY_ITEMS:02d}", 1000 + 100 * u + j)
                    for u in range(TINY_USERS) for j in range(TINY_PER_USER)]
    return write_folder(tmp_path / "tiny", interactions, items, images)


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny tensors: thread start-up costs more than it saves on a 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
