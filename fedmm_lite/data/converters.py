"""Converters from raw public datasets to the dataset folder format, found by preset name.

A converter is a function ``convert(raw_dir: Path, out_dir: Path)`` that writes a dataset folder
(README.md) into ``out_dir``. This package ships none and imports none by name: a preset such as
``movielens-posters`` asks for the converter registered under its name, which comes from

- an entry point of the group ``fedmm_lite.converters`` declared by an installed package, e.g. in
  its pyproject.toml::

      [project.entry-points."fedmm_lite.converters"]
      movielens-posters = "package.module:convert"

- or ``register_converter(name, function)``, called in Python (it wins over an entry point).
"""
from __future__ import annotations

from importlib import metadata
from typing import Callable

from ..errors import DatasetError

ENTRY_POINT_GROUP = "fedmm_lite.converters"
INSTALL_HINT = ("install the book's repository with pip (pip install -e . in its checkout, or pip "
                "install \"fedmm_lite @ git+https://github.com/fedmm-book/fedmm-book\"), which "
                "registers its converters")

_registered: dict[str, Callable] = {}


def register_converter(name: str, function: Callable) -> None:
    """Use ``function(raw_dir, out_dir)`` to build the preset ``name`` (replaces an earlier one)."""
    if not callable(function):
        raise TypeError(f"register_converter('{name}', ...): the converter must be a function, "
                        f"got {type(function).__name__}")
    _registered[name] = function


def _entry_points(name: str) -> list:
    """The installed entry points of ``ENTRY_POINT_GROUP`` called ``name``, one per target."""
    found = metadata.entry_points()
    group = found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select") \
        else found.get(ENTRY_POINT_GROUP, [])  # Python 3.9: a dict of lists
    unique = {ep.value: ep for ep in group if ep.name == name}  # one package seen twice: one target
    return list(unique.values())


def find_converter(name: str) -> Callable | None:
    """The converter registered for ``name`` (``register_converter`` first, then entry points), or
    None when there is none. ``DatasetError`` when an entry point is ambiguous or does not import."""
    if name in _registered:
        return _registered[name]
    candidates = _entry_points(name)
    if not candidates:
        return None
    if len(candidates) > 1:
        targets = ", ".join(sorted(ep.value for ep in candidates))
        raise DatasetError(f"{name}: several converters are registered for this preset ({targets}); "
                           f"uninstall all but one, or choose one with register_converter('{name}', ...)")
    try:
        return candidates[0].load()
    except (ImportError, AttributeError) as err:
        raise DatasetError(f"{name}: the registered converter '{candidates[0].value}' cannot be loaded "
                           f"({err}); reinstall the package that provides it") from None


def converter_for(name: str) -> Callable:
    """``find_converter(name)``, or a ``DatasetError`` that says how to get one."""
    convert = find_converter(name)
    if convert is None:
        raise DatasetError(f"{name}: no converter is registered for this preset; {INSTALL_HINT}, or "
                           f"register one in Python: fedmm_lite.data.register_converter('{name}', convert)")
    return convert
