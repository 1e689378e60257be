# syntax=docker/dockerfile:1
#
# TorchServe 0.12 backend for ShuffleGuard: serves every .mar in model_store/.
# Build from the repository root (docker-compose.yml does this):
#   docker build -f docker/torchserve.Dockerfile -t shuffleguard-torchserve .
#
# The .mar handler depends on torch and numpy only (see service/modelserver/handler.py), so the
# image carries no copy of the `service` package. Models are baked in: after
# `shuffleguard archive`, rebuild this image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCHSERVE_VERSION=0.12.0
ARG NUMPY_VERSION=2.4.6
ARG PYYAML_VERSION=6.0.4

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Java 17 for TorchServe's frontend; tini as PID 1 so `docker stop` reaches the JVM
# and the Python workers (-g: signal the whole process group).
# The man1 directory must exist or the JRE's postinst fails on slim images.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
 && rm -rf /var/lib/apt/lists/*

# CPU torch from PyTorch's CPU index keeps the image small; then TorchServe itself.
RUN python -m venv /opt/venv \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install "torchserve==${TORCHSERVE_VERSION}" "torch-model-archiver==${TORCHSERVE_VERSION}" \
        "numpy==${NUMPY_VERSION}" "pyyaml==${PYYAML_VERSION}" \
 && python -c "import torch, ts; print('torch', torch.__version__)"

RUN groupadd --system --gid 10002 model-server \
 && useradd --system --uid 10002 --gid model-server --create-home \
        --home-dir /home/model-server --shell /usr/sbin/nologin model-server

COPY model_store/ /app/model_store/
COPY docker/torchserve.config.properties /app/config/container.properties

# The effective config: the repository's model_store/config.properties (if any), then the
# container overrides; a later key wins (Java properties), so the container binds 0.0.0.0.
RUN { if [ -f /app/model_store/config.properties ]; then \
          cat /app/model_store/config.properties; echo; \
      fi; \
      cat /app/config/container.properties; } > /app/config/config.properties \
 && chmod -R a+rX /app

# TorchServe writes logs/ (and its pid file goes to /tmp) relative to the working dir.
WORKDIR /home/model-server
USER 10002:10002

EXPOSE 8080 8081 8082

# Healthy = every registered model has a READY worker (management API), and there is
# at least one model. /ping is not enough: TorchServe 0.12 answers it before workers load.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import json, sys, urllib.request as u; g = lambda p: json.load(u.urlopen('http://127.0.0.1:8081' + p, timeout=4)); m = [x['modelName'] for x in g('/models')['models']]; sys.exit(0 if m and all(any(w['status'] == 'READY' for w in d['workers']) for x in m for d in g('/models/' + x)) else 1)"]

ENTRYPOINT ["/usr/bin/tini", "-g", "--"]
CMD ["torchserve", "--start", "--foreground", "--ncs", "--disable-token-auth", "--model-store", "/app/model_store", "--ts-config", "/app/config/config.properties", "--models", "all"]
