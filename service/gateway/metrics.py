"""Prometheus metrics of the gateway (SPEC §4, prefix ``shuffleguard_``).

Each app owns a :class:`GatewayMetrics` with its own ``CollectorRegistry``, so
tests (and the benchmark) can build several apps in one process without
"duplicated timeseries" errors.

Several gateway worker processes (``shuffleguard serve --workers N``): set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start
(``serve`` does it). prometheus-client then keeps each worker's values in
memory-mapped files there, :meth:`GatewayMetrics.render` aggregates them with a
``MultiProcessCollector`` so every scrape sees the sum across workers, and the
``inflight_requests`` gauge uses the ``livesum`` mode (live workers only).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from service.config import PrometheusSettings

__all__ = ["CONTENT_TYPE_LATEST", "STAGES", "GatewayMetrics", "StageTimer", "multiprocess_dir"]

#: pipeline stages timed by ``request_duration_seconds{stage}``
STAGES = ("decode", "shuffle", "backend", "vote", "total")

#: seconds; the low end resolves the proxy's own stages, the high end a slow CPU model
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: shuffled copies classified per defended request (1 .. MAX_ENSEMBLE)
COPIES_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32, 48, 64)
#: vote share of the winning label, 1/N .. 1
AGREEMENT_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess directory, None when unset."""
    return PrometheusSettings().multiproc_dir


class StageTimer:
    """The stage clock of one request: the one source of its stage times.

    ``with timer.stage("decode"): ...`` adds the block's wall time to that stage (a
    stage may run several times, e.g. one ``backend`` call per round). :meth:`report`
    is the response's ``timings_ms``, and :meth:`GatewayMetrics.observe_stages` feeds
    the same numbers to ``request_duration_seconds{stage}``.
    """

    def __init__(self, started: float | None = None) -> None:
        #: the request's arrival (``time.perf_counter``), the start of ``total``
        self.started = time.perf_counter() if started is None else started
        self.ms = {stage: 0.0 for stage in STAGES if stage != "total"}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += (time.perf_counter() - t) * 1e3

    def report(self) -> dict[str, float]:
        """Every stage and ``total`` (arrival until now), in ms rounded to 1 us."""
        total = (time.perf_counter() - self.started) * 1e3
        return {k: round(v, 3) for k, v in {**self.ms, "total": total}.items()}


#: every metric name starts with ``shuffleguard_``
NAMESPACE = "shuffleguard"


class GatewayMetrics:
    """The gateway's metrics, registered on a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests_total = self._counter(
            "requests_total",
            "Every /v1/classify request, by model and HTTP status (4xx included).",
            ["model", "status"],
        )
        self.request_duration = self._histogram(
            "request_duration_seconds",
            "Time per pipeline stage of successful classify requests.",
            DURATION_BUCKETS,
            ["stage"],
        )
        self.vote_agreement = self._histogram(
            "vote_agreement",
            "Winning vote share of the shuffled ensemble (1.0 = unanimous).",
            AGREEMENT_BUCKETS,
        )
        self.suspected_adversarial = self._counter(
            "suspected_adversarial_total",
            "Requests flagged as suspected adversarial (label flip or low agreement).",
            ["model"],
        )
        self.backend_errors = self._counter(
            "backend_errors_total",
            "Backend faults by kind: unavailable, timeout, queue_full, bad_response.",
            ["kind"],
        )
        self.copies_classified = self._histogram(
            "copies_classified",
            "Shuffled copies classified per defended request (below the ensemble size when "
            "early stopping found the vote decided).",
            COPIES_BUCKETS,
        )
        self.backend_bytes = self._counter(
            "backend_sent_bytes_total",
            "Array bytes sent to the model backend (clips, and frame indices in index mode).",
            ["model"],
        )
        self._client_metrics()
        self._watch_metrics()
        self.inflight = Gauge(
            "inflight_requests",
            "Classify requests being handled (uploading, queued or running).",
            namespace=NAMESPACE,
            multiprocess_mode="livesum",
            registry=self.registry,
        )

    def _counter(self, name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(name, doc, labels, namespace=NAMESPACE, registry=self.registry)

    def _histogram(
        self,
        name: str,
        doc: str,
        buckets: tuple[float, ...],
        labels: tuple[str, ...] | list[str] = (),
    ) -> Histogram:
        return Histogram(
            name, doc, labels, namespace=NAMESPACE, buckets=buckets, registry=self.registry
        )

    def _client_metrics(self) -> None:
        """Per API key name (from the key file, plus `anonymous` and `unauthenticated`):
        bounded, never the key or its hash."""
        self.client_requests = self._counter(
            "client_requests_total",
            "Every /v1/classify request by API key name (from the key file; `anonymous` when "
            "the API is open, `unauthenticated` for 401s) and HTTP status.",
            ["client", "status"],
        )
        self.quota_rejections = self._counter(
            "quota_rejections_total",
            "Classify requests refused with 429 by the key's quota, by key name and reason "
            "(rate: token bucket empty; concurrency: too many at once).",
            ["client", "reason"],
        )

    def _watch_metrics(self) -> None:
        """The query-attack watch's metrics (docs/detection.md). ``client`` is the API
        key's name ("anonymous" when the API is open), bounded by the configured keys;
        the key itself never appears."""
        self.near_duplicates = self._counter(
            "near_duplicate_queries_total",
            "Queries whose decoded clip nearly repeats one of the client's recent queries.",
            ["client"],
        )
        self.attacks_detected = self._counter(
            "query_attacks_detected_total",
            "Query-attack detections (near-duplicates past the threshold), by client and policy.",
            ["client", "policy"],
        )
        self.watch_refusals = self._counter(
            "query_watch_refusals_total",
            "Requests turned away by the query-attack policy (refuse: 403, throttle: 429).",
            ["client", "action"],
        )
        self.fingerprint_duration = self._histogram(
            "fingerprint_seconds",
            "Time to fingerprint a decoded clip and look it up in the client's history.",
            DURATION_BUCKETS,
        )

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage in STAGES:
            if stage in timings_ms:
                self.request_duration.labels(stage=stage).observe(timings_ms[stage] / 1000.0)

    def render(self) -> bytes:
        """The Prometheus text exposition (summed across workers in multiprocess mode)."""
        directory = multiprocess_dir()
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)
            return generate_latest(registry)
        return generate_latest(self.registry)
