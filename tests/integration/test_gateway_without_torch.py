"""The gateway runs, and defends, on the core install: no torch, no TorchServe package.

``shuffleguard serve --backend-url ...`` runs in a child interpreter in which torch,
torchvision, TorchServe, PyTorchVideo, scipy and matplotlib cannot be imported (as on
a machine where they are not installed), in
front of the session's real TorchServe. A video upload must decode, resize, shuffle,
vote and come back 200 with the right label.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.cli import MODELS_EXTRA_MODULES
from service.modelserver.torchserve_proc import TorchServeProcess, free_ports
from tests import media
from tests.integration.helpers import TINY, color_frames, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LAUNCHER = """
import sys

# None in sys.modules: `import x` raises ModuleNotFoundError and
# importlib.util.find_spec("x") is None, as when x is not installed.
for name in sys.argv[1].split(","):
    sys.modules[name] = None

from service.cli import main

sys.exit(main(sys.argv[2:]))
"""


def test_gateway_serves_a_defended_clip_without_torch(
    torchserve: TorchServeProcess, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    argv = [
        "serve",
        "--backend-url",
        torchserve.inference_url,
        "--backend-management-url",
        torchserve.management_url,
        "--default-model",
        TINY,
        "--port",
        str(port),
        "--research-mode",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, ",".join(MODELS_EXTRA_MODULES), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 90, 0.2)
        # 96x72 frames: the gateway resizes (short side to the model's crop) before
        # the crop, which is the one step that used to need torch
        clip = media.write_kind(None, color_frames("green"), "mp4_h264")
        params = {"ensemble": 5, "early_stop": "false"}
        r = httpx.post(f"{url}/v1/classify", content=clip, params=params, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == "green", body
        assert body["votes"] == {"green": 5}, body
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "No module named" not in log.read_text(), log.read_text()[-3000:]


def test_model_commands_name_the_extra_they_need(tmp_path: Path) -> None:
    """Without the `models` extra, a command that needs torch says so in one line."""
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, ",".join(MODELS_EXTRA_MODULES), "train"]
        + ["--data", str(tmp_path), "--out", str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "needs the `models` extra" in out.stderr and "Traceback" not in out.stderr


def test_serve_without_torchserve_says_how_to_get_it(tmp_path: Path) -> None:
    """The core install cannot start TorchServe: serve says so instead of a Java log."""
    (port,) = free_ports(1)
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, ",".join(MODELS_EXTRA_MODULES), "serve"]
        + ["--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "needs the `models` extra" in out.stderr and "--backend-url" in out.stderr
