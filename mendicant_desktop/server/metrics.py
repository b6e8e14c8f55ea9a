"""Prometheus metrics, one registry per app (so tests can build several apps in one process).

Exposed at ``GET /metrics`` in the text exposition format. Labels never carry request content: the
endpoint label is the route template (``/jobs/{job_id}``, not the id), and errors are counted by kind.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

#: Request latency buckets (seconds): fine below the 100 ms target, coarse up to the timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mendicant_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("mendicant_request_seconds", "Request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("mendicant_inference_batch_images", "Images per ONNX Runtime call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.errors = Counter("mendicant_errors", "Errors returned to clients, by kind", ["kind"], registry=r)
        self.images = Counter("mendicant_images_scored", "Images scored, by outcome", ["outcome"], registry=r)
        self.queue_depth = Gauge("mendicant_queue_depth", "Requests waiting for the batching thread", registry=r)
        self.jobs_active = Gauge("mendicant_jobs_active", "Explanation jobs queued or running", registry=r)
        self.model = Info("mendicant_model", "The loaded model (from its verified card)", registry=r)
        self.ready = Gauge("mendicant_ready", "1 once the model is loaded and verified", registry=r)

    def set_model(self, name: str, version: str, sha256: str) -> None:
        self.model.info({"name": name, "version": version, "sha256": sha256})
        self.ready.set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
