"""The contrast blend behind the default model's data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from service.research.toy.contrast import blend_towards_background
from service.research.toy.data import generate_toy_dataset, load_toy_dataset, render_background


def test_blend_moves_objects_towards_background() -> None:
    data = generate_toy_dataset(2, 16, seed=1, frames=4, size=32)
    low = blend_towards_background(data, 0.4)
    assert low.dtype == np.uint8 and low.shape == data.clips.shape
    bg = render_background(int(data.background[0]), 32).astype(np.int16)
    full = data.clips[0].astype(np.int16) - bg
    part = low[0].astype(np.int16) - bg
    obj = np.abs(full) > 10
    assert obj.any()
    # object pixels keep 40% of their difference to the background (rounding: +-1)
    assert np.all(np.abs(part[obj] - np.rint(0.4 * full[obj])) <= 1)
    # background pixels are untouched
    assert np.array_equal(part[~obj.any(axis=-1)], full[~obj.any(axis=-1)])
    assert blend_towards_background(data, 1.0) is data.clips
    with pytest.raises(ValueError):
        blend_towards_background(data, 0.0)


def test_toy_data_cli_contrast_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    argv = ["toy-data", "--dataset", "2", "--count", "16", "--frames", "4", "--size", "32"]
    assert main([*argv, "--seed", "3", "--contrast", "0.4", "--out", str(out)]) == 0
    assert json.loads((out / "meta.json").read_text())["contrast"] == 0.4
    clips = load_toy_dataset(out).clips.numpy()
    ref = generate_toy_dataset(2, 16, seed=3, frames=4, size=32)
    assert np.array_equal(clips, blend_towards_background(ref, 0.4))
