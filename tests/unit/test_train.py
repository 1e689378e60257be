"""Training loop: the loss goes down, runs are reproducible, checkpoints round-trip."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from service.cli import main
from service.models.checkpoints import load_checkpoint
from service.research.toy.data import ClipSet, generate_toy_dataset, write_toy_dataset
from service.research.train import (
    ARCH,
    TrainConfig,
    TrainResult,
    augment_batch,
    clips_to_input,
    evaluate_accuracy,
    save_checkpoint,
    stratified_holdout,
    train_model,
)

# Tiny on purpose: 24 training clips of 4x16x16, one thread (the CPU is shared).
TINY = TrainConfig(base_width=8, batch_size=8, lr=5e-3, channels_last=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data() -> ClipSet:
    return generate_toy_dataset(1, 32, seed=0, frames=4, size=16).as_clipset()


@pytest.fixture(scope="module")
def tiny_run(tiny_data: ClipSet, _one_thread: None) -> TrainResult:
    train, test = tiny_data.select("train"), tiny_data.select("test")
    return train_model(
        train.clips,
        train.labels,
        num_classes=8,
        config=replace(TINY, epochs=10, seed=3),
        test_clips=test.clips,
        test_labels=test.labels,
        progress=False,
    )


def test_clips_to_input_layout() -> None:
    clips = torch.randint(0, 256, (2, 4, 6, 5, 3), dtype=torch.uint8)
    x = clips_to_input(clips)
    assert x.shape == (2, 3, 4, 6, 5) and x.dtype == torch.float32
    assert torch.equal(x[1, 2, 3, 4, 0], clips[1, 3, 4, 0, 2].float() / 255)
    with pytest.raises(ValueError):
        clips_to_input(clips[0])


def test_augment_keeps_range_and_motion() -> None:
    gen = torch.Generator().manual_seed(0)
    frame = torch.rand(4, 3, 1, 12, 12)
    x = frame.expand(4, 3, 5, 12, 12).contiguous()  # a still clip
    out = augment_batch(x, gen, max_shift=2)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    # one shift per clip: a still clip stays still
    assert torch.allclose(out, out[:, :, :1].expand_as(out))
    assert not torch.allclose(out, x)


def test_loss_goes_down_and_model_learns(tiny_run: TrainResult) -> None:
    losses = [h["loss"] for h in tiny_run.history]
    assert len(losses) == 10
    assert losses[-1] < 0.6 * losses[0], losses
    assert tiny_run.test_accuracy is not None and tiny_run.test_accuracy > 0.25
    assert not tiny_run.model.training


def test_same_seed_same_weights(tiny_data: ClipSet) -> None:
    train = tiny_data.select("train")
    # the default channels_last_3d path, which fig5 and the CLI use
    cfg = replace(TINY, epochs=1, seed=11, channels_last=True)
    a = train_model(train.clips, train.labels, num_classes=8, config=cfg, progress=False)
    b = train_model(train.clips, train.labels, num_classes=8, config=cfg, progress=False)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    cfg_other = replace(cfg, seed=12)
    c = train_model(train.clips, train.labels, num_classes=8, config=cfg_other, progress=False)
    assert not torch.equal(sa["fc.weight"], c.model.state_dict()["fc.weight"])


def test_checkpoint_round_trip(tiny_run: TrainResult, tiny_data: ClipSet, tmp_path: Path) -> None:
    cfg = replace(TINY, epochs=10, seed=3)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(
        tiny_run,
        path,
        labels=tiny_data.label_names,
        clip_len=4,
        crop_size=16,
        config=cfg,
        dataset=1,
    )
    model, ckpt = load_checkpoint(path)
    for key in (
        "state_dict", "arch", "model_kwargs", "labels", "clip_len", "crop_size",
        "dataset", "seed", "test_accuracy", "train_args",
    ):  # fmt: skip
        assert key in ckpt, key
    assert ckpt["arch"] == ARCH and ckpt["clip_len"] == 4 and ckpt["crop_size"] == 16
    assert ckpt["labels"] == tiny_data.label_names and ckpt["train_args"]["seed"] == 3
    assert ckpt["model_kwargs"]["base_width"] == TINY.base_width
    x = clips_to_input(tiny_data.clips[:6])
    with torch.no_grad():
        assert torch.allclose(model(x), tiny_run.model(x), atol=1e-5)
    acc = evaluate_accuracy(model, tiny_data.clips, tiny_data.labels)
    assert acc == evaluate_accuracy(tiny_run.model, tiny_data.clips, tiny_data.labels)
    # the rebuilt model traces (the serving artifact is a TorchScript trace)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_evaluate_accuracy_transform(tiny_run: TrainResult, tiny_data: ClipSet) -> None:
    clips, labels = tiny_data.clips, tiny_data.labels
    plain = evaluate_accuracy(tiny_run.model, clips, labels, batch_size=7)
    same = evaluate_accuracy(tiny_run.model, clips, labels, transform=lambda x: x, batch_size=5)
    assert plain == same and 0.0 <= plain <= 1.0
    seen: list[tuple[int, ...]] = []

    def blank(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return torch.zeros_like(x)

    blanked = evaluate_accuracy(tiny_run.model, clips, labels, transform=blank, batch_size=16)
    assert seen == [(16, 3, 4, 16, 16), (16, 3, 4, 16, 16)]
    assert blanked <= 0.25  # one constant input -> one predicted class


def test_stratified_holdout_and_validation(tiny_data: ClipSet) -> None:
    labels = torch.arange(40) % 4
    mask = stratified_holdout(labels, 0.2, seed=0)
    assert mask.sum() == 8 and all(int(mask[labels == k].sum()) == 2 for k in range(4))
    assert torch.equal(mask, stratified_holdout(labels, 0.2, seed=0))
    train = tiny_data.select("train")
    cfg = replace(TINY, epochs=2, seed=0, val_fraction=0.25)
    result = train_model(train.clips, train.labels, num_classes=8, config=cfg, progress=False)
    assert result.val_accuracy is not None and result.best_epoch in (1, 2)
    assert all(h["val_accuracy"] is not None for h in result.history)
    with pytest.raises(ValueError):
        TrainConfig(val_fraction=1.0)


def test_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_toy_dataset(generate_toy_dataset(2, 32, seed=1, frames=4, size=16), tmp_path / "d")
    out = tmp_path / "model.pt"
    argv = ["train", "--data", str(data), "--out", str(out), "--epochs", "1"]
    threads = torch.get_num_threads()
    assert main([*argv, "--base-width", "4", "--batch-size", "8", "--threads", "1"]) == 0
    torch.set_num_threads(threads)
    model, ckpt = load_checkpoint(out)
    assert ckpt["dataset"] == 2 and ckpt["clip_len"] == 4 and len(ckpt["labels"]) == 8
    assert ckpt["test_accuracy"] is not None
    assert model(torch.rand(1, 3, 4, 16, 16)).shape == (1, 8)
    assert "test accuracy" in capsys.readouterr().out
