"""The real thing: ``mendicant-desktop --serve`` in a subprocess on a free loopback port, the bundled model,
a real image from ``../shared/data``; and ``--batch`` and ``/predict`` giving the same fields for one image."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO

from .conftest import free_port as _free_port
from .conftest import wait_http, wait_ready


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mendicant_desktop", "--serve", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_non_loopback_bind_without_keys_is_refused_with_exit_code_2():
    res = _serve("--host", "0.0.0.0", "--port", str(_free_port()))
    assert res.returncode == 2, res.stderr
    assert "refusing to listen on 0.0.0.0" in res.stderr and "--api-key-file" in res.stderr
    res = _serve("--batch-window-ms", "500")
    assert res.returncode == 2 and "0-100 ms" in res.stderr


def test_add_api_key_prints_the_key_once_and_stores_its_hash(tmp_path):
    from mendicant_desktop.server.auth import KeyStore

    keys = tmp_path / "keys.txt"
    res = _serve("--add-api-key", "pacs", "--api-key-file", str(keys))
    assert res.returncode == 0, res.stderr
    key = res.stdout.strip()
    assert len(key) >= 40 and key not in keys.read_text()
    assert KeyStore.load(keys).verify(key) == "pacs"
    assert "--serve" in _serve("--help").stdout


@pytest.fixture(scope="module")
def real_image(shared_data):
    return shared_data / "isic_dermoscopy" / "images" / "ISIC_0000002.jpg"


@pytest.mark.slow
def test_real_server_scores_a_real_image_over_http(real_image, tmp_path, bundled_card):
    import httpx

    from mendicant_desktop.server.auth import add_key

    keys = tmp_path / "keys.txt"
    key = add_key(keys, "test-client")
    port = _free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mendicant_desktop", "--serve", "--port", str(port),
                                 "--api-key-file", str(keys)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/ready", proc=proc, describe=log_path.read_text)
        resp = httpx.post(f"{base}/predict", headers={"X-API-Key": key}, timeout=60,
                          files={"image": (real_image.name, real_image.read_bytes(), "image/jpeg")},
                          data={"age": "55", "sex": "male", "site": "trunk"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        card = json.loads(bundled_card.read_text())
        assert body["status"] == "ok" and body["model_sha256"] == card["sha256"] and body["model"] == card["name"]
        assert body["top_class"] in ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
        assert httpx.post(f"{base}/predict", timeout=10,
                          files={"image": ("x.jpg", b"x", "image/jpeg")}).status_code == 401
        health = httpx.get(f"{base}/health", timeout=5).json()
        assert health["model_verified"] is True and health["auth"] is True
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log_path.read_text()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [rec for rec in lines if rec.get("msg") == "request" and rec.get("endpoint") == "/predict"]
    assert [rec["status"] for rec in access] == [200, 401]
    assert real_image.name not in log_path.read_text()  # file names never reach the log


@pytest.mark.slow
def test_batch_and_predict_give_identical_fields(real_image, tmp_path, make_client, bundled_card):
    from mendicant_desktop.__main__ import main

    meta = tmp_path / "meta.csv"
    with open(meta, "w", newline="") as fh:
        csv.writer(fh).writerows([["image", "age", "sex", "site"], [real_image.name, "55", "male", "trunk"]])
    out = tmp_path / "rows.jsonl"
    code = main(["--batch", str(real_image), "--out", str(out), "--metadata", str(meta), "--quiet"])
    assert code == 0
    row = json.loads(out.read_text().splitlines()[0])
    client = make_client(model=str(bundled_card))
    resp = client.post("/predict", files={"image": (real_image.name, real_image.read_bytes(), "image/jpeg")},
                       data={"age": "55", "sex": "male", "site": "trunk"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    fields = set(row) - {"image"}
    assert len(fields) >= 20
    assert {k: body[k] for k in fields} == {k: row[k] for k in fields}
    assert row["status"] == "ok" and row["image"].endswith(body["image"])
    wait_ready(client)


@pytest.mark.slow
def test_tls_through_uvicorn_certificate_options(tmp_path):
    import shutil
    import ssl

    import httpx

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mendicant_desktop", "--serve", "--port", str(port),
                             "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = wait_http(f"https://127.0.0.1:{port}/ready", proc=proc, verify=ssl.create_default_context(cafile=str(cert)))
        assert r.json()["ready"] is True
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)  # plain HTTP is not answered
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert _serve("--ssl-certfile", str(cert)).returncode == 2  # a certificate without its key is refused
