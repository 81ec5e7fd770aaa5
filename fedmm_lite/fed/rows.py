"""Reading and updating rows of a chunk's flat tables (Q, d): the engine's item rows, FedMR's
per-client coefficients (feature_maps.py). One place decides how, per device."""
from __future__ import annotations

import torch


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (A, B) of ``table`` (Q, d): (A, B, d). (``index_select`` on a flat table is
    several times faster on CPU than 2-D fancy indexing of a padded (C, R, d) one.)"""
    return table.index_select(0, index.reshape(-1)).view(index.shape + table.shape[1:])


def add_rows(table: torch.Tensor, index: torch.Tensor, values: torch.Tensor, alpha: float) -> None:
    """table[index[a, b]] += alpha * values[a, b] for a (Q, d) ``table``, accumulating repeats.
    CPU: ``index_add_`` (serial, deterministic); CUDA: ``index_put_(accumulate=True)``, which is
    deterministic there where ``index_add_``'s atomics are not."""
    idx, values = index.reshape(-1), values.reshape(-1, table.shape[-1])
    if table.is_cuda:
        table.index_put_((idx,), alpha * values, accumulate=True)
    else:
        table.index_add_(0, idx, values, alpha=alpha)
