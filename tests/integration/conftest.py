"""Real TorchServe + real gateways on free loopback ports, once per session.

* ``model_store``: a temporary model store with ``tiny_color.mar``, a tiny
  TorchScript model built here with :func:`service.modelserver.archive.build_mar`, plus the
  archives the repository ships (``model_store/*.mar``: the default model and the
  documented failure case, docs/default_model.md) when they have been built.
  ``tiny_color`` makes every outcome checkable by hand: its logits are
  ``3 * mean RGB of frame 0 + mean RGB of the clip``, so a clip's label is its
  dominant colour, and a clip whose first frame differs from the rest is an
  "attack" that only the temporal position carries -- the shuffles move it away.
* ``torchserve``: one TorchServe for the whole session (its start-up is the
  slow part, 10-20 s).
* ``start_gateway``: starts a gateway (uvicorn in a thread, on a free port)
  for given settings; the session's research and production gateways and the
  tests' special-purpose ones all use the same TorchServe.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.modelserver.archive import build_mar
from service.modelserver.torchserve_proc import TorchServeProcess, free_ports
from tests.integration.helpers import (
    SHIPPED_MARS,
    TINY,
    TINY_META,
    ColorNet,
    Gateway,
    StartGateway,
    running_torchserve,
    start_gateway_thread,
)


# --------------------------------------------------------------------------- #
# TorchServe
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("model_store")
    build_mar(ColorNet(), TINY_META, store, batch_size=4, max_batch_delay_ms=5)
    for mar in SHIPPED_MARS:  # the default model and the others model_store ships
        if mar.is_file():
            (store / mar.name).symlink_to(mar.resolve())
    return store


@pytest.fixture(scope="session")
def torchserve(
    model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchServeProcess]:
    with running_torchserve(model_store, tmp_path_factory.mktemp("torchserve")) as server:
        yield server


# --------------------------------------------------------------------------- #
# Gateways
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="session")
def start_gateway(torchserve: TorchServeProcess) -> Iterator[StartGateway]:
    """Factory: ``start_gateway(**settings) -> Gateway`` against the session's TorchServe
    (research mode and ``tiny_color`` as default model unless overridden)."""
    started: list[Gateway] = []

    def start(**overrides: object) -> Gateway:
        values: dict[str, object] = {
            "backend_url": torchserve.inference_url,
            "backend_management_url": torchserve.management_url,
            "default_model": TINY,
            "research_mode": True,
            "port": free_ports(1)[0],
        }
        values.update(overrides)
        gateway = start_gateway_thread(Settings(**values))
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def research_gateway(start_gateway: StartGateway) -> Gateway:
    return start_gateway()


@pytest.fixture(scope="session")
def prod_gateway(start_gateway: StartGateway) -> Gateway:
    return start_gateway(research_mode=False)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60.0, trust_env=False) as c:
        yield c
