"""The shipped default archive: complete, under budget, loads without the project."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service.archive import sha256_file, validate_meta

ROOT = Path(__file__).resolve().parents[2]
MAR = ROOT / "model_store" / "toy_r3d18.mar"


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy_r3d18")
    with zipfile.ZipFile(MAR) as zf:
        zf.extractall(out)
    return out


def test_archive_is_small_and_complete(unpacked: Path) -> None:
    assert MAR.stat().st_size < 20 * 1024 * 1024
    meta = json.loads((unpacked / "meta.json").read_text())
    validate_meta(meta)
    assert meta["name"] == "toy_r3d18" and meta["clip_len"] == 16 and meta["crop_size"] >= 64
    assert meta["sha256"] == sha256_file(unpacked / "model.pt")
    assert len(meta["labels"]) == 8 and all("_move_" in label for label in meta["labels"])
    sidecar = json.loads((ROOT / "model_store" / "toy_r3d18.meta.json").read_text())
    assert sidecar == meta


def test_loads_and_runs_in_an_isolated_interpreter(unpacked: Path) -> None:
    code = (
        "import sys, torch\n"
        "m = torch.jit.load('model.pt')\n"
        "x = torch.rand(2, 3, 16, 64, 64, generator=torch.Generator().manual_seed(0))\n"
        "y = m(x)\n"
        "assert y.shape == (2, 8), y.shape\n"
        "assert not any(k == 'service' or k.startswith('service.') for k in sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=unpacked,
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "ok"
