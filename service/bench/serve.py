"""What a defended request costs through the real stack, four ways, interleaved.

One run, one machine, one TorchServe, two research-mode gateways in front of it
(``shuffle_mode=index`` and ``shuffle_mode=copy``), the same clips and seeds:

* ``undefended`` -- ``defense=false``: one clip to the backend;
* ``copy`` -- the gateway gathers the ``N + 1`` clips and sends them all
  (``early_stop=false``);
* ``index`` -- the clip once plus the ``[N + 1, T]`` frame indices; the backend's
  handler gathers (``early_stop=false``);
* ``index_early`` -- index mode with early stopping (the default).

Per size (``toy``: the shipped ``toy_r3d18.mar``, 16 x 64 x 64, on clean toy
clips; ``full``: the ``r3d_18`` family, random init, archived at 32 x 224 x 224,
built here, on a synthetic clip):

1. latency: ``--requests`` rounds, each sends one request per mode in a shuffled
   order (seed = round): p50/p95 latency, array bytes sent to the backend (from
   the gateway's ``shuffleguard_backend_sent_bytes_total``), copies classified,
   and whether the early-stopped label and flag equal the full vote's;
2. saturation: a bounded closed loop per mode (``--concurrency`` clients,
   ``--saturation`` requests), modes in a forward then reverse order: requests/s;
3. gateway memory: each gateway's RSS at rest and after the run, plus what
   importing torch costs a gateway process (RSS, start-up), measured in fresh
   subprocesses, and which gateway modules import torch.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from service.options import ExperimentConfig, opt

logger = logging.getLogger(__name__)

MODES = ("undefended", "copy", "index", "index_early")
FULL_NAME = "r3d18_random_224"
I3D_NAME = "i3d_kinetics400"
SIZES = ("toy", "full", "i3d")
#: the gateway's stages (``timings_ms``), in request order
STAGES = ("decode", "shuffle", "backend", "vote", "total")


@dataclass
class ServeBenchConfig(ExperimentConfig):
    """Settings of ``shuffleguard bench serve``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "bench", "serve")
    USAGE_ERRORS: ClassVar[bool] = True

    model_store: Path = opt(Path("model_store"), "the model store holding toy_r3d18.mar")
    sizes: list[str] = opt(
        ["toy", "full"],
        "toy: the shipped toy_r3d18.mar; full: random-init r3d_18 at 32x224x224; i3d: the"
        " real Kinetics-400 I3D (--i3d-weights) at 32x224x224 on a real video (--i3d-video)",
        choices=SIZES,
    )
    i3d_weights: Path = opt(
        Path("runs/weights/i3d_inception_kinetics400.pt"),
        "size i3d: `shuffleguard weights i3d`'s file",
    )
    i3d_video: Path = opt(
        Path("data/sources/vtest.avi"), "size i3d: the uploaded video (scripts/fetch-real-clips.sh)"
    )
    ensemble: int = opt(10, "N shuffled copies")
    requests: int = opt(30, "latency rounds, toy")
    full_requests: int = opt(1, "latency rounds, full and i3d")
    saturation: int = opt(40, "closed-loop requests, toy")
    full_saturation: int = opt(
        0,
        "closed-loop requests per mode, full (0: not run; one 32x224x224 clip takes ~35 s"
        " through r3d_18 on 2 CPU threads)",
    )
    concurrency: int = opt(4, "closed-loop clients")
    warmup: int = opt(1, "unmeasured rounds, toy")
    seed: int = opt(0, "seeds the mode order and clips")
    out: Path = opt(Path("runs/bench_serve"), "where results are written", show="always")
    no_progress: bool = opt(False, "no progress bar", show="never")


# --------------------------------------------------------------------------- #
# statistics and report
# --------------------------------------------------------------------------- #
def percentiles(values_ms: list[float]) -> dict[str, float]:
    """p50/p95 by the one percentile definition (:func:`service.core.stats.percentile`)."""
    from service.core.stats import percentile

    arr = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50": float(percentile(values_ms, 50) or 0.0),
        "p95": float(percentile(values_ms, 95) or 0.0),
        "mean": float(arr.mean()),
        "n": int(arr.size),
    }


