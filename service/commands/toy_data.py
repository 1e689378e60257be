"""Write one of the paper's synthetic toy datasets (Sec. 3.2, Fig. 4).

Each clip is saved as uint8 ``[T, H, W, 3]`` ``.npy``; ``labels.csv`` lists
``file,label_index,label,split`` (a deterministic, stratified 75/25 train/test
split), ``factors.csv`` the background, object, direction and speed of every clip,
and ``meta.json`` the settings. ``--mp4`` also writes a viewable H.264 video per clip.
The same arguments always give byte-identical ``.npy``/``.csv``/``.json`` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from service.options import ExperimentConfig, opt


@dataclass
class ToyDataConfig(ExperimentConfig):
    """Settings of ``shuffleguard toy-data``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "toy-data")

    dataset: int = opt(
        help="1: background+object+motion carry the class; 2: object+motion; 3: motion only",
        choices=(1, 2, 3),
    )
    out: str = opt(help="output directory")
    count: int = opt(1600, "number of clips")
    seed: int = opt(0, "random seed")
    frames: int = opt(16, "frames per clip T")
    size: int = opt(64, "frame height = width")
    object_fraction: float = opt(0.2, "object side / frame side (0.2: 13 px objects at 64 px)")
    speed_reference: int = opt(
        64, "frame size (px) on which the paper's 3-5 px/frame is measured, scaled to --size"
    )
    spatial_fraction: float = opt(
        1.0,
        "dataset 1 only: share of clips whose background and object belong to their class"
        " (the rest get random ones; the motion always does). 1.0 is the paper's dataset 1",
    )
    contrast: float = opt(
        1.0,
        "blend objects towards the background: bg + c * (pixel - bg), c in (0, 1]"
        " (the served default model uses 0.4, see docs/default_model.md)",
    )
    mp4: bool = opt(False, "also write a viewable .mp4 per clip")
    fps: int = opt(8, "frame rate of the .mp4 files")

    def check(self) -> None:
        if self.count < 1:
            raise ValueError("--count must be >= 1")
        if self.mp4 and self.size % 2:
            raise ValueError("--mp4 needs an even --size (yuv420p)")


def run(args: ToyDataConfig) -> int:
    import dataclasses
    import json
    import time
    from pathlib import Path

    from tqdm import tqdm

    from service.modelserver.archive import TOY_DATA_KEYS
    from service.research.toy.contrast import blend_towards_background
    from service.research.toy.data import generate_toy_dataset, write_toy_dataset

    t0 = time.perf_counter()
    try:
        data = generate_toy_dataset(
            args.dataset,
            args.count,
            seed=args.seed,
            frames=args.frames,
            size=args.size,
            speed_reference=args.speed_reference,
            object_fraction=args.object_fraction,
            spatial_fraction=args.spatial_fraction,
        )
        if args.contrast != 1.0:
            data = dataclasses.replace(data, clips=blend_towards_background(data, args.contrast))
    except ValueError as exc:
        raise SystemExit(f"shuffleguard toy-data: {exc}") from None
    t_gen = time.perf_counter() - t0
    with tqdm(total=args.count, desc=f"toy dataset {args.dataset}", unit="clip") as bar:
        write_toy_dataset(data, args.out, mp4=args.mp4, fps=args.fps, progress=bar.update)
    meta_path = Path(args.out) / "meta.json"
    if meta_path.exists():  # record the blend and the whole recipe beside the generator's
        meta = json.loads(meta_path.read_text())
        meta["contrast"] = args.contrast
        meta["recipe"] = {key: getattr(args, key) for key in TOY_DATA_KEYS}
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    n_test = int((data.split == "test").sum())
    print(
        f"toy dataset {args.dataset}: {args.count} clips of {args.frames}x{args.size}x{args.size}"
        f" ({args.count - n_test} train / {n_test} test) in {args.out}"
        f" [render {t_gen:.1f}s, total {time.perf_counter() - t0:.1f}s]"
    )
    return 0
