"""Headless, bounded load run against a local gateway; writes a JSON report.

    python -m load_tests.run_headless --host http://127.0.0.1:8000 --users 8 \\
        --spawn-rate 4 --run-time 30s --out report.json

Runs the scenario in ``load_tests/locustfile.py`` in-process (``locust.env.Environment``
and a local runner, no web UI) and stops by itself at whichever comes first:
``--run-time`` elapsed, or ``--max-requests`` requests made. A watchdog ends the run
if the runner does not stop within ``--stop-timeout`` seconds after that.

Only loopback hosts (``localhost``, 127.0.0.0/8, ``[::1]``) are accepted: to load a
gateway on another machine, run this there (or through an SSH tunnel to its loopback).

The report (see ``load_tests/README.md`` for every field): request and failure
counts, throughput, exact p50/p95/p99 latency (computed from every request, not
locust's rounded buckets), HTTP status counts, the share of 429s, and the same per
endpoint. Exit status: 0 after a run, 1 when no request was made or the
``--max-error-ratio`` was exceeded, 2 for bad arguments.

This module imports only the standard library until :func:`run`, so its argument
parsing and report building can be tested without gevent's monkey-patching.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import inspect
import ipaddress
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("load_tests.run_headless")

DEFAULT_LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAX_USERS = 512
MAX_SPAWN_RATE = 100.0
MAX_RUN_TIME_S = 3600.0
DEFAULT_MAX_REQUESTS = 100_000
MAX_MAX_REQUESTS = 1_000_000
REPORT_VERSION = 1

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


# --------------------------------------------------------------------------- arguments
def parse_duration(text: str) -> float:
    """``"30s"``, ``"2m"``, ``"1h30m"``, ``"1.5m"`` or plain seconds ``"45"`` -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 2m, 1h30m)")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(n) * scale[u] for n, u in parts)


def is_loopback_host(url: str) -> bool:
    """True when ``url`` is http(s) on ``localhost``, 127.0.0.0/8 or ``::1``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname is None:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _duration_arg(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= MAX_RUN_TIME_S:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most {MAX_RUN_TIME_S:g} s")
    return seconds


def _bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {text}")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m load_tests.run_headless",
        description="Bounded headless locust run against a loopback gateway; writes a JSON report.",
    )
    p.add_argument("--host", default="http://127.0.0.1:8000", help="gateway base URL (loopback)")
    p.add_argument("--users", type=_bounded(int, 1, MAX_USERS), default=8, help="peak users")
    p.add_argument(
        "--spawn-rate", type=_bounded(float, 0.01, MAX_SPAWN_RATE), default=4.0, help="users/s"
    )
    p.add_argument("--run-time", type=_duration_arg, default=30.0, help="e.g. 30s, 2m (max 1h)")
    p.add_argument(
        "--max-requests",
        type=_bounded(int, 1, MAX_MAX_REQUESTS),
        default=DEFAULT_MAX_REQUESTS,
        help="stop after this many requests",
    )
    p.add_argument(
        "--stop-timeout",
        type=_bounded(float, 0, 120),
        default=10.0,
        help="seconds users get to finish their request when the run ends",
    )
    p.add_argument("--out", type=Path, default=Path("load-report.json"), help="report path")
    p.add_argument(
        "--bad-input",
        action="store_true",
        help="also run the tasks tagged bad-input (a PNG that must get 415)",
    )
    p.add_argument(
        "--max-error-ratio",
        type=_bounded(float, 0, 1),
        default=None,
        help="exit 1 when failures other than 429 exceed this share of requests",
    )
    p.add_argument("--locustfile", type=Path, default=DEFAULT_LOCUSTFILE, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not is_loopback_host(args.host):
        parser.error(f"--host must be http(s) on a loopback address, got {args.host!r}")
    if urlsplit(args.host).path not in ("", "/"):
        parser.error(f"--host is a base URL without a path, got {args.host!r}")
    args.host = args.host.rstrip("/")
    return args


# ----------------------------------------------------------------------------- records
@dataclass
class EndpointRecord:
    """Every request of one (method, name), as the run saw it."""

    method: str
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    status_codes: Counter[str] = field(default_factory=Counter)


@dataclass
class RunRecord:
    """What the request listener collected, plus how the run ended."""

    endpoints: dict[tuple[str, str], EndpointRecord] = field(default_factory=dict)
    errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    total: int = 0

    def add(
        self,
        method: str,
        name: str,
        response_time_ms: float,
        status_code: int,
        error: str | None,
    ) -> None:
        rec = self.endpoints.get((method, name))
        if rec is None:
            rec = self.endpoints[(method, name)] = EndpointRecord(method, name)
        rec.latencies_ms.append(float(response_time_ms))
        rec.status_codes[str(status_code)] += 1
        if error is not None:
            rec.failures += 1
            self.errors[(method, name, error)] += 1
        self.total += 1


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 1]), see :func:`service.core.stats.percentile`."""
    from service.core.stats import percentile as _percentile

    return _percentile(sorted_values, 100 * q)


