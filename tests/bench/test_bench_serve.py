"""bench serve's statistics (the run itself needs TorchServe: see docs/serving.md)."""

from __future__ import annotations

import pytest

from service.bench.serve import markdown, summarize


def test_summary_ratios_and_paired_difference() -> None:
    direct = [100.0 + i for i in range(100)]
    proxy = [d + 2.0 for d in direct]  # the proxy adds exactly 2 ms every round
    result = summarize(proxy, direct)
    assert result["proxy_ms"]["p50"] == pytest.approx(151.5)
    assert result["direct_ms"]["p50"] == pytest.approx(149.5)
    assert result["ratio"]["p50"] == pytest.approx(151.5 / 149.5)
    assert result["overhead_ms"]["p95"] == pytest.approx(2.0)
    assert result["paired"]["median_diff_ms"] == pytest.approx(2.0)
    assert result["paired"]["median_diff_ci95_ms"] == pytest.approx([2.0, 2.0])
    assert result["meets_target"] == {"p50": True, "p95": True}
    slow = summarize([d * 1.2 for d in direct], direct)
    assert slow["meets_target"] == {"p50": False, "p95": False}
    assert slow["paired"]["median_ratio"] == pytest.approx(1.2)


def test_markdown_report() -> None:
    result = summarize([110.0, 120.0, 130.0], [100.0, 110.0, 120.0])
    result.update(
        model="m",
        ensemble=10,
        clip="clip",
        gateway_stage_p50_ms={"decode": 1.0, "total": 2.0},
        environment={"cpu": "cpu", "cpus": 2, "python": "3.11", "torch": "2", "device": "cpu"},
        command="shuffleguard bench serve",
    )
    text = markdown(result)
    assert "| proxy (gateway) | 120.0 |" in text and "NOT met" in text
