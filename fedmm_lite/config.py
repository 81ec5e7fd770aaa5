"""Run-wide settings read from the environment: quick mode, where data lives, which device.

One place, so that notebooks, tests and the command line agree:
- ``FEDMM_QUICK=1`` shrinks data, rounds and epochs (tests set it; teachers use it on laptops).
- ``FEDMM_DATA_DIR`` is where generated and converted datasets are cached
  (default ``~/.cache/fedmm_lite``).
- ``TQDM_DISABLE=1`` switches every progress bar off (the book builds with it: a bar would become a
  widget box in the rendered page).
- ``FEDMM_DEVICE`` (``cpu``, ``cuda``, ``cuda:N``) decides what ``"auto"`` means, so that a whole
  notebook or script can be moved to a device without editing it (``bench/gpu_check.sh`` forces
  CUDA with it); unset, ``"auto"`` picks CUDA when present, else CPU.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # torch is imported where a device is resolved: importing the package stays light
    import torch


def quick_mode() -> bool:
    """True when ``FEDMM_QUICK`` is set to a true value (read at call time, never cached)."""
    return os.environ.get("FEDMM_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def progress_bar(total: int, desc: str, enabled: bool = True, **kwargs):
    """A tqdm progress bar on stderr, off when ``enabled`` is False or ``TQDM_DISABLE`` is set."""
    from tqdm.auto import tqdm

    off = not enabled or os.environ.get("TQDM_DISABLE", "").strip().lower() in {"1", "true", "yes", "on"}
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, disable=off, **kwargs)


def data_home() -> Path:
    """Folder that holds generated worlds, converted datasets and their feature caches."""
    home = os.environ.get("FEDMM_DATA_DIR")
    path = Path(home).expanduser() if home else Path.home() / ".cache" / "fedmm_lite"
    path.mkdir(parents=True, exist_ok=True)
    return path


def denormals_flushed() -> bool:
    """Whether this thread's CPU arithmetic flushes denormal floats to zero (1e-40 * 1 == 0)."""
    import torch

    return float(torch.tensor([1e-40], dtype=torch.float32) * 1.0) == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Denormal floats (below about 1.2e-38) flushed to zero by this thread's CPU arithmetic while
    the block runs, the previous setting back after (fed/rounds.round_arithmetic says why). Worker
    threads that torch starts inside the block inherit it; those started before do not."""
    import torch

    previous = denormals_flushed()
    torch.set_flush_denormal(True)      # False where the CPU cannot: then nothing changed
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is ``$FEDMM_DEVICE`` when set, else CUDA when present, else CPU; anything else is
    passed to ``torch.device``."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        forced = os.environ.get("FEDMM_DEVICE", "").strip()
        if forced and forced != "auto":
            if not (forced == "cpu" or forced == "cuda" or forced.startswith("cuda:")):
                raise ValueError(f"FEDMM_DEVICE={forced}: expected cpu, cuda or cuda:N")
            if forced.startswith("cuda") and not torch.cuda.is_available():
                raise ValueError(f"FEDMM_DEVICE={forced}: CUDA is not available on this machine "
                                 "(unset FEDMM_DEVICE or set it to cpu)")
            return torch.device(forced)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return torch.device(device)
