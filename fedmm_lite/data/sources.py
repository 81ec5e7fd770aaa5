"""Where a dataset comes from: a preset name or a dataset folder -> a ``Dataset``.

Presets:
- ``world-quick`` / ``world-full`` / ``world-large``: the synthetic shop (``data/world.py``),
  generated from the seed on first use into ``data_home()``; its planted ground truth is attached
  as ``dataset.ground_truth``, aligned to the dataset's user and item indices.
- ``world``: ``world-quick`` in quick mode (``FEDMM_QUICK=1``), ``world-full`` otherwise.
- ``movielens-posters``: real posters, titles and ratings from ``../shared/data/movielens_posters``
  (or ``$FEDMM_MOVIELENS_POSTERS``), converted once into ``data_home()/movielens-posters/`` by the
  converter registered under the preset's name (``converters.py``), 5-core.
- ``ml-100k``: MovieLens-100K (943 users, 1,682 items, every rating an interaction, no k-core), the
  ID-only dataset of the PFedRec and FedRAP papers, from ``$FEDMM_ML100K`` or
  ``../shared/data/ml-100k``; when neither exists its converter downloads the public GroupLens
  archive into ``data_home()/raw-ml-100k/``. Converted once into ``data_home()/ml-100k/``.
Anything else must be an existing dataset folder (the folder name becomes the dataset's name).
A preset name wins over a folder of the same name in the working directory; write ``./world``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import data_home, quick_mode
from ..errors import DatasetError
from .converters import converter_for
from .dataset import Dataset
from .folder import read_folder
from .split import build_dataset

PRESETS = {
    "world": "synthetic shop with planted groups: world-quick in quick mode, else world-full",
    "world-quick": "synthetic shop, small (tests, laptops)",
    "world-full": "synthetic shop, the book's default size",
    "world-large": "synthetic shop at Office_Products scale (benchmarks)",
    "movielens-posters": "real MovieLens posters, titles and ratings (ml-latest-small), 5-core",
    "ml-100k": "MovieLens-100K ratings (GroupLens), every rating, no images: the PFedRec/FedRAP data",
}

MOVIELENS_ENV = "FEDMM_MOVIELENS_POSTERS"
MOVIELENS_K_CORE = 5
ML100K_ENV = "FEDMM_ML100K"


@dataclass(frozen=True)
class ConvertedPreset:
    """A preset built by a registered converter from a raw folder (``converters.py``)."""

    env: str                   # environment variable naming the raw folder
    shared: str                # the raw folder's name under ../shared/data
    k_core: int                # default k-core of the loaded dataset
    expects: str               # what the raw folder holds (for the error message)
    downloads: bool = False    # without a raw folder, the converter downloads into data_home()


CONVERTED = {
    "movielens-posters": ConvertedPreset(MOVIELENS_ENV, "movielens_posters", MOVIELENS_K_CORE,
                                         "MovieImages/, MovieData/movies.dat and "
                                         "ml-latest-small/ratings.csv"),
    "ml-100k": ConvertedPreset(ML100K_ENV, "ml-100k", 0, "ratings.dat, u.data or ml-100k.zip",
                               downloads=True),
}


def _align_ground_truth(truth: dict, dataset: Dataset, source: Path) -> dict:
    """Turn the id-keyed ``ground_truth.json`` into arrays indexed like ``dataset``."""
    where = source / "ground_truth.json"
    aligned = dict(truth)  # keys we do not know pass through unchanged
    groups = truth.get("user_group", {})
    missing = [u for u in dataset.user_ids if u not in groups]
    if missing:
        raise DatasetError(f"{where}: user_group has no entry for user '{missing[0]}' "
                           f"({len(missing)} users missing)")
    aligned["user_group"] = np.array([int(groups[u]) for u in dataset.user_ids], dtype=np.int64)  # (U,)
    attributes = {}
    for attr, values in truth.get("item_attributes", {}).items():
        missing = [i for i in dataset.item_ids if i not in values]
        if missing:
            raise DatasetError(f"{where}: item_attributes['{attr}'] has no entry for item "
                               f"'{missing[0]}' ({len(missing)} items missing)")
        attributes[attr] = np.array([int(values[i]) for i in dataset.item_ids], dtype=np.int64)  # (n,)
    aligned["item_attributes"] = attributes
    for key in ("group_names", "group_modality", "attribute_modality", "attribute_values"):
        if key in truth:
            aligned[key] = truth[key]
    return aligned


def _build(folder: Path, min_user_interactions: int | None, k_core: int | None, default_k_core: int,
           name: str, ties: str | None = None, cold: tuple = (0.0, 0)) -> Dataset:
    """read_folder + build_dataset with the source's defaults for the options left as None;
    ``ties`` the split's tie rule, ``cold`` (fraction, seed) of the cold-item split."""
    return build_dataset(read_folder(folder),
                         min_user_interactions=3 if min_user_interactions is None else min_user_interactions,
                         k_core=default_k_core if k_core is None else k_core, name=name,
                         ties=ties or "item", cold_fraction=cold[0], cold_seed=cold[1])


