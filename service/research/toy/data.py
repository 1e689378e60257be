"""The paper's synthetic toy video datasets (Sec. 3.2, Fig. 4).

Every clip shows one object moving in a straight line at constant speed over a
static textured background. There are 8 backgrounds, 8 objects (a shape with its
own colour) and 8 motion directions (the compass points), and 8 classes; the three
datasets differ in which factors carry the class:

* **Dataset 1** -- background ``k``, object ``k`` and direction ``k`` all belong to
  class ``k`` (label e.g. ``circle_move_right_on_red_gradient``).
* **Dataset 2** -- object ``k`` and direction ``k`` belong to class ``k``; the
  background is random (label e.g. ``circle_move_right``).
* **Dataset 3** -- only direction ``k`` belongs to class ``k``; background and
  object are random (label e.g. ``move_up_left``). Only the order of the frames
  tells the classes apart.

**Partial spatial cues** (``spatial_fraction`` p < 1, dataset 1 only): the direction
always belongs to the class, but background and object do only in a fraction p of
the clips (drawn per clip); in the others both are random. A model that reads the
spatial cues where they exist and the motion elsewhere keeps about
``p + (1 - p) / 8`` of its accuracy on uniformized (motionless) clips, which sets
where it sits between dataset 1 (all spatial) and dataset 3 (all motion).

Geometry. The speed is drawn per clip, uniformly in ``[3, 5]`` px/frame (the paper's
range) for a ``speed_reference`` px frame (64 by default) and scaled with the frame
size, measured along the direction of motion (diagonal moves cover
``speed / sqrt(2)`` px per axis). Objects are ``object_fraction`` of the frame side
(a fifth by default: 13 px at 64 px). The start point is drawn so the whole object
stays inside the frame for the whole clip; when a trajectory at the drawn speed
cannot fit (long clips, e.g. 16 frames at 64 px), the speed is lowered to the
largest that fits, and :attr:`ToyDataset.speed` records the speed actually used.

Determinism. Everything comes from one ``numpy.random.Generator`` seeded with
``seed``: the same arguments give byte-identical clips, labels and files.

Splits. Within each class, every fourth clip (in file order) is a test clip, so
the split is a deterministic, stratified 75/25.

On disk (:func:`write_toy_dataset`, :func:`load_toy_dataset`): ``clip_00000.npy``
... (uint8 ``[T, H, W, 3]``), ``labels.csv`` (``file,label_index,label,split``),
``factors.csv`` (per-clip background, object, direction, speed), ``meta.json`` and,
with ``mp4=True``, viewable ``clip_00000.mp4`` files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch

__all__ = [
    "BACKGROUNDS",
    "DIRECTIONS",
    "NUM_CLASSES",
    "OBJECTS",
    "ClipSet",
    "ToyDataset",
    "direction_vectors",
    "generate_toy_dataset",
    "label_names",
    "load_toy_dataset",
    "object_size",
    "render_background",
    "write_mp4",
    "write_toy_dataset",
]

logger = logging.getLogger(__name__)

NUM_CLASSES = 8
DATASETS = (1, 2, 3)
#: Paper: "the motion speed is constant in each video between 3 and 5 pixels per frame".
SPEED_RANGE = (3.0, 5.0)
#: Frame size (px) at which :data:`SPEED_RANGE` and the object size hold by default.
SPEED_REFERENCE = 64
OBJECT_FRACTION = 0.2
TEST_EVERY = 4  # every 4th clip of a class is a test clip -> 75/25

Grid = tuple[np.ndarray, np.ndarray]  # (y, x) in [0, 1), shapes [H, 1] and [1, W]
RGB = tuple[float, float, float]


# --------------------------------------------------------------------------- #
# Factors
# --------------------------------------------------------------------------- #
def _stripes(v: np.ndarray, period: float) -> np.ndarray:
    return (np.floor(v * period) % 2).astype(np.float64)


_BACKGROUND_SPECS: list[tuple[str, RGB, RGB, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = [
    # name, colour at p=0, colour at p=1, pattern p(y, x) in [0, 1]
    ("red_gradient", (0.35, 0.05, 0.05), (0.60, 0.32, 0.20), lambda y, x: x + 0 * y),
    ("blue_gradient", (0.05, 0.10, 0.35), (0.20, 0.45, 0.55), lambda y, x: y + 0 * x),
    ("green_stripes", (0.10, 0.30, 0.10), (0.25, 0.50, 0.20), lambda y, x: _stripes(x + 0 * y, 8)),
    ("purple_stripes", (0.30, 0.10, 0.35), (0.50, 0.30, 0.55), lambda y, x: _stripes(y + 0 * x, 8)),
    (
        "gray_checkerboard",
        (0.20, 0.20, 0.20),
        (0.50, 0.50, 0.50),
        lambda y, x: (np.floor(x * 4) + np.floor(y * 4)) % 2,
    ),
    ("brown_diagonal", (0.35, 0.22, 0.10), (0.55, 0.40, 0.25), lambda y, x: _stripes(x + y, 6)),
    (
        "teal_radial",
        (0.10, 0.45, 0.45),
        (0.02, 0.15, 0.20),
        lambda y, x: np.clip(np.hypot(x - 0.5, y - 0.5) * 1.6, 0.0, 1.0),
    ),
    (
        "olive_grid",
        (0.30, 0.30, 0.10),
        (0.55, 0.55, 0.30),
        lambda y, x: (((x * 6) % 1.0 < 0.18) | ((y * 6) % 1.0 < 0.18)).astype(np.float64),
    ),
]
#: Background names; background ``k`` belongs to class ``k`` in dataset 1.
BACKGROUNDS: tuple[str, ...] = tuple(spec[0] for spec in _BACKGROUND_SPECS)

_OBJECT_SPECS: list[tuple[str, RGB, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = [
    # name, colour, mask(u, v) on [-1, 1]^2 (v points down)
    ("circle", (1.00, 0.15, 0.15), lambda u, v: u**2 + v**2 <= 1.0),
    ("square", (0.20, 1.00, 0.20), lambda u, v: (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)),
    ("triangle", (0.30, 0.50, 1.00), lambda u, v: (v <= 0.9) & (np.abs(u) <= (v + 1.0) / 1.9)),
    (
        "cross",
        (1.00, 1.00, 0.10),
        lambda u, v: (np.abs(u) <= 0.34) | (np.abs(v) <= 0.34),
    ),
    ("diamond", (1.00, 0.20, 1.00), lambda u, v: np.abs(u) + np.abs(v) <= 1.0),
    ("ring", (0.10, 1.00, 1.00), lambda u, v: (u**2 + v**2 <= 1.0) & (u**2 + v**2 >= 0.3)),
    ("xmark", (1.00, 1.00, 1.00), lambda u, v: (np.abs(u - v) <= 0.45) | (np.abs(u + v) <= 0.45)),
    ("bar", (1.00, 0.60, 0.00), lambda u, v: np.abs(v) <= 0.4 + 0 * u),
]
#: Object names; object ``k`` belongs to class ``k`` in datasets 1 and 2.
OBJECTS: tuple[str, ...] = tuple(spec[0] for spec in _OBJECT_SPECS)

#: Direction ``k`` points at ``k * 45`` degrees counter-clockwise from "right";
#: it belongs to class ``k`` in every dataset.
DIRECTIONS: tuple[str, ...] = (
    "right",
    "up_right",
    "up",
    "up_left",
    "left",
    "down_left",
    "down",
    "down_right",
)


def direction_vectors() -> np.ndarray:
    """Unit motion vectors ``[8, 2]`` as ``(dy, dx)`` in image coordinates (y points down)."""
    angles = np.arange(NUM_CLASSES) * (math.pi / 4)
    vec = np.stack([-np.sin(angles), np.cos(angles)], axis=1)
    vec[np.abs(vec) < 1e-12] = 0.0
    return vec


def label_names(dataset: int) -> list[str]:
    """The 8 class names of a dataset, index = class."""
    _check_dataset(dataset)
    names = []
    for k in range(NUM_CLASSES):
        move = f"move_{DIRECTIONS[k]}"
        if dataset == 1:
            names.append(f"{OBJECTS[k]}_{move}_on_{BACKGROUNDS[k]}")
        elif dataset == 2:
            names.append(f"{OBJECTS[k]}_{move}")
        else:
            names.append(move)
    return names


def object_size(size: int, fraction: float = OBJECT_FRACTION) -> int:
    """Side in px of the object sprite for a ``size`` px frame: ``fraction * size``,
    rounded up to an odd number, at least 5."""
    side = max(5, round(size * fraction))
    return side if side % 2 == 1 else side + 1


def render_background(index: int, size: int) -> np.ndarray:
    """Background ``index`` as uint8 ``[size, size, 3]`` (0..255)."""
    _, c0, c1, pattern = _BACKGROUND_SPECS[index]
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    y, x = coords[:, None], coords[None, :]
    p = np.broadcast_to(pattern(y, x), (size, size))[..., None]
    rgb = np.asarray(c0) * (1.0 - p) + np.asarray(c1) * p
    return np.round(rgb * 255.0).astype(np.uint8)


def _sprite_offsets(index: int, side: int) -> np.ndarray:
    """Pixel offsets ``[M, 2]`` (dy, dx) from the centre of object ``index``'s sprite."""
    r = side // 2
    coords = np.arange(-r, r + 1, dtype=np.float64) / r
    v, u = np.meshgrid(coords, coords, indexing="ij")
    mask = _OBJECT_SPECS[index][2](u, v)
    mask = np.broadcast_to(mask, (side, side)) & (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    dy, dx = np.nonzero(mask)
    return np.stack([dy - r, dx - r], axis=1).astype(np.int64)


def _object_colour(index: int) -> np.ndarray:
    return np.round(np.asarray(_OBJECT_SPECS[index][1]) * 255.0).astype(np.uint8)


def _check_dataset(dataset: int) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset}")


