"""System tools and files some tests need (installed by ``scripts/install-system-deps.sh``).

:func:`require_tool` returns a tool's path, :func:`require_real_clips` the real clips'
paths (fetched by ``scripts/fetch-real-clips.sh``, which the install script runs). When
one is missing the test is skipped with the command to run as the reason, except in CI
(``CI`` set to anything but empty, ``0`` or ``false``): there it fails the test, so a
CI run never passes by skipping the checks it exists for.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

INSTALL = "sudo scripts/install-system-deps.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(name: str, package: str) -> str:
    """Path of executable ``name`` (from Debian package ``package``), or skip/fail."""
    path = shutil.which(name)
    if path:
        return path
    message = f"`{name}` not found on PATH (Debian package {package}; run `{INSTALL}`)"
    if in_ci():
        pytest.fail(message + " -- CI must not skip this test", pytrace=False)
    pytest.skip(message)


def require_real_clips(names: tuple[str, ...] = ("all",)) -> dict[str, Path]:
    """Paths of the real clips ``names`` (``scripts/real-clips.tsv``; all by default),
    sha256-checked, or skip/fail (as :func:`require_tool`) with the command to run."""
    from service.research import real_clips

    try:
        located = real_clips.locate(list(names))
    except ValueError as exc:
        message = str(exc)
        if in_ci():
            pytest.fail(message + " -- CI must not skip this test", pytrace=False)
        pytest.skip(message)
    return {source.name: path for source, path in located.items()}
