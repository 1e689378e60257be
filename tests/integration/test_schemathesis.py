"""schemathesis fuzzes the live gateway from its own ``/openapi.json``.

Real TorchServe + real gateways (research and production mode), positive and
negative data, every check (no 5xx but the documented 503/504, every status,
content type, header and body as documented), a fixed seed and a bounded
budget. The checks' expected statuses are set where the schema cannot say what
the API needs: a schema-valid binary body is rarely a decodable video (400,
413, 415), and ``h2`` may be schema-valid yet larger than the model's
``clip_len`` (422).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import Gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SEED = 20261203
MAX_EXAMPLES = 12

CONFIG = """
[checks.not_a_server_error]
# a backend fault is the only documented 5xx (503 with Retry-After, 504)
expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "403", "404", "413", "415", "422", "429"]

[checks.negative_data_rejection]
expected-statuses = ["400", "403", "404", "405", "413", "415", "422"]
"""


def run_schemathesis(gateway: Gateway, workdir: Path) -> tuple[int, str]:
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{gateway.url}/openapi.json",
        "--checks=all",
        "--mode=all",
        f"--seed={SEED}",
        f"--max-examples={MAX_EXAMPLES}",
        "--workers=1",
        "--phases=examples,coverage,fuzzing",
        "--request-timeout=60",
        "--suppress-health-check=all",
        "--report=junit",
        f"--report-dir={workdir}",
    ]
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=540)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("mode", ["research", "production"])
def test_gateway_conforms_to_its_openapi_under_fuzzing(
    mode: str, research_gateway: Gateway, prod_gateway: Gateway, tmp_path: Path
) -> None:
    gateway = research_gateway if mode == "research" else prod_gateway
    rc, output = run_schemathesis(gateway, tmp_path)
    assert rc == 0, output[-6000:]
    tested = re.search(r"(\d+) generated", output)
    assert tested is not None and int(tested.group(1)) > 50, output[-3000:]
    print(f"schemathesis {mode}:\n{output[-1500:]}")
