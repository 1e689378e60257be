"""The shipped archives (the default model and the documented failure case,
docs/default_model.md): complete, under budget, load without the project."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service.config import Settings
from service.modelserver.archive import sha256_file, validate_meta

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "model_store"
MARS = sorted(STORE.glob("*.mar"))


def _unpack(mar: Path, out: Path) -> Path:
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(out)
    return out


def test_the_default_model_ships_in_model_store() -> None:
    assert (STORE / f"{Settings().default_model}.mar").is_file()
    assert {m.stem for m in MARS} >= {"toy_r3d18", Settings().default_model}


@pytest.mark.parametrize("mar", MARS, ids=lambda p: p.stem)
def test_archive_is_small_and_complete(mar: Path, tmp_path: Path) -> None:
    unpacked = _unpack(mar, tmp_path)
    assert mar.stat().st_size < 20 * 1024 * 1024
    meta = json.loads((unpacked / "meta.json").read_text())
    validate_meta(meta)
    assert meta["name"] == mar.stem and meta["clip_len"] == 16 and meta["crop_size"] >= 32
    assert meta["sha256"] == sha256_file(unpacked / "model.pt")
    assert len(meta["labels"]) == 8 and all("_move_" in label for label in meta["labels"])
    sidecar = json.loads((STORE / f"{mar.stem}.meta.json").read_text())
    assert sidecar == meta


@pytest.mark.parametrize("mar", MARS, ids=lambda p: p.stem)
def test_loads_and_runs_in_an_isolated_interpreter(mar: Path, tmp_path: Path) -> None:
    unpacked = _unpack(mar, tmp_path)
    meta = json.loads((unpacked / "meta.json").read_text())
    shape = (2, 3, meta["clip_len"], meta["crop_size"], meta["crop_size"])
    code = (
        "import sys, torch\n"
        "m = torch.jit.load('model.pt')\n"
        f"x = torch.rand({shape}, generator=torch.Generator().manual_seed(0))\n"
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
