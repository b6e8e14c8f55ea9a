"""Saliency in pure numpy: the FP32 head forward/backward, Grad-CAM variants and a checked overlay.

The network ends in global average pooling followed by a small MLP head (shipped as ``head.npz``).
For such a head the gradient of a class score with respect to the pooled features is exact and cheap
to compute in numpy, and dScore/dA_kij = dScore/dpooled_k / (h*w), so Grad-CAM needs no autograd.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .preprocess import resize_bilinear


@dataclass(frozen=True)
class HeadPass:
    """Intermediate values of one head forward, enough for the exact backward pass."""

    logits: np.ndarray  # (N, K)
    img_mask: np.ndarray  # (N, 264) relu derivative of the image dense layer
    fc_mask: np.ndarray  # (N, 32) relu derivative of the joint dense layer


def head_forward(head: dict[str, np.ndarray], pooled: np.ndarray, meta: np.ndarray) -> HeadPass:
    """Run the FP32 head: pooled (N, C) and meta (N, 10) -> logits (N, K)."""
    z_img = pooled @ head["img_fc_w"] + head["img_fc_b"]
    img_mask = (z_img > 0).astype(np.float32)
    h_img = np.maximum(z_img, 0) * head["img_bn_scale"] + head["img_bn_shift"]
    z_m1 = meta @ head["meta_fc1_w"] + head["meta_fc1_b"]
    h_m1 = np.maximum(z_m1, 0) * head["meta_bn1_scale"] + head["meta_bn1_shift"]
    z_m2 = h_m1 @ head["meta_fc2_w"] + head["meta_fc2_b"]
    h_m2 = np.maximum(z_m2, 0) * head["meta_bn2_scale"] + head["meta_bn2_shift"]
    joint = np.concatenate([h_img, h_m2], axis=1)
    z_fc = joint @ head["fc_w"] + head["fc_b"]
    fc_mask = (z_fc > 0).astype(np.float32)
    h_fc = np.maximum(z_fc, 0) * head["fc_bn_scale"] + head["fc_bn_shift"]
    logits = h_fc @ head["out_w"] + head["out_b"]
    return HeadPass(logits=logits, img_mask=img_mask, fc_mask=fc_mask)


def is_linear_head(head: dict[str, np.ndarray]) -> bool:
    """A linear head (``linear_w_features``): its logits are affine in the pooled features."""
    return "linear_w_features" in head


def linear_score_gradients(head: dict[str, np.ndarray], score_weights: np.ndarray) -> np.ndarray:
    """Exact d(score)/d(pooled) of a linear head: ``score_weights`` (N, L) over its logit columns."""
    w = head["linear_w_features"]  # (C, L)
    if score_weights.shape[1] != w.shape[1]:
        raise ValueError(f"score weights {score_weights.shape} do not match the head's {w.shape[1]} logits")
    return (score_weights @ w.T).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def score_gradients(head: dict[str, np.ndarray], hp: HeadPass, score_weights: np.ndarray) -> np.ndarray:
    """Exact d(score)/d(pooled) for score = sum_c score_weights[n, c] * logits[n, c].

    ``score_weights`` (N, K) selects the score: a one-hot row gives one class's logit.
    """
    n_img = head["img_fc_w"].shape[1]
    g_hfc = score_weights @ head["out_w"].T  # (N, 32)
    g_zfc = g_hfc * head["fc_bn_scale"] * hp.fc_mask
    g_joint = g_zfc @ head["fc_w"].T  # (N, 328)
    g_himg = g_joint[:, :n_img]
    g_zimg = g_himg * head["img_bn_scale"] * hp.img_mask
    return g_zimg @ head["img_fc_w"].T  # (N, C)


def probability_score_weights(probs: np.ndarray, classes: list[int]) -> np.ndarray:
    """Chain rule weights so the score is sum of the softmax probabilities of ``classes``.

    d(sum_c p_c)/d(z_j) = sum_c p_c (delta_cj - p_j); used for a malignancy (mel+bcc+akiec) map.
    """
    sel = np.zeros_like(probs)
    sel[:, classes] = 1.0
    s = (probs * sel).sum(axis=1, keepdims=True)
    return probs * sel - probs * s


class BaseCAM(ABC):
    """Class-activation map from a feature map and head gradients; variants override the weights."""

    @abstractmethod
    def channel_weights(self, features: np.ndarray, grads_pooled: np.ndarray) -> np.ndarray:
        """(N, C, h, w), (N, C) -> per-channel weights (N, C)."""

    def __call__(self, features: np.ndarray, grads_pooled: np.ndarray) -> np.ndarray:
        """Return maps (N, h, w) in [0, 1]: ReLU of the weighted channel sum, then max-normalised."""
        if features.ndim != 4:
            raise ValueError(f"features must be (N, C, h, w), got {features.shape}")
        if grads_pooled.shape != features.shape[:2]:
            raise ValueError(f"gradients {grads_pooled.shape} do not match features {features.shape[:2]}")
        w = self.channel_weights(features, grads_pooled).astype(np.float32)
        cam = np.einsum("nc,nchw->nhw", w, features.astype(np.float32, copy=False))
        cam = np.maximum(cam, 0)
        peak = cam.reshape(cam.shape[0], -1).max(axis=1)
        peak = np.where(peak > 0, peak, 1.0)
        return (cam / peak[:, None, None]).astype(np.float32)


class GradCAM(BaseCAM):
    """Selvaraju et al. 2017: weights = spatial mean of dScore/dA = dScore/dpooled / (h*w)."""

    def channel_weights(self, features: np.ndarray, grads_pooled: np.ndarray) -> np.ndarray:
        h, w = features.shape[2:]
        return grads_pooled / float(h * w)


class GradCAMPlusPlus(BaseCAM):
    """Chattopadhay et al. 2018, closed form with the exponential-score approximation.

    With a pooled head dScore/dA_kij = g_k/(hw) is uniform over space, so
    alpha_k = g^2 / (2 g^2 + sum_ij A_kij g^3), weights = alpha_k * relu(g_k) * hw (constants drop out).
    """

    def channel_weights(self, features: np.ndarray, grads_pooled: np.ndarray) -> np.ndarray:
        h, w = features.shape[2:]
        g = grads_pooled / float(h * w)
        g2, g3 = g**2, g**3
        sum_a = features.sum(axis=(2, 3))
        denom = 2 * g2 + sum_a * g3
        alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=np.abs(denom) > 1e-12)
        return alpha * np.maximum(g, 0) * (h * w)


CAM_METHODS: dict[str, type[BaseCAM]] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


def upsample_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear-resize a (h, w) map to ``size`` (H, W), kept in [0, 1]."""
    if cam.ndim != 2:
        raise ValueError(f"cam must be 2-D, got shape {cam.shape}")
    out = resize_bilinear(cam[:, :, None].astype(np.float32), size)[:, :, 0]
    return np.clip(out, 0.0, 1.0)


