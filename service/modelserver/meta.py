"""A served model's ``meta.json``, validated: what the gateway, the OIP predictor and the
research harness need to know about an archive (its geometry, labels and preset).

Plain data, no HTTP and no torch, so both sides of the wire and the harness read an
archive's metadata the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.core.presets import ShufflePreset

__all__ = ["ModelMeta"]


@dataclass(frozen=True)
class ModelMeta:
    """What the gateway needs to know about a served model (its ``meta.json``)."""

    name: str
    arch: str
    clip_len: int
    frame_interval: int
    crop_size: int
    labels: tuple[str, ...]
    preset: ShufflePreset
    format: str = "torchscript"
    sha256: str = ""
    #: before the crop: short side (int) or fixed (h, w); meta.json's ``resize``,
    #: default ``crop_size`` (archives older than the field)
    resize: int | tuple[int, int] = 0
    #: resize/crop arithmetic of :func:`service.decoder.decode.decode_clip`
    transform: str = "shuffleguard"
    #: "trained" or "random" (a random-init archive for smoke tests and benchmarks)
    weights: str = "trained"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.resize:  # built without one: the crop size, as archives before the field
            object.__setattr__(self, "resize", self.crop_size)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str | None = None) -> ModelMeta:
        """Validate a ``meta.json`` mapping; ValueError says what is wrong."""
        try:
            preset_raw = data["preset"]
            preset = ShufflePreset(
                h1=int(preset_raw["h1"]),
                h2=int(preset_raw["h2"]),
                ensemble=int(preset_raw["ensemble"]),
            )
            labels = tuple(str(x) for x in data["labels"])
            resize_raw = data.get("resize", data["crop_size"])
            resize: int | tuple[int, int] = (
                int(resize_raw)
                if isinstance(resize_raw, int | float | str)
                else (int(resize_raw[0]), int(resize_raw[1]))
            )
            meta = cls(
                name=str(name or data["name"]),
                arch=str(data.get("arch", "unknown")),
                clip_len=int(data["clip_len"]),
                frame_interval=int(data.get("frame_interval", 1)),
                crop_size=int(data["crop_size"]),
                labels=labels,
                preset=preset,
                format=str(data.get("format", "torchscript")),
                sha256=str(data.get("sha256", "")),
                resize=resize,
                transform=str(data.get("transform", "shuffleguard")),
                weights=str(data.get("weights", "trained")),
                extra={k: v for k, v in data.items() if k not in _META_FIELDS},
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"model metadata lacks or mistypes {exc}") from None
        if meta.clip_len < 1 or meta.crop_size < 1 or meta.frame_interval < 1:
            raise ValueError(f"model metadata has a non-positive clip geometry: {dict(data)}")
        if not meta.labels:
            raise ValueError("model metadata has no labels")
        sides = (meta.resize,) if isinstance(meta.resize, int) else meta.resize
        if min(sides) < meta.crop_size:
            raise ValueError(f"resize {meta.resize} is below crop_size={meta.crop_size}")
        if meta.transform not in ("shuffleguard", "torchvision"):
            raise ValueError(f"unknown transform {meta.transform!r}")
        if meta.weights not in ("trained", "random"):
            raise ValueError(f"weights must be 'trained' or 'random', got {meta.weights!r}")
        if meta.preset.h2 > meta.clip_len:
            raise ValueError(f"preset h2={meta.preset.h2} exceeds clip_len={meta.clip_len}")
        return meta

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def public(self) -> dict[str, Any]:
        """The ``/v1/models`` entry (without ``default``)."""
        return {
            "name": self.name,
            "arch": self.arch,
            "clip_len": self.clip_len,
            "frame_interval": self.frame_interval,
            "crop_size": self.crop_size,
            "labels": list(self.labels),
            "preset": self.preset.to_dict(),
            "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
            "weights": self.weights,
        }


_META_FIELDS = {
    "name",
    "arch",
    "clip_len",
    "frame_interval",
    "crop_size",
    "labels",
    "preset",
    "format",
    "sha256",
    "resize",
    "transform",
    "weights",
}
