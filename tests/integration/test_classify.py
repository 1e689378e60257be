"""Classify real encoded clips through the real gateway and the real TorchServe."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from service.core.shuffle import ensemble_indices
from service.decoder.decode import decode_clip
from service.gateway.pipeline import build_batch
from service.modelserver import wire
from service.modelserver.torchserve_proc import TorchServeProcess
from tests import media
from tests.integration.helpers import (
    COLORS,
    DEFAULT_MAR,
    SHIPPED_MARS,
    TINY,
    TINY_META,
    ColorNet,
    Gateway,
    StartGateway,
    archive_meta,
    color_frames,
    first_frame_attack,
    toy_clips_for,
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
    assert body["votes"] == {color: 6} and body["ensemble"] == 10  # decided in one round
    assert body["votes_cast"] == 6
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
        batch = build_batch(frames, ensemble_indices(8, 2, 1, 16, seed))
        x = torch.from_numpy(batch).permute(0, 4, 1, 2, 3).float() / 255.0
        preds = model(x).argmax(dim=1).tolist()
        expected = {TINY_META["labels"][k]: preds[1:].count(k) for k in set(preds[1:])}
        r = client.post(
            f"{research_gateway.url}/v1/classify?ensemble=16&seed={seed}&early_stop=false",
            content=media.npy_bytes(frames),
            headers={"Content-Type": "application/x-npy"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["seed"] == seed
        assert body["votes"] == expected
        assert body["undefended_label"] == TINY_META["labels"][preds[0]] == "red"
        again = client.post(
            f"{research_gateway.url}/v1/classify?ensemble=16&seed={seed}&early_stop=false",
            files={"file": ("clip.npy", media.npy_bytes(frames), "application/x-npy")},
        )
        assert again.json()["votes"] == body["votes"]  # the seed reproduces the result


def test_first_frame_attack_is_caught(research_gateway: Gateway, client: httpx.Client) -> None:
    r = client.post(
        f"{research_gateway.url}/v1/classify", content=media.npy_bytes(first_frame_attack())
    )
    body = r.json()
    assert body["undefended_label"] == "blue"  # the perturbation fools the bare model
    assert body["label"] == "red"  # the shuffles do not
    # a flip is suspected whatever the rest votes: one round (a strict majority) decides
    assert body["votes"] == {"red": 6} and body["votes_cast"] == 6 and body["ensemble"] == 10
    assert body["suspected_adversarial"] is True
    undefended = client.post(
        f"{research_gateway.url}/v1/classify?defense=false",
        content=media.npy_bytes(first_frame_attack()),
    ).json()
    assert undefended["label"] == "blue" and undefended["votes"] == {}
    assert (undefended["ensemble"], undefended["h1"], undefended["h2"]) == (0, None, None)
    assert undefended["votes_cast"] == 0
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
    assert body["ensemble"] == ensemble
    assert sum(body["votes"].values()) == body["votes_cast"] == ensemble // 2 + 1  # unanimous
    assert body["seed"] >= 0  # drawn, and returned so the result can be reproduced
    r = client.post(
        f"{research_gateway.url}/v1/classify?ensemble={ensemble}&h1=0&h2=8&early_stop=false",
        content=media.npy_bytes(color_frames("green", t=8, h=32, w=32)),
    )
    assert sum(r.json()["votes"].values()) == r.json()["votes_cast"] == ensemble


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


@pytest.mark.parametrize("mar", SHIPPED_MARS, ids=lambda p: p.stem)
def test_shipped_models_agree_with_themselves_on_clean_toy_clips(
    mar: Path, start_gateway: StartGateway, torchserve: TorchServeProcess, client: httpx.Client
) -> None:
    """Every shipped model, served: the ensemble's vote agrees with the model's own
    prediction on fresh clips of its own data recipe (meta.json ``data``)."""
    assert mar.is_file(), f"{mar} is missing: model_store ships it (rebuild: docs/default_model.md)"
    meta = archive_meta(mar)
    gateway = start_gateway(default_model=meta["name"])
    data, labels = toy_clips_for(meta, count=6 * 8, seed=12345)
    clips = [data[np.flatnonzero(labels == k)[0]] for k in range(6)]
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


def test_index_and_copy_mode_give_the_same_votes(
    research_gateway: Gateway, start_gateway: StartGateway, client: httpx.Client
) -> None:
    copy_gateway = start_gateway(shuffle_mode="copy")
    frames = np.empty((8, 32, 32, 3), np.uint8)
    frames[:] = 128
    frames[0], frames[1], frames[3] = COLORS["blue"], COLORS["green"], COLORS["blue"]
    for seed in (4, 5):
        bodies = [
            client.post(
                f"{g.url}/v1/classify?ensemble=12&seed={seed}&early_stop=false",
                content=media.npy_bytes(frames),
            ).json()
            for g in (research_gateway, copy_gateway)
        ]
        for key in ("votes", "label", "confidence", "undefended_label", "suspected_adversarial"):
            assert bodies[0][key] == bodies[1][key], key


def test_handler_refuses_bad_index_payloads_with_400(
    torchserve: TorchServeProcess, client: httpx.Client
) -> None:
    clip = np.zeros((8, 32, 32, 3), np.uint8)
    url = f"{torchserve.inference_url}/predictions/{TINY}"
    headers = {"Content-Type": wire.CONTENT_TYPE}
    good = np.tile(np.arange(8), (3, 1))
    bad = {
        "index out of range": wire.encode_indexed(clip, np.full((3, 8), 8)),
        "negative index": wire.encode_indexed(clip, np.full((3, 8), -1)),
        "indices missing": wire.encode_array(clip),
        "indices for another T": wire.encode_array(clip)
        + wire.encode_array(np.zeros((3, 7), np.int64)),
        "trailing bytes": wire.encode_indexed(clip, good) + b"x",
        "truncated": wire.encode_indexed(clip, good)[:-1],
        "too many rows": wire.encode_indexed(clip, np.zeros((129, 8), np.int64)),
    }
    for why, body in bad.items():
        r = client.post(url, content=body, headers=headers)
        assert r.status_code == 400, why
    r = client.post(url, content=wire.encode_indexed(clip, good), headers=headers)
    assert r.status_code == 200 and wire.decode_logits(r.content).shape == (3, 3)


def test_early_stop_equals_the_full_vote_with_the_real_model(
    start_gateway: StartGateway, client: httpx.Client
) -> None:
    """The shipped model on clean and first-frame-attacked toy clips: for each seed, the
    early-stopped vote gives the full vote's label and flag, with fewer copies."""
    assert DEFAULT_MAR.is_file(), f"{DEFAULT_MAR} is missing: model_store ships it"
    meta = archive_meta(DEFAULT_MAR)
    gateway = start_gateway(default_model=meta["name"])
    clips = list(toy_clips_for(meta, count=8, seed=777)[0])
    attacked = clips[0].copy()
    attacked[0] = clips[1][0]  # another class's first frame: a crude temporal attack
    cast = []
    for i, clip in enumerate([*clips, attacked]):
        url = f"{gateway.url}/v1/classify?seed={i}&ensemble=10"
        early = client.post(url, content=media.npy_bytes(clip)).json()
        full = client.post(f"{url}&early_stop=false", content=media.npy_bytes(clip)).json()
        for key in ("label", "suspected_adversarial", "undefended_label"):
            assert early[key] == full[key], (i, key, early, full)
        assert full["votes_cast"] == 10 and sum(early["votes"].values()) == early["votes_cast"]
        cast.append(early["votes_cast"])
    assert min(cast) < 10  # some votes were decided early
