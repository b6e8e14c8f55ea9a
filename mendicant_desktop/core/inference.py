"""Batched inference with ONNX Runtime, probabilities, malignancy, risk band and Grad-CAM."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np

from .bundle import ModelBundle
from .errors import MendicantError, ModelVerificationError
from .metadata import META_SIZE, Metadata, encode_metadata
from .preprocess import preprocess
from .results import MALIGNANT_INDICES, Prediction, risk_band
from .saliency import (
    CAM_METHODS,
    head_forward,
    is_linear_head,
    linear_score_gradients,
    probability_score_weights,
    score_gradients,
    softmax,
)
from .selfcheck import SelfCheckResult, run_self_check

#: Grad-CAM target: a class name, "top" (the predicted class) or "malignancy" (mel+bcc+akiec).
CamTarget = str


#: Most threads used by default (inference and decoding): beyond this a laptop's other work suffers.
MAX_DEFAULT_THREADS = 4


def default_threads() -> int:
    """Threads for inference and for decoding: the core count, at most :data:`MAX_DEFAULT_THREADS`."""
    return max(1, min(MAX_DEFAULT_THREADS, os.cpu_count() or 1))


def make_session(model_bytes: bytes, threads: int | None = None):
    """An ORT CPU session: fixed intra-op threads, spinning off (shared clinic laptops, batteries)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])


