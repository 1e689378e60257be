"""The model backend behind the gateway: a small :class:`Backend` protocol and its
TorchServe implementation.

TorchServe is archived upstream, so everything the gateway needs from a model
server is these five calls; another server (Triton, KServe, a plain torch
process) can replace it by implementing them.

Wire contract with TorchServe (see :mod:`service.modelserver.wire` and
:mod:`service.modelserver.handler`):

* inference: ``POST {inference_url}/predictions/{model}``,
  ``Content-Type: application/x-npy``, body = npy uint8 ``[B, T, H, W, 3]`` (copy
  mode, :meth:`Backend.infer`) or npy uint8 ``[T, H, W, 3]`` + npy int64 ``[R, T]``
  frame indices (index mode, :meth:`Backend.infer_indexed`: the backend gathers
  the ``R`` clips on its device); answer = npy float32 ``[B or R, K]`` logits;
* metadata: ``GET {management_url}/models/{model}?customized=true``; the first
  element's ``customizedMetadata`` is the archive's ``meta.json`` (an object in
  TorchServe 0.12, a JSON string in older versions);
* model list: ``GET {management_url}/models``;
* readiness: ``GET {inference_url}/ping`` and the model's description showing a
  worker with ``status == "READY"``.

Retries: only a connection that could not be opened (refused, connect timeout)
is retried (tenacity, exponential backoff from ``retry_backoff_s``), never a
request that may have reached the model.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx
import numpy as np
import tenacity

from service.gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from service.modelserver import wire
from service.modelserver.meta import ModelMeta

logger = logging.getLogger(__name__)

__all__ = [
    "FORWARDED_HEADERS",
    "Backend",
    "HttpBackend",
    "ModelMeta",
    "TorchServeBackend",
    "forwardable_headers",
]

#: batches up to this size are encoded on the event loop (a few ms at most)
_INLINE_ENCODE_BYTES = 4 * 1024 * 1024
#: the only client headers passed on to the backend (request id, W3C trace context)
FORWARDED_HEADERS = ("x-request-id", "traceparent", "tracestate")


def forwardable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed subset of ``headers`` (case-insensitive names)."""
    lower = {k.lower(): v for k, v in headers.items()}
    return {name: lower[name] for name in FORWARDED_HEADERS if name in lower}