# --------------------------------------------------------------------------- #
# In memory
# --------------------------------------------------------------------------- #
class ClipSet(NamedTuple):
    """Clips and labels as tensors, as read back by :func:`load_toy_dataset`.

    ``clips`` is uint8 ``[N, T, H, W, 3]`` (RGB 0..255), ``labels`` int64 ``[N]``,
    ``label_names[k]`` names class ``k``, ``split[i]`` is ``"train"`` or ``"test"``.
    """

    clips: torch.Tensor
    labels: torch.Tensor
    label_names: list[str]
    split: list[str]

    def select(self, split: str) -> ClipSet:
        """The clips of one split (``"train"`` or ``"test"``), in order."""
        keep = [i for i, s in enumerate(self.split) if s == split]
        idx = torch.tensor(keep, dtype=torch.int64)
        return ClipSet(
            self.clips.index_select(0, idx),
            self.labels.index_select(0, idx),
            list(self.label_names),
            [split] * len(keep),
        )


@dataclass
class ToyDataset:
    """A generated toy dataset, with the factors behind every clip.

    Attributes:
        clips: uint8 ``[N, T, H, W, 3]``, RGB 0..255.
        labels: int64 ``[N]`` in ``[0, 8)``.
        label_names: the 8 class names.
        split: ``[N]`` strings, ``"train"`` or ``"test"``.
        background, object, direction: int64 ``[N]`` factor indices into
            :data:`BACKGROUNDS`, :data:`OBJECTS`, :data:`DIRECTIONS`.
        speed: float64 ``[N]``, px/frame actually used along the direction.
        centres: int64 ``[N, T, 2]``, the object centre ``(y, x)`` in every frame.
        object_side: side in px of the object sprites.
    """

    dataset: int
    seed: int
    clips: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    split: np.ndarray
    background: np.ndarray
    object: np.ndarray
    direction: np.ndarray
    speed: np.ndarray
    centres: np.ndarray
    object_side: int
    spatial_fraction: float = 1.0
    #: bool ``[N]``: background and object both belong to the class (all True in
    #: dataset 1 at ``spatial_fraction`` 1, all False in datasets 2 and 3).
    spatial: np.ndarray | None = None

    @property
    def frames(self) -> int:
        return int(self.clips.shape[1])

    @property
    def size(self) -> int:
        return int(self.clips.shape[2])

    def as_clipset(self) -> ClipSet:
        """The clips and labels as tensors (shares memory with the numpy arrays)."""
        return ClipSet(
            torch.from_numpy(self.clips),
            torch.from_numpy(self.labels),
            list(self.label_names),
            [str(s) for s in self.split],
        )


