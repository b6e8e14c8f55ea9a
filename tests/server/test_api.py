"""Every endpoint and error path through FastAPI's TestClient, on the tiny model."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import threading
import time

import pytest
from PIL import Image

from mendicant_desktop.server import schemas as S
from mendicant_desktop.server.accesslog import ACCESS_LOGGER, JsonFormatter
from mendicant_desktop.server.auth import add_key

from .conftest import files, jpeg_bytes, wait_ready

#: What the issue asks a /predict answer to carry (fixed here, not read from the code under test).
REQUIRED_FIELDS = {"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC", "malignancy", "risk", "threshold", "top_class",
                   "fst_estimate", "warnings", "sha256", "model", "model_version", "model_sha256"}


def _error(resp, status: int, kind: str) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error"]["kind"] == kind, body
    return body["error"]["reason"]


# ------------------------------------------------------------------ /predict
def test_predict_returns_the_batch_row_fields(client, good_jpeg, tiny_bundle):
    resp = client.post("/predict", files=files(good_jpeg), data={"age": "63", "sex": "female", "site": "trunk",
                                                                   "fst": "IV"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert REQUIRED_FIELDS <= set(body)
    assert set(body) == set(S.ROW_COLUMNS) | set(S.EXTRA_FIELDS)
    card = json.loads(tiny_bundle.read_text())
    assert body["status"] == "ok" and body["error"] == ""
    assert abs(sum(body[c] for c in ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")) - 1) < 1e-6
    assert body["malignancy"] == pytest.approx(body["MEL"] + body["BCC"] + body["AKIEC"], abs=1e-7)
    assert body["risk"] == ("high" if body["malignancy"] >= card["threshold"] else "low")
    assert body["threshold"] == card["threshold"]
    assert body["model"] == card["name"] and body["model_sha256"] == card["sha256"]
    assert body["model_version"] == card["version"]
    assert body["sha256"] == hashlib.sha256(good_jpeg).hexdigest()
    assert (body["width"], body["height"]) == (320, 240)
    assert (body["meta_age"], body["meta_sex"], body["meta_site"]) == (63.0, "female", "trunk")
    assert body["fst_override"] == "IV" and body["image"] == "lesion.jpg"


def test_metadata_changes_the_assessment(client, good_jpeg):
    a = client.post("/predict", files=files(good_jpeg)).json()
    b = client.post("/predict", files=files(good_jpeg), data={"age": "85", "sex": "male", "site": "head-or-neck"}).json()
    assert a["meta_age"] is None and b["meta_age"] == 85.0
    assert a["MEL"] != b["MEL"]


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "empty", "not_an_image", "bomb"])
def test_bad_images_get_422_with_a_reason_and_the_server_keeps_serving(client, bad_images, good_jpeg, kind):
    reason = _error(client.post("/predict", files=files(bad_images[kind])), 422, "bad_image")
    expected = {"corrupt": ("corrupt", "not a recognised"), "truncated": ("truncated",), "empty": ("empty",),
                "not_an_image": ("not a recognised",), "bomb": ("decompression bomb",)}[kind]
    assert any(e in reason.lower() for e in expected), reason
    assert client.post("/predict", files=files(good_jpeg)).status_code == 200


@pytest.mark.parametrize("data,field", [
    ({"age": "400"}, "age"), ({"age": "-3"}, "age"), ({"age": "old"}, "age"), ({"age": "nan"}, "age"),
    ({"sex": "alien"}, "sex"), ({"site": "moon"}, "site"), ({"fst": "VII"}, "fst"),
])
def test_absurd_metadata_gets_422_naming_the_field(client, good_jpeg, data, field):
    reason = _error(client.post("/predict", files=files(good_jpeg), data=data), 422, "validation")
    assert reason.startswith(field), reason
    assert "400" not in json.dumps(client.post("/predict", files=files(good_jpeg), data=data).json()["error"]
                                   ["details"])  # the input itself is not echoed back


def test_missing_image_and_wrong_content_types(client, good_jpeg):
    reason = _error(client.post("/predict", data={"age": "40"}, files={"other": ("x", b"1", "text/plain")}), 422,
                    "validation")
    assert "image" in reason
    _error(client.post("/predict", json={"image": "aGVsbG8="}), 415, "unsupported_media_type")
    _error(client.post("/predict", content=good_jpeg, headers={"content-type": "image/jpeg"}), 415,
           "unsupported_media_type")
    reason = _error(client.post("/predict", files=files(b"hello", "notes.txt", "text/plain")), 415,
                    "unsupported_media_type")
    assert "text/plain" in reason
    assert client.post("/predict", files=files(good_jpeg, "x.bin", "application/octet-stream")).status_code == 200


# ------------------------------------------------------------------ /batch_predict
def test_batch_keeps_order_and_bad_items_do_not_stop_the_rest(client, bad_images):
    imgs = [jpeg_bytes(1), bad_images["corrupt"], jpeg_bytes(2), bad_images["truncated"], jpeg_bytes(3)]
    parts = [("images", (f"i{k}.jpg", d, "image/jpeg")) for k, d in enumerate(imgs)]
    parts.append(("images", ("note.txt", b"text", "text/plain")))
    meta = [{"age": 30}, {}, {"sex": "male"}, None, {"site": "arm", "fst": "II"}, {}]
    resp = client.post("/batch_predict", files=parts, data={"metadata": json.dumps(meta)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [it["index"] for it in body["items"]] == list(range(6))
    assert [it["image"] for it in body["items"]] == [f"i{k}.jpg" for k in range(5)] + ["note.txt"]
    assert [it["status"] for it in body["items"]] == ["ok", "error", "ok", "error", "ok", "error"]
    assert body["ok"] == 3 and body["failed"] == 3
    assert "not a recognised" in body["items"][1]["error"] and "truncated" in body["items"][3]["error"]
    assert body["items"][1]["sha256"] == hashlib.sha256(bad_images["corrupt"]).hexdigest()  # as a --batch row
    assert "not an image" in body["items"][5]["error"]
    assert body["items"][0]["meta_age"] == 30.0 and body["items"][4]["fst_override"] == "II"
    single = client.post("/predict", files=files(imgs[2]), data={"sex": "male"}).json()
    assert {k: v for k, v in body["items"][2].items() if k != "index"} == {**single, "image": "i2.jpg"}


def test_batch_limits_and_bad_metadata(make_client):
    c = make_client(max_batch_items=2)
    three = [("images", (f"{k}.jpg", jpeg_bytes(k), "image/jpeg")) for k in range(3)]
    assert "limit of 2" in _error(c.post("/batch_predict", files=three), 413, "too_many_items")
    two = three[:2]
    _error(c.post("/batch_predict", files=two, data={"metadata": "[{}]"}), 422, "validation")
    _error(c.post("/batch_predict", files=two, data={"metadata": "not json"}), 422, "validation")
    reason = _error(c.post("/batch_predict", files=two, data={"metadata": '[{"age": 400}, {}]'}), 422, "validation")
    assert reason.startswith("metadata[0]: age")


# ------------------------------------------------------------------ /explain and jobs
def test_gradcam_gives_a_png_overlay_and_the_raw_map(client, good_jpeg):
    resp = client.post("/explain", files=files(good_jpeg), data={"target": "malignancy"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["method"] == "gradcam" and body["target"] == "malignancy"
    assert body["map_shape"] == [7, 7] and len(body["map"]) == 7  # the tiny model's feature map (254 / 32)
    flat = [v for row in body["map"] for v in row]
    assert min(flat) >= 0 and max(flat) <= 1
    png = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert png.format == "PNG" and png.size == (320, 240)
    assert body["result"]["status"] == "ok"
    _error(client.post("/explain", files=files(b"junk")), 422, "bad_image")
    _error(client.post("/explain", files=files(good_jpeg), data={"target": "everything"}), 422, "validation")


def _poll(client, job_id: str, states: set[str], timeout: float = 60.0) -> dict:
    t0 = time.monotonic()
    while True:
        body = client.get(f"/jobs/{job_id}").json()
        if body["state"] in states:
            return body
        assert time.monotonic() - t0 < timeout, body
        time.sleep(0.05)


def test_occlusion_runs_as_a_job_with_progress(client, good_jpeg):
    resp = client.post("/explain", files=files(good_jpeg), data={"method": "occlusion", "target": "top"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/jobs/{job['id']}" == job["poll"]
    done = _poll(client, job["id"], {"done", "failed"})
    assert done["state"] == "done", done
    res = done["result"]
    assert res["n_passes"] == 15 * 15 + 1 and done["progress"] == {"done": 226, "total": 226}
    assert len(res["map"]) == 15 and len(res["map"][0]) == 15
    assert Image.open(io.BytesIO(base64.b64decode(res["overlay_png_base64"]))).format == "PNG"
    _error(client.post("/explain", files=files(b"junk"), data={"method": "occlusion"}), 422, "bad_image")


def test_jobs_can_be_cancelled_and_unknown_ids_are_404(client, good_jpeg):
    ids = [client.post("/explain", files=files(good_jpeg), data={"method": "occlusion"}).json()["id"]
           for _ in range(3)]
    last = client.delete(f"/jobs/{ids[-1]}")
    assert last.status_code == 200 and last.json()["state"] in ("cancelled", "running", "done")
    assert _poll(client, ids[-1], {"cancelled", "done"})["state"] == "cancelled"  # queued behind two others
    _error(client.get("/jobs/0123"), 404, "not_found")
    _error(client.delete("/jobs/0123"), 404, "not_found")
    for i in ids[:-1]:
        client.delete(f"/jobs/{i}")


def test_a_full_job_store_answers_503(make_client, good_jpeg):
    c = make_client(max_jobs=1)
    first = c.post("/explain", files=files(good_jpeg), data={"method": "occlusion"})
    assert first.status_code == 202
    resp = c.post("/explain", files=files(good_jpeg), data={"method": "occlusion"})
    _error(resp, 503, "busy")
    assert resp.headers["retry-after"] == "10"
    c.delete(f"/jobs/{first.json()['id']}")


# ------------------------------------------------------------------ service endpoints
def test_health_ready_model_and_metrics(client, good_jpeg, tiny_bundle):
    h = client.get("/health").json()
    card = json.loads(tiny_bundle.read_text())
    assert h["status"] == "ok" and h["model_verified"] is True and h["model"]["sha256"] == card["sha256"]
    assert h["uptime_s"] >= 0 and h["queue_depth"] == 0 and h["batching"] is True and h["auth"] is False
    assert client.get("/ready").json() == {"ready": True, "reason": None}
    assert client.get("/model").json() == card
    client.post("/predict", files=files(good_jpeg))
    client.post("/predict", files=files(b"junk"))
    text = client.get("/metrics").text
    assert 'mendicant_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert 'mendicant_requests_total{endpoint="/predict",method="POST",status="422"} 1.0' in text
    assert 'mendicant_errors_total{kind="bad_image"} 1.0' in text
    assert f'mendicant_model_info{{name="{card["name"]}",sha256="{card["sha256"]}",version="{card["version"]}"}} 1.0' in text
    assert "mendicant_request_seconds_bucket" in text and "mendicant_inference_batch_images_count 1.0" in text
    assert "mendicant_ready 1.0" in text and "mendicant_queue_depth 0.0" in text


def test_readiness_fails_until_the_model_has_loaded(make_client, tiny_bundle, good_jpeg):
    from mendicant_desktop.app import load_engine

    gate = threading.Event()

    def slow_loader():
        gate.wait(30)
        return load_engine(str(tiny_bundle))

    c = make_client(ready=False, engine_loader=slow_loader)
    r = c.get("/ready")
    assert r.status_code == 503 and r.json()["reason"] == "the model is loading"
    assert c.get("/health").json()["status"] == "loading"
    resp = c.post("/predict", files=files(good_jpeg))
    _error(resp, 503, "not_ready")
    assert resp.headers["retry-after"] == "1"
    gate.set()
    wait_ready(c)
    assert c.post("/predict", files=files(good_jpeg)).status_code == 200


def test_a_model_that_fails_verification_is_reported(make_client, tiny_bundle, tmp_path, good_jpeg):
    import shutil

    for f in tiny_bundle.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    onnx = next(tmp_path.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"tampered")
    c = make_client(ready=False, model=str(tmp_path / tiny_bundle.name))
    t0 = time.monotonic()
    while c.get("/health").json()["status"] == "loading":
        assert time.monotonic() - t0 < 30
        time.sleep(0.02)
    h = c.get("/health")
    assert h.status_code == 503 and h.json()["status"] == "error" and "does not match" in h.json()["model_error"]
    assert c.get("/ready").status_code == 503
    assert "does not match" in _error(c.post("/predict", files=files(good_jpeg)), 503, "model_unavailable")


def test_docs_work_offline(client):
    html = client.get("/docs").text
    assert "/docs-static/swagger-ui-bundle.js" in html and "/docs-static/swagger-ui.css" in html
    assert "cdn" not in html.lower() and "googleapis" not in html.lower()
    js = client.get("/docs-static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs-static/swagger-ui.css").status_code == 200
    schema = client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    assert {"PredictResponse", "BatchResponse", "BatchItem", "ExplainResponse", "JobStatus", "Health",
            "ErrorResponse"} <= set(comps)
    assert set(comps["PredictResponse"]["properties"]) == set(S.ROW_COLUMNS) | set(S.EXTRA_FIELDS)
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    assert {"/predict", "/batch_predict", "/explain", "/health", "/ready", "/metrics", "/model",
            "/jobs/{job_id}"} <= set(schema["paths"])


def test_unknown_route_is_json_404(client):
    _error(client.get("/nope"), 404, "not_found")
    _error(client.get("/predict"), 405, "method_not_allowed")


# ------------------------------------------------------------------ security
@pytest.fixture
def keyed(make_client, tmp_path):
    path = tmp_path / "keys.txt"
    key = add_key(path, "pacs")
    return make_client(api_key_file=str(path), rate_limit_per_minute=3), key


def test_api_keys_are_required_when_configured(keyed, good_jpeg):
    c, key = keyed
    assert "X-API-Key" in _error(c.post("/predict", files=files(good_jpeg)), 401, "unauthorized")
    resp = c.post("/predict", files=files(good_jpeg), headers={"X-API-Key": key + "x"})
    assert _error(resp, 401, "unauthorized") == "unknown API key"
    assert resp.headers["www-authenticate"] == "X-API-Key"
    _error(c.get("/metrics"), 401, "unauthorized")
    _error(c.get("/model"), 401, "unauthorized")
    _error(c.post("/predict", content=b"x", headers={"content-type": "text/plain"}), 401, "unauthorized")
    assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200  # open for probes
    assert c.post("/predict", files=files(good_jpeg), headers={"X-API-Key": key}).status_code == 200
    assert c.get("/health").json()["auth"] is True


def test_rate_limit_answers_429_with_retry_after(keyed, good_jpeg):
    c, key = keyed
    h = {"X-API-Key": key}
    assert [c.get("/model", headers=h).status_code for _ in range(3)] == [200, 200, 200]
    resp = c.post("/predict", files=files(good_jpeg), headers=h)
    assert "3 requests per minute" in _error(resp, 429, "rate_limited")
    assert resp.headers["retry-after"] == "20"  # 3 a minute: the next token in 20 s
    assert c.get("/health").status_code == 200  # probes are never limited


def test_body_size_limit_by_header_and_by_stream(make_client):
    c = make_client(max_body_bytes=64 * 1024)
    big = jpeg_bytes(0, size=(1600, 1200))
    assert len(big) > 64 * 1024
    assert "exceeds" in _error(c.post("/predict", files=files(big)), 413, "too_large")

    def chunks():
        for _ in range(100):
            yield b"x" * 4096

    resp = c.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    _error(resp, 413, "too_large")
    assert c.post("/predict", files=files(jpeg_bytes(0))).status_code == 200


def test_slow_requests_time_out_with_504(make_client, tiny_bundle, good_jpeg):
    from mendicant_desktop.app import load_engine

    class Slow:
        def __init__(self, engine):
            self._e = engine

        def __getattr__(self, name):
            return getattr(self._e, name)

        def predict_preprocessed(self, *a, **k):
            time.sleep(1.0)
            return self._e.predict_preprocessed(*a, **k)

    c = make_client(engine_loader=lambda: Slow(load_engine(str(tiny_bundle))), request_timeout_s=0.3,
                    batch_window_ms=0)
    assert "0.3 s" in _error(c.post("/predict", files=files(good_jpeg)), 504, "timeout")
    assert c.get("/health").status_code == 200


def test_a_bug_is_a_json_500_and_the_server_keeps_serving(make_client, tiny_bundle, good_jpeg, caplog):
    from mendicant_desktop.app import load_engine

    class Flaky:
        calls = 0

        def __init__(self, engine):
            self._e = engine

        def __getattr__(self, name):
            return getattr(self._e, name)

        def predict_preprocessed(self, *a, **k):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("secret patient detail in a message")
            return self._e.predict_preprocessed(*a, **k)

    c = make_client(engine_loader=lambda: Flaky(load_engine(str(tiny_bundle))), batch_window_ms=0,
                    raise_server_exceptions=False)
    Flaky.calls = 0
    with caplog.at_level(logging.ERROR, logger="mendicant_desktop.server"):
        items = c.post("/batch_predict", files=[("images", ("a.jpg", good_jpeg, "image/jpeg"))]).json()["items"]
    assert items[0]["status"] == "error" and items[0]["error"].startswith("unexpected error while scoring: RuntimeError")
    Flaky.calls = 0
    with caplog.at_level(logging.ERROR, logger="mendicant_desktop.server"):
        resp = c.post("/predict", files=files(good_jpeg))
    assert resp.status_code == 500 and resp.json()["error"]["kind"] == "internal"
    assert "secret" not in resp.text
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == "mendicant_desktop.server"]
    assert lines and all("secret" not in line for line in lines) and '"exc_type": "RuntimeError"' in lines[-1]
    assert c.post("/predict", files=files(good_jpeg)).status_code == 200


def test_cors_is_off_by_default_and_follows_the_allow_list(make_client):
    origin = "https://ehr.clinic.local"
    off = make_client()
    assert "access-control-allow-origin" not in off.get("/health", headers={"Origin": origin}).headers
    on = make_client(cors_origins=(origin,))
    pre = on.options("/predict", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "X-API-Key"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
    other = on.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_access_log_is_json_without_patient_data(make_client, good_jpeg, caplog, tmp_path):
    path = tmp_path / "keys.txt"
    key = add_key(path, "ehr-bridge")
    c = make_client(api_key_file=str(path))
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        c.post("/predict", files=files(good_jpeg, "Jane_Doe_1957-03-02.jpg"),
               data={"age": "67", "sex": "female", "site": "head-or-neck"}, headers={"X-API-Key": key})
        c.post("/predict?patient=Jane+Doe", files=files(b"junk", "Jane_Doe.jpg"), headers={"X-API-Key": key})
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(records) == 2
    lines = [JsonFormatter().format(r) for r in records]
    for line in lines:
        assert "Jane" not in line and "Doe" not in line and "1957" not in line and "67" not in line.split('"ts"')[0]
        assert "female" not in line and "head" not in line and key not in line
    first, second = (json.loads(line) for line in lines)
    assert first["endpoint"] == "/predict" and first["status"] == 200 and first["key"] == "ehr-bridge"
    assert first["bytes_in"] > len(good_jpeg) and first["duration_ms"] > 0 and len(first["request_id"]) == 16
    assert second["status"] == 422 and second["error_kind"] == "bad_image"
    assert set(first) <= {"ts", "level", "logger", "msg", "request_id", "method", "endpoint", "status", "duration_ms",
                          "bytes_in", "bytes_out", "client", "key", "error_kind"}


def test_concurrent_predicts_are_batched(make_client):
    c = make_client(batch_window_ms=100, max_batch_size=8)
    imgs = [jpeg_bytes(k) for k in range(6)]
    out: dict[int, int] = {}

    def call(k):
        out[k] = c.post("/predict", files=files(imgs[k])).status_code

    threads = [threading.Thread(target=call, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == dict.fromkeys(range(6), 200)
    text = c.get("/metrics").text
    count = float(text.split("mendicant_inference_batch_images_count ")[1].split()[0])
    assert count < 6, "six concurrent requests within 100 ms should share ONNX Runtime runs"
