"""CLIP item encoders (open_clip): pretrained (``clip``) or randomly initialised (``clip-random``).

``clip`` is the papers' encoder: ViT-B-32 with OpenAI's weights, downloaded from the model hub on
first use (Colab reaches it; this book's build machines do not, and say so with a clear error).
``pretrained`` may also be the path of a local checkpoint file (open_clip accepts one), which is
how the loading code is tested offline.

``clip-random`` is the same architecture with no pretrained weights, initialised from a fixed seed
(so every run and machine gets the same features). It is labelled as such everywhere: its tag, and
``pretrained: false`` in the cache's meta.json. On rendered shapes and templated titles it still
separates colours, shapes and words (chapter 2); on real photos it carries mostly colour
and layout, not meaning.

Both encoders return L2-normalised rows (the usual way CLIP features are compared).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import FedmmError, OptionError
from .base import ImageLike, as_rgb, batches

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"

# What reading a user's checkpoint file can raise, from torch.load's unpickler (EOFError,
# IndexError, UnpicklingError on garbage; OSError, RuntimeError on a broken zip) to open_clip's
# state-dict handling (AttributeError, KeyError, TypeError when the file holds something else) and
# load_state_dict (RuntimeError: shapes that do not fit). Caught only around that one call.
CHECKPOINT_ERRORS = (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError,
                     AttributeError, TypeError, pickle.UnpicklingError)


def _looks_like_checkpoint(path: str) -> bool:
    """A file open_clip can read as weights: .safetensors / .npz / .npy by name, else a torch.save
    file (a zip archive, or a pickle for the legacy format), judged by its first bytes."""
    if Path(path).suffix in (".safetensors", ".npz", ".npy"):
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


@dataclass(frozen=True)
class ClipConfig:
    """Which CLIP to build. Defaults are the papers' (ViT-B-32, OpenAI weights)."""

    model_name: str = DEFAULT_MODEL           # any name in open_clip.list_models()
    pretrained: str | None = DEFAULT_PRETRAINED  # a tag ('openai', 'laion2b_s34b_b79k'), a checkpoint
    #                                            # file path, or None = random init (clip-random)
    seed: int = 0                             # random init only; fixed so that features repeat
    batch_size: int = 64                      # pictures or titles per forward pass

    @property
    def is_file(self) -> bool:
        return self.pretrained is not None and os.path.isfile(self.pretrained)

    @property
    def tag(self) -> str:
        """Cache folder name: 'clip', 'clip-random', or one that names model and weights."""
        if self.pretrained is None:
            return "clip-random" if self.model_name == DEFAULT_MODEL else f"clip-random-{self.model_name}"
        if self.model_name == DEFAULT_MODEL and self.pretrained == DEFAULT_PRETRAINED:
            return "clip"
        weights = f"file-{Path(self.pretrained).stem}" if self.is_file else self.pretrained
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"clip-{self.model_name}-{weights}")


def _model_config(model_name: str) -> dict:
    import open_clip

    config = open_clip.get_model_config(model_name)
    if config is None:
        raise OptionError(f"--encoder: unknown CLIP model '{model_name}' "
                          f"(see open_clip.list_models(), e.g. {DEFAULT_MODEL})")
    return config


class ClipEncoder:
    """Pictures and titles through one open_clip model (loaded on first use, then frozen)."""

    def __init__(self, config: ClipConfig = ClipConfig(), device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.tag = config.tag
        is_pretrained = config.pretrained is not None
        self.pretrained = {"image": is_pretrained, "text": is_pretrained}
        self._model = None
        self._preprocess = None
        self._tokenizer = None

    def describe(self) -> dict:
        """Identity for the cache key: architecture, weights (file size and mtime), image size."""
        import open_clip

        c = self.config
        vision = _model_config(c.model_name)["vision_cfg"]
        weights: dict = {"pretrained": c.pretrained}
        if c.is_file:
            stat = os.stat(c.pretrained)
            weights = {"pretrained": str(Path(c.pretrained).resolve()), "bytes": stat.st_size,
                       "mtime_ns": stat.st_mtime_ns}
        elif c.pretrained is None:
            weights["seed"] = c.seed
        return {"kind": "open_clip", "model": c.model_name, **weights,
                "image_size": vision.get("image_size"), "normalize": True,
                "open_clip": open_clip.__version__}

    @property
    def dim(self) -> int:
        """Embedding width D (from the architecture's config; no weights needed)."""
        return int(_model_config(self.config.model_name)["embed_dim"])

    # ----------------------------------------------------------------------------- loading
    def load(self) -> "ClipEncoder":
        """Build the model (download or read weights, or seeded random init) and freeze it."""
        if self._model is not None:
            return self
        import open_clip

        c = self.config
        _model_config(c.model_name)  # unknown name -> OptionError naming it
        if c.pretrained is None:
            # Seeded init without touching the caller's global RNG state.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(c.model_name, pretrained=None)
        else:
            model, preprocess = self._load_pretrained(open_clip)
        self._model = model.to(self.device).eval().requires_grad_(False)
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(c.model_name)
        return self

    def _load_pretrained(self, open_clip):
        c = self.config
        option = f"--encoder clip:{c.model_name}:{c.pretrained}"
        if c.is_file and not _looks_like_checkpoint(c.pretrained):
            raise OptionError(f"{option}: {c.pretrained} is not a model checkpoint (expected a file "
                              f"written by torch.save, a .safetensors or a .npz file)")
        previous = logging.root.manager.disable
        logging.disable(logging.ERROR)  # open_clip logs the failure too; we raise one clear line
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(c.model_name,
                                                                         pretrained=c.pretrained)
        except CHECKPOINT_ERRORS as err:
            first_line = str(err).splitlines()[0][:300] if str(err) else ""
            reason = f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
            if c.is_file:
                raise FedmmError(f"{option}: checkpoint {c.pretrained} does not load into "
                                 f"{c.model_name}: {reason}") from None
            if not isinstance(err, RuntimeError):
                raise
            if "not a known tag" in reason:
                raise OptionError(f"--encoder clip: '{c.pretrained}' is neither a pretrained tag of "
                                  f"{c.model_name} nor an existing checkpoint file") from None
            raise FedmmError(
                f"--encoder clip: pretrained weights '{c.pretrained}' for {c.model_name} could not be "
                f"downloaded (no connection to the model hub?). Offline, use --encoder clip-random "
                f"(same architecture, random weights, labelled) or pixels+minilm, or a local "
                f"checkpoint: --encoder clip:{c.model_name}:/path/to/checkpoint.pt") from None
        finally:
            logging.disable(previous)
        return model, preprocess

    # ---------------------------------------------------------------------------- encoding
    @torch.inference_mode()
    def encode_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(n, D) L2-normalised image features, ``batch_size`` pictures per forward pass."""
        self.load()
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for start, stop in batches(len(images), self.config.batch_size):
            pixels = torch.stack([self._preprocess(as_rgb(img)) for img in images[start:stop]])  # (b, 3, H, W)
            feats = self._model.encode_image(pixels.to(self.device), normalize=True)  # (b, D)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    @torch.inference_mode()
    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        """(n, D) L2-normalised text features (CLIP's tokenizer truncates to its context length)."""
        self.load()
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for start, stop in batches(len(titles), self.config.batch_size):
            tokens = self._tokenizer(list(titles[start:stop]))  # (b, context_length)
            feats = self._model.encode_text(tokens.to(self.device), normalize=True)  # (b, D)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)