def _stratified_split(labels: np.ndarray) -> np.ndarray:
    split = np.full(labels.shape, "train", dtype="<U5")
    for k in range(NUM_CLASSES):
        where = np.flatnonzero(labels == k)
        split[where[TEST_EVERY - 1 :: TEST_EVERY]] = "test"
    return split


def generate_toy_dataset(
    dataset: int,
    count: int = 1600,
    *,
    seed: int = 0,
    frames: int = 16,
    size: int = 64,
    speed: tuple[float, float] = SPEED_RANGE,
    speed_reference: int = SPEED_REFERENCE,
    object_fraction: float = OBJECT_FRACTION,
    spatial_fraction: float = 1.0,
) -> ToyDataset:
    """Render ``count`` clips of toy dataset 1, 2 or 3 in memory.

    Args:
        dataset: 1, 2 or 3 (see the module docstring for what carries the class).
        count: number of clips; classes are balanced (``count % 8`` classes get one
            clip more) and shuffled.
        seed: seed of the ``numpy.random.Generator`` behind every draw.
        frames: clip length ``T`` (>= 2).
        size: frame height and width in px (>= 16).
        speed: ``(min, max)`` speed in px/frame for a ``speed_reference`` px frame;
            drawn uniformly per clip and scaled by ``size / speed_reference``.
        speed_reference: the frame size at which ``speed`` is measured (64 gives the
            paper's 3-5 px/frame on the default 64 px frames; 112, R3D-18's usual
            input size, gives the same *relative* motion as 3-5 px/frame there).
        object_fraction: object sprite side as a fraction of the frame side.
        spatial_fraction: dataset 1 only: share of the clips whose background and
            object belong to their class (the rest get random ones; the direction
            always belongs). 1.0 is the paper's dataset 1.

    Returns:
        A :class:`ToyDataset` whose ``clips`` are uint8 ``[count, T, size, size, 3]``.
    """
    _check_toy_options(
        dataset, count, frames, size, speed, speed_reference, object_fraction, spatial_fraction
    )
    labels, background, obj, speed_frac, start_frac, spatial = _draw_factors(
        np.random.default_rng(seed), dataset, count, spatial_fraction
    )
    direction, side = labels.copy(), object_size(size, object_fraction)
    speeds, centres = _trajectories(
        direction, speed_frac, start_frac, frames, size, side, speed, speed_reference
    )
    return ToyDataset(
        dataset=dataset,
        seed=seed,
        clips=_render(background, obj, centres, size, side),
        labels=labels,
        label_names=label_names(dataset),
        split=_stratified_split(labels),
        background=background.astype(np.int64),
        object=obj.astype(np.int64),
        direction=direction.astype(np.int64),
        speed=speeds,
        centres=centres,
        object_side=side,
        spatial_fraction=float(spatial_fraction),
        spatial=spatial,
    )


