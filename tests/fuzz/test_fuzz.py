"""The fuzz targets in the normal test suite: a bounded atheris run per target,
plus every committed corpus input (each one found a bug once) and every seed
replayed in-process.

The bounded run lasts ``SG_FUZZ_SECONDS`` (default 4) per target; the long run
is ``make fuzz FUZZ_SECONDS=600``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import seeds, targets

REPO = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = int(os.environ.get("SG_FUZZ_SECONDS", "4"))


@pytest.mark.parametrize("target", list(targets.TARGETS))
def test_seeds_end_in_a_result_or_a_typed_error(target: str) -> None:
    for data in seeds.SEEDS[target]().values():
        targets.TARGETS[target](data)


@pytest.mark.parametrize("target", list(targets.TARGETS))
def test_committed_corpus_replays(target: str) -> None:
    # Each file is an input that once broke the target (see the file names).
    targets.replay(target)


def test_the_corpus_holds_the_bugs_found_so_far() -> None:
    names = {p.relative_to(targets.CORPUS).as_posix() for p in targets.CORPUS.glob("*/*")}
    assert {
        "npy/unclosed-bracket-in-header",
        "upload/boundary-over-256-bytes",
        "video/webm-stream-without-decoder",
    } <= names


@pytest.mark.timeout(300)
@pytest.mark.parametrize("target", list(targets.TARGETS))
def test_bounded_fuzz_run(target: str, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "crashes").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            target,
            f"-max_total_time={FUZZ_SECONDS}",
            f"-artifact_prefix={tmp_path / 'crashes'}/",
        ],
        cwd=REPO,
        env={**os.environ, "SG_FUZZ_WORKDIR": str(tmp_path / "work")},
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = proc.stdout + proc.stderr
    crashes = [p.name for p in (tmp_path / "crashes").iterdir()]
    assert proc.returncode == 0 and not crashes, f"{target}: {crashes}\n{log[-4000:]}"
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    assert done is not None, log[-2000:]
    runs = int(done.group(1))
    assert runs > 10, log[-2000:]
    print(f"fuzz {target}: {runs} executions in {done.group(2)} s")
