"""A user's checkpoint file -> a family's model: formats, round trips, mismatches, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from service.models.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    is_training_checkpoint,
    read_checkpoint,
)
from service.models.families import FAMILY_NAMES, build_family, get_family
from service.modelserver.archive import (
    ArchiveError,
    FamilyArchiveConfig,
    prepare_family,
    read_archive,
    rewrite_archive_meta,
    sha256_file,
)
from tests.unit.test_families import small_shape

ROOT = Path(__file__).resolve().parents[2]


def write_library_checkpoint(family: str, path: Path, *, seed: int = 5) -> torch.nn.Module:
    """A checkpoint in the format the family's library distributes: PyTorchVideo's
    model-zoo dict (``model_state`` + training state) or torchvision's plain state dict.
    Returns the source model (400 classes, the small test input)."""
    t, crop = small_shape(family)
    source = build_family(family, num_classes=400, clip_len=t, crop_size=crop, seed=seed)
    state = source.net.state_dict()
    if get_family(family).library == "pytorchvideo":
        torch.save({"model_state": state, "epoch": 196, "cfg": "TRAIN:\n  ENABLE: True\n"}, path)
    else:
        torch.save(state, path)
    return source


def probe(family: str) -> torch.Tensor:
    t, crop = small_shape(family)
    return torch.rand(2, 3, t, crop, crop, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_library_checkpoint_round_trip(family: str, tmp_path: Path) -> None:
    """The real layer names: a checkpoint in the library's format loads into the
    family's model (built from another seed) and gives the source model's logits."""
    path = tmp_path / "ckpt.pth"
    source = write_library_checkpoint(family, path)
    t, crop = small_shape(family)
    model, meta = prepare_family(
        FamilyArchiveConfig(
            family=family, name="m", checkpoint=path, clip_len=t, crop_size=crop, h1=1, h2=1
        )
    )
    x = probe(family)
    with torch.no_grad():
        ref, got = source(x), model(x)
    assert torch.allclose(ref, got, atol=1e-6), (ref - got).abs().max()
    assert meta["weights"] == "trained" and len(meta["labels"]) == 400
    assert meta["checkpoint"]["sha256"] == sha256_file(path)
    expected_format = "model_state" if get_family(family).library == "pytorchvideo" else "plain"
    assert meta["checkpoint"]["format"] == expected_format
    assert meta["label_source"].startswith("kinetics400")
    assert meta["family"]["first_temporal_conv"]["module"] == (
        get_family(family).first_temporal_conv.module
    )


def test_other_wrappings_of_a_state_dict(tmp_path: Path) -> None:
    source = write_library_checkpoint("x3d_xs", tmp_path / "ref.pth")
    state = source.net.state_dict()
    variants = {
        "lightning": {"state_dict": state, "epoch": 3},
        "dataparallel": {f"module.{k}": v for k, v in state.items()},
        "wrapper": source.state_dict(),  # a VideoClassifier's own keys (net.*, normalize.*)
    }
    for kind, obj in variants.items():
        torch.save(obj, tmp_path / f"{kind}.pth")
        loaded = read_checkpoint(tmp_path / f"{kind}.pth")
        assert set(loaded.state_dict) == set(state), kind
        assert all(torch.equal(loaded.state_dict[k], state[k]) for k in state), kind
    assert read_checkpoint(tmp_path / "dataparallel.pth").stripped_prefix == "module."


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    source = write_library_checkpoint("r3d_18", tmp_path / "ref.pth")
    state = {k: v for k, v in source.net.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pth")
    t, crop = small_shape("r3d_18")
    model, _ = prepare_family(
        FamilyArchiveConfig(
            family="r3d_18",
            name="m",
            checkpoint=tmp_path / "old.pth",
            clip_len=t,
            crop_size=crop,
            h1=1,
            h2=1,
        )
    )
    with torch.no_grad():
        assert torch.allclose(model(probe("r3d_18")), source(probe("r3d_18")), atol=1e-6)


def test_mismatch_names_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    source = write_library_checkpoint("x3d_xs", tmp_path / "ref.pth")
    state = dict(source.net.state_dict())
    del state["blocks.1.res_blocks.0.branch2.conv_a.weight"]
    state["blocks.9.extra.weight"] = torch.zeros(3)
    state["blocks.0.conv.conv_t.weight"] = torch.zeros(24, 3, 1, 5, 5)
    torch.save({"model_state": state}, tmp_path / "bad.pyth")
    t, crop = small_shape("x3d_xs")
    with pytest.raises(CheckpointMismatchError) as info:
        prepare_family(
            FamilyArchiveConfig(
                family="x3d_xs",
                name="m",
                checkpoint=tmp_path / "bad.pyth",
                clip_len=t,
                crop_size=crop,
            )
        )
    err = info.value
    assert err.missing == ["blocks.1.res_blocks.0.branch2.conv_a.weight"]
    assert err.unexpected == ["blocks.9.extra.weight"]
    assert err.shapes == {"blocks.0.conv.conv_t.weight": ((24, 3, 1, 5, 5), (24, 3, 1, 3, 3))}
    for text in ("1 missing keys", "1 unexpected keys", "1 shapes differ", "conv_a.weight"):
        assert text in str(err)


def test_a_checkpoint_of_another_family_is_refused(tmp_path: Path) -> None:
    write_library_checkpoint("r3d_18", tmp_path / "r3d.pth")
    with pytest.raises(ArchiveError, match="blocks.5.proj.weight"):
        prepare_family(
            FamilyArchiveConfig(family="x3d_xs", name="m", checkpoint=tmp_path / "r3d.pth")
        )
    write_library_checkpoint("mc3_18", tmp_path / "mc3.pth")
    with pytest.raises(CheckpointMismatchError, match="shapes differ"):
        prepare_family(
            FamilyArchiveConfig(
                family="r3d_18", name="m", checkpoint=tmp_path / "mc3.pth", h1=1, h2=1
            )
        )


def test_labels_must_match_the_classifier(tmp_path: Path) -> None:
    t, crop = small_shape("x3d_xs")
    source = build_family("x3d_xs", num_classes=3, clip_len=t, crop_size=crop)
    torch.save(source.net.state_dict(), tmp_path / "three.pth")
    base = {"family": "x3d_xs", "name": "m", "checkpoint": tmp_path / "three.pth"}
    with pytest.raises(ArchiveError, match="3 outputs: pass --labels"):
        prepare_family(FamilyArchiveConfig(**base, clip_len=t, crop_size=crop))  # type: ignore[arg-type]
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(ArchiveError, match="2 labels"):
        prepare_family(
            FamilyArchiveConfig(
                **base, labels=str(tmp_path / "two.txt"), clip_len=t, crop_size=crop
            )  # type: ignore[arg-type]
        )
    (tmp_path / "three.txt").write_text("run\njump\n\nswim\n")
    _, meta = prepare_family(
        FamilyArchiveConfig(**base, labels=str(tmp_path / "three.txt"), clip_len=t, crop_size=crop)  # type: ignore[arg-type]
    )
    assert meta["labels"] == ["run", "jump", "swim"] and "three.txt" in meta["label_source"]
    assert meta["preset"] == {"h1": 16, "h2": 1, "ensemble": 10}  # the paper's X3D preset


def test_presets_and_random_init_meta() -> None:
    with pytest.raises(ArchiveError, match="no preset in the paper"):
        prepare_family(FamilyArchiveConfig(family="r3d_18", name="m", random_init=True))
    with pytest.raises(ArchiveError, match="exactly one"):
        prepare_family(FamilyArchiveConfig(family="r3d_18", name="m"))
    with pytest.raises(ArchiveError, match="h2=4 must be in 1..clip_len=2"):
        prepare_family(
            FamilyArchiveConfig(
                family="i3d_r50", name="m", random_init=True, clip_len=2, crop_size=32
            )
        )
    _, meta = prepare_family(
        FamilyArchiveConfig(
            family="slowfast_r50", name="m", random_init=True, clip_len=8, crop_size=32
        )
    )
    assert meta["weights"] == "random" and "checkpoint" not in meta
    assert meta["preset"] == {"h1": 2, "h2": 2, "ensemble": 10}
    assert meta["family"]["slowfast_alpha"] == 4 and meta["input_reduced"] is True
    assert (meta["resize"], meta["crop_size"], meta["transform"]) == (32, 32, "torchvision")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "archive", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_refuses_a_mismatch_before_writing(tmp_path: Path) -> None:
    source = write_library_checkpoint("x3d_xs", tmp_path / "ref.pth")
    state = dict(source.net.state_dict())
    del state["blocks.5.proj.bias"]
    torch.save({"model_state": state}, tmp_path / "bad.pyth")
    out = tmp_path / "store"
    done = _cli(
        "--arch", "x3d_xs", "--checkpoint", str(tmp_path / "bad.pyth"), "--name", "bad",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "1 missing keys (blocks.5.proj.bias)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() or not any(out.iterdir())
    done = _cli("--checkpoint", str(tmp_path / "bad.pyth"), "--name", "x")
    assert done.returncode == 2 and "pass --arch FAMILY" in done.stderr


def test_cli_archives_a_training_checkpoint(tmp_path: Path) -> None:
    """`shuffleguard train` checkpoints are detected and keep their own path."""
    from service.models.resnet3d import resnet3d_18

    kwargs = {"num_classes": 2, "base_width": 4}
    model = resnet3d_18(**kwargs)
    ckpt = {
        "arch": "resnet3d_18",
        "model_kwargs": kwargs,
        "state_dict": model.state_dict(),
        "labels": ["a", "b"],
        "clip_len": 4,
        "crop_size": 16,
        "dataset": 2,
        "seed": 0,
    }
    torch.save(ckpt, tmp_path / "model.ckpt")
    assert is_training_checkpoint(tmp_path / "model.ckpt")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    assert not is_training_checkpoint(tmp_path / "plain.pth")
    out = tmp_path / "store"
    done = _cli(
        "--checkpoint", str(tmp_path / "model.ckpt"), "--name", "toy", "--out", str(out),
        "--h1", "1", "--h2", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta, _ = read_archive(out / "toy.mar")
    assert meta["arch"] == "resnet3d_18" and meta["weights"] == "trained"
    assert meta["data"] == {"dataset": 2}
    config = zipfile.ZipFile(out / "toy.mar").read("model-config.yaml").decode()
    assert "responseTimeout: 60" in config  # the toy default, unchanged


def test_the_data_recipe_travels_from_toy_data_to_the_archive(tmp_path: Path) -> None:
    """toy-data records its options, train keeps them, archive writes them: a newly
    trained toy model's meta.json carries its whole data recipe, with no warning."""
    from service.cli import main

    data, ckpt = tmp_path / "data", tmp_path / "m.ckpt"
    options = {"dataset": 1, "count": 16, "seed": 3, "frames": 4, "size": 16,
               "object_fraction": 0.25, "speed_reference": 32, "contrast": 0.5,
               "spatial_fraction": 0.75}  # fmt: skip
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    assert main(["toy-data", *argv, "--out", str(data)]) == 0
    assert json.loads((data / "meta.json").read_text())["recipe"] == options
    assert main(["train", "--data", str(data), "--out", str(ckpt), "--epochs", "1",
                 "--base-width", "4", "--threads", "1"]) == 0  # fmt: skip
    done = _cli("--checkpoint", str(ckpt), "--name", "toy", "--out", str(tmp_path / "store"),
                "--h1", "1", "--h2", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "incomplete" not in done.stderr
    meta, _ = read_archive(tmp_path / "store" / "toy.mar")
    assert meta["data"] == options


def test_read_checkpoint_refuses_non_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(tmp_path / "text.pth")
    torch.save({"epoch": 3}, tmp_path / "none.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        read_checkpoint(tmp_path / "none.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth")


def test_rewrite_archive_meta_keeps_the_weights(tmp_path: Path) -> None:
    mar = tmp_path / "toy_r3d18.mar"
    shutil.copyfile(ROOT / "model_store" / "toy_r3d18.mar", mar)
    before, weights = read_archive(mar)
    with zipfile.ZipFile(mar) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist() if i.filename != "meta.json"}
    after = rewrite_archive_meta(mar, {"note": "x"})
    meta, weights_after = read_archive(mar)
    assert meta == after == {**before, "note": "x"} and weights_after == weights
    with zipfile.ZipFile(mar) as zf:
        assert {i.filename: zf.read(i) for i in zf.infolist() if i.filename != "meta.json"} == (
            entries
        )


def test_shipped_toy_meta_records_its_data_recipe() -> None:
    meta, _ = read_archive(ROOT / "model_store" / "toy_r3d18.mar")
    sidecar = json.loads((ROOT / "model_store" / "toy_r3d18.meta.json").read_text())
    assert sidecar == meta
    assert meta["weights"] == "trained"
    assert meta["data"] == {
        "dataset": 2,
        "count": 1600,
        "seed": 0,
        "frames": 16,
        "size": 64,
        "object_fraction": 0.2,
        "speed_reference": 64,
        "contrast": 0.4,
    }
    assert meta["sha256"] == "8596662a964a7db431c3a1bc40417fc3e0bcd0b82c5bceed8c4ffab4a405494f"


def test_serve_warns_about_random_init_archives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from service.commands.serve import warn_random_init

    for name, weights in (("rand", "random"), ("real", "trained")):
        with zipfile.ZipFile(tmp_path / f"{name}.mar", "w") as zf:
            zf.writestr("meta.json", json.dumps({"name": name, "weights": weights}))
    (tmp_path / "broken.mar").write_bytes(b"not a zip")
    with caplog.at_level("WARNING", logger="service.commands.serve"):
        assert warn_random_init(tmp_path, ["rand", "real", "broken", "absent"]) == ["rand"]
    assert "model rand has random-init weights" in caplog.text
    assert "real" not in caplog.text
