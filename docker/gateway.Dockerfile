# syntax=docker/dockerfile:1
#
# ShuffleGuard gateway: `shuffleguard serve` in front of an already running TorchServe
# (docker/torchserve.Dockerfile). Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t shuffleguard-gateway .
# Settings come from SHUFFLEGUARD_* environment variables (see docs/operations.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the project and its pinned torch ----------------------
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# torch first, from the CPU index: `pip install .` then finds its torch==2.14.1 pin
# already met (2.14.1+cpu matches it) and does not pull the CUDA build.
RUN python -m venv /opt/venv \
 && pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ ./service/
RUN pip install . \
 && shuffleguard --help > /dev/null

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
