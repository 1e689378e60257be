"""Create an API key: print it once, add its hash to the key file.

    shuffleguard create-key --file keys.yaml --name alice                 # client role
    shuffleguard create-key --file keys.yaml --name lab --role research --rate 50

The key goes to standard output and nowhere else (store it in the client's secret
store now: it cannot be recovered); the file gets its SHA-256, name, role, optional
quota and creation time (docs/serving.md, "API keys"). The file is created if
missing (mode 0600) and replaced atomically; the other entries are kept (YAML
comments are not). A second key for an existing name is how a key is rotated: it
must have the same role and quota, and shares the name's quota and metrics.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from service.options import ExperimentConfig, opt


@dataclass
class CreateKeyConfig(ExperimentConfig):
    """Settings of ``shuffleguard create-key``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "create-key")
    USAGE_ERRORS: ClassVar[bool] = True

    file: Path = opt(help="the key file (SHUFFLEGUARD_API_KEYS_FILE); created if missing")
    name: str = opt(help="the key's name: metrics label and quota bucket ([a-z0-9][a-z0-9_.-]*)")
    role: str = opt("client", "research: may send research-only parameters",
                    choices=("client", "research"))  # fmt: skip
    rate: float | None = opt(None, "requests/s (default: the role's quota setting)")
    burst: int | None = opt(None, "token bucket size (default: the role's quota setting)")
    concurrency: int | None = opt(None, "requests at once (default: the role's setting)")


def add_key(config: CreateKeyConfig, key: str) -> dict[str, Any]:
    """Append ``key``'s entry to the config's file (validated as the gateway reads it);
    returns the entry. ValueError if the file or the new entry is not valid."""
    import yaml

    from service.gateway.keys import hash_key, parse_key_file

    path = config.file
    text = path.read_text(encoding="utf-8") if path.exists() else "keys: []\n"
    current = parse_key_file(text, where=str(path))
    entry: dict[str, Any] = {"name": config.name, "role": config.role, "sha256": hash_key(key)}
    for term in ("rate", "burst", "concurrency"):
        if getattr(config, term) is not None:
            entry[term] = getattr(config, term)
    entry["created"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = {"keys": [*current.model_dump(exclude_none=True)["keys"], entry]}
    out = yaml.safe_dump(document, sort_keys=False)
    parse_key_file(out, where=f"{path} with the new key")  # the gateway must accept it
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(out)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return entry


def run(config: CreateKeyConfig) -> int:
    from service.gateway.keys import new_key

    key = new_key()
    entry = add_key(config, key)
    print(key)
    print(
        f"added key {entry['name']!r} (role {entry['role']}, created {entry['created']}) to "
        f"{config.file}; the key above is shown only now",
        file=sys.stderr,
    )
    return 0
