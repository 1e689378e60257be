"""Export a model and pack it into a TorchServe archive (SPEC §3).

An archive holds:

* ``model.pt`` -- a TorchScript trace (``format="torchscript"``, the default), or
  ``model.pt2`` -- a ``torch.export`` program with a dynamic batch dimension
  (``format="export"``); either loads without the project's model code;
* ``meta.json`` -- ``name``, ``arch``, ``clip_len``, ``frame_interval``,
  ``crop_size``, ``labels``, ``preset`` {``h1``, ``h2``, ``ensemble``}, ``format``,
  ``sha256`` of the weights file, plus provenance fields;
* ``model-config.yaml`` -- TorchServe's server-side batching and worker settings;
* ``handler.py`` -- :mod:`service.handler`.

The network takes float32 ``[B, 3, T, H, W]`` RGB in ``[0, 1]`` and returns
logits ``[B, K]``; normalization is inside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

HANDLER_PATH = Path(__file__).with_name("handler.py")
REQUIRED_META = ("name", "arch", "clip_len", "frame_interval", "crop_size", "labels", "preset")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_meta(meta: dict[str, Any]) -> None:
    """Fail fast on a meta.json the gateway or handler could not use."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"meta is missing {missing}")
    preset = meta["preset"]
    if not {"h1", "h2", "ensemble"} <= set(preset):
        raise ValueError(f"preset needs h1, h2, ensemble; got {preset}")
    if not 1 <= int(preset["h2"]) <= int(meta["clip_len"]):
        raise ValueError(f"preset h2={preset['h2']} must be in 1..clip_len={meta['clip_len']}")
    if int(preset["h1"]) < 0 or int(preset["ensemble"]) < 1:
        raise ValueError(f"bad preset {preset}")
    if not meta["labels"] or not all(isinstance(x, str) for x in meta["labels"]):
        raise ValueError("labels must be a non-empty list of strings")


def export_torchscript(
    model: torch.nn.Module, clip_len: int, crop_size: int, path: Path, *, atol: float = 1e-4
) -> None:
    """Trace ``model`` on a ``[2, 3, clip_len, crop_size, crop_size]`` input and save it.

    The trace is checked against eager on a second random input (a trace that
    silently baked in a shape or a branch would differ).
    """
    model = model.eval().cpu()
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, clip_len, crop_size, crop_size, generator=gen)
    probe = torch.rand(3, 3, clip_len, crop_size, crop_size, generator=gen)
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        ref = model(probe)
        got = traced(probe)
    err = (ref - got).abs().max().item()
    if err > atol:
        raise RuntimeError(f"TorchScript trace differs from eager by {err:.2e} > {atol}")
    traced.save(str(path))


def export_program(
    model: torch.nn.Module, clip_len: int, crop_size: int, path: Path, *, atol: float = 1e-4
) -> None:
    """``torch.export`` ``model`` with a dynamic batch dimension and save it as ``.pt2``."""
    model = model.eval().cpu()
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, clip_len, crop_size, crop_size, generator=gen)
    probe = torch.rand(3, 3, clip_len, crop_size, crop_size, generator=gen)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    with torch.no_grad():
        err = (torch.export.load(str(path)).module()(probe) - model(probe)).abs().max().item()
    if err > atol:
        raise RuntimeError(f"exported program differs from eager by {err:.2e} > {atol}")


def model_config_yaml(
    *, batch_size: int, max_batch_delay_ms: int, workers: int, response_timeout_s: int
) -> str:
    return (
        f"minWorkers: {workers}\n"
        f"maxWorkers: {workers}\n"
        f"batchSize: {batch_size}\n"
        f"maxBatchDelay: {max_batch_delay_ms}\n"
        f"responseTimeout: {response_timeout_s}\n"
    )


