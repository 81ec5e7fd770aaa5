"""The feature cache and imputation of encode_dataset: hit, miss, invalidation, corruption, resume.

Oracles: features computed by calling the encoder directly on the same inputs, and a counter of
encoder calls (a cache hit must not run the encoder at all).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoder_fixtures import TINY, make_dataset, register_tiny_models, write_picture
from fedmm_lite.encoders import (PLACEHOLDER_TITLE, ClipConfig, ClipEncoder, encode_dataset,
                                 impute_missing_images)
from fedmm_lite.encoders.base import read_image
from fedmm_lite.errors import DatasetError

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    register_tiny_models(tmp_path_factory.mktemp("open_clip_configs"))
    return ClipEncoder(ClipConfig(model_name=TINY, pretrained=None, seed=0, batch_size=4)).load()


class Counting:
    """Wraps an encoder and counts the items it is asked to encode (or stops after a budget)."""

    def __init__(self, inner, stop_after_batches: int | None = None):
        self.inner, self.tag, self.pretrained = inner, inner.tag, inner.pretrained
        self.image_items = self.title_items = self.batches = 0
        self.stop_after_batches = stop_after_batches

    def describe(self):
        return self.inner.describe()

    def encode_images(self, images):
        if self.stop_after_batches is not None and self.batches >= self.stop_after_batches:
            raise KeyboardInterrupt  # what Ctrl-C in the middle of encoding looks like
        self.batches += 1
        self.image_items += len(images)
        return self.inner.encode_images(images)

    def encode_titles(self, titles):
        self.title_items += len(titles)
        return self.inner.encode_titles(titles)


def test_imputation_counts_and_values(tmp_path, tiny_clip):
    data = make_dataset(tmp_path, n=6, missing=(1,), unreadable=(4,), no_title=(2,))
    summary = encode_dataset(data, Counting(tiny_clip), device="cpu", batch_size=4, progress=False)
    assert (summary.images_missing, summary.images_unreadable, summary.images_imputed) == (1, 1, 2)
    assert summary.titles_missing == 1 and summary.items == 6 and not summary.cache_hit

    readable = [0, 2, 3, 5]
    direct = tiny_clip.encode_images([read_image(data.image_paths[i]) for i in readable])  # oracle
    image = data.features["image"]
    assert image.shape == (6, 32) and image.dtype == np.float32
    np.testing.assert_allclose(image[readable], direct, atol=1e-5)
    for i in (1, 4):  # missing and unreadable rows = the mean of the readable ones
        np.testing.assert_allclose(image[i], direct.mean(axis=0), atol=1e-5)
    placeholder = tiny_clip.encode_titles([PLACEHOLDER_TITLE])[0]
    np.testing.assert_allclose(data.features["text"][2], placeholder, atol=1e-5)
    assert not np.allclose(data.features["text"][0], placeholder, atol=1e-3)
    assert data.feature_encoder == tiny_clip.tag == f"clip-random-{TINY}"


def test_impute_without_any_picture_gives_zeros():
    image = np.ones((3, 4), dtype=np.float32)
    out = impute_missing_images(image, np.zeros(3, dtype=bool))
    np.testing.assert_array_equal(out, np.zeros((3, 4)))
    out = impute_missing_images(np.array([[1.0, 2.0], [3.0, 6.0], [0.0, 0.0]], np.float32),
                                np.array([True, True, False]))
    np.testing.assert_allclose(out[2], [2.0, 4.0])


def test_cache_hit_runs_no_encoder_and_meta_is_labelled(tmp_path, tiny_clip):
    data = make_dataset(tmp_path, n=5)
    first = Counting(tiny_clip)
    s1 = encode_dataset(data, first, device="cpu", batch_size=4, progress=False)
    assert first.image_items == 5 and first.title_items == 5 and not s1.cache_hit
    before = {m: f.copy() for m, f in data.features.items()}

    data.features = {}
    second = Counting(tiny_clip)
    s2 = encode_dataset(data, second, device="cpu", batch_size=4, progress=False)
    assert s2.cache_hit and s2.items_encoded == 0
    assert second.image_items == 0 and second.title_items == 0
    for m in before:
        np.testing.assert_array_equal(data.features[m], before[m])

    folder = tmp_path / "features" / f"clip-random-{TINY}"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["pretrained"] is False and meta["pretrained_by_modality"] == {"image": False, "text": False}
    assert meta["dims"] == {"image": 32, "text": 32} and meta["items"] == 5
    assert not (folder / "parts").exists()  # partial progress removed once complete


def test_changed_title_picture_or_encoder_reencodes(tmp_path, tiny_clip):
    data = make_dataset(tmp_path, n=5)
    encode_dataset(data, tiny_clip, device="cpu", progress=False)
    old = data.features["text"].copy()

    data.titles[0] = "a completely different title"
    again = Counting(tiny_clip)
    s = encode_dataset(data, again, device="cpu", progress=False)
    assert not s.cache_hit and s.cache_note == "dataset or encoder changed" and again.title_items == 5
    assert not np.allclose(data.features["text"][0], old[0], atol=1e-3)
    np.testing.assert_allclose(data.features["text"][1:], old[1:], atol=1e-5)

    old_image = data.features["image"].copy()
    write_picture(data.image_paths[3], (0, 0, 0), "disc")  # same path, new bytes
    s = encode_dataset(data, tiny_clip, device="cpu", progress=False)
    assert not s.cache_hit
    assert not np.allclose(data.features["image"][3], old_image[3], atol=1e-3)

    other_seed = ClipEncoder(ClipConfig(model_name=TINY, pretrained=None, seed=1))
    assert other_seed.tag == tiny_clip.tag  # same folder, different key
    s = encode_dataset(data, other_seed, device="cpu", progress=False)
    assert not s.cache_hit
    s = encode_dataset(data, Counting(other_seed), device="cpu", progress=False)
    assert s.cache_hit


@pytest.mark.parametrize("damage", ["truncate", "nan", "garbage_meta"])
def test_corrupt_cache_is_rebuilt(tmp_path, tiny_clip, damage):
    data = make_dataset(tmp_path, n=5)
    encode_dataset(data, tiny_clip, device="cpu", progress=False)
    good = {m: f.copy() for m, f in data.features.items()}
    folder = tmp_path / "features" / tiny_clip.tag
    if damage == "truncate":
        raw = (folder / "image.npy").read_bytes()
        (folder / "image.npy").write_bytes(raw[: len(raw) // 2])
    elif damage == "nan":
        text = np.load(folder / "text.npy")
        text[2, 3] = np.nan
        np.save(folder / "text.npy", text)
    else:
        (folder / "meta.json").write_text("{ not json")

    data.features = {}
    counter = Counting(tiny_clip)
    s = encode_dataset(data, counter, device="cpu", progress=False)
    assert not s.cache_hit and counter.image_items == 5
    for m in good:
        np.testing.assert_allclose(data.features[m], good[m], atol=1e-5)
    assert encode_dataset(data, Counting(tiny_clip), device="cpu", progress=False).cache_hit


def test_interrupted_encoding_resumes_from_saved_parts(tmp_path, tiny_clip):
    data = make_dataset(tmp_path, n=7, missing=(5,))
    reference = make_dataset(tmp_path / "reference", n=7, missing=(5,))
    encode_dataset(reference, tiny_clip, device="cpu", batch_size=2, progress=False, cache=False)

    stopping = Counting(tiny_clip, stop_after_batches=2)  # blocks of 2 items: blocks 0 and 1 finish
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(data, stopping, device="cpu", batch_size=2, part_size=2, progress=False)
    parts = sorted((tmp_path / "features" / tiny_clip.tag / "parts").glob("*/part-*.npz"))
    assert [p.name for p in parts] == ["part-00000.npz", "part-00001.npz"]

    parts[1].write_bytes(parts[1].read_bytes()[:40])  # a damaged part is encoded again
    resumed = Counting(tiny_clip)
    s = encode_dataset(data, resumed, device="cpu", batch_size=2, part_size=2, progress=False)
    assert s.items_encoded == 5 and resumed.title_items == 5  # blocks 1, 2, 3 (2 + 2 + 1 items)
    assert s.images_missing == 1
    for m in ("image", "text"):
        np.testing.assert_allclose(data.features[m], reference.features[m], atol=1e-5)


def test_dataset_without_folder_is_encoded_in_memory(tmp_path, tiny_clip):
    data = make_dataset(tmp_path, n=3)
    data.root = None
    s = encode_dataset(data, tiny_clip, device="cpu", progress=False)
    assert s.cache_path is None and s.items_encoded == 3 and data.features["image"].shape == (3, 32)
    assert not (tmp_path / "features").exists()


# ------------------------------------------------------------- the cache's own files, edited
@pytest.mark.parametrize("inside", ["features", "features/TAG"])
def test_a_file_where_the_cache_folder_goes_is_one_clear_error(tmp_path, tiny_clip, inside):
    data = make_dataset(tmp_path, n=3)
    blocker = tmp_path / inside.replace("TAG", tiny_clip.tag)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file, not a folder")
    with pytest.raises(DatasetError) as err:
        encode_dataset(data, tiny_clip, device="cpu", progress=False)
    assert str(err.value) == (f"{blocker}: a file where the feature cache needs a folder "
                              f"(<dataset>/features/<encoder>/); move or delete it")


def _edit_meta(folder, edit):
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(edit(meta)))


META_EDITS = {
    "counts_missing": lambda m: {k: v for k, v in m.items() if k != "counts"},
    "counts_a_list": lambda m: {**m, "counts": [1, 2, 3]},
    "count_a_string": lambda m: {**m, "counts": {**m["counts"], "images_missing": "one"}},
    "dims_a_list": lambda m: {**m, "dims": [32, 32]},
    "key_hash_missing": lambda m: {k: v for k, v in m.items() if k != "key_hash"},
    "checksum_missing": lambda m: {k: v for k, v in m.items() if k != "sha256"},
    "seconds_a_string": lambda m: {**m, "seconds_to_encode": "fast"},
    "a_list": lambda m: [m],
}


@pytest.mark.parametrize("edit", sorted(META_EDITS) + ["not_json"])
def test_edited_meta_json_is_rebuilt_and_said_so(tmp_path, tiny_clip, capsys, edit):
    data = make_dataset(tmp_path, n=5)
    encode_dataset(data, tiny_clip, device="cpu", progress=False)
    folder = tmp_path / "features" / tiny_clip.tag
    if edit == "not_json":
        (folder / "meta.json").write_bytes(b"\xff{ not json")
    else:
        _edit_meta(folder, META_EDITS[edit])
    capsys.readouterr()

    counter = Counting(tiny_clip)
    s = encode_dataset(data, counter, device="cpu", progress=False)
    assert not s.cache_hit and counter.image_items == 5 and s.images_missing == 0
    err = capsys.readouterr().err
    assert err.startswith(f"feature cache {folder}: meta.json ") and err.endswith("; rebuilding it\n")
    assert err.count("\n") == 1
    assert encode_dataset(data, Counting(tiny_clip), device="cpu", progress=False).cache_hit


def test_changed_feature_values_of_the_same_shape_are_caught(tmp_path, tiny_clip, capsys):
    data = make_dataset(tmp_path, n=5)
    encode_dataset(data, tiny_clip, device="cpu", progress=False)
    good = data.features["text"].copy()
    folder = tmp_path / "features" / tiny_clip.tag
    edited = np.load(folder / "text.npy")
    edited[1, 0] += 0.5  # finite, same shape and dtype: only the checksum can tell
    np.save(folder / "text.npy", edited)
    capsys.readouterr()

    data.features = {}
    counter = Counting(tiny_clip)
    s = encode_dataset(data, counter, device="cpu", progress=False)
    assert not s.cache_hit and counter.title_items == 5
    np.testing.assert_allclose(data.features["text"], good, atol=1e-5)
    assert capsys.readouterr().err == (f"feature cache {folder}: text.npy does not match its sha256 in "
                                       f"meta.json; rebuilding it\n")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["sha256"]["text"] == hashlib.sha256(np.load(folder / "text.npy").tobytes()).hexdigest()


# -------------------------------------------------------------- a dataset folder read-only
def _as_reader(command: list[str]) -> list[str]:
    """``command`` run so that a folder without write permission is really read-only for it: root
    ignores permissions, so as root the process runs without CAP_DAC_OVERRIDE."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only for a process")
    return ["setpriv", "--bounding-set=-dac_override", *command]


