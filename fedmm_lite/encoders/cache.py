"""The feature cache: <dataset root>/features/<encoder tag>/{image.npy, text.npy, meta.json}.

Keyed, never trusted blindly. meta.json records a key made of
- the dataset's fingerprint: item ids in order, titles, and for each picture its path relative to
  the dataset folder and a hash of its bytes (content hashes, not sizes and mtimes: a copied, cloned
  or unzipped folder keeps its cache, and an edited picture of the same size and timestamp still
  invalidates it; hashing cost about 1.4 ms per picture here, 5 s for the 3,872 MovieLens
  posters, against about 100 ms to encode one picture with ViT-B-32 on CPU), and
- the encoder's identity (``describe()``: model, weights or seed, image size, library version),
so a changed dataset or encoder re-encodes instead of returning stale features.

A cache is used only when meta.json is well-formed and matches the key, and both matrices load with
the recorded shape, dtype float32, finite values and the recorded sha256 of their bytes; anything
else (edited or truncated file, NaN, wrong shape, a meta.json with missing or mistyped fields) is
rebuilt.

Where: <dataset root>/features/<tag>/. A dataset folder that cannot be written (read-only) keeps its
cache under ``data_home()/feature-cache/<folder name>-<hash of the folder's path>/<tag>/`` instead
(``fallback_folder``), so that two datasets never share one.

Resumable: while encoding, each block of items is saved as parts/<key>/part-NNNNN.npz (written to a
temporary name and renamed, so a part is either whole or absent); an interrupted run picks up the
parts that load and are well-formed. The final files are written the same way, meta.json last.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..config import data_home
from ..data.images import IMAGE_STATUSES
from ..errors import DatasetError

FORMAT_VERSION = 2  # 2: parts hold each picture's status; meta.json holds the arrays' sha256
MODALITIES = ("image", "text")
COUNTS = ("images_missing", "images_unreadable", "titles_missing")
# meta.json fields a cache hit reads (here, in pipeline.py and viz_features.py), and their types
META_FIELDS = {"key_hash": str, "dims": dict, "counts": dict, "sha256": dict,
               "seconds_to_encode": (int, float), "device": str}
# errors that mean "this folder cannot be written", as opposed to a bug or a full disk
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def file_hash(path: str | os.PathLike) -> str:
    """blake2b (16 bytes) of a file's content, read in 1 MiB blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_fingerprint(dataset) -> str:
    """Hash of what the features depend on: item ids, titles, picture paths and bytes."""
    h = hashlib.blake2b(digest_size=16)
    root = Path(dataset.root).resolve() if dataset.root is not None else None
    h.update(f"{dataset.n_items}\n".encode())
    for item_id, title, path in zip(dataset.item_ids, dataset.titles, dataset.image_paths):
        if path is None:
            picture = "-"
        else:
            path = Path(path).resolve()
            rel = path.relative_to(root) if root is not None and path.is_relative_to(root) else path
            try:
                picture = f"{rel.as_posix()}:{file_hash(path)}"
            except OSError:  # vanished since loading: encoding will count it as unreadable
                picture = f"{rel.as_posix()}:unreadable"
        h.update(f"{item_id}\t{title}\t{picture}\n".encode())
    return h.hexdigest()


def key_hash(key: dict) -> str:
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=16).hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (the checksum meta.json records for each matrix)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def check_cache_folders(root: str | os.PathLike, tag: str) -> None:
    """``DatasetError`` when <root>/features or <root>/features/<tag> exists but is not a folder."""
    for path in (Path(root) / "features", Path(root) / "features" / tag):
        if os.path.lexists(path) and not path.is_dir():
            raise DatasetError(f"{path}: a file where the feature cache needs a folder "
                               f"(<dataset>/features/<encoder>/); move or delete it")


def fallback_folder(root: str | os.PathLike, tag: str) -> Path:
    """The cache folder of a read-only dataset: under ``data_home()``, keyed by the folder's path."""
    root = Path(root).resolve()
    digest = hashlib.blake2b(str(root).encode(), digest_size=8).hexdigest()
    return data_home() / "feature-cache" / f"{root.name}-{digest}" / tag


def _is_count(value) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass: excluded


