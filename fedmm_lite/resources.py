"""Measuring what a run costs in memory (book/methods.md, "Cost").

``PeakMemory`` measures the high-water mark of memory during a block of code:

- on CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only,
  the number that decides whether a run fits on a GPU);
- on CPU: the process's peak resident set size (RSS). Linux lets a process reset its own peak
  (writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` in ``/proc/self/status``), so the
  figure covers the block only. Where that is not possible the lifetime peak of the process
  (``resource.getrusage``) is reported instead, and ``scope`` says so.

RSS counts everything the process holds (the dataset, the interpreter, torch's own libraries:
about 300-400 MB before any tensor), so it is an upper bound on what the run itself needs.
``tracemalloc`` is no help here: it only sees Python's allocator, not torch's tensors.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_mb() -> float | None:
    """Peak RSS from ``/proc/self/status`` (``VmHWM``), in MiB; None when unavailable."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0      # the kernel reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_vm_hwm() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux >= 4.0); False when not allowed."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _rusage_peak_mb() -> float:
    """Lifetime peak RSS of this process in MiB (``ru_maxrss`` is kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class PeakMemory:
    """Context manager: ``with PeakMemory(device) as mem: ...``, then ``mem.peak_mb``, ``mem.kind``
    ("cuda_allocated" or "cpu_rss") and ``mem.scope`` ("block" or "process")."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self.kind = "cuda_allocated" if self.device.type == "cuda" else "cpu_rss"
        self.scope = "block"
        self.start_mb: float | None = None   # memory already held when the block started

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        elif _reset_vm_hwm() and _vm_hwm_mb() is not None:
            self.start_mb = _vm_hwm_mb()     # right after the reset, the peak is the current RSS
        else:
            self.scope = "process"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.scope == "block":
            self.peak_mb = _vm_hwm_mb()
        else:
            self.peak_mb = _rusage_peak_mb()

    def as_dict(self) -> dict:
        """The JSON fields of a run: ``peak_memory_mb`` plus what it measured and what was already
        held at the start (``peak_memory_start_mb``: the interpreter, torch, the dataset)."""
        def mb(x):
            return None if x is None else round(x, 1)
        return {"peak_memory_mb": mb(self.peak_mb), "peak_memory_start_mb": mb(self.start_mb),
                "peak_memory_kind": self.kind, "peak_memory_scope": self.scope}