@runtime_checkable
class Backend(Protocol):
    """What the gateway needs from a model server."""

    async def infer(
        self, model: str, clips: np.ndarray, *, headers: Mapping[str, str] | None = None
    ) -> np.ndarray:
        """uint8 ``[B, T, H, W, 3]`` -> float32 logits ``[B, K]``."""
        ...

    async def infer_indexed(
        self,
        model: str,
        clip: np.ndarray,
        indices: np.ndarray,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` + int64 ``[R, T]`` -> float32 logits ``[R, K]`` of the
        clips ``clip[indices[r]]``."""
        ...

    async def list_models(self) -> list[str]:
        """Names of the models the server holds."""
        ...

    async def describe(self, model: str) -> ModelMeta:
        """The model's metadata; :class:`ModelNotFound` when there is no such model."""
        ...

    async def ready(self, model: str) -> bool:
        """True when the server is up and ``model`` can answer now (never raises)."""
        ...

    async def aclose(self) -> None: ...


class HttpBackend:
    """What the HTTP backends share: one pooled ``httpx.AsyncClient`` and the retry rule."""

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 2.0,
        connect_retries: int = 2,
        max_connections: int = 64,
        retry_backoff_s: float = 0.05,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.connect_retries = connect_retries
        self.retry_backoff_s = retry_backoff_s
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s, pool=timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            # Never read proxy settings or netrc from the environment: the backend is
            # a private, usually loopback, address.
            trust_env=False,
        )

    # ------------------------------------------------------------------ HTTP
    async def _request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One HTTP exchange; connection failures (only) are retried with backoff.

        A connection that could not be opened (the request never left) is retried up
        to ``connect_retries`` times after ``retry_backoff_s``, twice that, four
        times, ... (tenacity); anything after the request may have left is not.
        """
        request = self._client.build_request(
            method,
            url,
            content=content,
            headers=headers,
            params=params,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else httpx.Timeout(timeout),
        )
        retrying = tenacity.AsyncRetrying(  # one per exchange: it holds the attempt count
            retry=tenacity.retry_if_exception_type((httpx.ConnectError, httpx.ConnectTimeout)),
            stop=tenacity.stop_after_attempt(self.connect_retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.retry_backoff_s),
            reraise=True,
        )
        try:
            return await retrying(self._client.send, request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise BackendUnavailable(
                f"the model backend is not reachable ({type(exc).__name__}); retry later"
            ) from exc
        except httpx.PoolTimeout as exc:
            raise BackendUnavailable(
                "no free connection to the model backend; retry later"
            ) from exc
        except httpx.TimeoutException as exc:
            raise BackendTimeout(
                f"the model backend did not answer within {self.timeout_s:g} s; retry later "
                "or ask for a smaller ensemble"
            ) from exc
        except httpx.TransportError as exc:
            # Dropped mid-request: it may have run, so it is not retried.
            raise BackendUnavailable(
                f"the connection to the model backend broke ({type(exc).__name__}); retry later"
            ) from exc

    def _raise_for_status(self, response: httpx.Response, model: str) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = error_detail(response)
        if status == 404:
            raise ModelNotFound(f"model {model!r} is not served; GET /v1/models lists the models")
        if status == 503:
            # TorchServe: job queue full (or no worker yet). Either way: back off.
            raise BackendOverloaded(f"the model backend is busy ({detail}); retry later")
        if status == 408 or status == 504:
            raise BackendTimeout(f"the model backend timed out ({detail}); retry later")
        raise BackendProtocolError(
            f"the model backend answered HTTP {status} ({detail}); this is a server fault"
        )

    @staticmethod
    async def _encode(encode: Callable[..., bytes], nbytes: int, *arrays: np.ndarray) -> bytes:
        if nbytes > _INLINE_ENCODE_BYTES:  # megabytes: copy them off the event loop
            return await asyncio.to_thread(encode, *arrays)
        return encode(*arrays)  # a millisecond or two: cheaper than a thread hop

    async def aclose(self) -> None:
        await self._client.aclose()


class TorchServeBackend(HttpBackend):
    """:class:`Backend` on TorchServe's REST APIs."""

    def __init__(
        self,
        inference_url: str,
        management_url: str,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 2.0,
        connect_retries: int = 2,
        max_connections: int = 64,
        retry_backoff_s: float = 0.05,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            connect_retries=connect_retries,
            max_connections=max_connections,
            retry_backoff_s=retry_backoff_s,
            client=client,
        )
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")

    # ------------------------------------------------------------- protocol
    async def infer(
        self, model: str, clips: np.ndarray, *, headers: Mapping[str, str] | None = None
    ) -> np.ndarray:
        body = await self._encode(wire.encode_clips, clips.nbytes, clips)
        return await self._predict(model, body, clips.shape[0], headers)

    async def infer_indexed(
        self,
        model: str,
        clip: np.ndarray,
        indices: np.ndarray,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        body = await self._encode(wire.encode_indexed, clip.nbytes, clip, indices)
        return await self._predict(model, body, indices.shape[0], headers)

    async def _predict(
        self, model: str, body: bytes, rows: int, headers: Mapping[str, str] | None
    ) -> np.ndarray:
        send_headers = {"Content-Type": wire.CONTENT_TYPE, "Accept": wire.CONTENT_TYPE}
        send_headers.update(forwardable_headers(headers or {}))
        response = await self._request(
            "POST",
            f"{self.inference_url}/predictions/{quote(model, safe='')}",
            content=body,
            headers=send_headers,
        )
        self._raise_for_status(response, model)
        try:
            logits = wire.decode_logits(response.content)
        except wire.WireError as exc:
            raise BackendProtocolError(f"the model backend sent unusable logits: {exc}") from exc
        if logits.shape[0] != rows:
            raise BackendProtocolError(
                f"the model backend returned {logits.shape[0]} rows for {rows} clips"
            )
        return logits

    async def list_models(self) -> list[str]:
        names: list[str] = []
        token: str | None = None
        while True:
            params = {"limit": "100"} | ({"next_page_token": token} if token else {})
            response = await self._request("GET", f"{self.management_url}/models", params=params)
            self._raise_for_status(response, "*")
            payload = json_body(response)
            names.extend(str(m["modelName"]) for m in payload.get("models", []))
            token = payload.get("nextPageToken")
            if not token:
                return names

    async def describe(self, model: str) -> ModelMeta:
        response = await self._request(
            "GET",
            f"{self.management_url}/models/{quote(model, safe='')}",
            params={"customized": "true"},
        )
        self._raise_for_status(response, model)
        payload = json_body(response)
        if not isinstance(payload, list) or not payload:
            raise BackendProtocolError(f"the model backend described {model!r} as {payload!r}")
        raw = payload[0].get("customizedMetadata")
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raw = None
        if not isinstance(raw, dict):
            raise BackendProtocolError(
                f"model {model!r} carries no ShuffleGuard meta.json; rebuild its archive with "
                "`shuffleguard archive`"
            )
        try:
            return ModelMeta.from_dict(raw, name=model)
        except ValueError as exc:
            raise BackendProtocolError(f"model {model!r} has bad metadata: {exc}") from exc

    async def ready(self, model: str) -> bool:
        try:
            ping = await self._request("GET", f"{self.inference_url}/ping", timeout=5.0)
            if ping.status_code != 200:
                return False
            response = await self._request(
                "GET", f"{self.management_url}/models/{quote(model, safe='')}", timeout=5.0
            )
            if response.status_code != 200:
                return False
            payload = json_body(response)
        except BackendError:
            return False
        return any(
            w.get("status") == "READY"
            for entry in payload
            if isinstance(entry, dict)
            for w in entry.get("workers", [])
        )


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise BackendProtocolError(
            f"the model backend sent invalid JSON (HTTP {response.status_code})"
        ) from exc


def error_detail(response: httpx.Response) -> str:
    """A short description of a backend error answer, for messages and logs."""
    try:
        payload = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(payload, dict):
        inner = payload.get("error")
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])[:200]
        if isinstance(inner, str):  # the Open Inference Protocol's error object
            return inner[:200]
        if "message" in payload:
            return str(payload["message"])[:200]
    return f"HTTP {response.status_code}"
