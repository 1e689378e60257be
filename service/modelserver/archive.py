"""Export a model and pack it into a TorchServe archive (SPEC §3).

An archive holds:

* ``model.pt`` -- a TorchScript trace (``format="torchscript"``, the default), or
  ``model.pt2`` -- a ``torch.export`` program with a dynamic batch dimension
  (``format="export"``); either loads without the project's model code;
* ``meta.json`` -- ``name``, ``arch``, ``clip_len``, ``frame_interval``,
  ``crop_size``, ``labels``, ``preset`` {``h1``, ``h2``, ``ensemble``}, ``format``,
  ``sha256`` of the weights file, plus provenance fields;
* ``model-config.yaml`` -- TorchServe's server-side batching and worker settings;
* ``handler.py`` -- :mod:`service.modelserver.handler`, with ``npy_reader.py`` beside it
  (:mod:`service.decoder.npy`, the handler's ``.npy`` reader).

The network takes float32 ``[B, 3, T, H, W]`` RGB in ``[0, 1]`` and returns
logits ``[B, K]``; normalization is inside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

HANDLER_PATH = Path(__file__).with_name("handler.py")
#: every ``toy-data`` option that shapes the clips: the recipe ``toy-data`` records in
#: ``meta.json`` (``recipe``), ``train`` keeps in its checkpoint (``data``) and a toy
#: model's archived meta.json carries under ``data``
TOY_DATA_KEYS = (
    "dataset",
    "count",
    "seed",
    "frames",
    "size",
    "object_fraction",
    "speed_reference",
    "contrast",
    "spatial_fraction",
)
#: modules the handler imports from beside it (TorchServe loads it without ``service``),
#: by their name in the archive
HANDLER_MODULES = {"npy_reader.py": Path(__file__).parents[1] / "decoder" / "npy.py"}
REQUIRED_META = ("name", "arch", "clip_len", "frame_interval", "crop_size", "labels", "preset")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks (the one file hash on this side of
    the wire; the handler, which runs without this package, has its own line)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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


def _export_weights(model: torch.nn.Module, meta: dict[str, Any], fmt: str, tmp: Path) -> Path:
    """``model`` exported into ``tmp`` as ``model.pt`` (TorchScript) or ``model.pt2``."""
    clip_len, crop_size = int(meta["clip_len"]), int(meta["crop_size"])
    if fmt == "torchscript":
        weights = tmp / "model.pt"
        export_torchscript(model, clip_len, crop_size, weights)
    elif fmt == "export":
        weights = tmp / "model.pt2"
        export_program(model, clip_len, crop_size, weights)
    else:
        raise ValueError(f"fmt must be 'torchscript' or 'export', got {fmt!r}")
    return weights


def _copy_handler(tmp: Path) -> tuple[Path, list[Path]]:
    """``handler.py`` and the modules it imports from beside it, copied into ``tmp``
    under their names in the archive."""
    handler = shutil.copyfile(HANDLER_PATH, tmp / "handler.py")
    modules = [shutil.copyfile(src, tmp / name) for name, src in HANDLER_MODULES.items()]
    return handler, modules


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
        weights = _export_weights(model, meta, fmt, tmp)
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
        handler, modules = _copy_handler(tmp)
        config = ModelArchiverConfig(
            model_name=str(meta["name"]),
            handler=str(handler),
            version=version,
            serialized_file=str(weights),
            extra_files=",".join(map(str, (tmp / "meta.json", *modules))),
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


def load_archived_network(
    path: Path | str, map_location: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a ``.mar`` as it is served, whatever its architecture, and its meta.

    The TorchScript ``model.pt`` (or the ``torch.export`` ``model.pt2``) is loaded from
    the archive's bytes (checked against ``meta.json``'s sha256), in eval mode on
    ``map_location``. It takes float ``[B, 3, T, H, W]`` in ``[0, 1]`` and returns logits
    ``[B, K]``; gradients flow through it, so attacks run on the served network itself.
    """
    import io

    meta, weights = read_archive(path)
    if meta.get("format") == "export":
        network = torch.export.load(io.BytesIO(weights)).module().to(map_location)
    else:
        network = torch.jit.load(io.BytesIO(weights), map_location=map_location)
        network.eval()
    return network, meta


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
    from service.models.resnet3d import resnet3d_18

    archived, meta = load_archived_network(path)
    if meta.get("arch") != "resnet3d_18":
        raise ValueError(
            f"{path}: arch {meta.get('arch')!r}: only resnet3d_18 archives load eagerly"
        )
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


