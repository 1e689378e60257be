"""API keys: who is asking (:class:`Client`), from a file of key hashes.

A key is ``sg_`` + 43 URL-safe characters (256 random bits), shown once by
``shuffleguard create-key``; the key file keeps only its SHA-256. A slow password
hash (bcrypt, argon2) buys nothing here: it makes guessing a *low-entropy* secret
from a stolen hash expensive, and a 256-bit random key cannot be guessed from its
SHA-256 at any speed; it would cost 50-100 ms of CPU per request (a lever for
denial of service) and need a salt per key, so a lookup would hash once per key.

The key file (YAML or JSON, named by ``SHUFFLEGUARD_API_KEYS_FILE``)::

    keys:
      - name: alice            # metrics label and quota bucket; [a-z0-9][a-z0-9_.-]{0,63}
        role: client           # client | research (research-only parameters)
        sha256: 3b7e...        # 64 hex digits: hashlib.sha256(key.encode()).hexdigest()
        rate: 2.0              # optional: requests/s (default: the role's setting)
        burst: 20              # optional: token bucket size
        concurrency: 4         # optional: requests at once
        created: "2026-12-07T20:30:00Z"   # optional, informative

Several entries may share a name (a key being rotated): they share the name's
quota and metrics, so they must agree on role and quota. A presented key is hashed
and compared with every entry by :func:`hmac.compare_digest` (no early exit).
:class:`KeyStore` re-reads the file when its mtime, size or inode changes (checked at
most every ``api_keys_reload_s``); a file that does not parse, or that would open
the API (no keys left), is refused and the keys in use stay.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.config import ClientSettings, Settings

logger = logging.getLogger(__name__)

__all__ = [
    "ANONYMOUS",
    "CLIENT_NAME_PATTERN",
    "KEY_ENV",
    "RESERVED_NAMES",
    "Client",
    "KeyEntry",
    "KeyFile",
    "KeyFileError",
    "KeyStore",
    "Quota",
    "auth_headers",
    "hash_key",
    "new_key",
    "parse_key_file",
    "presented_key",
]

#: key names: they become metric label values and log fields
CLIENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"
#: names the gateway uses itself: no key may take them
RESERVED_NAMES = frozenset({"anonymous", "unauthenticated"})
#: the environment variable the project's clients (classify, redteam) send as the key
#: (read by :class:`service.config.ClientSettings`)
KEY_ENV = "SHUFFLEGUARD_API_KEY"
_KEY_PREFIX = "sg_"
#: longer presented values are refused without hashing them
_MAX_KEY_CHARS = 256

Role = Literal["client", "research", "anonymous"]


class KeyFileError(ValueError):
    """The key file is missing or does not parse (the message says where)."""


@dataclass(frozen=True)
class Quota:
    """Per-client limits: a token bucket (``rate`` per second, ``burst`` tokens) and
    at most ``concurrency`` requests at once."""

    rate: float
    burst: int
    concurrency: int


@dataclass(frozen=True)
class Client:
    """Who is asking: the key's ``name`` and ``role`` (``anonymous`` when the API is
    open), and its quota (None: unlimited). On ``request.state.client`` and
    ``RequestInfo.client`` of every authenticated request."""

    name: str
    role: Role
    quota: Quota | None = None

    @property
    def may_research(self) -> bool:
        """Whether research-only parameters are allowed (in research mode): a research
        key, or anyone when no keys are configured."""
        return self.role in ("research", "anonymous")


#: the caller of an open API (no keys configured): unlimited, as before keys existed
ANONYMOUS = Client("anonymous", "anonymous")


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe."""
    return _KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key`` (what the key file stores)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyEntry(BaseModel):
    """One key of the key file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=CLIENT_NAME_PATTERN)
    role: Literal["client", "research"] = "client"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rate: float | None = Field(default=None, gt=0, description="requests per second")
    burst: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    created: str | None = None

    def quota(self, settings: Settings) -> Quota:
        """This key's limits: its own, else its role's defaults."""
        default = role_quota(settings, self.role)
        return Quota(
            rate=self.rate if self.rate is not None else default.rate,
            burst=self.burst if self.burst is not None else default.burst,
            concurrency=self.concurrency if self.concurrency is not None else default.concurrency,
        )


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry]

    @model_validator(mode="after")
    def _check(self) -> KeyFile:
        hashes = [k.sha256 for k in self.keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("a key hash is listed twice")
        by_name: dict[str, KeyEntry] = {}
        for key in self.keys:
            if key.name in RESERVED_NAMES:
                raise ValueError(f"key name {key.name!r} is reserved")
            first = by_name.setdefault(key.name, key)
            terms = ("role", "rate", "burst", "concurrency")
            if any(getattr(first, t) != getattr(key, t) for t in terms):
                raise ValueError(
                    f"keys named {key.name!r} disagree on role or quota (entries sharing a "
                    "name share one quota: give them the same role, rate, burst, concurrency)"
                )
        return self


def role_quota(settings: Settings, role: str) -> Quota:
    """The quota settings of ``role`` (``quota_<role>_rate``, ``_burst``, ``_concurrency``)."""
    return Quota(
        rate=getattr(settings, f"quota_{role}_rate"),
        burst=getattr(settings, f"quota_{role}_burst"),
        concurrency=getattr(settings, f"quota_{role}_concurrency"),
    )


def parse_key_file(text: str, *, where: str = "key file") -> KeyFile:
    """The key file's entries, or :class:`KeyFileError` naming what is wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KeyFileError(f"{where}: not YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{where}: expected a mapping with a `keys` list (`keys: []` for none)")
    try:
        return KeyFile.model_validate(data)
    except ValidationError as exc:  # no input values in the message: they hold hashes
        problems = "; ".join(
            ".".join(str(x) for x in err["loc"]) + f": {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        raise KeyFileError(f"{where}: {problems}") from None


def read_key_file(path: Path) -> KeyFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc}") from None
    return parse_key_file(text, where=str(path))


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>``, else ``X-API-Key``
    (``Authorization`` wins when both are sent); None when it presents none or an unusable
    one (another scheme, empty, over 256 characters)."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        key = value.strip() if scheme.lower() == "bearer" else ""
    else:
        key = (headers.get("x-api-key") or "").strip()
    return key if 0 < len(key) <= _MAX_KEY_CHARS else None


