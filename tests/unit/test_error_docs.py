"""docs/serving.md's error table says what the one code table (``ERROR_CODES``) says."""

from __future__ import annotations

import re
from pathlib import Path

from service.gateway.errors import ERROR_CODES

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def documented() -> dict[str, int]:
    """code -> status, from the rows of the table under "Errors, limits, overload"."""
    section = DOC.read_text().split("## Errors, limits, overload", 1)[1]
    found: dict[str, int] = {}
    for status, codes in re.findall(r"^\| (\d{3}) \| ([^|]+) \|", section, flags=re.M):
        for code in re.findall(r"`([a-z_]+)`", codes):
            found[code] = int(status)
    return found


def test_every_answered_code_is_documented_under_its_status() -> None:
    table = {code: e.status for code, e in ERROR_CODES.items() if e.answered}
    assert documented() == table
