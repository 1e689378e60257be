"""The real-clip set at a model's input size, labelled by the undefended model
(``shuffleguard real-set``).

The analyses (``evaluate``, ``analyze table1/fig2/adaptive/i3d``, ``audit``) read a
toy-data directory and a training-format checkpoint. This command makes both for a
model family with converted published weights (today ``i3d_inception``, from
``shuffleguard weights i3d``) and the real clips of ``shuffleguard real-clips``:

* ``<out>/model.pt``: the family at ``--clip-len x --crop-size`` (a smaller crop than
  the family's keeps its layers; the head's average pool is fitted to the smaller map,
  :func:`service.models.families.build_family`), the converted weights, Kinetics-400
  labels, in the format of ``shuffleguard train``; ``model.pt.preset.json``: the
  paper's preset for the family (I3D: h1 = 3, h2 = 4, N = 10);
* ``<out>/data``: the chosen windows decoded as the gateway decodes them (the family's
  sampling, resize scaled with the crop, centre crop), uint8 ``.npy`` clips, and
  ``labels.csv`` whose label is the **undefended model's own top-1** (the footage is
  not Kinetics data: there is no ground truth), ``clips.csv`` with each clip's
  window, top-1 probability and top-5, ``meta.json`` with the provenance.

Windows: at most ``--per-source`` per source, evenly spaced over its windows (first
and last included). Windows of one video are not independent samples.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from service.options import ExperimentConfig, opt

#: what every table built on this set says about its labels
LABEL_NOTE = (
    "reference label = the undefended model's own top-1 on the clean clip (not Kinetics"
    " data: no ground truth)"
)


@dataclass
class RealSetConfig(ExperimentConfig):
    """Settings of ``shuffleguard real-set``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "real-set")

    weights: str = opt(
        "runs/weights/i3d_inception_kinetics400.pt", "converted weights (shuffleguard weights i3d)",
        show="always",
    )  # fmt: skip
    arch: str = opt("i3d_inception", "model family of the weights", show="always")
    clips_dir: str = opt("data/real_clips", "the windows of `shuffleguard real-clips`")
    clip_len: int = opt(32, "frames per clip", show="always")
    crop_size: int = opt(112, "crop side (the family's is 224)", show="always")
    per_source: int = opt(3, "at most this many windows per source, evenly spaced", show="always")
    out: str = opt("data/real_set", "output directory (model.pt, data/)", show="always")
    threads: int = opt(1, "CPU threads for torch")

    def check(self) -> None:
        if min(self.clip_len, self.crop_size, self.per_source, self.threads) < 1:
            raise ValueError("--clip-len, --crop-size, --per-source, --threads must be >= 1")


def choose_windows(files: list[str], per_source: int) -> list[str]:
    """At most ``per_source`` windows of each source (``<stem>_<start>.mkv``), evenly
    spaced over its windows in start order, first and last included; sources sorted."""
    by_source: dict[str, list[str]] = {}
    for name in sorted(files, key=lambda f: (f.rsplit("_", 1)[0], int(f.rsplit("_", 1)[1][:-4]))):
        by_source.setdefault(name.rsplit("_", 1)[0], []).append(name)
    chosen = []
    for windows in by_source.values():
        k = min(per_source, len(windows))
        picks = sorted({round(v) for v in np.linspace(0, len(windows) - 1, k)})
        chosen += [windows[i] for i in picks]
    return chosen


def build_checkpoint(args: RealSetConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The family at the set's size with the converted weights, as a training checkpoint."""
    from service.core.presets import preset_for_arch
    from service.models.checkpoints import fit_state_dict, read_checkpoint
    from service.models.families import build_family, get_family, kinetics400_labels

    fam = get_family(args.arch)
    loaded = read_checkpoint(args.weights)
    model = build_family(args.arch, clip_len=args.clip_len, crop_size=args.crop_size)
    model.net.load_state_dict(fit_state_dict(model.net, loaded.state_dict), strict=False)
    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    kwargs = {"name": args.arch, "num_classes": 400, "clip_len": args.clip_len,
              "crop_size": args.crop_size, "width": 1.0}  # fmt: skip
    ckpt = {
        "state_dict": state, "arch": args.arch, "model_kwargs": kwargs,
        "labels": kinetics400_labels(), "clip_len": args.clip_len,
        "crop_size": args.crop_size, "dataset": "real-clips", "data": {}, "seed": 0,
        "test_accuracy": None, "val_accuracy": None, "best_epoch": None, "train_args": {},
        "history": [], "weights_sha256": loaded.sha256,
        "provenance": {k: str(v) for k, v in (loaded.provenance or {}).items()},
    }  # fmt: skip
    if fam.preset_arch is not None:
        ckpt["preset"] = preset_for_arch(fam.preset_arch).to_dict()
    return model, ckpt


def decode_window(path: Path, arch: str, clip_len: int, crop_size: int) -> np.ndarray:
    """One window decoded as the gateway decodes it for ``arch`` at this size."""
    from service.decoder.decode import decode_clip
    from service.models.families import get_family

    spec = get_family(arch).spec.scaled(clip_len, crop_size)
    clip = decode_clip(
        path.read_bytes(), clip_len=clip_len, frame_interval=spec.frame_interval,
        crop_size=crop_size, resize=spec.resize, transform=spec.transform,
    )  # fmt: skip
    return np.ascontiguousarray(clip.frames)


def run(args: RealSetConfig) -> int:
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    out, data = Path(args.out), Path(args.out) / "data"
    data.mkdir(parents=True, exist_ok=True)
    model, ckpt = build_checkpoint(args)
    files = choose_windows([p.name for p in Path(args.clips_dir).glob("*_*.mkv")], args.per_source)
    if not files:
        raise SystemExit(f"shuffleguard real-set: no windows in {args.clips_dir}")
    names, rows = ckpt["labels"], []
    for i, name in enumerate(tqdm(files, desc="real set", unit="clip")):
        frames = decode_window(
            Path(args.clips_dir) / name, args.arch, args.clip_len, args.crop_size
        )
        np.save(data / f"clip_{i:05d}.npy", frames, allow_pickle=False)
        x = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(255).unsqueeze(0)
        with torch.no_grad():
            prob = model(x).softmax(dim=1)[0]
        top = prob.topk(5)
        rows.append({"file": f"clip_{i:05d}.npy", "label_index": int(top.indices[0]),
                     "label": names[int(top.indices[0])], "split": "test", "window": name,
                     "top1_prob": round(float(top.values[0]), 4),
                     "top5": "|".join(names[int(k)] for k in top.indices)})  # fmt: skip
    _write(out, data, ckpt, rows, args)
    print(f"wrote {out / 'model.pt'} and {len(rows)} clips in {data} ({LABEL_NOTE})")
    return 0


def _write(
    out: Path, data: Path, ckpt: dict[str, Any], rows: list[dict[str, Any]], args: RealSetConfig
) -> None:
    torch.save(ckpt, out / "model.pt")
    if "preset" in ckpt:
        (out / "model.pt.preset.json").write_text(json.dumps({"preset": ckpt["preset"]}) + "\n")
    for name, fields in (("labels.csv", ["file", "label_index", "label", "split"]),
                         ("clips.csv", list(rows[0]))):  # fmt: skip
        with open(data / name, "w", newline="") as f:
            w = csv.DictWriter(f, fields, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    meta = {"dataset": "real-clips", "command": args.command(), "label_note": LABEL_NOTE,
            "labels": ckpt["labels"], "clip_len": args.clip_len,
            "crop_size": args.crop_size, "weights_sha256": ckpt["weights_sha256"]}  # fmt: skip
    (data / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
