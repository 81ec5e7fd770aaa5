"""Converters found by preset name: register_converter, entry points, and no data_prep in the package.

Entry points are read from installed metadata; a temporary ``*.dist-info`` folder on sys.path is
an installed distribution for importlib.metadata, so the lookup is tested without installing.
"""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest

from fedmm_lite.data import converters, load_dataset, register_converter
from fedmm_lite.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_converters(monkeypatch):
    """Nothing registered and no installed entry point (the real one may be installed)."""
    monkeypatch.setattr(converters, "_registered", {})
    monkeypatch.setattr(converters, "ENTRY_POINT_GROUP", "fedmm_lite.converters-test-empty")


def _install_fake_distribution(folder: Path, group: str, entries: dict[str, str], module: str = "") -> None:
    """A distribution 'fake-converters' in ``folder`` declaring ``entries`` in ``group``."""
    info = folder / "fake_converters-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-converters\nVersion: 0.1\n")
    lines = [f"[{group}]"] + [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    if module:
        (folder / "fake_converter_module.py").write_text(module)


def test_the_package_never_names_data_prep():
    hits = [f"{path.relative_to(REPO)}:{number}" for path in sorted((REPO / "fedmm_lite").rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), start=1) if "data_prep" in line]
    assert hits == []


def test_an_entry_point_is_found_by_preset_name(tmp_path, monkeypatch, no_converters):
    monkeypatch.setattr(converters, "ENTRY_POINT_GROUP", "fedmm_lite.converters")
    module = "def convert(raw_dir, out_dir):\n    return ('converted', raw_dir, out_dir)\n"
    _install_fake_distribution(tmp_path, "fedmm_lite.converters",
                               {"fedmm-test-preset": "fake_converter_module:convert",
                                "fedmm-test-broken": "fake_converter_module:no_such_function"}, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_converter_module", raising=False)

    convert = converters.find_converter("fedmm-test-preset")
    assert convert("raw", "out") == ("converted", "raw", "out")
    assert convert is importlib.import_module("fake_converter_module").convert
    assert converters.find_converter("fedmm-test-absent") is None
    with pytest.raises(DatasetError) as err:
        converters.find_converter("fedmm-test-broken")
    assert str(err.value).startswith("fedmm-test-broken: the registered converter "
                                     "'fake_converter_module:no_such_function' cannot be loaded (")


def test_register_converter_wins_over_an_entry_point(tmp_path, monkeypatch, no_converters):
    monkeypatch.setattr(converters, "ENTRY_POINT_GROUP", "fedmm_lite.converters")
    _install_fake_distribution(tmp_path, "fedmm_lite.converters", {"fedmm-test-preset": "nowhere:convert"})
    monkeypatch.syspath_prepend(str(tmp_path))

    def mine(raw_dir, out_dir):
        return out_dir

    register_converter("fedmm-test-preset", mine)
    assert converters.find_converter("fedmm-test-preset") is mine
    with pytest.raises(TypeError, match="must be a function"):
        register_converter("fedmm-test-preset", "not callable")


def test_a_preset_without_a_converter_says_what_to_install(monkeypatch, tmp_path, no_converters):
    monkeypatch.setenv("FEDMM_DATA_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("FEDMM_MOVIELENS_POSTERS", str(tmp_path))  # raw data "present"
    with pytest.raises(DatasetError) as err:
        load_dataset("movielens-posters")
    assert str(err.value) == (
        "movielens-posters: no converter is registered for this preset; install the book's repository "
        "with pip (pip install -e . in its checkout, or pip install \"fedmm_lite @ "
        "git+https://github.com/fedmm-book/fedmm-book\"), which registers its converters, or register "
        "one in Python: fedmm_lite.data.register_converter('movielens-posters', convert)")


def test_the_preset_uses_the_registered_converter(monkeypatch, tmp_path, tiny_folder, no_converters):
    monkeypatch.setenv("FEDMM_DATA_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("FEDMM_MOVIELENS_POSTERS", str(tmp_path))
    calls = []

    def convert(raw_dir, out_dir):
        calls.append(Path(raw_dir))
        shutil.copytree(tiny_folder, out_dir)
        return out_dir

    register_converter("movielens-posters", convert)
    dataset = load_dataset("movielens-posters", k_core=0)
    assert calls == [tmp_path] and (dataset.n_users, dataset.n_items) == (12, 20)


def test_pyproject_declares_the_converters():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPO / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["entry-points"]["fedmm_lite.converters"]
    assert declared == {"movielens-posters": "data_prep.movielens_posters:convert",
                        "ml-100k": "data_prep.ml100k:convert"}
    for target in declared.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
