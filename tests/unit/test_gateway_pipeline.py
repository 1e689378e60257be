"""The pipeline: copy-mode batches, effective parameters, and the backend rounds of
early stopping against the real handler run in-process (a :class:`Backend` that
parses the wire bytes with :class:`ShuffleGuardHandler` and runs a real model)."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import Settings
from service.core.presets import ShufflePreset
from service.core.shuffle import ensemble_indices
from service.gateway.errors import InvalidParameter
from service.gateway.pipeline import Effective, Pipeline, Shuffles, build_batch
from service.gateway.schemas import ClassifyRequest
from service.gateway.upload import Upload
from service.modelserver import wire
from service.modelserver.handler import ShuffleGuardHandler
from service.modelserver.meta import ModelMeta
from tests import media

META = ModelMeta(
    name="m",
    arch="test",
    clip_len=8,
    frame_interval=1,
    crop_size=4,
    labels=("a", "b", "c"),
    preset=ShufflePreset(h1=2, h2=1, ensemble=10),
    extra={"wire_modes": ["copy", "index"]},
)


def _frames(T: int = 8, size: int = 4) -> np.ndarray:
    """Frame t filled with the value t (so a frame says where it came from)."""
    return np.broadcast_to(
        np.arange(T, dtype=np.uint8)[:, None, None, None], (T, size, size, 3)
    ).copy()


def test_copy_batch_is_the_frames_its_indices_name() -> None:
    frames = _frames()
    indices = ensemble_indices(8, 2, 1, 5, seed=3)
    batch = build_batch(frames, indices)
    assert batch.shape == (6, 8, 4, 4, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[0], frames)  # row 0: the clip, unshuffled
    np.testing.assert_array_equal(batch[:, :, 0, 0, 0], indices.astype(np.uint8))


def test_effective_parameters() -> None:
    pipe = Pipeline.__new__(Pipeline)
    pipe.settings = Settings()
    eff = pipe.effective(ClassifyRequest(seed=1), META)
    assert eff.seed == 1 and eff.shuffles == Shuffles(ensemble=10, h1=2, h2=1, early_stop=True)
    eff = pipe.effective(ClassifyRequest(ensemble=3, h1=0, h2=8, early_stop=False), META)
    assert eff.shuffles == Shuffles(ensemble=3, h1=0, h2=8, early_stop=False)
    assert pipe.effective(ClassifyRequest(defense=False), META).shuffles is None
    with pytest.raises(InvalidParameter, match="h2=9"):
        pipe.effective(ClassifyRequest(h2=9), META)
    pipe.settings = Settings(ensemble=20, early_stop=False)  # the operator's beat the preset
    assert _shuffles(pipe.effective(ClassifyRequest(), META)).ensemble == 20
    assert _shuffles(pipe.effective(ClassifyRequest(ensemble=5), META)).ensemble == 5
    assert _shuffles(pipe.effective(ClassifyRequest(), META)).early_stop is False


def _shuffles(eff: Effective) -> Shuffles:
    assert eff.shuffles is not None
    return eff.shuffles


def test_model_meta_validation() -> None:
    good = {
        "name": "x",
        "arch": "r3d",
        "clip_len": 16,
        "frame_interval": 2,
        "crop_size": 64,
        "labels": ["p", "q"],
        "preset": {"h1": 3, "h2": 1, "ensemble": 10},
        "dataset": 1,
    }
    meta = ModelMeta.from_dict(good)
    assert meta.preset == ShufflePreset(3, 1, 10) and meta.extra == {"dataset": 1}
    assert meta.public()["preset"] == {"h1": 3, "h2": 1, "ensemble": 10}
    for broken in (
        {k: v for k, v in good.items() if k != "labels"},
        {**good, "labels": []},
        {**good, "clip_len": 0},
        {**good, "preset": {"h1": 1, "h2": 17, "ensemble": 10}},
        {**good, "preset": {"h1": 1, "h2": 1, "ensemble": 0}},
    ):
        with pytest.raises(ValueError):
            ModelMeta.from_dict(broken)


# --------------------------------------------------------------------------- #
# Rounds against the real handler, in-process
# --------------------------------------------------------------------------- #
class FrameNet(torch.nn.Module):
    """float ``[B, 3, T, H, W]`` -> logits ``[B, 3]`` from a fixed random projection of
    the first frames' mean colours: the label depends on the frame order, so
    shuffles disagree on some clips and agree on others."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(3 * 3, 3, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x[:, :, :3].mean(dim=(3, 4)).flatten(1)  # [B, 3 * 3]
        return 20.0 * (first - 0.5) @ self.w


