"""Privatising uploads, the step of a round between the clients and the server (book/methods.md,
"Privacy"; the chapter "Privacy, honestly").

Two families, never together:

1. The papers' upload noise, ``--noise none | gaussian:STD | laplace:SCALE`` (FedMR Table 4:
   Gaussian; GFMFR Table 2: Laplace). Noise is added to every scalar of every upload: the full
   item-table update (all n rows, not only the rows the client trained on, otherwise the set of
   noisy rows would still reveal the client's items), every shared module, and every reported
   tensor. Without clipping this has NO formal guarantee (the sensitivity is unbounded): it
   reproduces the papers' settings, nothing more.
2. Clipped Gaussian differential privacy, ``--dp local|central --clip S --noise-multiplier z``
   (``DpSpec``). A client's upload x_u is everything it sends in a round, all shared updates and
   reports together, the item-table update over all n rows (rows it did not train on are 0);
   clipping scales it to L2 norm at most S:
       clip_S(x_u) = x_u * min(1, S / ||x_u||_2)
   - local: each client clips and adds N(0, (z S)^2) to every scalar of its full upload before
     sending (``privatise``): the server sees noisy uploads only;
   - central (DP-FedAvg, McMahan et al. 2018): a trusted server clips each client's upload,
     sums, adds N(0, (z S)^2) to every scalar of the sum and divides by the expected number of
     participants beta U (``server.ServerRound``); only the noised model leaves the server.
   Under either, participants are drawn by Poisson sampling (each client independently with
   probability beta: ``poisson_participants``), the server weighs clients uniformly (a client's
   training-set size is not uploaded) and the accountant (accounting.py) turns (z, beta, rounds,
   delta) into epsilon.

Draws come from a generator of their own, client by client and tensor by tensor in sorted name
order; both trainers' uploads pass through the same functions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import OptionError

DP_MODES = ("none", "local", "central")
DEFAULT_DELTA = 1e-5


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


@dataclass(frozen=True)
class DpSpec:
    """Clipped Gaussian DP of the uploads (module docstring, 2): ``mode`` none | local | central,
    clip norm S, noise multiplier z (noise std z S), delta, and the epsilon to stop at (or None)."""

    mode: str = "none"
    clip: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = DEFAULT_DELTA
    target_epsilon: float | None = None

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def std(self) -> float:
        """The noise's standard deviation z S (per scalar of an upload, local; of the sum, central)."""
        return self.noise_multiplier * self.clip


def _finite_positive(value, option: str) -> None:
    if value is None or not value > 0 or value == float("inf"):
        raise OptionError(f"{option} {value}: must be a finite number > 0")


def dp_spec(config) -> DpSpec:
    """The ``DpSpec`` of a ``FedConfig``, or ``OptionError`` naming the option of a bad value or
    combination: clipping without noise (or noise without clipping), delta outside (0, 1),
    negative values, DP options without ``--dp``, ``--dp`` together with ``--noise``, central DP
    for a method whose server step reads each client's upload (GFMFR)."""
    mode = (config.dp or "none").strip().lower()
    clip, z, delta, target = config.clip, config.noise_multiplier, config.delta, config.target_epsilon
    if mode not in DP_MODES:
        raise OptionError(f"--dp {config.dp!r}: choose local or central (or none)")
    if mode == "none":
        for option, value in (("--clip", clip), ("--noise-multiplier", z), ("--delta", delta),
                              ("--target-epsilon", target)):
            if value is not None:
                raise OptionError(f"{option} {value}: applies with --dp local|central only")
        return DpSpec()
    if parse_noise(config.noise).kind != "none":
        raise OptionError(f"--noise {config.noise} with --dp {mode}: choose one (the papers' "
                          f"unclipped noise, or clipped DP)")
    if clip is None and z is None:
        raise OptionError(f"--dp {mode}: needs --clip S and --noise-multiplier z")
    if z is None:
        raise OptionError(f"--clip {clip} without --noise-multiplier: clipping alone is no privacy; "
                          f"add --noise-multiplier z (> 0)")
    if clip is None:
        raise OptionError(f"--noise-multiplier {z} without --clip: noise has no bound next to an "
                          f"unclipped upload; add --clip S (> 0)")
    _finite_positive(clip, "--clip")
    _finite_positive(z, "--noise-multiplier")
    delta = DEFAULT_DELTA if delta is None else delta
    if not 0 < delta < 1:
        raise OptionError(f"--delta {delta}: must be in (0, 1) (typically below 1 / number of users)")
    if target is not None:
        _finite_positive(target, "--target-epsilon")
    if mode == "central" and config.method == "gfmfr":
        raise OptionError("--dp central --method gfmfr: GFMFR's server groups clients by each "
                          "upload, which central DP does not protect; use --dp local")
    return DpSpec(mode, float(clip), float(z), float(delta),
                  None if target is None else float(target))


