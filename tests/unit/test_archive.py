"""Archive export and the TorchServe handler, in-process with TorchServe's own Context."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ts.context import Context, RequestProcessor

from service.modelserver import handler as handler_mod
from service.modelserver.archive import HANDLER_MODULES, build_mar, sha256_file, validate_meta
from service.modelserver.wire import decode_logits, encode_clips

META = dict(
    name="tiny",
    arch="tiny3d",
    clip_len=8,
    frame_interval=1,
    crop_size=16,
    labels=["a", "b", "c"],
    preset=dict(h1=2, h2=1, ensemble=4),
)


class Tiny3d(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1, 1))
        self.conv = torch.nn.Conv3d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x - self.mean).mean(dim=(2, 3, 4)))


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return Tiny3d().eval()


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory, tiny_model: torch.nn.Module) -> Path:
    store = tmp_path_factory.mktemp("store")
    mar = build_mar(tiny_model, META, store, batch_size=4)
    assert mar == store / "tiny.mar"
    out = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(out)
    return out


def make_context(model_dir: Path, headers: list[dict[str, str]]) -> Context:
    ctx = Context("tiny", str(model_dir), None, len(headers), None, "0.12.0")
    ctx.request_processor = [RequestProcessor(h) for h in headers]
    return ctx


def test_archive_contents_and_sha(unpacked: Path) -> None:
    names = {p.name for p in unpacked.iterdir()}
    assert {"model.pt", "meta.json", "handler.py", "model-config.yaml", "MAR-INF"} <= names
    meta = json.loads((unpacked / "meta.json").read_text())
    assert meta["format"] == "torchscript"
    assert meta["sha256"] == sha256_file(unpacked / "model.pt")
    for key in ("name", "arch", "clip_len", "frame_interval", "crop_size", "labels", "preset"):
        assert meta[key] == META[key]
    assert "batchSize: 4" in (unpacked / "model-config.yaml").read_text()


def test_handler_imports_its_npy_reader_from_beside_it(unpacked: Path) -> None:
    """TorchServe imports handler.py as a top-level module of the unpacked archive: it
    finds the decoder's .npy reader beside it (packed as npy_reader.py), no project."""
    assert set(HANDLER_MODULES) <= {p.name for p in unpacked.iterdir()}
    for name, source in HANDLER_MODULES.items():
        assert (unpacked / name).read_bytes() == source.read_bytes()
    code = (
        "import sys; sys.path.insert(0, '.'); import handler; "
        "assert handler.npy_reader.__name__ == 'npy_reader'; "
        "assert not any(m.split('.')[0] == 'service' for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-I", "-c", code], cwd=unpacked, check=True)


def test_weights_load_without_project_code(unpacked: Path, tiny_model: torch.nn.Module) -> None:
    """model.pt loads in an isolated interpreter (no project on sys.path) and matches eager."""
    x = torch.rand(2, 3, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.save(x, unpacked / "x.pt")
    code = (
        "import torch, sys; m = torch.jit.load('model.pt'); "
        "x = torch.load('x.pt'); torch.save(m(x), 'y.pt'); "
        "assert 'service' not in sys.modules"
    )
    subprocess.run([sys.executable, "-I", "-c", code], cwd=unpacked, check=True)
    y = torch.load(unpacked / "y.pt")
    with torch.no_grad():
        assert torch.allclose(y, tiny_model(x), atol=1e-5)


def test_handler_batches_requests_and_isolates_bad_ones(
    unpacked: Path, tiny_model: torch.nn.Module
) -> None:
    h = handler_mod.ShuffleGuardHandler()
    h.initialize(make_context(unpacked, [{}]))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 8, 16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2, 8, 16, 16, 3), dtype=np.uint8)
    wrong_shape = rng.integers(0, 256, (1, 7, 16, 16, 3), dtype=np.uint8)
    data = [
        {"body": encode_clips(a)},
        {"body": b"not an array"},
        {"body": bytearray(encode_clips(b))},
        {"body": encode_clips(wrong_shape)},
    ]
    ctx = make_context(unpacked, [{}] * len(data))
    out = h.handle(data, ctx)
    assert len(out) == 4
    ref = tiny_model(torch.from_numpy(np.concatenate([a, b])).permute(0, 4, 1, 2, 3) / 255.0)
    got = np.concatenate([decode_logits(out[0]), decode_logits(out[2])])
    assert np.allclose(got, ref.detach().numpy(), atol=1e-5)
    assert ctx.get_response_status(1)[0] == 400 and ctx.get_response_status(3)[0] == 400
    assert json.loads(out[1])["error"]["code"] == "bad_batch"
    assert "shape" in json.loads(out[3])["error"]["message"]
    assert ctx.get_response_content_type(0) == "application/x-npy"


def test_handler_describe_returns_meta(unpacked: Path) -> None:
    h = handler_mod.ShuffleGuardHandler()
    h.initialize(make_context(unpacked, [{}]))
    out = h.handle([{"body": b""}], make_context(unpacked, [{"describe": "True"}]))
    assert json.loads(out[0])["labels"] == ["a", "b", "c"]


def test_handler_refuses_tampered_weights(unpacked: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("model.pt", "meta.json"):
        (bad / name).write_bytes((unpacked / name).read_bytes())
    with open(bad / "model.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(RuntimeError, match="sha256"):
        handler_mod.ShuffleGuardHandler().initialize(make_context(bad, [{}]))


def test_export_format_round_trips_through_handler(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    mar = build_mar(tiny_model, META | {"name": "tiny_export"}, tmp_path, fmt="export")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(unpacked)
    meta = json.loads((unpacked / "meta.json").read_text())
    assert meta["format"] == "export" and (unpacked / "model.pt2").exists()
    assert meta["sha256"] == sha256_file(unpacked / "model.pt2")
    h = handler_mod.ShuffleGuardHandler()
    h.initialize(make_context(unpacked, [{}]))
    clips = np.random.default_rng(1).integers(0, 256, (5, 8, 16, 16, 3), dtype=np.uint8)
    out = h.handle([{"body": encode_clips(clips)}], make_context(unpacked, [{}]))
    ref = tiny_model(torch.from_numpy(clips).permute(0, 4, 1, 2, 3) / 255.0)
    assert np.allclose(decode_logits(out[0]), ref.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "change",
    [dict(labels=[]), dict(preset=dict(h1=1, h2=9, ensemble=2)), dict(preset=dict(h1=1))],
)
def test_validate_meta_rejects_nonsense(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        validate_meta(META | change)


def test_npy_payload_roundtrip_is_not_pickle() -> None:
    payload = encode_clips(np.zeros((1, 2, 2, 2, 3), np.uint8))
    assert payload.startswith(b"\x93NUMPY")
    assert np.load(io.BytesIO(payload), allow_pickle=False).shape == (1, 2, 2, 2, 3)


def test_read_archive_refuses_weights_that_do_not_match_meta(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    from service.modelserver.archive import read_archive

    mar = build_mar(tiny_model, META | {"name": "tampered"}, tmp_path)
    meta, weights = read_archive(mar)
    assert meta["name"] == "tampered" and weights[:2] == b"PK"
    bad = tmp_path / "bad.mar"
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data + b"\0" if item.filename == "model.pt" else data)
    with pytest.raises(ValueError, match="sha256"):
        read_archive(bad)


def test_only_resnet3d_archives_load_eagerly(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    from service.modelserver.archive import load_archived_model

    mar = build_mar(tiny_model, META | {"name": "other_arch"}, tmp_path)
    with pytest.raises(ValueError, match="tiny3d"):
        load_archived_model(mar)
