"""Every model family through the real TorchServe and the real gateway.

One TorchServe (model API on, loopback) serves the whole module; each family's small
random-init archive (crop 32, a short clip: the real layers, a smaller input) is
registered, classifies a real H.264 clip through the gateway, and is unregistered.
The full-size archive (SlowFast R50 at its own 32 x 256 x 256) is a ``slow`` test.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.models.families import FAMILY_NAMES, get_family
from service.modelserver.archive import FamilyArchiveConfig, archive_family, build_mar
from service.modelserver.torchserve_proc import TorchServeProcess, free_ports
from tests import media
from tests.integration.helpers import (
    TINY,
    TINY_META,
    ColorNet,
    Gateway,
    running_torchserve,
    start_gateway_thread,
    wait_until,
)
from tests.unit.test_families import small_shape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

logger = logging.getLogger(__name__)
LABELS = ["alpha", "beta", "gamma"]


@dataclass
class FamilyServer:
    store: Path
    torchserve: TorchServeProcess
    gateway: Gateway
    labels_file: Path


@pytest.fixture(scope="module")
def family_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FamilyServer]:
    store = tmp_path_factory.mktemp("family_store")
    build_mar(ColorNet(), TINY_META, store)
    labels_file = store / "labels.txt"
    labels_file.write_text("\n".join(LABELS) + "\n")
    with running_torchserve(
        store,
        tmp_path_factory.mktemp("family_ts"),
        models=f"{TINY}.mar",
        extra={"enable_model_api": "true"},
    ) as server:
        gateway = start_gateway_thread(
            Settings(
                backend_url=server.inference_url,
                backend_management_url=server.management_url,
                default_model=TINY,
                research_mode=True,
                port=free_ports(1)[0],
                backend_timeout_s=300,
                metadata_ttl_s=0.5,  # models come and go in this module
            )
        )
        try:
            yield FamilyServer(store, server, gateway, labels_file)
        finally:
            gateway.stop()


def register(server: FamilyServer, name: str) -> None:
    response = httpx.post(
        f"{server.torchserve.management_url}/models",
        params={"url": f"{name}.mar", "initial_workers": 1, "synchronous": "true"},
        timeout=600,
    )
    assert response.status_code == 200, response.text


def unregister(server: FamilyServer, name: str) -> None:
    httpx.delete(f"{server.torchserve.management_url}/models/{name}", timeout=120)
    for suffix in (".mar", ".meta.json"):
        (server.store / f"{name}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_serves_a_real_clip(family: str, family_server: FamilyServer) -> None:
    clip_len, crop = small_shape(family)
    name = f"fam_{family}"
    t0 = time.monotonic()
    archive_family(
        FamilyArchiveConfig(
            family=family,
            name=name,
            out=family_server.store,
            random_init=True,
            labels=str(family_server.labels_file),
            h1=1,
            h2=1,
            ensemble=2,
            clip_len=clip_len,
            crop_size=crop,
            batch_size=1,
        )
    )
    t1 = time.monotonic()
    register(family_server, name)
    t2 = time.monotonic()
    try:
        video = media.write_kind(None, media.synthetic_frames(30, 72, 96, seed=1), "mp4_h264")
        url = family_server.gateway.url
        response = httpx.post(
            f"{url}/v1/classify",
            params={"model": name, "seed": 0},
            files={"file": ("clip.mp4", video, "video/mp4")},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == name and body["label"] in LABELS
        assert sum(body["votes"].values()) == 2 and body["ensemble"] == 2
        assert body["undefended_label"] in LABELS

        def listed() -> dict[str, Any] | None:
            models = httpx.get(f"{url}/v1/models", timeout=30).json()["models"]
            return next((m for m in models if m["name"] == name), None)

        wait_until(lambda: listed() is not None, timeout_s=20)
        entry = listed()
        assert entry is not None
        spec = get_family(family).spec.scaled(clip_len, crop)
        assert entry["weights"] == "random" and entry["arch"] == family
        assert (entry["clip_len"], entry["crop_size"]) == (clip_len, crop)
        assert entry["resize"] == (
            spec.resize if isinstance(spec.resize, int) else list(spec.resize)
        )
        assert entry["labels"] == LABELS
    finally:
        unregister(family_server, name)
    logger.info(
        "%s: archive %.1f s, register %.1f s, classify %.1f s",
        family,
        t1 - t0,
        t2 - t1,
        time.monotonic() - t2,
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_size_slowfast(family_server: FamilyServer) -> None:
    """SlowFast R50 at its own input (32 x 256 x 256), paper preset (ensemble 10): the
    gateway sends the 6.3 MB clip once with the frame indices (index mode), TorchServe's
    handler gathers the copies; a real clip in, a label out."""
    name = "full_slowfast_r50"
    t0 = time.monotonic()
    archive_family(
        FamilyArchiveConfig(
            family="slowfast_r50",
            name=name,
            out=family_server.store,
            random_init=True,
            batch_size=1,
            response_timeout_s=600,
        )
    )
    t1 = time.monotonic()
    register(family_server, name)
    t2 = time.monotonic()
    try:
        video = media.write_kind(None, media.synthetic_frames(90, 360, 640, seed=2), "mp4_h264")
        response = httpx.post(
            f"{family_server.gateway.url}/v1/classify",
            params={"model": name, "seed": 0},
            files={"file": ("clip.mp4", video, "video/mp4")},
            timeout=900,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["ensemble"] == 10 and (body["h1"], body["h2"]) == (2, 2)
        assert sum(body["votes"].values()) == body["votes_cast"] <= 10
        assert isinstance(body["label"], str)
        print(
            f"\nfull-size slowfast_r50 32x256x256: archive {t1 - t0:.1f} s, register"
            f" {t2 - t1:.1f} s, classify wall {time.monotonic() - t2:.1f} s,"
            f" timings_ms {body['timings_ms']}"
        )
    finally:
        unregister(family_server, name)


def test_index_mode_and_early_stop_with_a_real_family(family_server: FamilyServer) -> None:
    """torchvision r3d_18 (random init, 8 x 32 x 32) through TorchServe in index mode:
    for each seed, the early-stopped vote gives the full vote's label and flag."""
    name = "fam_r3d_18_index"
    archive_family(
        FamilyArchiveConfig(
            family="r3d_18",
            name=name,
            out=family_server.store,
            random_init=True,
            labels=str(family_server.labels_file),
            h1=2,
            h2=1,
            ensemble=6,
            clip_len=8,
            crop_size=32,
            batch_size=1,
        )
    )
    register(family_server, name)
    try:
        clip = media.npy_bytes(media.synthetic_frames(8, 32, 32, seed=3))
        url = f"{family_server.gateway.url}/v1/classify"
        for seed in range(3):
            params: dict[str, Any] = {"model": name, "seed": seed, "ensemble": 6}
            early = httpx.post(url, params=params, content=clip, timeout=300).json()
            full = httpx.post(
                url, params={**params, "early_stop": "false"}, content=clip, timeout=300
            ).json()
            for key in ("label", "suspected_adversarial", "undefended_label"):
                assert early[key] == full[key], (seed, key, early, full)
            assert full["votes_cast"] == 6 and 4 <= early["votes_cast"] <= 6
    finally:
        unregister(family_server, name)