def _check_toy_options(
    dataset: int,
    count: int,
    frames: int,
    size: int,
    speed: tuple[float, float],
    speed_reference: int,
    object_fraction: float,
    spatial_fraction: float,
) -> None:
    _check_dataset(dataset)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if not 0 < speed[0] <= speed[1]:
        raise ValueError(f"speed must be 0 < min <= max, got {speed}")
    if speed_reference < 1:
        raise ValueError(f"speed_reference must be >= 1, got {speed_reference}")
    if not 0 < object_fraction <= 0.5:
        raise ValueError(f"object_fraction must be in (0, 0.5], got {object_fraction}")
    if not 0.0 <= spatial_fraction <= 1.0:
        raise ValueError(f"spatial_fraction must be in [0, 1], got {spatial_fraction}")
    if spatial_fraction != 1.0 and dataset != 1:
        raise ValueError("spatial_fraction applies to dataset 1 only")


def _draw_factors(
    rng: np.random.Generator, dataset: int, n: int, spatial_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, background, object, speed_frac, start_frac, spatial)`` of ``n`` clips.

    Every factor is drawn in a fixed order, whatever the dataset, so the datasets made
    with one seed share speeds and start points."""
    labels = rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES)
    rand_background = rng.integers(0, NUM_CLASSES, n)
    rand_object = rng.integers(0, NUM_CLASSES, n)
    speed_frac = rng.random(n)
    start_frac = rng.random((n, 2))
    # Drawn last, and only when used, so every earlier draw (and so datasets 1-3)
    # is the same as without it.
    spatial = (
        rng.random(n) < spatial_fraction if spatial_fraction < 1.0 else np.full(n, dataset == 1)
    )
    obj = labels.copy() if dataset in (1, 2) else rand_object
    background = labels.copy() if dataset == 1 else rand_background
    if dataset == 1:
        obj = np.where(spatial, labels, rand_object)
        background = np.where(spatial, labels, rand_background)
    return labels, background, obj, speed_frac, start_frac, spatial


def _trajectories(
    direction: np.ndarray,
    speed_frac: np.ndarray,
    start_frac: np.ndarray,
    T: int,
    size: int,
    side: int,
    speed: tuple[float, float],
    speed_reference: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(speeds, centres)``: each clip's speed (px/frame, lowered where the path would
    leave the frame) and its sprite centre per frame, int64 ``[n, T, 2]`` (y, x)."""
    r = side // 2
    lo, hi = r, size - 1 - r  # centre range that keeps the whole sprite inside
    lo_s, hi_s = speed
    speeds = (lo_s + (hi_s - lo_s) * speed_frac) * (size / speed_reference)
    vec = direction_vectors()[direction]  # [n, 2] (dy, dx)
    axis_max = np.abs(vec).max(axis=1)
    fit = (hi - lo) / ((T - 1) * axis_max)
    capped = speeds > fit
    if capped.any():
        logger.debug("speed lowered to fit the frame for %d of %d clips", capped.sum(), len(speeds))
    speeds = np.minimum(speeds, fit)
    disp = vec * (speeds * (T - 1))[:, None]  # [n, 2] total displacement
    start_lo = lo - np.minimum(disp, 0.0)
    start_hi = hi - np.maximum(disp, 0.0)
    start = start_lo + (start_hi - start_lo) * start_frac
    t = np.arange(T, dtype=np.float64)
    centres_f = start[:, None, :] + t[None, :, None] * (vec * speeds[:, None])[:, None, :]
    centres = np.clip(np.rint(centres_f), lo, hi).astype(np.int64)  # [n, T, 2]
    return speeds, centres


