"""load_tests/soak.py end to end, at a small size (slow: it starts the whole stack)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_short_soak_meets_its_targets(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "load_tests.soak", "--requests", "300", "--warmup", "100",
         "--burst-every", "100", "--sample-every", "50", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a target missed
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["requests"] >= 300
    # At this length the memory targets are not meaningful (TorchServe's JVM heap grows
    # for the first ~1400 requests, docs/operations.md "Soak"); every other target is.
    targets = report["targets"]
    for name in ("no_undocumented_5xx", "same_torchserve_workers", "readyz_200_at_end"):
        assert targets[name], (name, report["unexpected"], proc.stderr[-3000:])
    assert targets["gateway_fds_flat"] and targets["torchserve_fds_flat"], report["at_end"]
    statuses = report["statuses"]
    # every kind of the mix got its own answer: clips 200, bad 400, big 413, stalled 408
    assert {"200", "400", "408", "413"} <= set(statuses), statuses
    assert all(int(s) < 500 for s in statuses), statuses
    assert (tmp_path / "soak.png").stat().st_size > 10_000
