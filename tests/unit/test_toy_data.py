"""Toy datasets of the paper (Sec. 3.2): determinism, tied factors, trajectories, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from service.cli import main
from service.research.toy.data import (
    BACKGROUNDS,
    DIRECTIONS,
    NUM_CLASSES,
    OBJECTS,
    _object_colour,
    _sprite_offsets,
    direction_vectors,
    generate_toy_dataset,
    label_names,
    load_toy_dataset,
    object_size,
    render_background,
    write_toy_dataset,
)


def _object_mask(clips: np.ndarray, obj: int) -> np.ndarray:
    """Pixels ``[..., H, W]`` that carry object ``obj``'s colour (no background has it)."""
    return np.all(clips == _object_colour(obj), axis=-1)


def test_factor_tables_are_distinct() -> None:
    assert len(set(BACKGROUNDS)) == len(set(OBJECTS)) == len(set(DIRECTIONS)) == NUM_CLASSES
    bgs = np.stack([render_background(k, 32) for k in range(NUM_CLASSES)]).astype(int)
    for a in range(NUM_CLASSES):
        for b in range(a + 1, NUM_CLASSES):
            assert np.abs(bgs[a] - bgs[b]).mean() > 10, (BACKGROUNDS[a], BACKGROUNDS[b])
    colours = {tuple(_object_colour(k)) for k in range(NUM_CLASSES)}
    assert len(colours) == NUM_CLASSES
    # Every object has a saturated channel and no background reaches it, so an object
    # pixel can always be told from the background.
    assert bgs.max() < 200
    assert all(_object_colour(k).max() == 255 for k in range(NUM_CLASSES))
    masks = {tuple(map(tuple, _sprite_offsets(k, 7))) for k in range(NUM_CLASSES)}
    assert len(masks) == NUM_CLASSES


def test_label_names() -> None:
    assert label_names(3)[3] == "move_up_left"
    assert label_names(2)[0] == "circle_move_right"
    assert label_names(1)[0] == "circle_move_right_on_red_gradient"
    for d in (1, 2, 3):
        names = label_names(d)
        assert len(names) == len(set(names)) == NUM_CLASSES
    with pytest.raises(ValueError):
        label_names(4)


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a = generate_toy_dataset(3, 24, seed=5, frames=6, size=32)
    b = generate_toy_dataset(3, 24, seed=5, frames=6, size=32)
    c = generate_toy_dataset(3, 24, seed=6, frames=6, size=32)
    assert a.clips.tobytes() == b.clips.tobytes()
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.split, b.split)
    assert a.clips.tobytes() != c.clips.tobytes()


@pytest.mark.parametrize("dataset", [1, 2, 3])
def test_shapes_dtypes_balance_split(dataset: int) -> None:
    ds = generate_toy_dataset(dataset, 64, seed=0, frames=5, size=24)
    assert ds.clips.shape == (64, 5, 24, 24, 3) and ds.clips.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    assert np.bincount(ds.labels, minlength=NUM_CLASSES).tolist() == [8] * NUM_CLASSES
    for k in range(NUM_CLASSES):
        split = ds.split[ds.labels == k]
        assert (split == "test").sum() == 2 and (split == "train").sum() == 6
    cs = ds.as_clipset()
    assert cs.clips.dtype == torch.uint8 and tuple(cs.clips.shape) == ds.clips.shape
    test = cs.select("test")
    assert test.clips.shape[0] == 16 and set(test.split) == {"test"}


@pytest.mark.parametrize("dataset", [1, 2, 3])
def test_class_tied_factors(dataset: int) -> None:
    ds = generate_toy_dataset(dataset, 96, seed=1, frames=4, size=32)
    # direction is tied to the class in every dataset
    assert np.array_equal(ds.direction, ds.labels)
    tied_obj = np.array_equal(ds.object, ds.labels)
    tied_bg = np.array_equal(ds.background, ds.labels)
    assert tied_obj == (dataset in (1, 2))
    assert tied_bg == (dataset == 1)
    if dataset != 1:  # random backgrounds: each class shows several
        for k in range(NUM_CLASSES):
            assert len(set(ds.background[ds.labels == k].tolist())) > 1
    # ... and the pixels agree with the factors: the background fills most of each
    # frame, and the object's colour appears in every frame.
    for i in range(ds.clips.shape[0]):
        bg = render_background(int(ds.background[i]), 32)
        same = np.all(ds.clips[i] == bg, axis=-1).mean(axis=(1, 2))  # [T]
        assert same.min() > 0.8
        assert _object_mask(ds.clips[i], int(ds.object[i])).any(axis=(1, 2)).all()