# Colormap anchor tables (sampled from matplotlib's maps), interpolated linearly into 256 entries.
_ANCHORS: dict[str, list[tuple[float, float, float]]] = {
    "jet": [(0, 0, 0.5), (0, 0, 1), (0, 0.5, 1), (0, 1, 1), (0.5, 1, 0.5), (1, 1, 0), (1, 0.5, 0), (1, 0, 0), (0.5, 0, 0)],
    "turbo": [(0.19, 0.07, 0.23), (0.27, 0.41, 0.89), (0.16, 0.73, 0.93), (0.18, 0.96, 0.59), (0.64, 0.99, 0.24),
              (0.95, 0.79, 0.23), (0.98, 0.45, 0.09), (0.80, 0.16, 0.02), (0.48, 0.02, 0.01)],
    "inferno": [(0.0, 0.0, 0.02), (0.16, 0.04, 0.35), (0.40, 0.06, 0.43), (0.62, 0.16, 0.36), (0.83, 0.28, 0.22),
                (0.96, 0.49, 0.07), (0.98, 0.74, 0.15), (0.99, 1.0, 0.64)],
    "viridis": [(0.27, 0.00, 0.33), (0.28, 0.19, 0.50), (0.21, 0.36, 0.55), (0.15, 0.50, 0.56), (0.12, 0.63, 0.53),
                (0.29, 0.76, 0.43), (0.62, 0.85, 0.22), (0.99, 0.91, 0.14)],
}
COLORMAPS: tuple[str, ...] = tuple(_ANCHORS)


def colormap_lut(name: str) -> np.ndarray:
    """A (256, 3) uint8 lookup table for ``name``."""
    if name not in _ANCHORS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    xs = np.linspace(0, 1, len(anchors))
    t = np.linspace(0, 1, 256)
    lut = np.stack([np.interp(t, xs, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(lut * 255).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """Blend ``heatmap`` (H, W) in [0, 1] over RGB uint8 ``image`` (H, W, 3); returns uint8 (H, W, 3).

    The heatmap is resized to the image when shapes differ. Inputs are checked, not coerced silently.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be an RGB uint8 array of shape (H, W, 3)")
    if not isinstance(heatmap, np.ndarray) or heatmap.ndim != 2:
        raise ValueError("heatmap must be a 2-D array")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap contains NaN or infinite values")
    if heatmap.size and (heatmap.min() < -1e-6 or heatmap.max() > 1 + 1e-6):
        raise ValueError("heatmap values must lie in [0, 1]")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if heatmap.shape != image.shape[:2]:
        heatmap = upsample_cam(heatmap, image.shape[:2])
    lut = colormap_lut(colormap)
    idx = np.clip(np.round(heatmap * 255), 0, 255).astype(np.uint8)
    colour = lut[idx].astype(np.float32)
    out = image.astype(np.float32) * (1.0 - alpha) + colour * alpha
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
