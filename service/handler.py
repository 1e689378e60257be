"""TorchServe handler for ShuffleGuard model archives.

This file is packed into every ``.mar`` and runs inside TorchServe's Python
worker, so it depends on torch and numpy only (never on the ``service``
package): an archive loads on any TorchServe with torch installed.

Protocol (see ``service/wire.py`` for the gateway's side):

* inference request body: one ``.npy`` uint8 ``[B, T, H, W, 3]`` RGB 0..255;
  ``T`` must equal ``meta.clip_len`` and ``H = W = meta.crop_size``;
* inference response body: one ``.npy`` float32 ``[B, K]`` of logits;
* describe (``GET /models/{name}?customized=true``): ``customizedMetadata`` is
  ``meta.json`` (TorchServe 0.12 parses the JSON string the handler returns and
  embeds it as an object; older versions pass the string through).

With server-side batching (``batchSize`` > 1 in the archive's model-config),
TorchServe hands several requests to :meth:`ShuffleGuardHandler.handle` at once:
their clips are stacked into one forward pass (in chunks of at most
``MAX_FORWARD_CLIPS``) and split back, one response per request. A malformed
request gets a 400 of its own and does not fail its neighbours.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: clips per forward pass; bounds worker memory whatever the batch size
MAX_FORWARD_CLIPS = int(os.environ.get("SHUFFLEGUARD_MAX_FORWARD_CLIPS", "64"))
#: largest request accepted, in clips
MAX_REQUEST_CLIPS = 128
NPY_CONTENT_TYPE = "application/x-npy"


class RequestError(ValueError):
    """A request payload the handler cannot use (answered with 400)."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        digest = sha256_file(weights)
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
    def parse(self, payload: Any) -> np.ndarray:
        """Request payload -> uint8 ``[b, T, H, W, 3]`` checked against the model's meta."""
        if isinstance(payload, dict):
            payload = payload.get("data") or payload.get("body")
        if isinstance(payload, bytearray):
            payload = bytes(payload)
        if not isinstance(payload, bytes) or not payload:
            raise RequestError("empty body: send an .npy uint8 [B, T, H, W, 3] array")
        if not payload.startswith(b"\x93NUMPY"):
            raise RequestError("body is not an .npy array (no \\x93NUMPY magic)")
        try:
            clips = np.load(io.BytesIO(payload), allow_pickle=False)
        except Exception as exc:
            raise RequestError(f"body is not a valid .npy array: {exc}") from exc
        T, S = int(self.meta["clip_len"]), int(self.meta["crop_size"])
        if clips.dtype != np.uint8 or clips.ndim != 5:
            raise RequestError(f"expected uint8 [B, T, H, W, 3], got {clips.dtype} {clips.shape}")
        if clips.shape[1:] != (T, S, S, 3):
            raise RequestError(f"expected clips of shape [B, {T}, {S}, {S}, 3], got {clips.shape}")
        if not 1 <= clips.shape[0] <= MAX_REQUEST_CLIPS:
            raise RequestError(
                f"a request holds 1..{MAX_REQUEST_CLIPS} clips, got {clips.shape[0]}"
            )
        return clips

    def forward(self, clips: np.ndarray) -> np.ndarray:
        """uint8 ``[B, T, H, W, 3]`` -> float32 logits ``[B, K]``.

        The uint8 bytes move to the device first and become float ``[B, 3, T, H, W]``
        in ``[0, 1]`` there (4x less host-to-device traffic than floats).
        """
        assert self.model is not None
        out = []
        with torch.inference_mode():
            for start in range(0, clips.shape[0], MAX_FORWARD_CLIPS):
                chunk = torch.from_numpy(clips[start : start + MAX_FORWARD_CLIPS])
                x = chunk.to(self.device, non_blocking=True)
                x = x.permute(0, 4, 1, 2, 3).float().div_(255.0)
                out.append(self.model(x).float().cpu())
        return torch.cat(out).numpy()

    # ---------------------------------------------------------------- entry
    def handle(self, data: list[Any], context: Any) -> list[Any]:
        if context is not None and context.get_request_header(0, "describe") == "True":
            return [json.dumps(self.meta)]
        start = time.perf_counter()
        parsed: list[np.ndarray | None] = []
        for idx, request in enumerate(data):
            try:
                parsed.append(self.parse(request))
            except RequestError as exc:
                parsed.append(None)
                if context is not None:
                    context.set_response_status(400, str(exc), idx)
                    context.set_response_content_type(idx, "application/json")
                data[idx] = json.dumps({"error": {"code": "bad_batch", "message": str(exc)}})
        good = [p for p in parsed if p is not None]
        logits = self.forward(np.concatenate(good)) if good else np.zeros((0, 0), np.float32)
        responses: list[Any] = []
        offset = 0
        for idx, clips in enumerate(parsed):
            if clips is None:
                responses.append(data[idx])
                continue
            rows = logits[offset : offset + clips.shape[0]]
            offset += clips.shape[0]
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(rows, dtype=np.float32), allow_pickle=False)
            responses.append(buf.getvalue())
            if context is not None:
                context.set_response_content_type(idx, NPY_CONTENT_TYPE)
        logger.debug(
            "batch of %d requests, %d clips in %.1f ms",
            len(data),
            sum(len(c) for c in good),
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