def _load_world(preset: str, seed: int, min_user_interactions: int | None,
                k_core: int | None, ties: str | None, cold: tuple = (0.0, 0)) -> Dataset:
    from .world import ensure_world, load_ground_truth

    folder = Path(ensure_world(preset, seed=seed))
    dataset = _build(folder, min_user_interactions, k_core, 0, f"world-{preset}", ties, cold)
    dataset.ground_truth = _align_ground_truth(load_ground_truth(folder), dataset, folder)
    return dataset


def raw_dir(preset: str) -> Path | None:
    """The raw folder of a converted preset: its environment variable (``CONVERTED``), else
    ``../shared/data/<name>`` next to the repository or to the working directory; None when absent."""
    spec = CONVERTED[preset]
    if os.environ.get(spec.env):
        path = Path(os.environ[spec.env]).expanduser()
        return path if path.is_dir() else None
    repo_root = Path(__file__).resolve().parents[2]
    for base in (repo_root, Path.cwd()):
        path = base / ".." / "shared" / "data" / spec.shared
        if path.is_dir():
            return path.resolve()
    return None


def movielens_raw_dir() -> Path | None:
    """The raw MovieLens posters folder (``raw_dir("movielens-posters")``)."""
    return raw_dir("movielens-posters")


def _converted_folder(preset: str) -> Path:
    """Convert a preset's raw data once into ``data_home()/<preset>`` and return the folder.

    The conversion writes into a temporary folder that is renamed when complete, so an interrupted
    conversion is never mistaken for a finished one.
    """
    spec = CONVERTED[preset]
    final = data_home() / preset
    if final.is_dir():
        return _dataset_folder_in(final)
    raw = raw_dir(preset)
    if raw is None and spec.downloads and not os.environ.get(spec.env):
        raw = data_home() / f"raw-{preset}"      # the converter downloads the public archive here
        raw.mkdir(parents=True, exist_ok=True)
    if raw is None:
        hint = (f"${spec.env}={os.environ[spec.env]} is not a folder" if os.environ.get(spec.env)
                else f"no ../shared/data/{spec.shared} found")
        raise DatasetError(f"{preset}: raw data not found ({hint}); put the folder with "
                           f"{spec.expects} there or set {spec.env} to it")
    convert = converter_for(preset)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # the converter reports what it kept on stdout; stdout belongs to results (info's JSON)
        with contextlib.redirect_stdout(sys.stderr):
            convert(raw, tmp)
    except BaseException:  # interrupted or failed: leave nothing that looks converted
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():  # another process may have finished first: then use its copy
            raise
    return _dataset_folder_in(final)


def _dataset_folder_in(folder: Path) -> Path:
    """``folder`` itself when it holds items.csv, else its one sub-folder that does."""
    if (folder / "items.csv").is_file():
        return folder
    inner = sorted(p.parent for p in folder.glob("*/items.csv"))
    return inner[0] if len(inner) == 1 else folder  # read_folder names what is missing


def load_dataset(source: str | os.PathLike, *, seed: int = 0, min_user_interactions: int | None = None,
                 k_core: int | None = None, ties: str | None = None,
                 cold_fraction: float = 0.0) -> Dataset:
    """Load a preset (``PRESETS``) or a dataset folder as a leave-one-out ``Dataset``.

    ``min_user_interactions`` and ``k_core`` default to 3 and 0 (world, folders, ``ml-100k``) or to
    the 5-core of ``movielens-posters``. ``seed`` selects the generated world; it does not affect
    other sources. ``ties`` breaks equal timestamps in the split (``split.build_dataset``): "item"
    (None, the default) or "file", the PFedRec/FedRAP codes' rule.
    ``cold_fraction`` > 0 holds that fraction of the items out of training entirely (the cold-item
    split, ``split.build_dataset``; which items: drawn with ``seed``).
    """
    name = os.fspath(source)
    cold = (float(cold_fraction), int(seed))
    if name == "world":
        name = "world-quick" if quick_mode() else "world-full"
    if name in PRESETS and name.startswith("world-"):
        return _load_world(name[len("world-"):], seed, min_user_interactions, k_core, ties, cold)
    if name in CONVERTED:
        return _build(_converted_folder(name), min_user_interactions, k_core, CONVERTED[name].k_core,
                      name, ties, cold)
    path = Path(name).expanduser()
    if path.is_dir():
        return _build(path, min_user_interactions, k_core, 0, path.resolve().name, ties, cold)
    if path.exists():
        raise DatasetError(f"{path}: not a folder (a dataset folder holds interactions.csv and items.csv)")
    raise DatasetError(f"unknown dataset '{name}': not a preset ({', '.join(PRESETS)}) and not an "
                       f"existing folder")
