"""Send a clip to a running gateway and print the answer.

    shuffleguard classify clip.mp4                      # a table
    shuffleguard classify clip.npy --json               # the JSON answer
    shuffleguard classify clip.mp4 --ensemble 20 --seed 7   # research-mode gateway only

The file goes as the raw request body, with a Content-Type
from its extension, and the API key in ``$SHUFFLEGUARD_API_KEY`` when it is set
(a gateway with keys answers 401 without one). Exit status: 0 on success, 1 when
the gateway refused the clip (its error is printed), 2 when the gateway could not
be reached.
"""

from __future__ import annotations

import json
import mimetypes
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from service.options import ExperimentConfig, opt

_CONTENT_TYPES = {
    ".npy": "application/x-npy",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
    ".gif": "image/gif",
}


_RESEARCH = "research mode (the gateway answers 403 otherwise)"


@dataclass
class ClassifyConfig(ExperimentConfig):
    """Settings of ``shuffleguard classify``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "classify")
    USAGE_ERRORS: ClassVar[bool] = True

    file: Path = opt(help="video file or .npy uint8 [T, H, W, 3] clip", argument=True)
    url: str = opt("http://127.0.0.1:8000", "gateway base URL")
    model: str | None = opt(None, "served model (default: the gateway's default)")
    json: bool = opt(False, "print the JSON answer")
    timeout: float = opt(120.0, "seconds")
    request_id: str | None = opt(None, "X-Request-ID to send")
    ensemble: int | None = opt(None, "shuffled copies N (1..64)", panel=_RESEARCH)
    h1: int | None = opt(None, "shuffle window h1 (>= 0)", panel=_RESEARCH)
    h2: int | None = opt(None, "group length h2 (1..clip_len)", panel=_RESEARCH)
    seed: int | None = opt(None, "shuffle seed", panel=_RESEARCH)
    no_defense: bool = opt(False, "classify the clip undefended", panel=_RESEARCH)


def content_type_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def query_params(args: ClassifyConfig) -> dict[str, str]:
    """The request's query parameters: the options given (``--no-defense``: ``defense=false``)."""
    params: dict[str, str] = {}
    for name in ("model", "ensemble", "h1", "h2", "seed"):
        value = getattr(args, name)
        if value is not None:
            params[name] = str(value)
    if args.no_defense:
        params["defense"] = "false"
    return params


def format_table(result: dict[str, Any]) -> str:
    """A human-readable summary of a classify answer (whatever fields it has)."""
    rows: list[tuple[str, str]] = [
        ("label", f"{result.get('label')} (index {result.get('label_index')})"),
        ("model", str(result.get("model"))),
    ]
    if "confidence" in result:
        rows.append(("confidence", f"{result['confidence']:.3f}"))
    if "undefended_label" in result:
        rows.append(("undefended label", str(result["undefended_label"])))
    if "suspected_adversarial" in result:
        rows.append(("suspected adversarial", "YES" if result["suspected_adversarial"] else "no"))
    if result.get("ensemble"):
        rows.append(
            (
                "defense",
                f"N={result['ensemble']} h1={result.get('h1')} h2={result.get('h2')}"
                f" seed={result.get('seed')}",
            )
        )
    elif "ensemble" in result:
        rows.append(("defense", "off"))
    votes = result.get("votes") or {}
    for label, count in sorted(votes.items(), key=lambda kv: -kv[1]):
        rows.append((f"  votes {label}", str(count)))
    timings = result.get("timings_ms") or {}
    if timings:
        rows.append(("timings (ms)", "  ".join(f"{k} {v:.1f}" for k, v in timings.items())))
    rows.append(("request id", str(result.get("request_id"))))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def run(args: ClassifyConfig) -> int:
    import logging

    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)

    path: Path = args.file
    if not path.is_file():
        print(f"shuffleguard classify: {path} is not a file", file=sys.stderr)
        return 1
    from service.gateway.keys import auth_headers

    headers = {"Content-Type": content_type_for(path), **auth_headers()}
    if args.request_id:
        headers["X-Request-ID"] = args.request_id
    url = args.url.rstrip("/") + "/v1/classify"
    try:
        with httpx.Client(timeout=args.timeout, trust_env=False) as client:
            response = client.post(
                url, content=path.read_bytes(), headers=headers, params=query_params(args)
            )
    except httpx.HTTPError as exc:
        print(f"shuffleguard classify: cannot reach {url}: {exc}", file=sys.stderr)
        return 2
    try:
        payload = response.json()
    except ValueError:
        print(
            f"shuffleguard classify: HTTP {response.status_code}: {response.text[:500]}",
            file=sys.stderr,
        )
        return 1
    if response.status_code != 200:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        if args.json:
            print(json.dumps(payload, indent=2))
        print(
            f"shuffleguard classify: HTTP {response.status_code} {error.get('code', '')}: "
            f"{error.get('message', response.text[:500])}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(payload, indent=2) if args.json else format_table(payload))
    return 0
