"""Structured request logging: one JSON line per request, carrying its request id.

The access line goes to the ``shuffleguard.access`` logger as a JSON object (the
log record's message), e.g.::

    {"request_id":"3f2a...","method":"POST","path":"/v1/classify","status":200,
     "duration_ms":812.4,"model":"toy_r3d18","label":"push","suspected_adversarial":false,...}

so any log shipper can parse it without a custom pattern. ``configure_logging``
gives the gateway process a format where every line is JSON.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

__all__ = [
    "ACCESS_LOGGER",
    "JsonFormatter",
    "configure_logging",
    "log_access",
    "new_request_id",
    "sanitize_request_id",
]

ACCESS_LOGGER = logging.getLogger("shuffleguard.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def sanitize_request_id(value: str | None) -> str:
    """The client's ``X-Request-ID`` when it is a safe token, else a fresh id.

    Ids go into logs and backend headers, so anything beyond 128 characters of
    ``[A-Za-z0-9._:-]`` (newlines, quotes, ...) is replaced, never echoed.
    """
    if value and _REQUEST_ID.match(value):
        return value
    return new_request_id()


def log_access(fields: dict[str, Any], *, level: int = logging.INFO) -> None:
    ACCESS_LOGGER.log(level, json.dumps(fields, separators=(",", ":"), default=str))


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object; access records are merged in as fields."""

    def format(self, record: logging.LogRecord) -> str:
        base: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        message = record.getMessage()
        if record.name == ACCESS_LOGGER.name and message.startswith("{"):
            try:
                base.update(json.loads(message))
            except ValueError:
                base["message"] = message
        else:
            base["message"] = message
        if record.exc_info:
            base["exc"] = self.formatException(record.exc_info)
        return json.dumps(base, separators=(",", ":"), default=str)


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Root logging for a gateway process (stderr; JSON lines unless ``json_lines=False``)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per backend call would double the access log; errors still show.
    logging.getLogger("httpx").setLevel(logging.WARNING)