def _cli_in_process(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """``python -m fedmm_lite ARGS`` in a fresh process that knows the tiny CLIP architecture."""
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
              f"from encoder_fixtures import register_tiny_models\n"
              f"register_tiny_models({str(tmp_path)!r})\n"
              f"from fedmm_lite.cli import main\n"
              f"sys.exit(main({list(args)!r}))\n")
    env = dict(os.environ, FEDMM_DATA_DIR=str(tmp_path / "home"),
               PYTHONPATH=str(TESTS.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(_as_reader([sys.executable, "-c", script]), env=env, capture_output=True,
                          text=True, timeout=300)


def _make_read_only(folder):
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def test_read_only_dataset_caches_under_the_data_home(tmp_path, tiny_folder):
    import shutil as sh

    other = sh.copytree(tiny_folder, tmp_path / "elsewhere" / "tiny")  # same name, other dataset
    _make_read_only(tiny_folder)
    _make_read_only(other)
    tag = f"clip-random-{TINY}"
    try:
        first = _cli_in_process(tmp_path, "encode", "--data", str(tiny_folder), "--encoder",
                                f"clip-random:{TINY}", "--device", "cpu")
        assert first.returncode == 0, first.stderr[-3000:]
        summary = json.loads(first.stdout)
        cache = Path(summary["cache_path"])
        assert cache.is_relative_to(tmp_path / "home") and cache.name == tag
        assert not (tiny_folder / "features").exists() and not summary["cache_hit"]
        assert (f"feature cache: {tiny_folder / 'features' / tag} is not writable (Permission denied); "
                f"using {cache}\n") in first.stderr

        again = _cli_in_process(tmp_path, "encode", "--data", str(tiny_folder), "--encoder",
                                f"clip-random:{TINY}", "--device", "cpu")
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout)["cache_hit"] and f"using {cache}" in again.stderr

        second = _cli_in_process(tmp_path, "encode", "--data", str(other), "--encoder",
                                 f"clip-random:{TINY}", "--device", "cpu")
        assert second.returncode == 0, second.stderr[-3000:]
        other_cache = Path(json.loads(second.stdout)["cache_path"])
        assert other_cache != cache and other_cache.is_relative_to(tmp_path / "home")

        fedmr = _cli_in_process(tmp_path, "run", "--data", str(tiny_folder), "--method", "fedmr",
                                "--rounds", "0", "--encoder", f"clip-random:{TINY}", "--device", "cpu")
        assert fedmr.returncode == 0, fedmr.stderr[-3000:]
    finally:
        for folder in (tiny_folder, other):
            for path in [folder, *folder.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
