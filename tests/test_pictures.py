"""Item pictures: one classification (ok / missing / unreadable) for ``info``, ``encode`` and ``run``;
decompression bombs and undecodable files count as unreadable, never as a traceback.

Oracles: pictures written byte by byte (tests/bad_images.py) whose status is known by construction.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bad_images import bomb_png, undecodable_png
from encoder_fixtures import TINY, register_tiny_models
from fedmm_lite.data import build_dataset, read_folder
from fedmm_lite.data.images import image_status, read_picture

REPO = Path(__file__).resolve().parents[1]

# item -> (image field, content): None = no file written
PICTURES = {
    "ok": ("images/ok.png", (200, 30, 30)),
    "ok2": ("images/ok2.png", (30, 30, 200)),
    "none": ("", None),
    "gone": ("images/gone.png", None),
    "garbage": ("images/garbage.png", b"not a picture at all"),
    "undecodable": ("images/undecodable.png", undecodable_png()),  # Image.verify accepts it
    "bomb": ("images/bomb.png", bomb_png()),                       # claims 20000 x 20000 pixels
    "big": ("images/big.png", bomb_png(12000, 12000)),             # above the limit: PIL only warns
}
EXPECTED = {"ok": "ok", "ok2": "ok", "none": "missing", "gone": "missing", "garbage": "unreadable",
            "undecodable": "unreadable", "bomb": "unreadable", "big": "unreadable"}


def _picture_folder(make_folder, only=None):
    names = [n for n in PICTURES if only is None or n in only or n.startswith("ok")]
    items = [(n, f"title of {n}", PICTURES[n][0]) for n in names]
    images = {PICTURES[n][0]: PICTURES[n][1] for n in names if PICTURES[n][1] is not None}
    # 3 users x every item: nothing is filtered out
    interactions = [(f"u{u}", n, 10 * u + k) for u in range(3) for k, n in enumerate(names)]
    return make_folder(interactions, items, images, name="pictures")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fedmm_lite", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_each_kind_of_picture_gets_its_status(make_folder):
    root = _picture_folder(make_folder)
    for name, (image, _) in PICTURES.items():
        path = root / image if image else None
        assert image_status(path) == EXPECTED[name], name
    status, picture = read_picture(root / "images/ok.png")
    assert status == "ok" and picture.mode == "RGB" and picture.getpixel((0, 0)) == (200, 30, 30)


def test_loading_counts_bombs_and_undecodable_files_as_unreadable(make_folder):
    dataset = build_dataset(read_folder(_picture_folder(make_folder)))
    assert dataset.report.missing_images == ["gone", "none"]
    assert dataset.report.unreadable_images == ["big", "bomb", "garbage", "undecodable"]
    assert [p is not None for p in dataset.image_paths] == [i.startswith("ok") for i in dataset.item_ids]


def test_info_and_run_treat_a_bomb_as_an_unreadable_picture(make_folder):
    root = _picture_folder(make_folder, only=("bomb",))
    info = _cli("info", "--data", str(root))
    assert info.returncode == 0, info.stderr[-2000:]
    report = json.loads(info.stdout)["report"]
    assert (report["missing_images"], report["unreadable_images"]) == (0, 1)
    run = _cli("run", "--data", str(root), "--rounds", "0", "--device", "cpu")
    assert run.returncode == 0, run.stderr[-2000:]


def test_info_and_encode_classify_every_picture_alike(make_folder, tmp_path, capsys):
    """The same folder through ``info`` (subprocess) and ``encode`` (in process, tiny CLIP)."""
    from fedmm_lite.cli import main

    register_tiny_models(tmp_path)
    root = _picture_folder(make_folder)
    info = _cli("info", "--data", str(root))
    assert info.returncode == 0, info.stderr[-2000:]
    report = json.loads(info.stdout)["report"]
    assert main(["encode", "--data", str(root), "--encoder", f"clip-random:{TINY}", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (report["missing_images"], report["unreadable_images"]) == (2, 4)
    assert (summary["images_missing"], summary["images_unreadable"]) == (2, 4)
    assert summary["images_imputed"] == 6
