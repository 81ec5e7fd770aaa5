"""Where a dataset comes from: a preset name or a dataset folder -> a ``Dataset``.

Presets:
- ``world-quick`` / ``world-full`` / ``world-large``: the synthetic shop (``data/world.py``),
  generated from the seed on first use into ``data_home()``; its planted ground truth is attached
  as ``dataset.ground_truth``, aligned to the dataset's user and item indices.
- ``world``: ``world-quick`` in quick mode (``FEDMM_QUICK=1``), ``world-full`` otherwise.
- ``movielens-posters``: real posters, titles and ratings from ``../shared/data/movielens_posters``
  (or ``$FEDMM_MOVIELENS_POSTERS``), converted once into ``data_home()/movielens-posters/`` by the
  converter registered under the preset's name (``converters.py``), 5-core.
Anything else must be an existing dataset folder (the folder name becomes the dataset's name).
A preset name wins over a folder of the same name in the working directory; write ``./world``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
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
}

MOVIELENS_ENV = "FEDMM_MOVIELENS_POSTERS"
MOVIELENS_K_CORE = 5


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
           name: str, cold: tuple = (0.0, 0)) -> Dataset:
    """read_folder + build_dataset with the source's defaults for the options left as None;
    ``cold`` (fraction, seed) of the cold-item split."""
    return build_dataset(read_folder(folder),
                         min_user_interactions=3 if min_user_interactions is None else min_user_interactions,
                         k_core=default_k_core if k_core is None else k_core, name=name,
                         cold_fraction=cold[0], cold_seed=cold[1])


def _load_world(preset: str, seed: int, min_user_interactions: int | None,
                k_core: int | None, cold: tuple = (0.0, 0)) -> Dataset:
    from .world import ensure_world, load_ground_truth

    folder = Path(ensure_world(preset, seed=seed))
    dataset = _build(folder, min_user_interactions, k_core, 0, f"world-{preset}", cold)
    dataset.ground_truth = _align_ground_truth(load_ground_truth(folder), dataset, folder)
    return dataset


def movielens_raw_dir() -> Path | None:
    """The raw MovieLens posters folder: ``$FEDMM_MOVIELENS_POSTERS``, else ``../shared/data/
    movielens_posters`` next to the repository or to the working directory; None when absent."""
    if os.environ.get(MOVIELENS_ENV):
        path = Path(os.environ[MOVIELENS_ENV]).expanduser()
        return path if path.is_dir() else None
    repo_root = Path(__file__).resolve().parents[2]
    for base in (repo_root, Path.cwd()):
        path = base / ".." / "shared" / "data" / "movielens_posters"
        if path.is_dir():
            return path.resolve()
    return None


def _movielens_folder() -> Path:
    """Convert the raw MovieLens posters once into ``data_home()/movielens-posters`` and return it.

    The conversion writes into a temporary folder that is renamed when complete, so an interrupted
    conversion is never mistaken for a finished one.
    """
    final = data_home() / "movielens-posters"
    if final.is_dir():
        return _dataset_folder_in(final)
    raw = movielens_raw_dir()
    if raw is None:
        hint = (f"${MOVIELENS_ENV}={os.environ[MOVIELENS_ENV]} is not a folder"
                if os.environ.get(MOVIELENS_ENV) else "no ../shared/data/movielens_posters found")
        raise DatasetError(f"movielens-posters: raw data not found ({hint}); put the folder with "
                           f"MovieImages/, MovieData/movies.dat and ml-latest-small/ratings.csv there "
                           f"or set {MOVIELENS_ENV} to it")
    convert = converter_for("movielens-posters")
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
                 k_core: int | None = None, cold_fraction: float = 0.0) -> Dataset:
    """Load a preset (``PRESETS``) or a dataset folder as a leave-one-out ``Dataset``.

    ``min_user_interactions`` and ``k_core`` default to 3 and 0 (world, folders) or to the 5-core of
    ``movielens-posters``. ``seed`` selects the generated world; it does not affect other sources.
    ``cold_fraction`` > 0 holds that fraction of the items out of training entirely (the cold-item
    split, ``split.build_dataset``; which items: drawn with ``seed``).
    """
    name = os.fspath(source)
    cold = (float(cold_fraction), int(seed))
    if name == "world":
        name = "world-quick" if quick_mode() else "world-full"
    if name in PRESETS and name.startswith("world-"):
        return _load_world(name[len("world-"):], seed, min_user_interactions, k_core, cold)
    if name == "movielens-posters":
        return _build(_movielens_folder(), min_user_interactions, k_core, MOVIELENS_K_CORE, name, cold)
    path = Path(name).expanduser()
    if path.is_dir():
        return _build(path, min_user_interactions, k_core, 0, path.resolve().name, cold)
    if path.exists():
        raise DatasetError(f"{path}: not a folder (a dataset folder holds interactions.csv and items.csv)")
    raise DatasetError(f"unknown dataset '{name}': not a preset ({', '.join(PRESETS)}) and not an "
                       f"existing folder")
