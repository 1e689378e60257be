"""bench serve's statistics and report (the run itself needs TorchServe: see docs)."""

from __future__ import annotations

import math

import pytest

from service.bench.serve import MODES, _params, agreement, markdown, percentiles, summarize_mode


def _records(ms: list[float], *, bytes_: float, cast: int, labels: list[str]) -> list[dict]:
    return [
        {"ms": m, "bytes": bytes_, "votes_cast": cast, "label": lab, "suspected": False}
        for m, lab in zip(ms, labels, strict=True)
    ]


def test_percentiles_and_mode_summary() -> None:
    p = percentiles([10.0, 20.0, 30.0, 40.0])
    # nearest rank (service.core.stats.PERCENTILE_METHOD): a latency that was measured
    assert p["p50"] == pytest.approx(20.0) and p["n"] == 4 and p["p95"] == pytest.approx(40.0)
    s = summarize_mode(_records([1.0, 3.0], bytes_=100.0, cast=6, labels=["a", "b"]))
    assert s["bytes_per_request"] == 100.0 and s["copies_per_request"] == 6.0


def test_agreement_compares_each_mode_with_the_full_index_vote() -> None:
    by_mode = {
        "index": _records([1, 1], bytes_=1, cast=10, labels=["a", "b"]),
        "copy": _records([1, 1], bytes_=1, cast=10, labels=["a", "b"]),
        "index_early": _records([1, 1], bytes_=1, cast=6, labels=["a", "c"]),
    }
    assert agreement(by_mode) == {"copy": 1.0, "index_early": 0.5}


def test_request_parameters_per_mode() -> None:
    assert _params("undefended", "m", 10, 3) == {"model": "m", "defense": "false", "seed": 3}
    assert _params("index_early", "m", 10, 3)["early_stop"] == "true"
    assert _params("copy", "m", 10, 3)["early_stop"] == "false"


def test_markdown_report() -> None:
    mode = {"latency_ms": percentiles([5.0, 6.0]), "bytes_per_request": 110.0}
    size = {
        "model": "toy",
        "clip": "c",
        "clip_bytes": 100,
        "requests": 2,
        "saturation": 0,
        "concurrency": 1,
        "modes": {m: {**mode, "copies_per_request": 6.0} for m in MODES},
        "throughput_rps": {m: math.nan for m in MODES},
        "agreement": {"copy": 1.0, "index_early": 1.0},
        "targets": {
            "index_bytes_over_clip": 1.1,
            "early_copies_over_n": 0.6,
            "throughput_over_copy": math.nan,
        },
    }
    cost = {"seconds": 1.0, "rss_mb": 90.0}
    result = {
        "ensemble": 10,
        "sizes": {"toy": size},
        "gateway": {
            "rss_mb": {"index": {"rest": 100.0, "after": 120.0}},
            "imports": {
                "without_torch": cost,
                "with_torch": cost,
                "gateway_app": cost,
                "torch_importers": ["service.decoder.resize"],
            },
            "torch_install_mb": 1000.0,
            "torch_build": "CPU build",
        },
        "environment": {"cpu": "x", "cpus": 2, "python": "3", "torch": "t", "device": "no GPU"},
        "command": "shuffleguard bench serve",
    }
    text = markdown(result)
    assert "| index_early | 5.0 |" in text and "1.100 |" in text
    assert "(<= 1.1): met" in text and "(not run: nan)" in text and "NOT met" in text