def auth_headers(key: str | None = None) -> dict[str, str]:
    """The header a client sends: ``key``, else ``$SHUFFLEGUARD_API_KEY``, else none."""
    key = key or ClientSettings().api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()  # follows symlinks: a Kubernetes Secret update swaps them
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeyStore:
    """The keys of one gateway: loaded at start-up (:class:`KeyFileError` if the file is
    unusable), re-read when the file changes. ``enabled`` is fixed at start-up: a file
    listing no keys (or no file setting) leaves the API open until a restart."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.path = settings.api_keys_file
        self.clock = clock
        self._checked = clock()
        self._signature = _signature(self.path) if self.path is not None else None
        self.entries: tuple[tuple[bytes, Client], ...] = ()
        if self.path is not None:
            self.entries = self._clients(read_key_file(self.path))
        self.enabled = bool(self.entries)

    def _clients(self, keys: KeyFile) -> tuple[tuple[bytes, Client], ...]:
        return tuple(
            (bytes.fromhex(k.sha256), Client(k.name, k.role, k.quota(self.settings)))
            for k in keys.keys
        )

    @property
    def names(self) -> list[str]:
        return sorted({client.name for _, client in self.entries})

    def authenticate(self, headers: Mapping[str, str]) -> Client | None:
        """The client whose key ``headers`` present; :data:`ANONYMOUS` when the API is
        open; None for a missing, malformed or unknown key."""
        if not self.enabled:
            return ANONYMOUS
        self.maybe_reload()
        key = presented_key(headers)
        digest = hashlib.sha256((key or "").encode("utf-8")).digest()
        match: Client | None = None
        for stored, client in self.entries:  # every entry, whatever matches: constant time
            if hmac.compare_digest(digest, stored):
                match = client
        return match if key is not None else None

    def maybe_reload(self) -> bool:
        """Re-read the file if it changed since the last look (at most every
        ``api_keys_reload_s``); True when new keys were taken."""
        now = self.clock()
        if self.path is None or now - self._checked < self.settings.api_keys_reload_s:
            return False
        self._checked = now
        signature = _signature(self.path)
        if signature is None or signature == self._signature:
            if signature is None:
                logger.error("key file %s is gone; keeping the %d keys in use", self.path,
                             len(self.entries))  # fmt: skip
            return False
        self._signature = signature
        try:
            entries = self._clients(read_key_file(self.path))
        except KeyFileError as exc:
            logger.error("key file changed but is unusable, keeping the keys in use: %s", exc)
            return False
        if not entries:
            logger.error("key file %s now lists no keys; refusing to open the API (restart "
                         "the gateway to run it open)", self.path)  # fmt: skip
            return False
        self.entries = entries
        logger.info("key file reloaded: %d keys, names %s", len(entries), self.names)
        return True
