"""Privatising uploads, the step of a round between the clients and the server (book/methods.md,
"Privacy"): today the papers' upload noise (FedMR Table 4: Gaussian; GFMFR Table 2: Laplace).

``--noise none | gaussian:STD | laplace:SCALE``. Noise is added to every scalar of every upload:
the full item-table update (all n rows, not only the rows the client trained on, otherwise the set
of noisy rows would still reveal the client's items), every shared module, and every reported
tensor. Without clipping this has no formal guarantee: it reproduces the papers' settings, nothing
more.

Draws come from a generator of their own, client by client and tensor by tensor in sorted name
order (``privatise``); both trainers' uploads pass through the same function.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import OptionError


@dataclass(frozen=True)
class NoiseSpec:
    """A parsed ``--noise`` value: ``kind`` none | gaussian | laplace and its ``scale``."""

    kind: str = "none"
    scale: float = 0.0

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.scale > 0


def parse_noise(text: str) -> NoiseSpec:
    """``none`` | ``gaussian:STD`` | ``laplace:SCALE`` -> NoiseSpec; ``OptionError`` otherwise."""
    text = (text or "none").strip().lower()
    if text == "none":
        return NoiseSpec()
    kind, sep, value = text.partition(":")
    if kind not in ("gaussian", "laplace") or not sep:
        raise OptionError(f"--noise {text!r}: expected none, gaussian:STD or laplace:SCALE")
    try:
        scale = float(value)
    except ValueError:
        raise OptionError(f"--noise {text!r}: {value!r} is not a number") from None
    if not scale >= 0 or scale == float("inf"):
        raise OptionError(f"--noise {text!r}: the scale must be a finite number >= 0")
    return NoiseSpec(kind, scale)


def client_noise(shape, spec: NoiseSpec, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One client's noise for one uploaded tensor of ``shape`` (drawn on the generator's device, CPU).

    Gaussian: N(0, STD^2). Laplace(0, b) by inversion of a uniform u in (-1/2, 1/2):
    x = -b * sign(u) * log(1 - 2|u|).
    """
    if spec.kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) * spec.scale
    if spec.kind == "laplace":
        u = torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5
        # x = -b sign(u) log(1 - 2|u|)   (|u| kept below 1/2: rand may return exactly 0)
        x = -spec.scale * torch.sign(u) * torch.log1p(-2.0 * u.abs().clamp(max=0.5 - 1e-12))
        return x.to(dtype)
    raise OptionError(f"--noise {spec.kind}: no noise to draw")


@torch.no_grad()
def privatise(batch, noise: NoiseSpec, generator: torch.Generator, shapes: dict, tables) -> object:
    """The uploads as the server receives them. Without noise, ``batch`` unchanged; with noise,
    every client's FULL shared update (all n rows of each item table ``tables``: ``shapes`` gives
    the global shapes) plus its reports, each scalar with its own draw."""
    if noise is None or not noise.active:
        return batch
    C = batch.n_clients
    sample = next(iter(batch.values.values()))
    device, dtype = sample.device, sample.dtype
    for name in tables:
        n, d = shapes[name]
        dense = torch.zeros(C, n, d, dtype=dtype, device=device)                # (C, n, d)
        dense[batch.owners[name], batch.rows[name]] = batch.values[name]
        batch.values[name] = dense.view(C * n, d)                               # rows of client after client
        batch.rows[name] = torch.arange(n, device=device).repeat(C)             # (C n,)
        batch.owners[name] = torch.arange(C, device=device).repeat_interleave(n)  # (C n,)
    uploaded = {**batch.values, **batch.reports}
    for c in range(C):
        for name in sorted(uploaded):
            mine = (uploaded[name].view(C, shapes[name][0], -1)[c] if name in tables
                    else uploaded[name][c])
            mine += client_noise(tuple(mine.shape), noise, generator, dtype).to(device)
    return batch
