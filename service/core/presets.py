"""The defense's hyper-parameters and the paper's presets (Sec. 5.2).

Plain Python (no numpy, no torch): the gateway, the model server and the research
harness all read a model's ``h1``, ``h2`` and ensemble size from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["PRESETS", "ShufflePreset", "preset_for_arch"]


@dataclass(frozen=True)
class ShufflePreset:
    """Defense hyper-parameters: window ``h1``, group length ``h2``, ensemble size."""

    h1: int
    h2: int
    ensemble: int = 10

    def __post_init__(self) -> None:
        if self.h1 < 0:
            raise ValueError(f"h1 must be >= 0, got {self.h1}")
        if self.h2 < 1:
            raise ValueError(f"h2 must be >= 1, got {self.h2}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


#: The paper's per-architecture presets (Sec. 5.2), all with an ensemble of 10.
PRESETS: dict[str, ShufflePreset] = {
    "i3d": ShufflePreset(h1=3, h2=4, ensemble=10),
    "slowfast": ShufflePreset(h1=2, h2=2, ensemble=10),
    "csn": ShufflePreset(h1=16, h2=2, ensemble=10),
    "x3d": ShufflePreset(h1=16, h2=1, ensemble=10),
}


def preset_for_arch(arch: str) -> ShufflePreset:
    """Paper preset for an architecture (``i3d``, ``slowfast``, ``csn``/``ir_csn``, ``x3d``)."""
    key = arch.lower().replace("-", "_")
    key = {"ir_csn": "csn", "ircsn": "csn", "i3d_r50": "i3d", "slowfast_r50": "slowfast"}.get(
        key, key
    )
    if key.startswith("x3d"):
        key = "x3d"
    if key.startswith("csn"):
        key = "csn"
    try:
        return PRESETS[key]
    except KeyError:
        raise KeyError(f"no paper preset for arch {arch!r}; known: {sorted(PRESETS)}") from None
