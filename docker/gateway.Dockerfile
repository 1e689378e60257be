# syntax=docker/dockerfile:1
#
# ShuffleGuard gateway: `shuffleguard serve` in front of an already running TorchServe
# (docker/torchserve.Dockerfile). Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t shuffleguard-gateway .
# Settings come from SHUFFLEGUARD_* environment variables (see docs/operations.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the project's core install (no torch) -----------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# The gateway decodes, shuffles, votes and talks HTTP: the core install (pyproject's
# `dependencies`) has all it needs. torch and TorchServe live in the `models` extra and
# in docker/torchserve.Dockerfile, so this image carries no torch (~1 GB less) and a
# gateway process stays near 90 MB of RSS.
RUN python -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ ./service/
RUN pip install . \
 && shuffleguard --help > /dev/null \
 && python -c "import service.gateway.app, sys; assert 'torch' not in sys.modules"

# ---- runtime -------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# tini as PID 1: forwards SIGTERM so `docker stop` shuts uvicorn down cleanly.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 shuffleguard \
 && useradd --system --uid 10001 --gid shuffleguard --create-home \
        --home-dir /home/shuffleguard --shell /usr/sbin/nologin shuffleguard

COPY --from=build /opt/venv /opt/venv

WORKDIR /home/shuffleguard
USER 10001:10001

EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "-g", "--"]
CMD ["shuffleguard", "serve", "--backend-url", "http://torchserve:8080", "--backend-management-url", "http://torchserve:8081", "--host", "0.0.0.0", "--port", "8000"]