class Engine:
    """Scores preprocessed or decoded images with a verified :class:`ModelBundle`. Thread-safe."""

    def __init__(self, bundle: ModelBundle, threads: int | None = None, cam_method: str = "gradcam") -> None:
        self.bundle = bundle
        self.card = bundle.card
        self.threads = int(threads or default_threads())
        self._session = make_session(bundle.model_bytes, self.threads)
        names = [o.name for o in self._session.get_outputs()]
        if "probs" not in names or "features" not in names:
            raise MendicantError(f"model outputs {names} lack 'probs' and 'features'")
        if cam_method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {cam_method!r}; choose one of {sorted(CAM_METHODS)}")
        self._cam = CAM_METHODS[cam_method]()
        self._lock = threading.Lock()
        self.class_names = bundle.card.class_names
        self.input_size = bundle.card.input_size
        self._mal_idx = list(MALIGNANT_INDICES)  # the card's class_names equal CLASS_NAMES (checked on load)
        #: This CPU's kernels against the FP32 counterpart on the card's built-in inputs (run once, at load).
        self.self_check: SelfCheckResult = run_self_check(self.run, bundle.self_check)
        if self.self_check.status == "failed":
            raise ModelVerificationError(self.self_check.refusal(self.card.name))

    def run(self, x: np.ndarray, meta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw forward: x (N, H, W, 3) float32 0..255, meta (N, 10) -> probs (N, K), features (N, C, h, w)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        meta = np.ascontiguousarray(meta, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"expected input (N, {self.input_size[0]}, {self.input_size[1]}, 3), got {x.shape}")
        if meta.shape != (x.shape[0], META_SIZE):
            raise ValueError(f"expected metadata (N, {META_SIZE}), got {meta.shape}")
        probs, feats = self._session.run(["probs", "features"], {"image": x, "meta": meta})
        return probs, feats

    def predict_preprocessed(
        self,
        x: np.ndarray,
        metadata: Sequence[Metadata | None] | None = None,
        *,
        cam: bool = True,
        cam_target: CamTarget = "top",
        top_k: int = 3,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Score a batch of model inputs (N, H, W, 3) float32; metadata per image (or None)."""
        n = x.shape[0]
        metas = list(metadata) if metadata is not None else [None] * n
        if len(metas) != n:
            raise ValueError(f"{n} images but {len(metas)} metadata entries")
        meta = np.stack([encode_metadata(m) for m in metas]) if n else np.zeros((0, META_SIZE), np.float32)
        probs, feats = self.run(x, meta)
        cams: np.ndarray | None = None
        targets: list[str | None] = [None] * n
        if cam and n:
            cams, targets = self._grad_cam(probs, feats, meta, cam_target)
        thr = self.card.threshold if threshold is None else float(threshold)
        pooled = feats.mean(axis=(2, 3), dtype=np.float64).astype(np.float32) if n else None
        out = []
        for i in range(n):
            p = probs[i].astype(np.float64)
            order = np.argsort(-p)[: max(1, top_k)]
            mal = float(p[self._mal_idx].sum())
            out.append(
                Prediction(
                    class_names=self.class_names,
                    probabilities=tuple(float(v) for v in p),
                    malignancy=mal,
                    threshold=thr,
                    risk=risk_band(mal, thr),
                    top_k=tuple((self.class_names[j], float(p[j])) for j in order),
                    model_name=self.card.name,
                    model_sha256=self.card.sha256,
                    cam=None if cams is None else cams[i],
                    cam_target=targets[i],
                    pooled=None if pooled is None else pooled[i],
                )
            )
        return out

    def predict(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        metadata: Metadata | Sequence[Metadata | None] | None = None,
        *,
        batch_size: int = 8,
        **kwargs,
    ) -> list[Prediction]:
        """Score decoded RGB uint8 images (one array or a sequence), batched."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
            if isinstance(metadata, Metadata):
                metadata = [metadata]
        imgs = list(images)
        metas = list(metadata) if metadata is not None else [None] * len(imgs)
        if isinstance(metadata, Metadata):
            metas = [metadata] * len(imgs)
        out: list[Prediction] = []
        for s in range(0, len(imgs), batch_size):
            x = np.stack([preprocess(im, self.input_size) for im in imgs[s : s + batch_size]])
            out.extend(self.predict_preprocessed(x, metas[s : s + batch_size], **kwargs))
        return out

    def _grad_cam(
        self, probs: np.ndarray, feats: np.ndarray, meta: np.ndarray, target: CamTarget
    ) -> tuple[np.ndarray, list[str | None]]:
        head = self.bundle.head
        n, k = probs.shape
        if is_linear_head(head):
            return self._linear_cam(probs, feats, target)
        pooled = feats.mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
        hp = head_forward(head, pooled, meta)
        if target == "malignancy":
            weights = probability_score_weights(softmax(hp.logits), self._mal_idx)
            names: list[str | None] = ["malignancy"] * n
        else:
            idx = self._class_targets(probs, target)
            weights = np.zeros((n, k), dtype=np.float32)
            weights[np.arange(n), idx] = 1.0
            names = [self.class_names[j] for j in idx]
        grads = score_gradients(head, hp, weights.astype(np.float32))
        return self._cam(feats, grads), names

    def _class_targets(self, probs: np.ndarray, target: CamTarget) -> np.ndarray:
        """The explained class per image: the predicted one ("top") or a named class."""
        if target == "top":
            return probs.argmax(axis=1)
        if target in self.class_names:
            return np.full(len(probs), self.class_names.index(target))
        raise ValueError(f"unknown Grad-CAM target {target!r}")

    def _linear_cam(self, probs: np.ndarray, feats: np.ndarray, target: CamTarget
                    ) -> tuple[np.ndarray, list[str | None]]:  # fmt: skip
        """Grad-CAM of a linear head: a class logit, or the direct malignancy logit (the last column) when the
        head has one, else the malignant classes' logits weighted by their share of the malignancy."""
        head = self.bundle.head
        n, k = probs.shape
        n_logits = head["linear_w_features"].shape[1]
        weights = np.zeros((n, n_logits), dtype=np.float32)
        if target == "malignancy":
            if n_logits > k:
                weights[:, k] = 1.0
            else:
                weights[:, :k] = probability_score_weights(probs.astype(np.float32), self._mal_idx)
            names: list[str | None] = ["malignancy"] * n
        else:
            idx = self._class_targets(probs, target)
            weights[np.arange(n), idx] = 1.0
            names = [self.class_names[j] for j in idx]
        return self._cam(feats, linear_score_gradients(head, weights)), names
