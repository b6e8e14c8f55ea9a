"""Fixtures for the server tests: apps on the tiny model, images good and bad."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server tests need the [server] extra")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (in the [test] extra)")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from mendicant_desktop.server.app import create_app  # noqa: E402
from mendicant_desktop.server.config import ServerConfig  # noqa: E402


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    """A photo-like JPEG: a skin-coloured field with a darker blob (not a real lesion)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((xx - w / 2) / (w / 5)) ** 2 + ((yy - h / 2) / (h / 5)) ** 2))
    base = np.array([205, 160, 135], np.float32)
    img = base[None, None, :] * (1 - 0.55 * blob[..., None]) + rng.normal(0, 6, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bomb_png() -> bytes:
    """A small PNG whose header claims 11000 x 10000 = 110 MP (over the 100 MP decode limit)."""
    buf = io.BytesIO()
    Image.new("1", (11000, 10000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def good_jpeg() -> bytes:
    return jpeg_bytes(0)


@pytest.fixture(scope="session")
def bad_images(good_jpeg) -> dict[str, bytes]:
    return {
        "corrupt": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,
        "truncated": good_jpeg[: len(good_jpeg) // 3],
        "empty": b"",
        "not_an_image": b"<html><body>patient letter</body></html>",
        "bomb": bomb_png(),
    }


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while client.get("/ready").status_code != 200:
        assert time.monotonic() - t0 < timeout, client.get("/health").json()
        time.sleep(0.02)


@pytest.fixture
def make_client(tiny_bundle):
    """``make_client(**config)`` -> a started TestClient on the tiny model (ready when returned)."""
    stack = contextlib.ExitStack()

    def make(ready: bool = True, engine_loader=None, raise_server_exceptions: bool = True, **kwargs) -> TestClient:
        kwargs.setdefault("model", str(tiny_bundle))
        kwargs.setdefault("rate_limit_per_minute", 10_000)
        app = create_app(ServerConfig(**kwargs), engine_loader=engine_loader)
        client = stack.enter_context(TestClient(app, raise_server_exceptions=raise_server_exceptions))
        if ready:
            wait_ready(client)
        return client

    with stack:
        yield make


@pytest.fixture
def client(make_client) -> Iterator[TestClient]:
    return make_client()


def files(data: bytes, name: str = "lesion.jpg", ctype: str = "image/jpeg") -> dict:
    return {"image": (name, data, ctype)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, *, proc=None, timeout: float = 90.0, describe=lambda: "", **kwargs):
    """GET ``url`` until it answers 200 (``proc``, if given, must stay alive); return the response."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            assert proc.poll() is None, f"the server exited with {proc.returncode}: {describe()}"
        try:
            r = httpx.get(url, timeout=3, **kwargs)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200: {describe()}"
        time.sleep(0.2)