def _render(
    background: np.ndarray, obj: np.ndarray, centres: np.ndarray, size: int, side: int
) -> np.ndarray:
    """uint8 ``[n, T, size, size, 3]``: each clip's background with its sprite drawn at
    ``centres``."""
    n, T = centres.shape[:2]
    bgs = np.stack([render_background(k, size) for k in range(NUM_CLASSES)])
    clips = np.empty((n, T, size, size, 3), dtype=np.uint8)
    clips[:] = bgs[background][:, None]
    t_idx = np.arange(T)[None, :, None]
    for k in range(NUM_CLASSES):
        which = np.flatnonzero(obj == k)
        if which.size == 0:
            continue
        off = _sprite_offsets(k, side)  # [M, 2]
        ys = centres[which, :, 0, None] + off[None, None, :, 0]  # [n_k, T, M]
        xs = centres[which, :, 1, None] + off[None, None, :, 1]
        clips[which[:, None, None], t_idx, ys, xs] = _object_colour(k)
    return clips


# --------------------------------------------------------------------------- #
# On disk
# --------------------------------------------------------------------------- #
def _mp4_codec() -> str:
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - any failure means "not available in this build"
        return "mpeg4"


def write_mp4(
    frames: np.ndarray,
    path: str | Path | BinaryIO,
    *,
    fps: int = 8,
    codec: str | None = None,
    crf: int = 15,
) -> str:
    """Encode uint8 ``[T, H, W, 3]`` RGB frames to an mp4 with PyAV (to a file, or to a
    binary file object such as ``io.BytesIO``).

    H.264 (``libx264`` at ``crf``, yuv420p) when the PyAV build has it, MPEG-4 Part 2
    otherwise. ``H`` and ``W`` must be even (yuv420p). Returns the codec used.
    """
    import av

    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"mp4 (yuv420p) needs an even frame size, got {H}x{W}")
    codec = codec or _mp4_codec()
    target = str(path) if isinstance(path, str | Path) else path
    with av.open(target, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream), f"{codec} is not a video codec"
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
        else:
            stream.bit_rate = 2_000_000
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def clip_filename(index: int) -> str:
    return f"clip_{index:05d}.npy"