# --------------------------------------------------------------------------- #
# Real model families: a user's checkpoint (or a random init) -> .mar
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class FamilyArchiveConfig:
    """What :func:`archive_family` builds (the ``shuffleguard archive --arch`` options).

    Exactly one of ``checkpoint`` and ``random_init``. ``labels``: ``"kinetics400"``
    (torchvision's 400 Kinetics-400 class names), a file with one name per line, or
    None (Kinetics-400 when the classifier has 400 outputs). ``h1``/``h2``/``ensemble``
    override the family's paper preset (required when it has none). ``clip_len`` and
    ``crop_size`` build a smaller input than the family's spec (smoke tests,
    benchmarks); the resize scales with the crop.
    """

    family: str
    name: str
    out: Path = Path("model_store")
    checkpoint: Path | None = None
    random_init: bool = False
    labels: str | None = None
    h1: int | None = None
    h2: int | None = None
    ensemble: int | None = None
    clip_len: int | None = None
    crop_size: int | None = None
    frame_interval: int | None = None
    seed: int = 0
    fmt: str = "torchscript"
    batch_size: int = 4
    max_batch_delay_ms: int = 5
    workers: int = 1
    response_timeout_s: int = 120


class ArchiveError(ValueError):
    """An archive request that cannot be built (nothing has been written)."""


KINETICS400 = "kinetics400"


def resolve_labels(source: str | None, num_classes: int | None) -> tuple[list[str], str]:
    """``(labels, label_source)`` for ``--labels`` (see :class:`FamilyArchiveConfig`).

    ``num_classes`` (the checkpoint's classifier outputs, None for a random init)
    must equal the number of labels.
    """
    from service.models.families import kinetics400_labels

    if source is None:
        if num_classes not in (None, 400):
            raise ArchiveError(
                f"the checkpoint's classifier has {num_classes} outputs: pass --labels FILE"
                " (one class name per line, in logit order)"
            )
        source = KINETICS400
    if source == KINETICS400:
        labels, label_source = kinetics400_labels(), "kinetics400 (torchvision weights meta)"
    else:
        path = Path(source)
        if not path.is_file():
            raise ArchiveError(f"--labels: {path} is not a file (or use --labels kinetics400)")
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not labels:
            raise ArchiveError(f"--labels: {path} holds no class names (one per line)")
        label_source = f"file {path.name} (sha256 {sha256_file(path)})"
    if num_classes is not None and len(labels) != num_classes:
        raise ArchiveError(
            f"{len(labels)} labels ({label_source}) but the checkpoint's classifier has"
            f" {num_classes} outputs; give one class name per output, in logit order"
        )
    return labels, label_source


