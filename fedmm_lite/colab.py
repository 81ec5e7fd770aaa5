"""Colab and classroom helpers: where the book is installed from, and what a notebook runs on.

``REPOSITORY_URL`` and ``BRANCH`` are the one place that names the book's repository. The "Open in
Colab" badges of the chapters and exercise notebooks, their install cell, the README and
``_config.yml``'s ``repository`` are written from them by ``book/tools/sync_urls.py``, and a test
checks that they agree.

``environment_report`` is what the first code cell of every chapter prints: the device in use, the
item encoder the chapter will use, and whether pretrained CLIP weights were loaded.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from .config import quick_mode, resolve_device
from .errors import FedmmError

REPOSITORY_URL = "https://github.com/fedmm-book/fedmm-book"
BRANCH = "main"
# What Colab lacks; torch and ipywidgets are never reinstalled there (Colab's own builds).
COLAB_EXTRAS = ("open_clip_torch", "umap-learn")
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
MODEL_HUB = "huggingface.co"   # where open_clip downloads CLIP's pretrained weights


def install_command() -> str:
    """The pip command of the chapters' install cell (run there as ``%pip``)."""
    return f'pip install -q "fedmm_lite @ git+{REPOSITORY_URL}@{BRANCH}" ' + " ".join(COLAB_EXTRAS)


def colab_url(notebook: str) -> str:
    """Colab's address of ``notebook`` (a path from the repository root, e.g. ``book/01_data.ipynb``)."""
    owner_repo = REPOSITORY_URL.removeprefix("https://github.com/").strip("/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/{notebook}"


def colab_badge(notebook: str) -> str:
    """The markdown of the "Open in Colab" badge of ``notebook``."""
    return f"[![Open In Colab]({COLAB_BADGE})]({colab_url(notebook)})"


def progress_bars() -> bool:
    """False when ``TQDM_DISABLE`` is set (the book's builds set it), else True.

    tqdm's notebook bars ignore that variable (they pass ``disable=False`` themselves), and in a
    rendered page a bar is a dead widget: the chapters pass this to ``progress=``.
    """
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in {"1", "true", "yes", "on"}


def model_hub_reachable(host: str = MODEL_HUB, timeout: float = 3.0) -> bool:
    """True when this machine can open a connection to the model hub (on Colab it can)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_clip(image_spec: str, device) -> None:
    """Load the pretrained CLIP of ``image_spec`` (``clip``, ``clip:MODEL:WEIGHTS``); raises ``FedmmError``."""
    from .encoders import build_encoder

    build_encoder(image_spec, device).load()


@dataclass(frozen=True)
class EnvironmentReport:
    """What a notebook runs on (``str()`` gives the lines the chapters print)."""

    device: str                 # "cpu", "cuda", "cuda:1"
    device_name: str            # the GPU's name, or "no GPU in use"
    quick_mode: bool            # FEDMM_QUICK: small data, few rounds
    encoder: str                # the item encoder's tag, or "none" (item IDs only)
    pretrained_clip: bool       # True only when pretrained CLIP weights were loaded
    note: str                   # why not, or what was loaded

    def __str__(self) -> str:
        return "\n".join([
            f"device:          {self.device} ({self.device_name})",
            f"quick mode:      {'yes' if self.quick_mode else 'no'}",
            f"item encoder:    {self.encoder}",
            f"pretrained CLIP: {'yes' if self.pretrained_clip else 'no'} ({self.note})",
        ])


def environment_report(encoder: str | None = None, *, uses_features: bool = True,
                       device: str = "auto") -> EnvironmentReport:
    """The device, the encoder a chapter will use, and whether pretrained CLIP weights loaded.

    ``encoder`` follows the chapters' parameters: ``None`` = the package's default offline encoder
    (``encoders.default_offline_encoder``); ``"auto"`` = pretrained CLIP when its weights load,
    else the offline default; or an encoder tag. ``uses_features=False``: the chapter uses item IDs
    only. When the encoder needs pretrained CLIP, the weights are loaded here (a download on first
    use, cached by open_clip for the chapter); where the model hub is out of reach nothing is
    downloaded and the report says so.
    """
    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        import torch

        device_name = torch.cuda.get_device_name(torch_device)
    else:
        device_name = "no GPU in use"
    report = dict(device=str(torch_device), device_name=device_name, quick_mode=quick_mode())
    if not uses_features:
        return EnvironmentReport(**report, encoder="none (item IDs only)", pretrained_clip=False,
                                 note="this chapter uses no item features")

    from .encoders import build_encoder, default_offline_encoder

    offline = default_offline_encoder()
    if encoder is None:
        return EnvironmentReport(**report, encoder=offline, pretrained_clip=False,
                                 note="the offline default; set the chapter's ENCODER to 'clip' for CLIP")
    wanted = "clip" if encoder == "auto" else encoder
    image_spec = wanted.partition("+")[0]
    if not (image_spec.startswith("clip") and build_encoder(wanted).pretrained["image"]):
        return EnvironmentReport(**report, encoder=wanted, pretrained_clip=False,
                                 note=f"'{wanted}' has no pretrained CLIP tower")
    if not model_hub_reachable():
        reason = f"the model hub ({MODEL_HUB}) is out of reach: nothing downloaded"
        if encoder == "auto":
            return EnvironmentReport(**report, encoder=offline, pretrained_clip=False, note=reason)
        return EnvironmentReport(**report, encoder=wanted, pretrained_clip=False,
                                 note=reason + f"; encoding with '{wanted}' will fail")
    try:
        _load_clip(image_spec, torch_device)
    except FedmmError as err:
        reason = f"CLIP's weights did not load: {err}"
        return EnvironmentReport(**report, encoder=offline if encoder == "auto" else wanted,
                                 pretrained_clip=False, note=reason)
    return EnvironmentReport(**report, encoder=wanted, pretrained_clip=True,
                             note=f"the weights of '{image_spec}' loaded")