def test_partial_spatial_cues() -> None:
    full = generate_toy_dataset(1, 400, seed=4, frames=4, size=32)
    part = generate_toy_dataset(1, 400, seed=4, frames=4, size=32, spatial_fraction=0.6)
    # the direction always carries the class; background and object together in a
    # share of the clips near 0.6, and random (so mostly not the class) elsewhere
    assert np.array_equal(part.direction, part.labels)
    assert part.spatial is not None and full.spatial is not None and full.spatial.all()
    assert 0.5 < part.spatial.mean() < 0.7
    tied = (part.object == part.labels) & (part.background == part.labels)
    assert tied[part.spatial].all()
    assert tied[~part.spatial].mean() < 0.1
    # only the factors change: labels, speeds and start points are dataset 1's
    assert np.array_equal(part.labels, full.labels) and np.array_equal(part.speed, full.speed)
    assert part.spatial_fraction == 0.6
    # 1.0 is the paper's dataset 1, byte for byte
    same = generate_toy_dataset(1, 400, seed=4, frames=4, size=32, spatial_fraction=1.0)
    assert np.array_equal(same.clips, full.clips)
    with pytest.raises(ValueError, match="dataset 1 only"):
        generate_toy_dataset(2, 8, spatial_fraction=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        generate_toy_dataset(1, 8, spatial_fraction=1.5)


@pytest.mark.parametrize("dataset", [1, 3])
def test_trajectories_move_in_the_class_direction(dataset: int) -> None:
    frames, size = 8, 64
    ds = generate_toy_dataset(dataset, 48, seed=2, frames=frames, size=size)
    vecs = direction_vectors()
    sprite = {k: _sprite_offsets(k, object_size(size)).shape[0] for k in range(NUM_CLASSES)}
    # 8 frames of 64 px never need the speed cap: it is the paper's 3..5 px/frame
    assert ds.speed.min() >= 3.0 and ds.speed.max() <= 5.0
    for i in range(ds.clips.shape[0]):
        mask = _object_mask(ds.clips[i], int(ds.object[i]))  # [T, H, W]
        # the whole sprite is visible in every frame: the object stays inside
        assert mask.sum(axis=(1, 2)).tolist() == [sprite[int(ds.object[i])]] * frames
        cy = np.array([np.nonzero(m)[0].mean() for m in mask])
        cx = np.array([np.nonzero(m)[1].mean() for m in mask])
        disp = np.array([cy[-1] - cy[0], cx[-1] - cx[0]])
        expected = vecs[int(ds.labels[i])] * ds.speed[i] * (frames - 1)
        for axis in range(2):
            if expected[axis] == 0:
                assert abs(disp[axis]) <= 1.0
            else:
                assert np.sign(disp[axis]) == np.sign(expected[axis])
                assert abs(disp[axis] - expected[axis]) <= 1.0


def test_long_clips_cap_speed_to_fit() -> None:
    ds = generate_toy_dataset(3, 32, seed=0, frames=16, size=32)
    r = object_size(32) // 2
    assert ds.centres.min() >= r and ds.centres.max() <= 32 - 1 - r
    assert ds.speed.max() <= 5.0 * 32 / 64 + 1e-9


def test_geometry_parameters() -> None:
    ds = generate_toy_dataset(
        2, 32, seed=0, frames=8, size=32, speed_reference=128, object_fraction=0.33
    )
    assert ds.object_side == object_size(32, 0.33) == 11
    # 3-5 px/frame on a 128 px frame is 0.75-1.25 px/frame on a 32 px frame
    assert ds.speed.min() >= 0.75 and ds.speed.max() <= 1.25
    for i in range(ds.clips.shape[0]):
        pixels = _object_mask(ds.clips[i], int(ds.object[i])).sum(axis=(1, 2))
        assert (pixels == _sprite_offsets(int(ds.object[i]), 11).shape[0]).all()
    for bad in ({"object_fraction": 0.7}, {"speed": (5.0, 3.0)}, {"speed_reference": 0}):
        with pytest.raises(ValueError):
            generate_toy_dataset(2, 8, seed=0, size=32, **bad)  # type: ignore[arg-type]


def test_write_load_round_trip_and_bytes(tmp_path: Path) -> None:
    ds = generate_toy_dataset(2, 16, seed=3, frames=4, size=16)
    a = write_toy_dataset(ds, tmp_path / "a")
    b = write_toy_dataset(generate_toy_dataset(2, 16, seed=3, frames=4, size=16), tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"labels.csv", "factors.csv", "meta.json", "clip_00000.npy"} <= set(names)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name

    with open(a / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "label_index", "label", "split"]
    assert len(rows) == 16
    for i, row in enumerate(rows):
        k = int(row["label_index"])
        assert row["file"] == f"clip_{i:05d}.npy" and k == ds.labels[i]
        assert row["label"] == label_names(2)[k] and row["split"] in ("train", "test")
        clip = np.load(a / row["file"])
        assert clip.dtype == np.uint8 and clip.shape == (4, 16, 16, 3)

    loaded = load_toy_dataset(a)
    assert torch.equal(loaded.clips, torch.from_numpy(ds.clips))
    assert torch.equal(loaded.labels, torch.from_numpy(ds.labels))
    assert loaded.label_names == label_names(2)
    assert loaded.split == ds.split.tolist()
    assert json.loads((a / "meta.json").read_text())["dataset"] == 2


def test_mp4_written_and_decodable(tmp_path: Path) -> None:
    ds = generate_toy_dataset(1, 2, seed=0, frames=6, size=32)
    out = write_toy_dataset(ds, tmp_path, mp4=True)
    path = out / "clip_00000.mp4"
    assert path.stat().st_size > 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert codec in ("h264", "mpeg4")
    assert len(frames) == 6 and frames[0].shape == (32, 32, 3)
    err = np.abs(np.stack(frames).astype(int) - ds.clips[0].astype(int)).mean()
    assert err < 12, err  # lossy, but the same picture


def test_cli_writes_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d3"
    argv = ["toy-data", "--dataset", "3", "--count", "16", "--seed", "1", "--out", str(out)]
    assert main([*argv, "--frames", "4", "--size", "16"]) == 0
    loaded = load_toy_dataset(out)
    assert tuple(loaded.clips.shape) == (16, 4, 16, 16, 3)
    assert loaded.label_names[3] == "move_up_left"
    assert "16 clips" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["toy-data", "--dataset", "3", "--count", "4", "--out", str(out), "--size", "4"])
