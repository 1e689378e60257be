"""TorchServe handler for ShuffleGuard model archives.

This file is packed into every ``.mar`` and runs inside TorchServe's Python
worker, so it depends on torch, numpy and the ``.npy`` reader
:mod:`service.decoder.npy` only (never on the rest of the ``service`` package):
``service/modelserver/archive.py`` packs that reader beside it as ``npy_reader.py``, and an archive
loads on any TorchServe with torch installed.

Protocol (``service/modelserver/wire.py`` writes the gateway's side). An inference request
body is one of:

* **copy mode**: one ``.npy`` uint8 ``[B, T, H, W, 3]`` RGB 0..255, the clips
  themselves;
* **index mode**: two ``.npy`` arrays back to back, a uint8 ``[T, H, W, 3]`` clip
  and little-endian int64 ``[R, T]`` frame indices; the handler gathers the ``R``
  clips ``clip[indices[r]]`` on its device (the GPU when there is one) and
  classifies them. This is the design's GPU-side temporal shuffling: the clip
  crosses the wire once, not ``R`` times.

In both, ``T`` must equal ``meta.clip_len`` and ``H = W = meta.crop_size``, and
:meth:`ShuffleGuardHandler.parse` checks every declared dtype, shape and size
against these and the request limits from the npy headers alone (read by
:func:`service.decoder.npy.read_header`, numpy's parser), before any memory is
spent; the arrays are then read in place from the request body (no copy), and every
index is checked to lie in ``[0, T)``.

* inference response body: one ``.npy`` float32 ``[B or R, K]`` of logits;
* describe (``GET /models/{name}?customized=true``): ``customizedMetadata`` is
  ``meta.json`` plus ``wire_modes`` (``["copy", "index"]``: the layouts this
  handler parses). TorchServe 0.12 parses the JSON string the handler returns and
  embeds it as an object; older versions pass the string through.

With server-side batching (``batchSize`` > 1 in the archive's model-config),
TorchServe hands several requests to :meth:`ShuffleGuardHandler.handle` at once:
their clips are stacked into one forward pass (in chunks of at most
``MAX_FORWARD_CLIPS``, gathered chunk by chunk) and split back, one response per
request. A malformed request gets a 400 of its own and does not fail its
neighbours.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

if __package__:  # imported from the ``service`` package
    from service.decoder import npy as npy_reader
else:  # loaded by TorchServe as the top-level ``handler``, npy_reader.py beside it
    import npy_reader  # type: ignore[no-redef]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandlerSettings:
    """The handler's two settings, read once when TorchServe's worker imports it (the
    worker has the server's environment). The handler runs without the ``service``
    package, so it reads them here rather than through :mod:`service.config`."""

    #: clips per forward pass; bounds worker memory whatever the batch size
    max_forward_clips: int
    #: threads for a CPU gather (None: torch's intra-op threads)
    gather_threads: int | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> HandlerSettings:
        """``SHUFFLEGUARD_MAX_FORWARD_CLIPS`` (default 64) and
        ``SHUFFLEGUARD_GATHER_THREADS`` (default 0: torch's threads)."""
        return cls(
            max_forward_clips=int(environ.get("SHUFFLEGUARD_MAX_FORWARD_CLIPS", "64")),
            gather_threads=int(environ.get("SHUFFLEGUARD_GATHER_THREADS", "0")) or None,
        )


SETTINGS = HandlerSettings.from_environ()
MAX_FORWARD_CLIPS = SETTINGS.max_forward_clips
GATHER_THREADS = SETTINGS.gather_threads

#: largest request accepted, in clips (copy mode) or index rows (index mode)
MAX_REQUEST_CLIPS = 128
NPY_CONTENT_TYPE = "application/x-npy"
#: request body layouts this handler parses (see the module docstring)
WIRE_MODES = ("copy", "index")
#: dtypes a request's arrays may have: uint8 clips, little-endian int64 indices
WIRE_DTYPES = (np.dtype(np.uint8), np.dtype("<i8"))
#: below this many output bytes a CPU gather runs on one thread
PARALLEL_GATHER_BYTES = 8 << 20


class RequestError(ValueError):
    """A request payload the handler cannot use.

    TorchServe answers it with ``status`` and the JSON body ``{"error": {"code":
    code, "message": ...}}``: the model server's wire contract, kept here because the
    handler runs without the ``service`` package (the gateway's table,
    :mod:`service.gateway.errors`, imports FastAPI); the gateway reads any such answer
    as its own fault, ``backend_error``.
    """

    status = 400
    code = "bad_batch"


def load_weights(path: str, fmt: str, device: torch.device) -> torch.nn.Module:
    """Load a TorchScript ``model.pt`` or a ``torch.export`` ``model.pt2`` onto ``device``."""
    if fmt == "torchscript":
        model = torch.jit.load(path, map_location=device)
        model.eval()
        return model
    if fmt == "export":
        # an exported program is already in inference form (eval() is unsupported on it)
        return torch.export.load(path).module().to(device)
    raise ValueError(f"unknown weights format {fmt!r} (torchscript or export)")


@dataclass(frozen=True)
class ClipRequest:
    """One validated inference request.

    Copy mode: ``frames`` uint8 ``[B, T, H, W, 3]``, ``indices`` None. Index mode:
    ``frames`` uint8 ``[T, H, W, 3]`` (one clip) and ``indices`` int64 ``[R, T]``
    with every value in ``[0, T)``; row ``r`` of the request is
    ``frames[indices[r]]``. Both arrays may be read-only views of the request body.
    """

    frames: np.ndarray
    indices: np.ndarray | None

    @property
    def rows(self) -> int:
        """Clips this request is answered for (rows of logits)."""
        return int(self.frames.shape[0] if self.indices is None else self.indices.shape[0])


def read_npy_header(body: memoryview, offset: int) -> npy_reader.NpyHeader:
    """The npy header at ``body[offset:]`` (:mod:`npy_reader`: numpy's parser, the header
    bounded before it is read, uint8 or int64 only); RequestError on anything else."""
    try:
        return npy_reader.read_header(body, offset, dtypes=WIRE_DTYPES)
    except npy_reader.NpyError as exc:
        raise RequestError(str(exc)) from None


def view_npy(header: npy_reader.NpyHeader, body: memoryview) -> np.ndarray:
    """The array in place in ``body``, its size checked first; RequestError if short."""
    try:
        return header.view(body)
    except npy_reader.NpyError as exc:
        raise RequestError(str(exc)) from None


def check_npy(header: npy_reader.NpyHeader, dtype: np.dtype, what: str) -> None:
    if header.dtype != dtype:
        raise RequestError(f"{what} must be {dtype}, got {header.dtype}")
    if header.fortran_order:
        raise RequestError(f"{what} must be C-ordered (fortran_order False)")


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (a read-only request body is only read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array"
        return torch.from_numpy(array)


_pools_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _gather_pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="gather")
        return pool


def gather_frames(
    clip: np.ndarray | torch.Tensor, indices: np.ndarray, *, threads: int | None = None
) -> torch.Tensor:
    """Rows of whole frames: ``out[r, t] = clip[indices[r, t]]``.

    Args:
        clip: ``[T, *frame]`` (e.g. uint8 ``[T, H, W, 3]``), C-contiguous; a numpy
            array (gathered on the CPU) or a tensor (gathered on its device).
        indices: int64 ``[R, T]`` with values in ``[0, T)`` (checked by the caller).
        threads: CPU threads (default ``SHUFFLEGUARD_GATHER_THREADS``, else torch's
            intra-op threads); outputs under ``PARALLEL_GATHER_BYTES`` use one.

    Returns:
        ``[R, T, *frame]`` of ``clip``'s dtype, on ``clip``'s device.

    Each frame moves as one contiguous block. On the CPU that is ``np.take`` on the
    ``[T, frame bytes]`` view (a ``memcpy`` per frame), split into contiguous row
    ranges over a thread pool, so it scales with threads like a plain copy does;
    torch's element-wise ``index_select`` on uint8 did not (2.83x a bare copy on
    16 threads, docs/benchmarks.md). On a GPU it is ``index_select`` on dim 0 of
    the same 2-D view, which runs at copy speed there.
    """
    R, T = indices.shape
    if isinstance(clip, torch.Tensor):
        flat_idx = torch.from_numpy(np.ascontiguousarray(indices).reshape(-1))
        if clip.device.type != "cpu":
            flat_idx = flat_idx.to(clip.device, non_blocking=True)
            rows = clip.reshape(T, -1).index_select(0, flat_idx)
            return rows.view(R, *clip.shape)
        clip = clip.numpy()
    src = np.ascontiguousarray(clip).reshape(T, -1)
    flat = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
    out = np.empty((flat.size, src.shape[1]), dtype=src.dtype)
    n_threads = threads or GATHER_THREADS or torch.get_num_threads()
    # mode="clip": the indices are already checked, and mode="raise" would copy
    # through a temporary buffer
    if n_threads <= 1 or out.nbytes < PARALLEL_GATHER_BYTES:
        np.take(src, flat, axis=0, out=out, mode="clip")
    else:
        bounds = np.linspace(0, flat.size, n_threads + 1).astype(int)
        pool = _gather_pool(n_threads)
        jobs = [
            pool.submit(np.take, src, flat[a:b], 0, out[a:b], "clip")
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            if b > a
        ]
        for job in jobs:
            job.result()  # numpy's take releases the GIL while it copies
    return torch.from_numpy(out).view(R, *clip.shape)


class ShuffleGuardHandler:
    """Loads ``meta.json`` + weights, answers clip batches with logits."""

    def __init__(self) -> None:
        self.initialized = False
        self.meta: dict[str, Any] = {}
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    # ---------------------------------------------------------------- setup
    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir", ".")
        gpu_id = props.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{int(gpu_id)}")
        with open(os.path.join(model_dir, "meta.json")) as fh:
            self.meta = json.load(fh)
        fmt = self.meta.get("format", "torchscript")
        weights = os.path.join(model_dir, "model.pt2" if fmt == "export" else "model.pt")
        with open(weights, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if self.meta.get("sha256") and digest != self.meta["sha256"]:
            raise RuntimeError(
                f"weights {weights} have sha256 {digest}, meta.json says {self.meta['sha256']}"
            )
        self.model = load_weights(weights, fmt, self.device)
        self.initialized = True
        logger.info(
            "loaded %s (%s, %s) on %s",
            self.meta.get("name"),
            self.meta.get("arch"),
            fmt,
            self.device,
        )

    # -------------------------------------------------------------- helpers
    def parse(self, payload: Any) -> ClipRequest:
        """Request bytes -> a validated :class:`ClipRequest` (RequestError: a 400).

        The one entry from untrusted bytes to a request: dtypes, shapes, sizes and
        index bounds are checked here, from the npy headers first, so nothing is
        allocated for a body that would be refused.
        """
        if isinstance(payload, dict):
            payload = payload.get("data") or payload.get("body")
        if not isinstance(payload, (bytes, bytearray, memoryview)) or not len(payload):
            raise RequestError(
                "empty body: send an .npy uint8 [B, T, H, W, 3] array, or an .npy uint8 "
                "[T, H, W, 3] clip followed by an .npy int64 [R, T] of frame indices"
            )
        body = memoryview(payload).cast("B")
        first = read_npy_header(body, 0)
        if len(first.shape) == 5:
            return self._copy_mode(body, first)
        if len(first.shape) == 4:
            return self._index_mode(body, first)
        raise RequestError(
            "expected an .npy uint8 [B, T, H, W, 3] (copy mode) or uint8 [T, H, W, 3] "
            f"followed by int64 [R, T] (index mode); got a {len(first.shape)}-d array"
        )

    def _copy_mode(self, body: memoryview, first: npy_reader.NpyHeader) -> ClipRequest:
        """Copy mode: ``first`` declares the clips themselves."""
        T, S = int(self.meta["clip_len"]), int(self.meta["crop_size"])
        check_npy(first, np.dtype(np.uint8), "clips")
        if first.shape[1:] != (T, S, S, 3):
            raise RequestError(
                f"expected clips of shape [B, {T}, {S}, {S}, 3], got {list(first.shape)}"
            )
        if not 1 <= first.shape[0] <= MAX_REQUEST_CLIPS:
            raise RequestError(
                f"a request holds 1..{MAX_REQUEST_CLIPS} clips, got {first.shape[0]}"
            )
        frames = view_npy(first, body)
        if first.end != len(body):
            raise RequestError(f"body is {len(body)} bytes, the clips array declares {first.end}")
        return ClipRequest(frames=frames, indices=None)

    def _index_mode(self, body: memoryview, first: npy_reader.NpyHeader) -> ClipRequest:
        """Index mode: ``first`` declares one clip, frame indices follow it."""
        T, S = int(self.meta["clip_len"]), int(self.meta["crop_size"])
        check_npy(first, np.dtype(np.uint8), "clip")
        if first.shape != (T, S, S, 3):
            raise RequestError(
                f"expected a clip of shape [{T}, {S}, {S}, 3], got {list(first.shape)}"
            )
        frames = view_npy(first, body)
        if first.end >= len(body):
            raise RequestError("index mode: the clip must be followed by an .npy of indices")
        second = read_npy_header(body, first.end)
        check_npy(second, np.dtype("<i8"), "indices")
        if len(second.shape) != 2 or second.shape[1] != T:
            raise RequestError(f"expected indices of shape [R, {T}], got {list(second.shape)}")
        if not 1 <= second.shape[0] <= MAX_REQUEST_CLIPS:
            raise RequestError(
                f"a request holds 1..{MAX_REQUEST_CLIPS} index rows, got {second.shape[0]}"
            )
        indices = view_npy(second, body)
        if second.end != len(body):
            raise RequestError(
                f"body is {len(body)} bytes, the clip and indices declare {second.end}"
            )
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= T:
            raise RequestError(f"frame indices must lie in [0, {T}), got {lo}..{hi}")
        return ClipRequest(frames=frames, indices=indices)

    def forward(self, requests: list[ClipRequest]) -> np.ndarray:
        """Every row of ``requests`` -> float32 logits ``[sum of rows, K]``.

        Rows are formed chunk by chunk (at most ``MAX_FORWARD_CLIPS`` at once, so
        memory is bounded whatever the batch): copy mode moves its clips to the
        device; index mode moves its one clip there once and gathers the rows on
        the device. The uint8 clips become float ``[B, 3, T, H, W]`` in ``[0, 1]``
        on the device (4x less host-to-device traffic than floats).
        """
        assert self.model is not None
        rows = [(r, i) for r in requests for i in range(r.rows)]
        on_device: dict[int, torch.Tensor] = {}
        out = []
        with torch.inference_mode():
            for start in range(0, len(rows), MAX_FORWARD_CLIPS):
                chunk = rows[start : start + MAX_FORWARD_CLIPS]
                parts = []
                # consecutive rows of one request become one slice or one gather
                i = 0
                while i < len(chunk):
                    req, first = chunk[i]
                    j = i
                    while j + 1 < len(chunk) and chunk[j + 1][0] is req:
                        j += 1
                    parts.append(self._rows(req, first, chunk[j][1] + 1, on_device))
                    i = j + 1
                x = parts[0] if len(parts) == 1 else torch.cat(parts)
                x = x.permute(0, 4, 1, 2, 3).float().div_(255.0)
                out.append(self.model(x).float().cpu())
        return torch.cat(out).numpy()

    def _rows(
        self, req: ClipRequest, start: int, stop: int, on_device: dict[int, torch.Tensor]
    ) -> torch.Tensor:
        """uint8 ``[stop - start, T, H, W, 3]`` on the device: rows ``start..stop-1``."""
        if req.indices is None:
            return _as_tensor(req.frames[start:stop]).to(self.device, non_blocking=True)
        if self.device.type == "cpu":
            return gather_frames(req.frames, req.indices[start:stop])
        clip = on_device.get(id(req))
        if clip is None:
            clip = on_device[id(req)] = _as_tensor(req.frames).to(self.device)
        return gather_frames(clip, req.indices[start:stop])

    # ---------------------------------------------------------------- entry
    def handle(self, data: list[Any], context: Any) -> list[Any]:
        if context is not None and context.get_request_header(0, "describe") == "True":
            # wire_modes: what this handler parses (an archive built before index mode
            # lacks it, and the gateway then sends copies)
            return [json.dumps({**self.meta, "wire_modes": list(WIRE_MODES)})]
        start = time.perf_counter()
        parsed: list[ClipRequest | None] = []
        for idx, request in enumerate(data):
            try:
                parsed.append(self.parse(request))
            except RequestError as exc:
                parsed.append(None)
                if context is not None:
                    context.set_response_status(exc.status, str(exc), idx)
                    context.set_response_content_type(idx, "application/json")
                data[idx] = json.dumps({"error": {"code": exc.code, "message": str(exc)}})
        good = [p for p in parsed if p is not None]
        logits = self.forward(good) if good else np.zeros((0, 0), np.float32)
        responses: list[Any] = []
        offset = 0
        for idx, req in enumerate(parsed):
            if req is None:
                responses.append(data[idx])
                continue
            rows = logits[offset : offset + req.rows]
            offset += req.rows
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(rows, dtype=np.float32), allow_pickle=False)
            responses.append(buf.getvalue())
            if context is not None:
                context.set_response_content_type(idx, NPY_CONTENT_TYPE)
        logger.debug(
            "batch of %d requests, %d clips in %.1f ms",
            len(data),
            sum(r.rows for r in good),
            (time.perf_counter() - start) * 1e3,
        )
        return responses


_service = ShuffleGuardHandler()


def handle(data: list[Any] | None, context: Any) -> list[Any] | None:
    """Module-level entry point TorchServe calls (``initialize`` on first use)."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
