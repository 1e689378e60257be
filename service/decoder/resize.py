"""Resize and centre-crop one frame, with the arithmetic of the model's transform."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["TRANSFORMS", "Geometry", "Resize", "resize_crop"]

#: resize/crop arithmetic conventions (``transform`` of
#: :func:`service.decoder.decode.decode_clip`)
TRANSFORMS = ("shuffleguard", "torchvision")

Resize = int | tuple[int, int]


def resize_crop(
    image: np.ndarray,
    crop_size: int,
    resize: Resize | None = None,
    transform: str = "shuffleguard",
) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[crop_size, crop_size, 3]``: resize, then centre crop.

    ``resize``: an int is the short side (default ``crop_size``), ``(h, w)`` a fixed
    size. ``transform`` picks the arithmetic:

    * ``"shuffleguard"`` (the toy models, MMAction2-like): long side
      ``int(long * s + 0.5)`` as mmcv rescales, bilinear with antialiasing (Pillow's
      ``BILINEAR`` resample: the same filter as torch's antialiased uint8 kernel, within
      one level), crop offset ``(size - crop) // 2`` as MMAction2 ``CenterCrop``;
    * ``"torchvision"`` (torchvision's ``VideoClassification`` preset, PyTorchVideo's
      ``ShortSideScale`` + ``CenterCropVideo``): long side ``int(resize * long /
      short)`` (floored), bilinear without antialiasing on float pixels (rounded back
      to uint8), crop offset ``round((size - crop) / 2)``.

    A frame already at the resize target is only cropped, so its pixels are kept
    exactly.
    """
    h, w = image.shape[:2]
    target = crop_size if resize is None else resize
    if isinstance(target, int):
        short, long_ = (h, w) if h <= w else (w, h)
        if transform == "torchvision":
            new_long = int(target * long_ / short)
        else:
            new_long = int(long_ * (target / short) + 0.5)
        new_long = max(target, new_long)
        new_h, new_w = (target, new_long) if h <= w else (new_long, target)
    else:
        new_h, new_w = int(target[0]), int(target[1])
    if (new_h, new_w) != (h, w):
        if transform == "torchvision":
            image = _bilinear(image, new_h, new_w)
        else:
            pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
            image = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))
        h, w = new_h, new_w
    if transform == "torchvision":
        top, left = int(round((h - crop_size) / 2.0)), int(round((w - crop_size) / 2.0))
    else:
        top, left = (h - crop_size) // 2, (w - crop_size) // 2
    return np.ascontiguousarray(image[top : top + crop_size, left : left + crop_size])


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source rows ``i0``, ``i1`` and weight of ``i1`` for each of ``n_out`` outputs:
    bilinear, ``align_corners=False``, no antialiasing (half-pixel centres, the source
    position clamped at 0 and the last row repeated at the far edge)."""
    scale = np.float32(n_in / n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = src.astype(np.int64)  # floor: src >= 0
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _bilinear(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[new_h, new_w, 3]``: bilinear on float pixels
    without antialiasing, rounded back to uint8 (torchvision's video transforms:
    ``interpolate(x.float(), mode="bilinear", antialias=False)``)."""
    y0, y1, wy = _taps(image.shape[0], new_h)
    x0, x1, wx = _taps(image.shape[1], new_w)
    img = image.astype(np.float32)
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    out = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Geometry:
    """The resize + crop of one decode (see :func:`resize_crop`)."""

    crop_size: int
    resize: Resize | None = None
    transform: str = "shuffleguard"

    @classmethod
    def checked(cls, crop_size: int, resize: Resize | None, transform: str) -> Geometry:
        """The geometry, or ValueError (a caller bug) on an unknown ``transform`` or a
        ``resize`` that is not an int or ``(h, w)``, each >= ``crop_size``."""
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        sides = [resize] if isinstance(resize, int) else list(resize or [])
        if any(int(v) < crop_size for v in sides) or len(sides) not in (0, 1, 2):
            raise ValueError(
                f"resize {resize} must be an int or (h, w), each >= crop_size {crop_size}"
            )
        return cls(crop_size, resize, transform)

    def apply(self, image: np.ndarray) -> np.ndarray:
        if self.resize is None and self.transform == "shuffleguard":
            return resize_crop(image, self.crop_size)  # the toy models' (default) geometry
        return resize_crop(image, self.crop_size, self.resize, self.transform)
