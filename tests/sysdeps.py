"""System tools some tests need (installed by ``scripts/install-system-deps.sh``).

:func:`require_tool` returns the tool's path. When it is missing the test is skipped
with the install command as the reason, except in CI (``CI`` set to anything but
empty, ``0`` or ``false``): there a missing tool fails the test, so a CI run never
passes by skipping the checks it exists for.
"""

from __future__ import annotations

import os
import shutil

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