def build_mar(
    model: torch.nn.Module,
    meta: dict[str, Any],
    out_dir: Path | str,
    *,
    batch_size: int = 4,
    max_batch_delay_ms: int = 5,
    workers: int = 1,
    response_timeout_s: int = 60,
    version: str = "1.0",
    fmt: str = "torchscript",
) -> Path:
    """Export ``model`` and write ``{out_dir}/{meta['name']}.mar``; returns its path.

    ``meta`` gets ``format`` and ``sha256`` filled in. An existing archive of the
    same name is replaced.
    """
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    meta = dict(meta)
    validate_meta(meta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sg-archive-") as tmp_str:
        tmp = Path(tmp_str)
        clip_len, crop_size = int(meta["clip_len"]), int(meta["crop_size"])
        if fmt == "torchscript":
            weights = tmp / "model.pt"
            export_torchscript(model, clip_len, crop_size, weights)
        elif fmt == "export":
            weights = tmp / "model.pt2"
            export_program(model, clip_len, crop_size, weights)
        else:
            raise ValueError(f"fmt must be 'torchscript' or 'export', got {fmt!r}")
        meta["format"] = fmt
        meta["sha256"] = sha256_file(weights)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "model-config.yaml").write_text(
            model_config_yaml(
                batch_size=batch_size,
                max_batch_delay_ms=max_batch_delay_ms,
                workers=workers,
                response_timeout_s=response_timeout_s,
            )
        )
        handler = tmp / "handler.py"
        shutil.copyfile(HANDLER_PATH, handler)
        config = ModelArchiverConfig(
            model_name=str(meta["name"]),
            handler=str(handler),
            version=version,
            serialized_file=str(weights),
            extra_files=str(tmp / "meta.json"),
            export_path=str(out),
            force=True,
            config_file=str(tmp / "model-config.yaml"),
        )
        generate_model_archive(config)
        shutil.copyfile(tmp / "meta.json", out / f"{meta['name']}.meta.json")
    mar = out / f"{meta['name']}.mar"
    size_mb = mar.stat().st_size / 1e6
    logger.info("wrote %s (%.1f MB, weights sha256 %s)", mar, size_mb, meta["sha256"])
    return mar


def read_archive(path: Path | str) -> tuple[dict[str, Any], bytes]:
    """``(meta, weights bytes)`` of a ``.mar``; the bytes are checked against ``meta['sha256']``."""
    import zipfile

    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if "meta.json" not in names:
            raise ValueError(f"{path}: no meta.json (not a ShuffleGuard archive)")
        meta = json.loads(zf.read("meta.json"))
        weights_name = "model.pt2" if meta.get("format") == "export" else "model.pt"
        if weights_name not in names:
            raise ValueError(
                f"{path}: meta.json says format {meta.get('format')!r}, no {weights_name}"
            )
        weights = zf.read(weights_name)
    digest = hashlib.sha256(weights).hexdigest()
    if meta.get("sha256") != digest:
        raise ValueError(
            f"{path}: {weights_name} has sha256 {digest}, meta.json says {meta.get('sha256')}"
        )
    return meta, weights


def load_archived_model(
    path: Path | str, map_location: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the eager model of a ``.mar`` so experiments can run on what is served.

    The archive's TorchScript (or exported) weights are copied into the project's
    :func:`service.models.resnet3d.resnet3d_18` (only that ``arch`` is supported), which
    is checked to give the archived network's logits on a probe input. Returns
    ``(model, info)``: the model in eval mode on ``map_location`` and a dict with the
    keys of a training checkpoint that experiments read (``arch``, ``model_kwargs``,
    ``labels``, ``clip_len``, ``crop_size``, ``dataset``, ``test_accuracy``,
    ``preset``) plus ``archive`` and ``meta``.
    """
    import io

    from service.models.resnet3d import resnet3d_18

    meta, weights = read_archive(path)
    if meta.get("arch") != "resnet3d_18":
        raise ValueError(
            f"{path}: arch {meta.get('arch')!r}: only resnet3d_18 archives load eagerly"
        )
    if meta.get("format") == "export":
        archived = torch.export.load(io.BytesIO(weights)).module()
    else:
        archived = torch.jit.load(io.BytesIO(weights), map_location="cpu")
    state = {k: v.detach().clone() for k, v in archived.state_dict().items()}
    in_channels = int(state["stem.0.weight"].shape[1])
    kwargs: dict[str, Any] = {
        "num_classes": len(meta["labels"]),
        "base_width": int(state["stem.0.weight"].shape[0]),
        "in_channels": in_channels,
        "mean": [float(v) for v in state["normalize.mean"].flatten()],
        "std": [float(v) for v in state["normalize.std"].flatten()],
    }
    model = resnet3d_18(**kwargs)
    model.load_state_dict(state)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    crop = int(meta["crop_size"])
    probe = torch.rand(2, in_channels, int(meta["clip_len"]), crop, crop, generator=gen)
    with torch.no_grad():
        err = (model(probe) - archived(probe)).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"{path}: rebuilt model differs from the archived one by {err:.2e}")
    info = {
        "arch": meta["arch"],
        "model_kwargs": kwargs,
        "labels": list(meta["labels"]),
        "clip_len": int(meta["clip_len"]),
        "crop_size": crop,
        "dataset": meta.get("dataset"),
        "test_accuracy": meta.get("test_accuracy"),
        "preset": dict(meta["preset"]),
        # what validation_split needs to rebuild training's holdout, when recorded
        "train_args": {"val_fraction": meta.get("val_fraction"), "seed": meta.get("train_seed", 0)},
        "archive": str(path),
        "meta": meta,
    }
    return model.to(map_location), info
