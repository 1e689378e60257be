"""Serving overhead: defended request latency through the gateway vs a direct call.

One run, one machine, one clip, interleaved request by request:

* **proxy** -- ``POST /v1/classify?ensemble=N&seed=i`` to the gateway with the
  encoded clip (the gateway decodes, shuffles, calls TorchServe once with the
  ``N + 1`` clips, votes, answers JSON);
* **direct** -- the same work without the gateway, in this process: decode the
  same bytes (:func:`service.video.decode_clip`), build the same batch
  (:func:`service.gateway.pipeline.build_batch`, same seed), one
  ``POST /predictions/{model}`` to TorchServe, vote.

Both paths end in the same TorchServe with the same batch, so the difference is
what the proxy adds: an HTTP hop with the upload, admission, a thread hop for
decoding, JSON. The order of the two alternates every round so drift (other
load, turbo) hits both alike. Reported: p50 and p95 of each, their ratio, and the
target (proxy adds <= 5 %).

By default this starts TorchServe on ``model_store/`` and a research-mode gateway
(``shuffleguard serve --backend-url ...``) on free loopback ports, and stops
both at the end; ``--backend-url`` uses a running TorchServe instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TARGET_OVERHEAD = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument("--model", help="model to call (default: the gateway's default model)")
    parser.add_argument("--backend-url", help="a running TorchServe's inference URL")
    parser.add_argument("--backend-management-url", help="its management URL")
    parser.add_argument("--ensemble", type=int, default=10, help="N shuffled copies (default 10)")
    parser.add_argument("--requests", type=int, default=100, help="measured rounds (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured rounds (default 5)")
    parser.add_argument("--clip", type=Path, help="video to send (default: a synthetic mp4)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench_serve"), help="where results are written"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def synthetic_mp4(frames: int = 64, height: int = 240, width: int = 320) -> bytes:
    """An H.264 mp4 of a moving colour gradient (what a phone clip costs to decode, roughly)."""
    import io

    import av

    y, x = np.mgrid[0:height, 0:width]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            image = np.stack(
                [(x + 4 * t) % 256, (y + 2 * t) % 256, (x + y + 3 * t) % 256], axis=-1
            ).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def percentiles(values_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


def summarize(proxy_ms: list[float], direct_ms: list[float]) -> dict[str, Any]:
    """Percentiles of each path, their ratios, and paired per-round statistics.

    Rounds are paired (proxy and direct back to back), so the per-round difference
    cancels slow drift of the machine's load; its median comes with a bootstrap
    95 % interval.
    """
    proxy, direct = percentiles(proxy_ms), percentiles(direct_ms)
    ratio = {k: proxy[k] / direct[k] for k in ("p50", "p95")}
    diff = np.asarray(proxy_ms) - np.asarray(direct_ms)
    rel = np.asarray(proxy_ms) / np.asarray(direct_ms)
    rng = np.random.default_rng(0)
    boot = np.median(rng.choice(diff, size=(2000, diff.size), replace=True), axis=1)
    return {
        "proxy_ms": proxy,
        "direct_ms": direct,
        "ratio": ratio,
        "overhead_ms": {k: proxy[k] - direct[k] for k in ("p50", "p95")},
        "paired": {
            "median_diff_ms": float(np.median(diff)),
            "median_diff_ci95_ms": [
                float(np.percentile(boot, 2.5)),
                float(np.percentile(boot, 97.5)),
            ],
            "median_ratio": float(np.median(rel)),
        },
        "target_overhead": TARGET_OVERHEAD,
        "meets_target": {k: ratio[k] <= 1 + TARGET_OVERHEAD for k in ("p50", "p95")},
    }


def markdown(result: dict[str, Any]) -> str:
    p, d, r = result["proxy_ms"], result["direct_ms"], result["ratio"]
    o, pr = result["overhead_ms"], result["paired"]
    env = result["environment"]
    lines = [
        f"# bench serve: {result['model']}, N={result['ensemble']}, {p['n']} requests",
        "",
        "| path | p50 (ms) | p95 (ms) | mean (ms) |",
        "| --- | ---: | ---: | ---: |",
        f"| proxy (gateway) | {p['p50']:.1f} | {p['p95']:.1f} | {p['mean']:.1f} |",
        f"| direct (decode + TorchServe) | {d['p50']:.1f} | {d['p95']:.1f} | {d['mean']:.1f} |",
        f"| proxy / direct | {r['p50']:.3f} | {r['p95']:.3f} | |",
        f"| proxy - direct (ms) | {o['p50']:.1f} | {o['p95']:.1f} | |",
        "",
        f"Paired by round: median proxy - direct {pr['median_diff_ms']:.1f} ms "
        f"(95 % CI {pr['median_diff_ci95_ms'][0]:.1f} .. {pr['median_diff_ci95_ms'][1]:.1f}),"
        f" median proxy / direct {pr['median_ratio']:.3f}.",
        "",
        f"Target: proxy adds <= {TARGET_OVERHEAD:.0%}: p50 "
        f"{'met' if result['meets_target']['p50'] else 'NOT met'}, p95 "
        f"{'met' if result['meets_target']['p95'] else 'NOT met'}.",
        "",
        f"Clip: {result['clip']}. Gateway stage medians (ms): "
        + ", ".join(f"{k} {v:.1f}" for k, v in result["gateway_stage_p50_ms"].items())
        + " (unstaged = gateway total minus its stages; http_hop = client latency minus"
        " gateway total).",
        f"Machine: {env['cpu']} ({env['cpus']} CPUs), Python {env['python']}, "
        f"torch {env['torch']}, {env['device']}.",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def _environment() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU",
    }


def run(args: argparse.Namespace) -> int:
    import httpx
    import torch
    from tqdm import tqdm

    from service import wire
    from service.defense import majority_vote
    from service.gateway.backend import ModelMeta
    from service.gateway.pipeline import build_batch, resolve_device
    from service.torchserve_proc import TorchServeOptions, TorchServeProcess, free_ports
    from service.video import decode_clip

    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    server: TorchServeProcess | None = None
    gateway: subprocess.Popen[bytes] | None = None
    try:
        if args.backend_url:
            inference_url = args.backend_url.rstrip("/")
            from service.commands.serve import management_url_for

            management_url = args.backend_management_url or management_url_for(inference_url)
        else:
            ports = free_ports(3)
            server = TorchServeProcess(
                TorchServeOptions(
                    model_store=args.model_store,
                    inference_port=ports[0],
                    management_port=ports[1],
                    metrics_port=ports[2],
                )
            )
            server.start()
            print(f"starting TorchServe on {args.model_store} ...", file=sys.stderr)
            server.wait_ready()
            inference_url, management_url = server.inference_url, server.management_url

        port = free_ports(1)[0]
        gateway_url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable, "-m", "service.cli", "serve", "--port", str(port),
            "--backend-url", inference_url, "--backend-management-url", management_url,
            "--research-mode",
        ]  # fmt: skip
        if args.model:
            cmd += ["--default-model", args.model]
        with (args.out / "gateway.log").open("wb") as log:
            gateway = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        client = httpx.Client(timeout=300, trust_env=False)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get(f"{gateway_url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not get ready; see {args.out / 'gateway.log'}")
            time.sleep(0.2)

        listed = client.get(f"{gateway_url}/v1/models").json()["models"]
        entry = next(m for m in listed if (m["name"] == args.model if args.model else m["default"]))
        meta = ModelMeta.from_dict(entry)
        clip = args.clip.read_bytes() if args.clip else synthetic_mp4()
        clip_desc = (
            f"{args.clip} ({len(clip) / 1e6:.2f} MB)"
            if args.clip
            else f"synthetic H.264 mp4, 64 frames 320x240 ({len(clip) / 1e6:.2f} MB)"
        )
        h1, h2, n = meta.preset.h1, meta.preset.h2, args.ensemble
        device = resolve_device("auto")

        def proxy(seed: int) -> tuple[float, dict[str, float]]:
            t0 = time.perf_counter()
            r = client.post(
                f"{gateway_url}/v1/classify",
                params={"model": meta.name, "ensemble": n, "h1": h1, "h2": h2, "seed": seed},
                content=clip,
                headers={"Content-Type": "video/mp4"},
            )
            elapsed = (time.perf_counter() - t0) * 1e3
            if r.status_code != 200:
                raise RuntimeError(f"gateway answered {r.status_code}: {r.text}")
            return elapsed, r.json()["timings_ms"]

        def direct(seed: int) -> float:
            t0 = time.perf_counter()
            frames = decode_clip(
                clip,
                clip_len=meta.clip_len,
                frame_interval=meta.frame_interval,
                crop_size=meta.crop_size,
            ).frames
            batch, _ = build_batch(frames, n=n, h1=h1, h2=h2, seed=seed, device=device)
            r = client.post(
                f"{inference_url}/predictions/{meta.name}",
                content=wire.encode_clips(batch),
                headers={"Content-Type": wire.CONTENT_TYPE},
            )
            if r.status_code != 200:
                raise RuntimeError(f"TorchServe answered {r.status_code}: {r.text}")
            logits = torch.from_numpy(wire.decode_logits(r.content))
            majority_vote(logits[1:])
            return (time.perf_counter() - t0) * 1e3

        proxy_ms: list[float] = []
        direct_ms: list[float] = []
        stages: dict[str, list[float]] = {}
        rounds = args.warmup + args.requests
        for i in tqdm(range(rounds), desc="bench serve", disable=args.no_progress):
            order = (True, False) if i % 2 == 0 else (False, True)
            for via_proxy in order:
                if via_proxy:
                    ms, timings = proxy(i)
                    if i >= args.warmup:
                        proxy_ms.append(ms)
                        for k, v in timings.items():
                            stages.setdefault(k, []).append(v)
                        work = sum(timings[k] for k in ("decode", "shuffle", "backend", "vote"))
                        # inside the gateway but in no stage: upload, queueing, thread hop, JSON
                        stages.setdefault("unstaged", []).append(timings["total"] - work)
                        # outside the gateway's clock: client, loopback HTTP, uvicorn
                        stages.setdefault("http_hop", []).append(ms - timings["total"])
                else:
                    ms = direct(i)
                    if i >= args.warmup:
                        direct_ms.append(ms)

        result = summarize(proxy_ms, direct_ms)
        result.update(
            model=meta.name,
            ensemble=n,
            h1=h1,
            h2=h2,
            clip=clip_desc,
            warmup=args.warmup,
            gateway_stage_p50_ms={k: float(np.median(v)) for k, v in stages.items()},
            environment=_environment(),
            command="shuffleguard bench serve " + " ".join(sys.argv[3:]),
            raw={"proxy_ms": proxy_ms, "direct_ms": direct_ms},
        )
        (args.out / "bench_serve.json").write_text(json.dumps(result, indent=2) + "\n")
        table = markdown(result)
        (args.out / "bench_serve.md").write_text(table)
        print(table)
        print(f"results: {args.out / 'bench_serve.json'}, {args.out / 'bench_serve.md'}")
        client.close()
        return 0
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gateway.kill()
        if server is not None:
            server.close()
