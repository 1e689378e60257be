"""The pipeline's pure pieces: the backend batch, the vote summary, effective parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.config import Settings
from service.defense import ShufflePreset, make_generator, shuffle_indices
from service.gateway.backend import ModelMeta
from service.gateway.errors import InvalidParameter
from service.gateway.pipeline import ClassifyParams, Pipeline, build_batch, summarize

META = ModelMeta(
    name="m",
    arch="test",
    clip_len=8,
    frame_interval=1,
    crop_size=4,
    labels=("a", "b", "c"),
    preset=ShufflePreset(h1=2, h2=1, ensemble=10),
)


def _frames(T: int = 8, size: int = 4) -> np.ndarray:
    """Frame t filled with the value t (so a frame says where it came from)."""
    return np.broadcast_to(
        np.arange(T, dtype=np.uint8)[:, None, None, None], (T, size, size, 3)
    ).copy()


def test_batch_is_clip_then_its_shuffles() -> None:
    frames = _frames()
    batch, indices = build_batch(frames, n=5, h1=2, h2=1, seed=3)
    assert batch.shape == (6, 8, 4, 4, 3) and batch.dtype == np.uint8
    assert indices.shape == (6, 8)
    np.testing.assert_array_equal(batch[0], frames)  # row 0: the clip, unshuffled
    assert indices[0].tolist() == list(range(8))
    expected = shuffle_indices(8, 2, 1, 5, generator=make_generator(3))
    assert torch.equal(indices[1:], expected)
    # every copied frame is the source frame its index names
    np.testing.assert_array_equal(batch[1:, :, 0, 0, 0], expected.numpy().astype(np.uint8))


def test_batch_is_reproducible_from_its_seed() -> None:
    frames = _frames()
    a, _ = build_batch(frames, n=10, h1=3, h2=2, seed=42)
    b, _ = build_batch(frames, n=10, h1=3, h2=2, seed=42)
    c, _ = build_batch(frames, n=10, h1=3, h2=2, seed=43)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_huge_h1_is_clamped_not_overflowed() -> None:
    frames = _frames()
    batch, indices = build_batch(frames, n=4, h1=10**30, h2=1, seed=0)
    assert int(indices.min()) >= 0 and int(indices.max()) < 8
    assert batch.shape[0] == 5


def _logits(rows: list[int], k: int = 3) -> np.ndarray:
    out = np.zeros((len(rows), k), np.float32)
    out[np.arange(len(rows)), rows] = 5.0
    return out


def test_summary_votes_and_suspicion() -> None:
    # undefended says c; shuffled copies vote a, a, a, b
    fields = summarize(_logits([2, 0, 0, 0, 1]), META, defense=True, threshold=0.5)
    assert fields["label"] == "a" and fields["label_index"] == 0
    assert fields["votes"] == {"a": 3, "b": 1}
    assert sum(fields["votes"].values()) == 4
    assert fields["confidence"] == pytest.approx(0.75)
    assert fields["undefended_label"] == "c"
    assert fields["suspected_adversarial"] is True  # the label flipped under shuffling


def test_low_agreement_is_suspected_even_without_a_flip() -> None:
    rows = [0, 0, 1, 2, 0, 1, 2, 0]  # undefended a; copies vote a 3, b 2, c 2
    fields = summarize(_logits(rows), META, defense=True, threshold=0.5)
    assert fields["label"] == "a" and fields["undefended_label"] == "a"
    assert fields["confidence"] == pytest.approx(3 / 7)
    assert fields["suspected_adversarial"] is True
    calm = summarize(_logits(rows), META, defense=True, threshold=0.4)
    assert calm["suspected_adversarial"] is False


def test_summary_without_defense_is_the_softmax_of_the_clip() -> None:
    logits = np.array([[1.0, 3.0, 0.0]], np.float32)
    fields = summarize(logits, META, defense=False, threshold=0.5)
    assert fields["label"] == "b" and fields["votes"] == {}
    assert fields["confidence"] == pytest.approx(float(torch.tensor(logits[0]).softmax(0)[1]))
    assert fields["suspected_adversarial"] is False


def test_unknown_class_index_gets_a_numeric_label() -> None:
    fields = summarize(_logits([4, 4], k=5), META, defense=True, threshold=0.5)
    assert fields["label"] == "4"


def test_effective_parameters() -> None:
    pipe = Pipeline.__new__(Pipeline)
    pipe.settings = Settings()
    assert pipe.effective(ClassifyParams(), META) == (10, 2, 1)
    assert pipe.effective(ClassifyParams(ensemble=3, h1=0, h2=8), META) == (3, 0, 8)
    with pytest.raises(InvalidParameter, match="h2=9"):
        pipe.effective(ClassifyParams(h2=9), META)
    pipe.settings = Settings(ensemble=20)  # the operator's ensemble beats the preset
    assert pipe.effective(ClassifyParams(), META)[0] == 20
    assert pipe.effective(ClassifyParams(ensemble=5), META)[0] == 5


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batch_gathered_on_the_gpu_equals_the_cpu_one() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    on_cpu, idx_cpu = build_batch(frames, n=10, h1=3, h2=2, seed=11, device="cpu")
    on_gpu, idx_gpu = build_batch(frames, n=10, h1=3, h2=2, seed=11, device="cuda")
    assert torch.equal(idx_cpu, idx_gpu)  # indices come from the CPU generator either way
    np.testing.assert_array_equal(on_cpu, on_gpu)
