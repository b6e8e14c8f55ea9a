# MENDICANT Desktop local REST service (mendicant-desktop --serve), for one server on a clinic network.
#
#   docker build -t mendicant-api .
#   mendicant-desktop --serve --add-api-key pacs --api-key-file keys.txt     # on the host: prints the key once
#   sudo chown 10001 keys.txt     # the container's user must read it (it holds only hashes)
#   docker run -d -p 8000:8000 -v "$PWD/keys.txt:/run/secrets/mendicant_api_keys:ro" mendicant-api
#
# The bundled model (resources/models, sha256-verified at start-up) is installed inside the image. The
# container listens on 0.0.0.0, so the key file is required; put TLS in front, or mount a certificate and
# add --ssl-certfile/--ssl-keyfile (docs/api.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin mendicant

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mendicant_desktop ./mendicant_desktop
COPY compression ./compression
COPY resources ./resources
# A local path, not a registry name: the versions are those pinned by pyproject.toml's ranges.
# hadolint ignore=DL3013
RUN pip install ".[server]" \
    && rm -rf /src

USER 10001
WORKDIR /home/mendicant
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

ENTRYPOINT ["mendicant-desktop", "--serve"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--api-key-file", "/run/secrets/mendicant_api_keys"]