def _summary(
    latencies: Iterable[float], failures: int, codes: Counter[str], duration_s: float
) -> dict[str, Any]:
    values = sorted(latencies)
    n = len(values)
    n429 = codes.get("429", 0)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "requests": n,
        "failures": failures,
        "failures_excluding_429": failures - n429,
        "failure_ratio": failures / n if n else 0.0,
        "rps": n / duration_s if duration_s > 0 else 0.0,
        "latency_ms": {
            "p50": ms(percentile(values, 0.50)),
            "p95": ms(percentile(values, 0.95)),
            "p99": ms(percentile(values, 0.99)),
            "mean": ms(sum(values) / n) if n else None,
            "min": ms(values[0]) if n else None,
            "max": ms(values[-1]) if n else None,
        },
        "status_codes": dict(sorted(codes.items())),
        "ratio_429": n429 / n if n else 0.0,
    }


def build_report(
    record: RunRecord,
    *,
    duration_s: float,
    stop_reason: str,
    started_at: dt.datetime,
    config: dict[str, Any],
    locust_version: str | None = None,
) -> dict[str, Any]:
    """The JSON report: totals first, then the ``/v1/classify`` aggregate, then per endpoint.

    Every request counts once, whatever its status; a failure is what the locustfile
    marked as one (any non-2xx on classify, so 429s are failures too, and are also
    counted apart in ``status_codes`` / ``ratio_429`` / ``failures_excluding_429``).
    """
    all_lat: list[float] = []
    all_codes: Counter[str] = Counter()
    all_fail = 0
    cls_lat: list[float] = []
    cls_codes: Counter[str] = Counter()
    cls_fail = 0
    endpoints = []
    for (method, name), rec in sorted(record.endpoints.items()):
        all_lat += rec.latencies_ms
        all_codes.update(rec.status_codes)
        all_fail += rec.failures
        if method == "POST" and name.startswith("/v1/classify"):
            cls_lat += rec.latencies_ms
            cls_codes.update(rec.status_codes)
            cls_fail += rec.failures
        summary = _summary(rec.latencies_ms, rec.failures, rec.status_codes, duration_s)
        endpoints.append({"method": method, "name": name, **summary})

    errors = [
        {"method": m, "name": n, "error": e, "occurrences": c}
        for (m, n, e), c in record.errors.most_common(20)
    ]
    return {
        "report_version": REPORT_VERSION,
        "tool": "load_tests.run_headless",
        "locust_version": locust_version,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 3),
        "stop_reason": stop_reason,
        "config": config,
        **_summary(all_lat, all_fail, all_codes, duration_s),
        "classify": _summary(cls_lat, cls_fail, cls_codes, duration_s),
        "endpoints": endpoints,
        "errors": errors,
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------- run
def _load_user_classes(locustfile: Path) -> tuple[list[type], dict[str, Any]]:
    """Import the locustfile by path and return its HttpUser subclasses (+ clip facts)."""
    from locust import HttpUser

    spec = importlib.util.spec_from_file_location("shuffleguard_locustfile", locustfile)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load locustfile {locustfile}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    users = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, HttpUser)
        and obj is not HttpUser
        and obj.__module__ == module.__name__
    ]
    if not users:
        raise SystemExit(f"{locustfile} defines no HttpUser subclass")
    payloads = getattr(module, "PAYLOADS", None)
    clip = {}
    if payloads is not None:
        clip = {
            "frames": payloads.frames,
            "size": payloads.size,
            "mp4_bytes": len(payloads.mp4),
            "npy_bytes": len(payloads.npy),
        }
    return users, clip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the load test described by ``args`` and return the report (not yet written)."""
    # locust (gevent) patches the standard library on import: keep it first.
    import gevent
    import locust
    from locust.env import Environment

    user_classes, clip = _load_user_classes(args.locustfile)
    exclude_tags = [] if args.bad_input else ["bad-input"]
    env = Environment(
        user_classes=user_classes,
        host=args.host,
        exclude_tags=exclude_tags,
        stop_timeout=args.stop_timeout,
    )
    record = RunRecord()
    state: dict[str, Any] = {"stop_reason": None}

    def request_stop(reason: str) -> None:
        if state["stop_reason"] is None:
            state["stop_reason"] = reason
            logger.info("stopping: %s", reason)
            gevent.spawn(runner.quit)

    def on_request(
        request_type: str,
        name: str,
        response_time: float,
        response: Any = None,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        status = getattr(response, "status_code", 0) or 0
        error = None if exception is None else _error_text(exception)
        record.add(request_type, name, response_time, int(status), error)
        if record.total >= args.max_requests:
            request_stop("max_requests")

    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()

    def stop_at_deadline(deadline: float) -> None:
        # Wall-clock polling rather than gevent.spawn_later: the event loop's cached
        # clock is stale after the (blocking) locustfile import, so a timer fires early.
        while (left := deadline - time.monotonic()) > 0:
            gevent.sleep(min(left, 0.25))
        request_stop("run_time")

    started_at = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    runner.start(args.users, spawn_rate=args.spawn_rate)
    deadline = gevent.spawn(stop_at_deadline, t0 + args.run_time)
    finished = False
    try:
        # The watchdog: the runner gets stop_timeout (+ slack) past the deadline.
        finished = runner.greenlet.join(timeout=args.run_time + args.stop_timeout + 15.0)
    except KeyboardInterrupt:
        state["stop_reason"] = state["stop_reason"] or "interrupted"
    finally:
        deadline.kill(block=False)
        if not finished:
            state["stop_reason"] = state["stop_reason"] or "watchdog"
            runner.quit()
    duration_s = time.monotonic() - t0

    config = {
        "host": args.host,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "run_time_s": args.run_time,
        "max_requests": args.max_requests,
        "stop_timeout_s": args.stop_timeout,
        "exclude_tags": exclude_tags,
        "locustfile": str(args.locustfile),
        "clip": clip,
    }
    return build_report(
        record,
        duration_s=duration_s,
        stop_reason=state["stop_reason"],
        started_at=started_at,
        config=config,
        locust_version=getattr(locust, "__version__", None),
    )


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    report = run(args)
    write_report(report, args.out)
    lat = report["latency_ms"]
    logger.info(
        "%d requests in %.1f s (%.1f/s), %d failures (%d of them 429), p50 %s ms, p95 %s ms,"
        " p99 %s ms, stop: %s -> %s",
        report["requests"],
        report["duration_s"],
        report["rps"],
        report["failures"],
        report["status_codes"].get("429", 0),
        lat["p50"],
        lat["p95"],
        lat["p99"],
        report["stop_reason"],
        args.out,
    )
    if report["requests"] == 0:
        logger.error("no request was made: is the gateway at %s up?", args.host)
        return 1
    if args.max_error_ratio is not None:
        ratio = report["failures_excluding_429"] / report["requests"]
        if ratio > args.max_error_ratio:
            logger.error("error ratio %.4f > --max-error-ratio %.4f", ratio, args.max_error_ratio)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
