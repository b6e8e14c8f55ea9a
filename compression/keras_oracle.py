"""The original Keras model as a test oracle (Keras 3 on its torch backend; TensorFlow is never used).

Only the parity tests use this. ``KERAS_BACKEND`` must be ``torch`` before Keras is first imported, so
this module sets it and refuses to run when Keras was already imported with another backend.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .reference import extract_model_keras, find_sklesion_wheel

__all__ = ["import_keras", "load_keras_model", "KerasOracle"]


def import_keras() -> Any:
    """Import Keras 3 with the torch backend (set before the first import)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    import keras

    backend = keras.backend.backend()
    if backend != "torch":
        raise RuntimeError(
            f"Keras was already imported with the {backend!r} backend; the oracle needs KERAS_BACKEND=torch "
            "set before the first `import keras`"
        )
    return keras


def load_keras_model(cache_dir: str | os.PathLike | None = None, *, download: bool = True) -> Any:
    """The sklesion 0.2.2 ``model.keras`` loaded with Keras 3 (torch backend), not compiled."""
    keras = import_keras()
    wheel = find_sklesion_wheel(cache_dir, download=download)
    with tempfile.TemporaryDirectory(prefix="mendicant-keras-") as tmp:
        path = extract_model_keras(wheel, Path(tmp))
        return keras.saving.load_model(path, compile=False, safe_mode=True)


class KerasOracle:
    """``predict(images NHWC 0..255, meta (N,10)) -> probs (N,7)`` from the original Keras graph."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, download: bool = True) -> None:
        self.model = load_keras_model(cache_dir, download=download)

    def predict(self, images: np.ndarray, meta: np.ndarray, batch_size: int = 16) -> np.ndarray:
        import torch

        images = np.asarray(images, dtype=np.float32)
        meta = np.asarray(meta, dtype=np.float32)
        if images.ndim != 4 or images.shape[-1] != 3 or meta.shape != (images.shape[0], 10):
            raise ValueError(f"expected (N,H,W,3) images and (N,10) meta, got {images.shape}, {meta.shape}")
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                y = self.model([images[i : i + batch_size], meta[i : i + batch_size]], training=False)
                out.append(np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y, np.float32))
        return np.concatenate(out, axis=0)

    def pooled_features(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """The Xception sub-model's output (N,2048): global average of block14_sepconv2_act."""
        import torch

        xception = self.model.get_layer("xception")
        norm = self.model.get_layer("normalization")
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = norm(np.asarray(images[i : i + batch_size], np.float32))
                y = xception(x, training=False)
                out.append(np.asarray(y.detach().cpu().numpy(), np.float32))
        return np.concatenate(out, axis=0)