def summarize_mode(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency percentiles, mean bytes and copies of one mode's latency records."""
    return {
        "latency_ms": percentiles([r["ms"] for r in records]),
        "bytes_per_request": float(np.mean([r["bytes"] for r in records])),
        "copies_per_request": float(np.mean([r["votes_cast"] for r in records])),
        "stages_p50_ms": {
            k: float(np.median([r.get("timings_ms", {}).get(k, 0.0) for r in records]))
            for k in STAGES
        },
    }


def agreement(by_mode: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Fraction of rounds where a mode gave the full index-mode vote's label and flag."""
    full = by_mode["index"]
    out = {}
    for mode in ("copy", "index_early"):
        same = [
            a["label"] == b["label"] and a["suspected"] == b["suspected"]
            for a, b in zip(by_mode[mode], full, strict=True)
        ]
        out[mode] = float(np.mean(same))
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# bench serve: N = {result['ensemble']}", ""]
    for size, res in result["sizes"].items():
        lines += _size_markdown(size, res)
    lines += _gateway_markdown(result)
    return "\n".join(lines)


def _size_markdown(size: str, res: dict[str, Any]) -> list[str]:
    """One size's table, stage times, load and targets."""
    clip_bytes = res["clip_bytes"]
    lines = [
        f"## {size}: {res['model']} ({res['clip']}; one clip = {clip_bytes / 1e6:.3f} MB)",
        "",
        "| mode | p50 ms | p95 ms | bytes to backend / request | x one clip "
        "| copies classified | req/s at saturation |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in MODES:
        m = res["modes"][mode]
        lat = m["latency_ms"]
        lines.append(
            f"| {mode} | {lat['p50']:.1f} | {lat['p95']:.1f} | {m['bytes_per_request']:,.0f} "
            f"| {m['bytes_per_request'] / clip_bytes:.3f} | {m['copies_per_request']:.2f} "
            f"| {res['throughput_rps'][mode]:.3f} |"
        )
    t = res["targets"]
    lines += [
        "",
        "Where the time goes (gateway stages, p50 ms; backend = the handler's gather + forward):",
        "",
    ]
    lines += [f"- {mode}: " + ", ".join(
        f"{k} {res['modes'][mode].get('stages_p50_ms', {}).get(k, float('nan')):.0f}"
        for k in STAGES) for mode in MODES]  # fmt: skip
    lines += [
        "",
        f"Latency: {res['requests']} interleaved rounds; saturation: {res['saturation']} "
        f"requests per mode, {res['concurrency']} clients, closed loop"
        + (" (not run: nan)." if not res["saturation"] else "."),
        f"Same label and flag as the full vote: copy {res['agreement']['copy']:.0%}, "
        f"index_early {res['agreement']['index_early']:.0%}.",
        f"Targets: index-mode bytes {t['index_bytes_over_clip']:.3f}x one clip (<= 1.1): "
        f"{_met(t['index_bytes_over_clip'] <= 1.1)}; early stop "
        f"{t['early_copies_over_n']:.2f} N copies (<= 0.6 on clean clips): "
        f"{_met(t['early_copies_over_n'] <= 0.6)}; defended throughput "
        f"{t['throughput_over_copy']:.2f}x copy mode (>= 1.5): "
        f"{_met(t['throughput_over_copy'] >= 1.5)}.",
        "",
    ]
    return lines


def _gateway_markdown(result: dict[str, Any]) -> list[str]:
    """The gateway process's memory and imports, the machine and the command."""
    env, g = result["environment"], result["gateway"]
    lines = [
        "## gateway process",
        "",
        "| gateway | RSS at rest (MB) | RSS after the run (MB) |",
        "| --- | ---: | ---: |",
    ]
    for name, rss in g["rss_mb"].items():
        lines.append(f"| {name} | {rss['rest']:.0f} | {rss['after']:.0f} |")
    imp = g["imports"]
    lines += [
        "",
        "Importing the gateway's third-party stack without torch: "
        f"{imp['without_torch']['rss_mb']:.0f} MB peak RSS, "
        f"{imp['without_torch']['seconds']:.2f} s; with torch: "
        f"{imp['with_torch']['rss_mb']:.0f} MB, {imp['with_torch']['seconds']:.2f} s; "
        f"`import service.gateway.app`: {imp['gateway_app']['rss_mb']:.0f} MB, "
        f"{imp['gateway_app']['seconds']:.2f} s (best of 3 fresh processes each).",
        f"Gateway modules that import torch: {', '.join(imp['torch_importers']) or 'none'}.",
        f"torch's installed size here: {g['torch_install_mb']:.0f} MB ({g['torch_build']}).",
        "",
        f"Machine: {env['cpu']} ({env['cpus']} CPUs), Python {env['python']}, "
        f"torch {env['torch']}, {env['device']}.",
        f"Command: `{result['command']}`",
        "",
    ]
    return lines


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


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


# --------------------------------------------------------------------------- #
# the gateway's imports
# --------------------------------------------------------------------------- #
_STACK = "fastapi, uvicorn, httpx, av, numpy, pydantic_settings, prometheus_client, multipart"


def _import_cost(statement: str) -> dict[str, float]:
    """Best of 3 fresh interpreters: seconds to run ``statement``, and peak RSS (MB).

    The peak is the process's ``VmHWM`` (``ru_maxrss`` would carry over the
    benchmark's own RSS from the fork)."""
    code = (
        "import time\n"
        f"t = time.perf_counter()\n{statement}\n"
        "dt = time.perf_counter() - t\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(dt, hwm.split()[1])"
    )
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        runs.append((float(out[0]), int(out[1]) / 1024))
    return {"seconds": min(r[0] for r in runs), "rss_mb": min(r[1] for r in runs)}


def torch_importers() -> list[str]:
    """The ``service`` modules whose own import statements pull in torch when the
    gateway app is imported (in a fresh interpreter)."""
    code = (
        "import builtins, sys\n"
        "seen = set()\n"
        "orig = builtins.__import__\n"
        "def hook(name, globals=None, locals=None, fromlist=(), level=0):\n"
        "    if name.split('.')[0] == 'torch' and 'torch' not in sys.modules:\n"
        "        seen.add((globals or {}).get('__name__', '?'))\n"
        "    return orig(name, globals, locals, fromlist, level)\n"
        "builtins.__import__ = hook\n"
        "import service.gateway.app\n"
        "print('\\n'.join(sorted(seen)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.split() if line]


def gateway_imports() -> dict[str, Any]:
    return {
        "without_torch": _import_cost(f"import {_STACK}"),
        "with_torch": _import_cost(f"import {_STACK}, torch"),
        "gateway_app": _import_cost("import service.gateway.app"),
        "torch_importers": torch_importers(),
    }


def _dir_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total / 1e6


# --------------------------------------------------------------------------- #
# models and clips
# --------------------------------------------------------------------------- #
def build_full_size_archive(store: Path) -> Path:
    """The ``r3d_18`` family (torchvision's builder, :mod:`service.models.families`),
    random init, archived for 32 x 224 x 224 clips with the I3D preset (h1 3, h2 4,
    N 10; torchvision's families have no paper preset). For speed measurements only."""
    from service.modelserver.archive import FamilyArchiveConfig, archive_family

    return archive_family(
        FamilyArchiveConfig(
            family="r3d_18",
            name=FULL_NAME,
            out=store,
            random_init=True,
            labels="kinetics400",
            h1=3,
            h2=4,
            ensemble=10,
            clip_len=32,
            crop_size=224,
            batch_size=1,
            response_timeout_s=1800,
        )
    )


def build_i3d_archive(store: Path, weights: Path) -> Path:
    """DeepMind's Kinetics-400 I3D (family ``i3d_inception``, converted weights) archived
    at its own size, 32 x 224 x 224, with the paper's I3D preset (h1 3, h2 4, N 10)."""
    from service.modelserver.archive import FamilyArchiveConfig, archive_family

    if not weights.is_file():
        raise SystemExit(f"bench serve: {weights} is missing; run `shuffleguard weights i3d`")
    return archive_family(
        FamilyArchiveConfig(
            family="i3d_inception", name=I3D_NAME, out=store, checkpoint=weights,
            labels="kinetics400", batch_size=1, response_timeout_s=1800,
        )
    )  # fmt: skip


def toy_clips(mar: Path, count: int, seed: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Clean clips of the toy model's dataset at its exact shape (uint8 [T, S, S, 3])."""
    import zipfile

    from service.research.toy.contrast import blend_towards_background
    from service.research.toy.data import generate_toy_dataset

    with zipfile.ZipFile(mar) as z:
        meta = json.loads(z.read("meta.json"))
    data = generate_toy_dataset(
        int(meta.get("dataset") or 1),
        count=count,
        frames=int(meta["clip_len"]),
        size=int(meta["crop_size"]),
        seed=seed,
    )
    clips = blend_towards_background(data, float(meta.get("contrast", 0.4)))
    return [np.ascontiguousarray(c) for c in clips], meta


def synthetic_clip(T: int, size: int) -> np.ndarray:
    """A moving colour gradient, uint8 ``[T, size, size, 3]``."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack(
        [
            np.stack([(x + 4 * t) % 256, (y + 2 * t) % 256, (x + y + 3 * t) % 256], axis=-1)
            for t in range(T)
        ]
    ).astype(np.uint8)


# --------------------------------------------------------------------------- #
# the stack
# --------------------------------------------------------------------------- #
@contextmanager
def gateway_process(
    name: str, inference_url: str, management_url: str, env: dict[str, str], log: Path
) -> Iterator[tuple[str, int]]:
    """A research-mode ``shuffleguard serve`` in front of a running TorchServe."""
    import httpx

    from service.modelserver.torchserve_proc import free_ports

    port = free_ports(1)[0]
    cmd = [
        sys.executable, "-m", "service.cli", "serve", "--port", str(port),
        "--backend-url", inference_url, "--backend-management-url", management_url,
        "--research-mode",
    ]  # fmt: skip
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway {name} did not get ready; see {log}")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _sent_bytes(client: Any, url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get(f"{url}/metrics").text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "shuffleguard_backend_sent_bytes_total"
    )


def _params(mode: str, model: str, n: int, seed: int) -> dict[str, Any]:
    if mode == "undefended":
        return {"model": model, "defense": "false", "seed": seed}
    early = "true" if mode == "index_early" else "false"
    return {"model": model, "ensemble": n, "seed": seed, "early_stop": early}


def _npy(clip: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, clip, allow_pickle=False)
    return buf.getvalue()


def closed_loop(send: Callable[..., Any], total: int, concurrency: int) -> float:
    """Requests/s of ``concurrency`` clients sending ``total`` requests back to back;
    ``send(seed, client)`` sends one."""
    import httpx

    counter = iter(range(10_000, 10_000 + total))
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=3600, trust_env=False) as c:
            while True:
                with lock:
                    seed = next(counter, None)
                if seed is None:
                    return
                send(seed, c)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total / (time.perf_counter() - t0)


def size_report(
    *, model: str, clip_bytes: int, n: int, requests: int, saturation: int,
    concurrency: int, by_mode: dict[str, list[dict[str, Any]]], rps: dict[str, list[float]],
) -> dict[str, Any]:  # fmt: skip
    """One size's figures: per-mode summaries, throughput and the target ratios."""
    modes = {m: summarize_mode(by_mode[m]) for m in MODES}
    throughput = {m: float(np.mean(v)) if v else float("nan") for m, v in rps.items()}
    return {
        "model": model,
        "clip_bytes": clip_bytes,
        "requests": requests,
        "saturation": saturation,
        "concurrency": concurrency,
        "modes": modes,
        "throughput_rps": throughput,
        "agreement": agreement(by_mode),
        "targets": {
            "index_bytes_over_clip": modes["index"]["bytes_per_request"] / clip_bytes,
            "early_bytes_over_clip": modes["index_early"]["bytes_per_request"] / clip_bytes,
            "early_copies_over_n": modes["index_early"]["copies_per_request"] / n,
            "throughput_over_copy": throughput["index_early"] / throughput["copy"],
            "index_throughput_over_copy": throughput["index"] / throughput["copy"],
        },
        "raw": by_mode,
    }


def run_size(
    *,
    model: str,
    clips: list[np.ndarray],
    urls: dict[str, str],
    args: ServeBenchConfig,
    requests: int,
    saturation: int,
    concurrency: int,
    desc: str,
    upload: bytes | None = None,
) -> dict[str, Any]:
    """Latency rounds, then the closed loops, for one model (see the module docstring).
    ``upload``: send these bytes (a video file) instead of ``clips`` as ``.npy``; ``clips``
    then holds the decoded clip (its size is the bytes ratio's unit)."""
    import httpx

    n = args.ensemble
    bodies = [upload] if upload is not None else [_npy(c) for c in clips]
    gateway_of = {m: urls["copy" if m == "copy" else "index"] for m in MODES}
    client = httpx.Client(timeout=3600, trust_env=False)
    headers = {"Content-Type": "application/octet-stream" if upload else "application/x-npy"}

    def call(mode: str, seed: int, c: httpx.Client = client) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        r = c.post(
            f"{gateway_of[mode]}/v1/classify",
            params=_params(mode, model, n, seed),
            content=bodies[seed % len(bodies)],
            headers=headers,
        )
        ms = (time.perf_counter() - t0) * 1e3
        if r.status_code != 200:
            raise RuntimeError(f"{mode}: gateway answered {r.status_code}: {r.text}")
        return ms, r.json()

    by_mode = _latency_rounds(call, client, gateway_of, args, requests=requests, desc=desc)
    half = saturation // 2
    rps = _saturation_rounds(call, half, concurrency, f"{desc} saturation", args.no_progress)
    client.close()

    return size_report(
        model=model, clip_bytes=int(clips[0].nbytes), n=n, requests=requests,
        saturation=2 * half, concurrency=concurrency, by_mode=by_mode, rps=rps,
    )  # fmt: skip


Call = Callable[..., tuple[float, dict[str, Any]]]


def _latency_rounds(
    call: Call,
    client: Any,
    gateway_of: dict[str, str],
    args: ServeBenchConfig,
    *,
    requests: int,
    desc: str,
) -> dict[str, list[dict[str, Any]]]:
    """``requests`` rounds (after the warm-up) of one request per mode, the modes in a
    seeded order each round: latency, bytes sent, votes, label and timings."""
    from tqdm import tqdm

    order_rng = random.Random(args.seed)
    by_mode: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    warmup = args.warmup if desc == "toy" else 0
    if desc != "toy":  # TorchScript's first calls optimize the graph: one clip, twice
        for seed in (-2, -1):
            call("undefended", seed + 2**20)
    rounds = warmup + requests
    for i in tqdm(range(rounds), desc=f"{desc} latency", disable=args.no_progress):
        order = list(MODES)
        order_rng.shuffle(order)
        for mode in order:
            before = _sent_bytes(client, gateway_of[mode])
            ms, body = call(mode, i)
            sent = _sent_bytes(client, gateway_of[mode]) - before
            if i >= warmup:
                by_mode[mode].append(
                    {
                        "seed": i,
                        "ms": ms,
                        "bytes": sent,
                        "votes_cast": body["votes_cast"] if mode != "undefended" else 1,
                        "label": body["label"],
                        "suspected": body["suspected_adversarial"],
                        "timings_ms": body["timings_ms"],
                    }
                )
    return by_mode


def _saturation_rounds(
    call: Call, half: int, concurrency: int, desc: str, no_progress: bool
) -> dict[str, list[float]]:
    """Requests/s of each mode in closed loops of ``half`` requests, forward then
    reverse order, so drift hits every mode alike (none when ``half`` is 0)."""
    from tqdm import tqdm

    rps: dict[str, list[float]] = {m: [] for m in MODES}
    for order in (list(MODES), list(reversed(MODES))) if half else ():
        for mode in tqdm(order, desc=desc, disable=no_progress):
            rps[mode].append(closed_loop(partial(call, mode), half, concurrency))
    return rps


def _run_i3d(urls: dict[str, str], args: ServeBenchConfig) -> dict[str, Any]:
    """Size ``i3d``: the real video uploaded as it is (the gateway decodes it)."""
    from service.decoder.decode import decode_clip
    from service.models.families import get_family

    video = args.i3d_video.read_bytes()
    spec = get_family("i3d_inception").spec
    decoded = decode_clip(
        video, clip_len=spec.clip_len, frame_interval=spec.frame_interval,
        crop_size=spec.crop_size, resize=spec.resize, transform=spec.transform,
    ).frames  # fmt: skip
    res = run_size(
        model=I3D_NAME, clips=[decoded], urls=urls, args=args, requests=args.full_requests,
        saturation=args.full_saturation, concurrency=min(args.concurrency, 2), desc="i3d",
        upload=video,
    )  # fmt: skip
    res["clip"] = f"{args.i3d_video.name} uploaded as is ({len(video) / 1e6:.1f} MB)"
    return res


def build_store(store: Path, args: ServeBenchConfig, toy_mar: Path) -> None:
    """The archives of ``args.sizes`` in ``store`` (the toy linked, the others built)."""
    if "toy" in args.sizes:
        (store / toy_mar.name).symlink_to(toy_mar)
    if "full" in args.sizes:
        print("building the 32x224x224 random-init r3d_18 archive ...", file=sys.stderr)
        build_full_size_archive(store)
    if "i3d" in args.sizes:
        print("building the 32x224x224 Kinetics-400 I3D archive ...", file=sys.stderr)
        build_i3d_archive(store, args.i3d_weights)


def run_sizes(urls: dict[str, str], args: ServeBenchConfig, toy_mar: Path) -> dict[str, Any]:
    """``run_size`` for each of ``args.sizes`` against the two gateways at ``urls``."""
    sizes: dict[str, Any] = {}
    if "toy" in args.sizes:
        clips, meta = toy_clips(toy_mar, count=16, seed=args.seed + 777)
        res = run_size(
            model=meta["name"],
            clips=clips,
            urls=urls,
            args=args,
            requests=args.requests,
            saturation=args.saturation,
            concurrency=args.concurrency,
            desc="toy",
        )
        res["clip"] = f"clean toy clips (dataset {meta.get('dataset')}), npy"
        sizes["toy"] = res
    if "full" in args.sizes:
        clip = synthetic_clip(32, 224)
        res = run_size(
            model=FULL_NAME,
            clips=[clip],
            urls=urls,
            args=args,
            requests=args.full_requests,
            saturation=args.full_saturation,
            concurrency=min(args.concurrency, 2),
            desc="full",
        )
        res["clip"] = "synthetic moving gradient, npy 32x224x224"
        sizes["full"] = res
    if "i3d" in args.sizes:
        sizes["i3d"] = _run_i3d(urls, args)
    return sizes


def _torchserve(store: Path, args: ServeBenchConfig) -> Any:
    """A TorchServe on ``store`` at free ports, with the long timeouts a saturated
    full-size run needs (not started)."""
    from service.modelserver.torchserve_proc import TorchServeOptions, TorchServeProcess, free_ports

    ports = free_ports(3)
    return TorchServeProcess(
        TorchServeOptions(
            model_store=store,
            inference_port=ports[0],
            management_port=ports[1],
            metrics_port=ports[2],
            base_config=args.model_store / "config.properties",
            extra={"default_response_timeout": "1800"},
            start_timeout_s=600,
        )
    )


def _run_gateways(
    server: Any, args: ServeBenchConfig, toy_mar: Path
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """``(sizes, rss)``: :func:`run_sizes` against an index-mode and a copy-mode gateway
    in front of ``server``, and each gateway's RSS before and after (MB)."""
    import psutil

    env = {"SHUFFLEGUARD_BACKEND_TIMEOUT_S": "1800", "SHUFFLEGUARD_QUEUE_TIMEOUT_S": "3600"}
    with (
        gateway_process(
            "index",
            server.inference_url,
            server.management_url,
            {**env, "SHUFFLEGUARD_SHUFFLE_MODE": "index"},
            args.out / "gateway_index.log",
        ) as (index_url, index_pid),
        gateway_process(
            "copy",
            server.inference_url,
            server.management_url,
            {**env, "SHUFFLEGUARD_SHUFFLE_MODE": "copy"},
            args.out / "gateway_copy.log",
        ) as (copy_url, copy_pid),
    ):
        pids = {"index": index_pid, "copy": copy_pid}
        rss = {k: {"rest": psutil.Process(p).memory_info().rss / 1e6} for k, p in pids.items()}
        sizes = run_sizes({"index": index_url, "copy": copy_url}, args, toy_mar)
        for k, p in pids.items():
            rss[k]["after"] = psutil.Process(p).memory_info().rss / 1e6
    return sizes, rss


def run(args: ServeBenchConfig) -> int:
    import torch

    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    toy_mar = (args.model_store / "toy_r3d18.mar").resolve()
    result: dict[str, Any] = {"ensemble": args.ensemble, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="sg-bench-serve-") as tmp_str:
        store = Path(tmp_str) / "store"
        store.mkdir()
        build_store(store, args, toy_mar)
        server = _torchserve(store, args)
        server.start()
        try:
            print("starting TorchServe ...", file=sys.stderr)
            server.wait_ready()
            result["sizes"], rss = _run_gateways(server, args, toy_mar)
        finally:
            server.close()
    torch_dir = Path(torch.__file__).parent
    result["gateway"] = {
        "rss_mb": rss,
        "imports": gateway_imports(),
        "torch_install_mb": _dir_mb(torch_dir),
        "torch_build": "CUDA build" if torch.version.cuda else "CPU build",
    }
    result["environment"] = _environment()
    result["command"] = args.command()
    (args.out / "bench_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "bench_serve.md").write_text(table)
    print(table)
    print(f"results: {args.out / 'bench_serve.json'}, {args.out / 'bench_serve.md'}")
    return 0