def prepare_family(
    config: FamilyArchiveConfig,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the family's model, load the checkpoint and write the meta, all in memory.

    Every check (family, checkpoint keys and shapes, labels, preset) happens here, so
    a failing request raises before anything is written.

    Returns:
        ``(model, meta)``: the :class:`~service.models.families.VideoClassifier` in
        eval mode (float ``[B, 3, T, crop, crop]`` in ``[0, 1]`` -> logits ``[B, K]``)
        and the ``meta.json`` content (without ``format``/``sha256``).

    Raises:
        ArchiveError, CheckpointError (both ValueError): what is wrong, nothing written.
    """
    from service.models.checkpoints import fit_state_dict
    from service.models.families import build_family

    fam, spec = _family_spec(config)
    loaded = _read_family_checkpoint(config, fam)
    num_classes = None if loaded is None else int(loaded.state_dict[fam.head_weight].shape[0])
    labels, label_source = resolve_labels(config.labels, num_classes)
    preset, preset_source = _family_preset(config, fam, spec.clip_len)
    model = build_family(
        fam.name,
        num_classes=len(labels),
        clip_len=spec.clip_len,
        crop_size=spec.crop_size,
        seed=config.seed,
    )
    net = model.net
    if loaded is not None:
        state = fit_state_dict(
            net, loaded.state_dict, what=str(config.checkpoint), head_weight=fam.head_weight
        )
        net.load_state_dict(state, strict=False)
        model.eval()
    return model, _family_meta(
        config, fam, spec, labels, preset, loaded, (label_source, preset_source)
    )


def _family_spec(config: FamilyArchiveConfig) -> tuple[Any, Any]:
    """The family and its input spec at the requested clip length, crop and interval."""
    from service.models.families import get_family

    try:
        fam = get_family(config.family)
    except KeyError as exc:
        raise ArchiveError(str(exc.args[0])) from None
    if (config.checkpoint is None) == (not config.random_init):
        raise ArchiveError("give either --checkpoint FILE or --random-init (exactly one)")
    spec = fam.spec.scaled(config.clip_len, config.crop_size)
    if config.frame_interval is not None:
        spec = dataclasses.replace(spec, frame_interval=int(config.frame_interval))
    return fam, spec


def _read_family_checkpoint(config: FamilyArchiveConfig, fam: Any) -> Any:
    """The checkpoint (a :class:`~service.models.checkpoints.LoadedCheckpoint` with the
    family's classifier in it), or None for ``--random-init``."""
    from service.models.checkpoints import read_checkpoint

    if config.checkpoint is None:
        return None
    loaded = read_checkpoint(config.checkpoint)
    if loaded.state_dict.get(fam.head_weight) is None:
        raise ArchiveError(
            f"{config.checkpoint} has no {fam.head_weight!r} (the {fam.name} classifier);"
            f" is it a {fam.library} {fam.name} checkpoint? Its first keys:"
            f" {', '.join(list(loaded.state_dict)[:5])}"
        )
    return loaded


def _family_preset(
    config: FamilyArchiveConfig, fam: Any, clip_len: int
) -> tuple[dict[str, int], str]:
    """``(preset, where it comes from)``: the given h1/h2, else the paper's for the
    family; ArchiveError when neither or h2 outside ``1..clip_len``."""
    from service.core.presets import preset_for_arch

    if config.h1 is not None and config.h2 is not None:
        preset = {"h1": config.h1, "h2": config.h2, "ensemble": config.ensemble or 10}
        preset_source = "given"
    elif fam.preset_arch is not None:
        paper = preset_for_arch(fam.preset_arch)
        preset = {"h1": paper.h1, "h2": paper.h2, "ensemble": config.ensemble or paper.ensemble}
        preset_source = f"paper Sec. 5.2 ({fam.preset_arch})"
    else:
        raise ArchiveError(
            f"{fam.name} has no preset in the paper: pass --h1 and --h2 (docs/models.md)"
        )
    if not 1 <= int(preset["h2"]) <= clip_len:
        raise ArchiveError(f"h2={preset['h2']} must be in 1..clip_len={clip_len}")
    return preset, preset_source


def _family_meta(
    config: FamilyArchiveConfig,
    fam: Any,
    spec: Any,
    labels: list[str],
    preset: dict[str, int],
    loaded: Any,
    sources: tuple[str, str],
) -> dict[str, Any]:
    """``meta.json`` of a family archive; ``sources``: where the labels and the preset
    come from."""
    meta: dict[str, Any] = {
        "name": config.name,
        "arch": fam.name,
        **{k: v for k, v in spec.to_meta().items() if k not in ("mean", "std")},
        "labels": labels,
        "preset": preset,
        "family": {
            "name": fam.name,
            "library": fam.library,
            "builder": fam.builder,
            "note": fam.note,
            "first_temporal_conv": dataclasses.asdict(fam.first_temporal_conv),
            "slowfast_alpha": fam.slowfast_alpha,
        },
        "input": spec.to_meta(),
        "input_reduced": (spec.clip_len, spec.crop_size) != (fam.spec.clip_len, fam.spec.crop_size),
        "weights": "random" if loaded is None else "trained",
        "label_source": sources[0],
        "preset_source": sources[1],
    }
    if loaded is not None:
        meta["checkpoint"] = {
            "file": Path(config.checkpoint or "").name,
            "sha256": loaded.sha256,
            "format": loaded.format,
            "stripped_prefix": loaded.stripped_prefix,
        }
        if loaded.provenance is not None:
            meta["checkpoint"]["provenance"] = loaded.provenance
    else:
        meta["init_seed"] = config.seed
    return meta


def archive_family(config: FamilyArchiveConfig) -> Path:
    """Build ``{config.out}/{config.name}.mar`` for a real model family; returns its path.

    See :class:`FamilyArchiveConfig` and :func:`prepare_family` (all checks happen
    before anything is written).
    """
    model, meta = prepare_family(config)
    if meta["weights"] == "random":
        logger.warning("%s: random-init weights (for smoke tests and benchmarks)", config.name)
    return build_mar(
        model,
        meta,
        config.out,
        batch_size=config.batch_size,
        max_batch_delay_ms=config.max_batch_delay_ms,
        workers=config.workers,
        response_timeout_s=config.response_timeout_s,
        fmt=config.fmt,
    )


def rewrite_archive_meta(path: Path | str, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into the ``meta.json`` of a ``.mar`` (and its ``.meta.json``
    beside it, when there is one), copying every other zip entry byte for byte.

    The weights are not touched: their sha256 is checked against ``meta['sha256']``
    before and after. Returns the new meta.
    """
    import zipfile

    path = Path(path)
    meta, weights = read_archive(path)
    new_meta = {**meta, **updates}
    if new_meta.get("sha256") != meta.get("sha256"):
        raise ValueError("rewrite_archive_meta does not change the weights digest")
    text = json.dumps(new_meta, indent=2) + "\n"
    tmp = path.with_suffix(".mar.tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            data = text.encode() if info.filename == "meta.json" else src.read(info)
            dst.writestr(info, data, compress_type=info.compress_type)
    tmp.replace(path)
    meta_after, weights_after = read_archive(path)
    assert weights_after == weights and meta_after == new_meta
    side = path.with_name(f"{path.stem}.meta.json")
    if side.is_file():
        side.write_text(text)
    return new_meta


def toy_data_recipe(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The ``toy-data`` recipe of a ``shuffleguard train`` checkpoint, as far as it
    records it (``ckpt['data']`` when the trainer stored one, else its ``dataset``);
    a warning names the options it lacks (add them to meta.json by hand, see
    docs/default_model.md)."""
    recipe = {k: v for k, v in dict(ckpt.get("data") or {}).items() if k in TOY_DATA_KEYS}
    if ckpt.get("dataset") is not None:
        recipe.setdefault("dataset", ckpt["dataset"])
    missing = [k for k in TOY_DATA_KEYS if k not in recipe]
    if missing:
        logger.warning(
            "the checkpoint does not record the toy-data options %s; meta.json's data recipe"
            " is incomplete",
            ", ".join(missing),
        )
    return recipe