class HandlerBackend:
    """A :class:`Backend` that answers with :class:`ShuffleGuardHandler` in this process,
    from the same wire bytes TorchServe would pass it."""

    def __init__(self, model: torch.nn.Module, meta: ModelMeta) -> None:
        self.handler = ShuffleGuardHandler()
        self.handler.meta = {"clip_len": meta.clip_len, "crop_size": meta.crop_size}
        self.handler.model = model
        self.handler.initialized = True
        self.bodies: list[int] = []

    def _answer(self, body: bytes) -> np.ndarray:
        self.bodies.append(len(body))
        (out,) = self.handler.handle([{"body": bytearray(body)}], None)
        return wire.decode_logits(out)

    async def infer(
        self, model: str, clips: np.ndarray, *, headers: Mapping[str, str] | None = None
    ) -> np.ndarray:
        return self._answer(wire.encode_clips(clips))

    async def infer_indexed(
        self,
        model: str,
        clip: np.ndarray,
        indices: np.ndarray,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        return self._answer(wire.encode_indexed(clip, indices))


def _pipeline(backend: HandlerBackend, **overrides: object) -> Pipeline:
    pipe = Pipeline(Settings(**overrides), backend, catalog=None)  # type: ignore[arg-type]
    return pipe


def _classify(pipe: Pipeline, clip: np.ndarray, params: Effective) -> object:
    upload = Upload(data=media.npy_bytes(clip), content_type="application/x-npy")

    async def go() -> object:
        return await pipe.classify(upload, params, META)

    return anyio.run(go)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    model_seed=st.integers(0, 50),
    clip_seed=st.integers(0, 10_000),
    seed=st.integers(0, 2**32),
    N=st.integers(1, 16),
    threshold=st.sampled_from([0.3, 0.5, 0.7, 0.9]),
    mode=st.sampled_from(["index", "copy"]),
)
def test_early_stop_gives_the_full_votes_label_and_flag(
    model_seed: int, clip_seed: int, seed: int, N: int, threshold: float, mode: str
) -> None:
    backend = HandlerBackend(FrameNet(model_seed), META)
    rng = np.random.default_rng(clip_seed)
    clip = rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    pipe = _pipeline(backend, suspicion_threshold=threshold, shuffle_mode=mode)
    full = _classify(pipe, clip, Effective(seed, Shuffles(N, h1=2, h2=1, early_stop=False)))
    early = _classify(pipe, clip, Effective(seed, Shuffles(N, h1=2, h2=1, early_stop=True)))
    assert full.votes_cast == N and sum(full.votes.values()) == N  # type: ignore[attr-defined]
    for name in ("label", "label_index", "suspected_adversarial", "undefended_label"):
        assert getattr(early, name) == getattr(full, name), name
    assert sum(early.votes.values()) == early.votes_cast <= N  # type: ignore[attr-defined]
    assert early.ensemble == N  # type: ignore[attr-defined]


def test_unanimous_clip_takes_one_round_and_index_mode_sends_the_clip_once() -> None:
    backend = HandlerBackend(FrameNet(0), META)
    clip = np.full((8, 4, 4, 3), 200, np.uint8)  # every shuffle is the same clip
    pipe = _pipeline(backend)
    params = Effective(seed=1, shuffles=Shuffles(ensemble=10, h1=2, h2=1, early_stop=True))
    verdict = _classify(pipe, clip, params)
    assert verdict.votes_cast == 6 and verdict.backend_rounds == 1  # type: ignore[attr-defined]
    assert len(backend.bodies) == 1
    # one clip + [7, 8] int64 indices + two npy headers
    assert backend.bodies[0] <= clip.nbytes + 7 * 8 * 8 + 2 * 128
    assert verdict.backend_bytes == clip.nbytes + 7 * 8 * 8  # type: ignore[attr-defined]

    copy = _pipeline(backend, shuffle_mode="copy")
    verdict = _classify(copy, clip, params)
    assert verdict.backend_bytes == 7 * clip.nbytes  # type: ignore[attr-defined]


def test_an_archive_without_index_mode_is_sent_copies() -> None:
    backend = HandlerBackend(FrameNet(0), META)
    old = ModelMeta(**{**META.__dict__, "extra": {}})
    clip = np.full((8, 4, 4, 3), 200, np.uint8)
    upload = Upload(data=media.npy_bytes(clip), content_type="application/x-npy")
    params = Effective(seed=1, shuffles=Shuffles(ensemble=4, h1=2, h2=1, early_stop=False))

    async def go() -> object:
        return await _pipeline(backend).classify(upload, params, old)

    verdict = anyio.run(go)
    assert verdict.backend_bytes == 5 * clip.nbytes  # type: ignore[attr-defined]


def test_index_and_copy_mode_agree_bit_for_bit() -> None:
    backend = HandlerBackend(FrameNet(3), META)
    clip = np.random.default_rng(0).integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    params = Effective(seed=9, shuffles=Shuffles(ensemble=12, h1=3, h2=2, early_stop=False))
    a = _classify(_pipeline(backend, shuffle_mode="index"), clip, params)
    b = _classify(_pipeline(backend, shuffle_mode="copy"), clip, params)
    assert a.votes == b.votes and a.confidence == b.confidence  # type: ignore[attr-defined]


def test_the_gateway_does_not_import_torch() -> None:
    """Decoding, resize, indices, wire, vote and HTTP need no torch, so a gateway
    process does not load it (~600 MB of RSS). Checked in a fresh interpreter."""
    from service.bench.serve import torch_importers

    assert torch_importers() == []
