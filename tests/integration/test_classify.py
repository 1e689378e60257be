"""Classify real encoded clips through the real gateway and the real TorchServe."""

from __future__ import annotations

import json
import zipfile

import httpx
import numpy as np
import pytest
import torch

from service import wire
from service.gateway.pipeline import build_batch
from service.torchserve_proc import TorchServeProcess
from service.video import decode_clip
from tests import media
from tests.integration.helpers import (
    COLORS,
    DEFAULT_MAR,
    TINY,
    TINY_META,
    ColorNet,
    Gateway,
    StartGateway,
    color_frames,
    first_frame_attack,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _direct_prediction(torchserve: TorchServeProcess, clip: np.ndarray, model: str = TINY) -> int:
    """The model's own prediction for one decoded clip: TorchServe called directly."""
    response = httpx.post(
        f"{torchserve.inference_url}/predictions/{model}",
        content=wire.encode_clips(clip[None]),
        headers={"Content-Type": wire.CONTENT_TYPE},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return int(wire.decode_logits(response.content)[0].argmax())


@pytest.mark.parametrize(
    "kind, color",
    [
        ("mp4_h264", "red"),
        ("webm_vp9", "green"),
        ("webm_vp8", "blue"),
        ("mkv_h264", "blue"),
        ("avi_mjpeg", "green"),
        ("mov_h264", "red"),
        ("gif", "red"),
    ],
)
def test_encoded_videos_agree_with_the_model(
    kind: str,
    color: str,
    research_gateway: Gateway,
    torchserve: TorchServeProcess,
    client: httpx.Client,
) -> None:
    codec = media.VIDEO_KINDS[kind][1]
    if not media.encoder_available(codec):
        pytest.skip(f"this PyAV build cannot encode {codec}")
    data = media.write_kind(None, color_frames(color), kind)
    r = client.post(f"{research_gateway.url}/v1/classify", content=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == color
    assert body["label_index"] == TINY_META["labels"].index(color)
    # the ensemble agrees with the model's own prediction on the clean clip ...
    assert body["undefended_label"] == color
    assert body["suspected_adversarial"] is False
    # ... and so does TorchServe called directly on the same decoded clip
    clip = decode_clip(data, clip_len=8, frame_interval=1, crop_size=32).frames
    assert _direct_prediction(torchserve, clip) == body["label_index"]
    assert body["votes"] == {color: 10} and body["ensemble"] == 10
    assert (body["h1"], body["h2"]) == (2, 1)
    assert set(body["timings_ms"]) == {"decode", "shuffle", "backend", "vote", "total"}
    assert body["timings_ms"]["total"] >= body["timings_ms"]["backend"] > 0


def test_short_clip_loops_and_portrait_is_cropped(
    research_gateway: Gateway, client: httpx.Client
) -> None:
    short = media.write_kind(None, color_frames("green", t=3), "mp4_h264")  # < clip_len
    portrait = media.write_kind(None, color_frames("blue", t=20, h=96, w=48), "mp4_h264")
    for data, color in ((short, "green"), (portrait, "blue")):
        r = client.post(f"{research_gateway.url}/v1/classify", content=data)
        assert r.status_code == 200, r.text
        assert r.json()["label"] == color


def test_multipart_upload(research_gateway: Gateway, client: httpx.Client) -> None:
    data = media.write_kind(None, color_frames("red"), "webm_vp9")
    r = client.post(
        f"{research_gateway.url}/v1/classify",
        files={"file": ("clip.webm", data, "video/webm")},
    )
    assert r.status_code == 200, r.text
    assert r.json()["label"] == "red"


def test_npy_at_model_shape_reaches_the_model_bit_exact(
    research_gateway: Gateway, client: httpx.Client
) -> None:
    """Votes predicted offline from the seed, the npy and ColorNet match the gateway's."""
    frames = np.empty((8, 32, 32, 3), np.uint8)
    frames[:] = 128
    frames[0], frames[1], frames[2] = COLORS["red"], COLORS["green"], COLORS["blue"]
    model = ColorNet()
    for seed in (1, 2, 3):
        batch, _ = build_batch(frames, n=16, h1=2, h2=1, seed=seed)
        x = torch.from_numpy(batch).permute(0, 4, 1, 2, 3).float() / 255.0
        preds = model(x).argmax(dim=1).tolist()
        expected = {TINY_META["labels"][k]: preds[1:].count(k) for k in set(preds[1:])}
        r = client.post(
            f"{research_gateway.url}/v1/classify?ensemble=16&seed={seed}",
            content=media.npy_bytes(frames),
            headers={"Content-Type": "application/x-npy"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["seed"] == seed
        assert body["votes"] == expected
        assert body["undefended_label"] == TINY_META["labels"][preds[0]] == "red"
        again = client.post(
            f"{research_gateway.url}/v1/classify?ensemble=16&seed={seed}",
            files={"file": ("clip.npy", media.npy_bytes(frames), "application/x-npy")},
        )
        assert again.json()["votes"] == body["votes"]  # the seed reproduces the result


def test_first_frame_attack_is_caught(research_gateway: Gateway, client: httpx.Client) -> None:
    r = client.post(
        f"{research_gateway.url}/v1/classify", content=media.npy_bytes(first_frame_attack())
    )
    body = r.json()
    assert body["undefended_label"] == "blue"  # the perturbation fools the bare model
    assert body["label"] == "red" and body["votes"] == {"red": 10}  # the shuffles do not
    assert body["suspected_adversarial"] is True
    undefended = client.post(
        f"{research_gateway.url}/v1/classify?defense=false",
        content=media.npy_bytes(first_frame_attack()),
    ).json()
    assert undefended["label"] == "blue" and undefended["votes"] == {}
    assert (undefended["ensemble"], undefended["h1"], undefended["h2"]) == (0, None, None)
    assert undefended["suspected_adversarial"] is False
    assert 0.33 < undefended["confidence"] <= 1.0


@pytest.mark.parametrize("ensemble", [1, 64])
def test_ensemble_bounds(ensemble: int, research_gateway: Gateway, client: httpx.Client) -> None:
    r = client.post(
        f"{research_gateway.url}/v1/classify?ensemble={ensemble}&h1=0&h2=8",
        content=media.npy_bytes(color_frames("green", t=8, h=32, w=32)),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert sum(body["votes"].values()) == body["ensemble"] == ensemble
    assert body["seed"] >= 0  # drawn, and returned so the result can be reproduced


def test_request_id_is_echoed_in_header_and_body(
    research_gateway: Gateway, client: httpx.Client
) -> None:
    r = client.post(
        f"{research_gateway.url}/v1/classify?model={TINY}",
        content=media.npy_bytes(first_frame_attack()),
        headers={"X-Request-ID": "trace-me-123"},
    )
    assert r.headers["x-request-id"] == "trace-me-123"
    assert r.json()["request_id"] == "trace-me-123" and r.json()["model"] == TINY


def test_models_endpoint(research_gateway: Gateway, client: httpx.Client) -> None:
    models = {
        m["name"]: m for m in client.get(f"{research_gateway.url}/v1/models").json()["models"]
    }
    tiny = models[TINY]
    assert tiny["default"] is True
    for key in ("arch", "clip_len", "frame_interval", "crop_size", "labels", "preset"):
        assert tiny[key] == TINY_META[key]
    assert client.get(f"{research_gateway.url}/readyz").json()["model"] == TINY


@pytest.mark.skipif(
    not DEFAULT_MAR.is_file(), reason="model_store/toy_r3d18.mar is not built in this checkout"
)
def test_default_model_agrees_with_itself_on_clean_toy_clips(
    start_gateway: StartGateway, torchserve: TorchServeProcess, client: httpx.Client
) -> None:
    from service.toy.contrast import blend_towards_background
    from service.toy.data import generate_toy_dataset

    with zipfile.ZipFile(DEFAULT_MAR) as mar:  # a .mar is a zip; meta.json is inside
        meta = json.loads(mar.read("meta.json"))
    gateway = start_gateway(default_model=meta["name"])
    data = generate_toy_dataset(
        int(meta.get("dataset") or 1),
        count=6 * 8,
        frames=int(meta["clip_len"]),
        size=int(meta["crop_size"]),
        seed=12345,
    )
    # the clips the model was trained on: docs/default_model.md (contrast 0.4)
    blended = blend_towards_background(data, float(meta.get("contrast", 0.4)))
    clips = [blended[np.flatnonzero(data.labels == k)[0]] for k in range(6)]
    agree = 0
    for i, clip in enumerate(clips):
        r = client.post(f"{gateway.url}/v1/classify?seed={i}", content=media.npy_bytes(clip))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == meta["name"]
        own = _direct_prediction(torchserve, clip, meta["name"])
        assert body["undefended_label"] == meta["labels"][own]
        agree += body["label_index"] == own
    assert agree >= len(clips) - 1, f"ensemble agreed with the model on {agree}/{len(clips)}"