def poisson_participants(n_users: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Poisson sampling: each user independently with probability ``ratio``; sorted (m,) LongTensor
    (m may be 0). The sampling the accountant's amplification assumes; at ratio 1 every user."""
    return torch.nonzero(torch.rand(n_users, generator=generator) < ratio).flatten()


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


def _client_rows(batch, name: str, tables) -> bool:
    return name in tables and name in batch.rows


@torch.no_grad()
def upload_norms(batch, tables) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2, L1) norms (C,) float64 of each client's whole upload: every shared update and report
    together, an item table over all its rows (rows not sent are 0 and add nothing)."""
    C = batch.n_clients
    sample = next(iter(batch.values.values()))
    sq = torch.zeros(C, dtype=torch.float64, device=sample.device)
    l1 = torch.zeros(C, dtype=torch.float64, device=sample.device)
    for name, value in {**batch.values, **batch.reports}.items():
        # per row (table) or per client (module): reductions, no full-size temporary
        rows = value if _client_rows(batch, name, tables) else value.reshape(C, -1)
        row_l2 = torch.linalg.vector_norm(rows, 2, dim=1).double()
        row_l1 = torch.linalg.vector_norm(rows, 1, dim=1).double()
        if _client_rows(batch, name, tables):
            sq.index_add_(0, batch.owners[name], row_l2.pow(2))
            l1.index_add_(0, batch.owners[name], row_l1)
        else:
            sq += row_l2.pow(2)
            l1 += row_l1
    return sq.sqrt(), l1


@torch.no_grad()
def clip_uploads(batch, clip: float, tables) -> torch.Tensor:
    """clip_S(x_u) = x_u * min(1, S / ||x_u||_2) for every client's whole upload (module
    docstring), in new tensors; returns the clients' norms before clipping (C,) float64."""
    norms, _ = upload_norms(batch, tables)
    # factor_u = min(1, S / ||x_u||)   (a zero upload stays zero)
    factor = torch.clamp(clip / norms.clamp(min=1e-300), max=1.0)                  # (C,)
    for part in (batch.values, batch.reports):
        for name, value in part.items():
            f = factor.to(value.dtype)
            if part is batch.values and _client_rows(batch, name, tables):
                part[name] = value * f[batch.owners[name]].unsqueeze(1)             # (Q, d)
            else:
                part[name] = value * f.view((-1,) + (1,) * (value.dim() - 1))      # (C, ...)
    return norms


@torch.no_grad()
def _densify(batch, shapes: dict, tables) -> None:
    """Every client's item-table updates over ALL n rows (the untouched rows are 0), in place."""
    C = batch.n_clients
    for name in tables:
        n, d = shapes[name]
        value = batch.values[name]
        dense = torch.zeros(C, n, d, dtype=value.dtype, device=value.device)       # (C, n, d)
        dense[batch.owners[name], batch.rows[name]] = value
        batch.values[name] = dense.view(C * n, d)                               # rows of client after client
        batch.rows[name] = torch.arange(n, device=value.device).repeat(C)       # (C n,)
        batch.owners[name] = torch.arange(C, device=value.device).repeat_interleave(n)  # (C n,)


@torch.no_grad()
def _add_client_noise(batch, noise: NoiseSpec, generator, shapes: dict, tables) -> None:
    """Each scalar of each client's full upload gets its own draw: client by client, tensor by
    tensor in sorted name order (the order both trainers share)."""
    C = batch.n_clients
    sample = next(iter(batch.values.values()))
    device, dtype = sample.device, sample.dtype
    _densify(batch, shapes, tables)
    uploaded = {**batch.values, **batch.reports}
    for c in range(C):
        for name in sorted(uploaded):
            mine = (uploaded[name].view(C, shapes[name][0], -1)[c] if name in tables
                    else uploaded[name][c])
            mine += client_noise(tuple(mine.shape), noise, generator, dtype).to(device)


@torch.no_grad()
def privatise(batch, noise: NoiseSpec, generator: torch.Generator, shapes: dict, tables,
              dp: DpSpec | None = None) -> object:
    """The uploads as they leave the clients (module docstring).

    - no noise and no DP: ``batch`` unchanged;
    - ``noise`` (the papers'): every client's FULL shared update (all n rows of each item table
      ``tables``; ``shapes`` gives the global shapes) plus its reports, each scalar its own draw;
    - ``dp`` local: the same after clipping each client's whole upload to ``dp.clip``, with
      N(0, (z S)^2); the training-set sizes are not sent;
    - ``dp`` central: the sizes are not sent; the server clips and noises (server.ServerRound).
    """
    if dp is not None and dp.active:
        batch.sizes = None                       # uniform weights under DP: n_u stays on the client
        if dp.mode == "local":
            clip_uploads(batch, dp.clip, tables)
            _add_client_noise(batch, NoiseSpec("gaussian", dp.std), generator, shapes, tables)
        return batch
    if noise is None or not noise.active:
        return batch
    _add_client_noise(batch, noise, generator, shapes, tables)
    return batch


@torch.no_grad()
def gaussian_sum_noise(buffers: dict, std: float, generator: torch.Generator) -> None:
    """Central DP: N(0, std^2) added to every scalar of the summed updates ``buffers``, in place,
    tensor by tensor in sorted name order."""
    for name in sorted(buffers):
        buf = buffers[name]
        buf += client_noise(tuple(buf.shape), NoiseSpec("gaussian", std), generator, buf.dtype).to(buf.device)