def _meta_problem(meta) -> str | None:
    """What is wrong with a parsed meta.json whose key matches, or None when a hit can use it."""
    for name, kind in META_FIELDS.items():
        if name not in meta:
            return f"no '{name}'"
        if not isinstance(meta[name], kind) or isinstance(meta[name], bool):
            return f"'{name}' has the wrong type"
    for modality in MODALITIES:
        if not _is_count(meta["dims"].get(modality)):
            return f"dims['{modality}'] is not a width"
        if not isinstance(meta["sha256"].get(modality), str):
            return f"sha256['{modality}'] is not a checksum"
    for name in COUNTS:
        if not _is_count(meta["counts"].get(name)):
            return f"counts['{name}'] is not a count"
    return None


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _well_formed(array, rows: int, cols: int | None = None) -> bool:
    return (isinstance(array, np.ndarray) and array.dtype == np.float32 and array.ndim == 2
            and array.shape[0] == rows and (cols is None or array.shape[1] == cols)
            and bool(np.isfinite(array).all()))


class FeatureCache:
    """One encoder's cache folder for one dataset, with its key (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, key: dict):
        self.folder = Path(folder)
        self.key = {"format": FORMAT_VERSION, **key}
        self.key_hash = key_hash(self.key)
        self.parts_dir = self.folder / "parts" / self.key_hash

    # ------------------------------------------------------------------ the finished cache
    def load(self, n_items: int) -> tuple[dict | None, dict | None, str]:
        """``(features, meta, "hit")`` when valid, else ``(None, None, reason)``."""
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            return None, None, "no cache yet"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None, "meta.json unreadable (not JSON)"
        if not isinstance(meta, dict) or not isinstance(meta.get("key_hash"), str):
            return None, None, "meta.json malformed (no key_hash)"
        if meta["key_hash"] != self.key_hash:
            return None, None, "dataset or encoder changed"
        problem = _meta_problem(meta)
        if problem is not None:
            return None, None, f"meta.json malformed ({problem})"
        features = {}
        for modality in MODALITIES:
            try:
                array = np.load(self.folder / f"{modality}.npy", allow_pickle=False)
            except (OSError, ValueError, EOFError):
                return None, None, f"{modality}.npy unreadable or truncated"
            if not _well_formed(array, n_items, meta["dims"][modality]):
                return None, None, f"{modality}.npy has a wrong shape, dtype or non-finite values"
            if array_sha256(array) != meta["sha256"][modality]:
                return None, None, f"{modality}.npy does not match its sha256 in meta.json"
            features[modality] = array
        return features, meta, "hit"

    def write_problem(self) -> str | None:
        """None when files can be written into the cache folder (created if needed), else why not."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder):
                pass
        except OSError as err:
            if err.errno in NOT_WRITABLE:
                return err.strerror
            raise
        return None

    def save(self, features: dict, meta: dict) -> None:
        """Write image.npy and text.npy, then meta.json (the commit mark), then drop the parts."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "meta.json").unlink(missing_ok=True)  # invalid until the new one lands
        for modality in MODALITIES:
            _atomic_write(self.folder / f"{modality}.npy", lambda f, a=features[modality]: np.save(f, a))
        meta = {**meta, "key": self.key, "key_hash": self.key_hash,
                "sha256": {m: array_sha256(features[m]) for m in MODALITIES}}
        _atomic_write(self.folder / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
        shutil.rmtree(self.folder / "parts", ignore_errors=True)

    # ------------------------------------------------------------- partial progress (parts)
    def drop_stale_parts(self) -> None:
        """Remove parts left by an interrupted run with another key (other data or encoder)."""
        parts = self.folder / "parts"
        if parts.is_dir():
            for child in parts.iterdir():
                if child.name != self.key_hash:
                    shutil.rmtree(child, ignore_errors=True)

    def part_path(self, block: int) -> Path:
        return self.parts_dir / f"part-{block:05d}.npz"

    def load_part(self, block: int, rows: int) -> dict | None:
        """A saved block ``{"image", "text", "image_status"}`` with ``rows`` rows, or None (absent or bad)."""
        path = self.part_path(block)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                part = {name: npz[name] for name in ("image", "text", "image_status")}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            return None
        status = part["image_status"]  # (rows,) codes into data.images.IMAGE_STATUSES
        if not (status.dtype == np.int8 and status.shape == (rows,) and bool((status >= 0).all())
                and bool((status < len(IMAGE_STATUSES)).all())
                and _well_formed(part["image"], rows) and _well_formed(part["text"], rows)):
            return None
        return part

    def save_part(self, block: int, part: dict) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.part_path(block), lambda f: np.savez(f, **part))