def write_toy_dataset(
    data: ToyDataset,
    out_dir: str | Path,
    *,
    mp4: bool = False,
    fps: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``data`` to ``out_dir``: one ``.npy`` per clip, ``labels.csv``, ``factors.csv``,
    ``meta.json`` and, with ``mp4=True``, one ``.mp4`` per clip.

    ``progress(1)`` is called after every clip (e.g. ``tqdm.update``). The ``.npy``,
    ``.csv`` and ``.json`` files are byte-identical for the same ``data``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    codec = _mp4_codec() if mp4 else None
    n = data.clips.shape[0]
    for i in range(n):
        np.save(out / clip_filename(i), data.clips[i], allow_pickle=False)
        if mp4:
            write_mp4(
                data.clips[i], out / clip_filename(i).replace(".npy", ".mp4"), fps=fps, codec=codec
            )
        if progress is not None:
            progress(1)
    _write_tables(data, out)
    (out / "meta.json").write_text(json.dumps(_meta(data, codec, fps), indent=2) + "\n")
    logger.info("wrote %d clips of toy dataset %d to %s", n, data.dataset, out)
    return out


def _write_tables(data: ToyDataset, out: Path) -> None:
    """``labels.csv`` (file, label, split) and ``factors.csv`` (what each clip shows)."""
    n = data.clips.shape[0]
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label_index", "label", "split"])
        for i in range(n):
            k = int(data.labels[i])
            w.writerow([clip_filename(i), k, data.label_names[k], data.split[i]])
    with open(out / "factors.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "background", "object", "direction", "speed_px_per_frame"])
        for i in range(n):
            w.writerow(
                [
                    clip_filename(i),
                    BACKGROUNDS[data.background[i]],
                    OBJECTS[data.object[i]],
                    DIRECTIONS[data.direction[i]],
                    f"{data.speed[i]:.4f}",
                ]
            )


def _meta(data: ToyDataset, codec: str | None, fps: int) -> dict[str, Any]:
    """The ``meta.json`` of a written toy dataset."""
    return {
        "dataset": data.dataset,
        "seed": data.seed,
        "count": data.clips.shape[0],
        "frames": data.frames,
        "size": data.size,
        "object_side": data.object_side,
        "spatial_fraction": data.spatial_fraction,
        "speed_px_per_frame": [
            round(float(data.speed.min()), 4),
            round(float(data.speed.max()), 4),
        ],
        "labels": data.label_names,
        "backgrounds": list(BACKGROUNDS),
        "objects": list(OBJECTS),
        "directions": list(DIRECTIONS),
        "mp4_codec": codec,
        "fps": fps,
    }


def read_meta(directory: str | Path) -> dict[str, object]:
    """``meta.json`` of a toy-data directory, or ``{}`` when there is none."""
    path = Path(directory) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_toy_dataset(directory: str | Path) -> ClipSet:
    """Read a directory written by :func:`write_toy_dataset` (or any directory of
    uint8 ``[T, H, W, 3]`` ``.npy`` clips with a ``labels.csv``).

    ``labels.csv`` needs ``file``, ``label_index`` and ``label``; without a ``split``
    column every clip is ``"train"``. Class names come from ``meta.json`` when there is
    one, else from the CSV (a class with no clip gets the name ``class_<k>``).

    Returns:
        :class:`ClipSet` with clips uint8 ``[N, T, H, W, 3]`` in CSV order.
    """
    root = Path(directory)
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{root / 'labels.csv'} lists no clips")
    arrays = []
    for row in rows:
        arr = np.load(root / row["file"], allow_pickle=False)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(
                f"{row['file']}: expected uint8 [T, H, W, 3], got {arr.dtype} {arr.shape}"
            )
        arrays.append(arr)
    labels = torch.tensor([int(r["label_index"]) for r in rows], dtype=torch.int64)
    meta_labels = read_meta(root).get("labels")
    if isinstance(meta_labels, list):
        names = [str(x) for x in meta_labels]
    else:
        by_index = {int(r["label_index"]): r["label"] for r in rows}
        names = [by_index.get(k, f"class_{k}") for k in range(max(by_index) + 1)]
    split = [r.get("split") or "train" for r in rows]
    return ClipSet(torch.from_numpy(np.stack(arrays)), labels, names, split)
