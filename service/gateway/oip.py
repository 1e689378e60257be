""":class:`OIPBackend`: the :class:`~service.gateway.backend.Backend` protocol over the
Open Inference Protocol (v2) REST API, as KServe's ModelServer and Triton speak it.

Calls (``{url}`` is the server's base URL, ``{m}`` the model name):

* readiness: ``GET {url}/v2/health/ready`` and ``GET {url}/v2/models/{m}/ready``;
* metadata: ``GET {url}/v2/models/{m}`` (the tensors) and the model's
  ``meta.json`` (labels, preset, clip geometry) from a ``shuffleguard_meta``
  model parameter: in the metadata's ``parameters`` when the server passes them,
  else from the model configuration extension, ``GET {url}/v2/models/{m}/config``
  (Triton: a ``parameters`` entry in ``config.pbtxt``; KServe: the predictor in
  :mod:`service.modelserver.oip_server` adds the route). Its value is the JSON text, as a
  string or as Triton's ``{"string_value": ...}``;
* model list: ``GET {url}/v2/models`` when the server has it (KServe), else the
  repository index ``POST {url}/v2/repository/index`` (Triton);
* inference: ``POST {url}/v2/models/{m}/infer`` with input ``clips`` UINT8
  ``[B, T, H, W, 3]`` (copy mode) or inputs ``clip`` UINT8 ``[T, H, W, 3]`` and
  ``indices`` INT64 ``[R, T]`` (index mode: the server gathers the rows), and
  output ``logits`` FP32 ``[B or R, K]``.

Tensors travel with the binary tensor data extension: the JSON header, then the
raw little-endian bytes; ``Inference-Header-Content-Length`` gives the header's
length and each input's ``parameters.binary_data_size`` its bytes, and the
logits come back the same way (``parameters.binary_data`` on the output). A
server that refuses the binary form (a 4xx to the first binary request) is sent
JSON ``data`` lists from then on, for the life of the backend.

The index mode is used when the model's metadata lists the ``clip`` and
``indices`` inputs (``wire_modes`` in the returned :class:`ModelMeta`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from service.gateway.backend import (
    _INLINE_ENCODE_BYTES,
    HttpBackend,
    forwardable_headers,
    json_body,
)
from service.gateway.errors import (
    BackendError,
    BackendProtocolError,
)
from service.modelserver.meta import ModelMeta

logger = logging.getLogger(__name__)

__all__ = ["CLIP", "CLIPS", "INDICES", "LOGITS", "META_PARAMETER", "OIPBackend"]

#: tensor names shared with service/modelserver/oip_server.py
CLIPS, CLIP, INDICES, LOGITS = "clips", "clip", "indices", "logits"
#: the model parameter holding the model's meta.json
META_PARAMETER = "shuffleguard_meta"
HEADER_LENGTH = "Inference-Header-Content-Length"
_DATATYPES = {"uint8": "UINT8", "int64": "INT64", "float32": "FP32"}
_NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}


class OIPBackend(HttpBackend):
    """:class:`Backend` on an OIP v2 REST server (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        binary_data: bool | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 2.0,
        connect_retries: int = 2,
        max_connections: int = 64,
        retry_backoff_s: float = 0.05,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """``binary_data``: True or False forces the tensor encoding; None (default)
        tries binary first and keeps to JSON if the server refuses it."""
        super().__init__(
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            connect_retries=connect_retries,
            max_connections=max_connections,
            retry_backoff_s=retry_backoff_s,
            client=client,
        )
        self.url = url.rstrip("/")
        self.binary_data = binary_data
        self._binary_confirmed = binary_data is not None

    def _model_url(self, model: str) -> str:
        return f"{self.url}/v2/models/{quote(model, safe='')}"

    # ------------------------------------------------------------ inference
    async def infer(
        self, model: str, clips: np.ndarray, *, headers: Mapping[str, str] | None = None
    ) -> np.ndarray:
        return await self._infer(model, {CLIPS: clips}, clips.shape[0], headers)

    async def infer_indexed(
        self,
        model: str,
        clip: np.ndarray,
        indices: np.ndarray,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        arrays = {CLIP: clip, INDICES: np.ascontiguousarray(indices, dtype="<i8")}
        return await self._infer(model, arrays, indices.shape[0], headers)

    async def _infer(
        self,
        model: str,
        arrays: dict[str, np.ndarray],
        rows: int,
        headers: Mapping[str, str] | None,
    ) -> np.ndarray:
        nbytes = sum(a.nbytes for a in arrays.values())
        binary = self.binary_data is not False
        response = await self._post_infer(model, arrays, nbytes, binary, headers)
        if binary and not self._binary_confirmed:
            if response.status_code in (400, 415, 422):
                logger.warning(
                    "the OIP server at %s refused binary tensor data (%s); sending JSON",
                    self.url,
                    response.text[:200],
                )
                self.binary_data = False
                response = await self._post_infer(model, arrays, nbytes, False, headers)
            elif response.status_code < 400:
                self.binary_data = True
            self._binary_confirmed = response.status_code < 400
        self._raise_for_status(response, model)
        logits = _decode_output(response, LOGITS)
        if logits.ndim != 2 or logits.shape[0] != rows:
            raise BackendProtocolError(
                f"the model backend returned logits of shape {list(logits.shape)} for {rows} clips"
            )
        return logits

    async def _post_infer(
        self,
        model: str,
        arrays: dict[str, np.ndarray],
        nbytes: int,
        binary: bool,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        encode = _encode_binary if binary else _encode_json
        if nbytes > _INLINE_ENCODE_BYTES or not binary:  # megabytes, or a JSON list: off the loop
            body, content_headers = await asyncio.to_thread(encode, arrays)
        else:
            body, content_headers = encode(arrays)
        send_headers = dict(content_headers)
        send_headers.update(forwardable_headers(headers or {}))
        return await self._request(
            "POST", f"{self._model_url(model)}/infer", content=body, headers=send_headers
        )

    # ------------------------------------------------------------- metadata
    async def list_models(self) -> list[str]:
        response = await self._request("GET", f"{self.url}/v2/models")
        if response.status_code in (404, 405):  # Triton: the repository extension
            response = await self._request("POST", f"{self.url}/v2/repository/index", content=b"{}")
            self._raise_for_status(response, "*")
            payload = json_body(response)
            return [str(m["name"]) for m in payload if isinstance(m, dict) and "name" in m]
        self._raise_for_status(response, "*")
        payload = json_body(response)
        if not isinstance(payload, dict) or not isinstance(payload.get("models"), list):
            raise BackendProtocolError(f"the model backend listed its models as {payload!r}")
        return [str(m) for m in payload["models"]]

    async def describe(self, model: str) -> ModelMeta:
        response = await self._request("GET", self._model_url(model))
        self._raise_for_status(response, model)
        metadata = json_body(response)
        if not isinstance(metadata, dict):
            raise BackendProtocolError(f"the model backend described {model!r} as {metadata!r}")
        raw = _meta_parameter(metadata.get("parameters"))
        if raw is None:
            config = await self._request("GET", f"{self._model_url(model)}/config")
            if config.status_code == 200:
                payload = json_body(config)
                raw = _meta_parameter(
                    payload.get("parameters") if isinstance(payload, dict) else None
                )
        if raw is None:
            raise BackendProtocolError(
                f"model {model!r} carries no {META_PARAMETER} parameter (its meta.json) in its "
                "metadata or its /config; serve it with `python -m service.modelserver.oip_server`"
                " or add "
                "the parameter to its model configuration"
            )
        try:
            meta = ModelMeta.from_dict(raw, name=model)
        except ValueError as exc:
            raise BackendProtocolError(f"model {model!r} has bad metadata: {exc}") from exc
        inputs = {str(t.get("name")): t for t in metadata.get("inputs", []) if isinstance(t, dict)}
        _check_inputs(model, meta, inputs)
        modes = [
            m
            for m, names in (("copy", (CLIPS,)), ("index", (CLIP, INDICES)))
            if all(n in inputs for n in names)
        ]
        if not modes:
            raise BackendProtocolError(
                f"model {model!r} has neither input {CLIPS!r} nor inputs {CLIP!r}+{INDICES!r}"
            )
        meta.extra["wire_modes"] = modes
        return meta

    async def ready(self, model: str) -> bool:
        try:
            health = await self._request("GET", f"{self.url}/v2/health/ready", timeout=5.0)
            if health.status_code != 200:
                return False
            response = await self._request("GET", f"{self._model_url(model)}/ready", timeout=5.0)
        except BackendError:
            return False
        if response.status_code != 200:
            return False
        try:
            payload = response.json()
        except ValueError:
            return True  # Triton answers an empty 200
        return not isinstance(payload, dict) or payload.get("ready", True) is not False


# --------------------------------------------------------------------------- #
# encoding
# --------------------------------------------------------------------------- #
def _tensor_header(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = _DATATYPES.get(array.dtype.name)
    if datatype is None:
        raise ValueError(f"no OIP datatype for {array.dtype}")
    return {"name": name, "shape": list(array.shape), "datatype": datatype}


def _encode_binary(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The binary tensor data form: JSON header + each array's raw bytes."""
    inputs, blobs = [], []
    for name, array in arrays.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
        blob = data.tobytes()
        inputs.append(
            {**_tensor_header(name, array), "parameters": {"binary_data_size": len(blob)}}
        )
        blobs.append(blob)
    header = json.dumps(
        {"inputs": inputs, "outputs": [{"name": LOGITS, "parameters": {"binary_data": True}}]},
        separators=(",", ":"),
    ).encode()
    return b"".join([header, *blobs]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def _encode_json(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The plain JSON form: each array as a flat ``data`` list (row-major)."""
    inputs = [
        {**_tensor_header(name, array), "data": array.reshape(-1).tolist()}
        for name, array in arrays.items()
    ]
    body = json.dumps(
        {"inputs": inputs, "outputs": [{"name": LOGITS, "parameters": {"binary_data": False}}]},
        separators=(",", ":"),
    ).encode()
    return body, {"Content-Type": "application/json"}


def _decode_output(response: httpx.Response, name: str) -> np.ndarray:
    """Output ``name`` of an infer response (binary or JSON) as a float32 array."""
    raw = response.content
    length = response.headers.get(HEADER_LENGTH)
    try:
        head_len = int(length) if length is not None else len(raw)
        header = json.loads(raw[:head_len])
        offset = head_len
        for out in header["outputs"]:
            shape = [int(d) for d in out["shape"]]
            dtype = _NUMPY.get(out["datatype"])
            size = (out.get("parameters") or {}).get("binary_data_size")
            if dtype is None:
                raise ValueError(f"output {out['name']!r} has datatype {out['datatype']}")
            if size is not None:
                blob = raw[offset : offset + int(size)]
                offset += int(size)
                if out["name"] == name:
                    array = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"))
                    return array.reshape(shape).astype(np.float32)
            elif out["name"] == name:
                return np.asarray(out["data"], dtype=np.float32).reshape(shape)
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendProtocolError(
            f"the model backend sent an unusable infer answer: {exc}"
        ) from exc
    raise BackendProtocolError(f"the model backend's infer answer has no output {name!r}")


def _meta_parameter(parameters: Any) -> dict[str, Any] | None:
    """The ``shuffleguard_meta`` parameter as a mapping (None when absent or unusable)."""
    if not isinstance(parameters, dict) or META_PARAMETER not in parameters:
        return None
    value = parameters[META_PARAMETER]
    if isinstance(value, dict) and "string_value" in value:
        value = value["string_value"]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


def _check_inputs(model: str, meta: ModelMeta, inputs: Mapping[str, Mapping[str, Any]]) -> None:
    """The tensors the server declares agree with meta.json's clip geometry."""
    T, S = meta.clip_len, meta.crop_size
    expected = {
        CLIPS: ("UINT8", [-1, T, S, S, 3]),
        CLIP: ("UINT8", [T, S, S, 3]),
        INDICES: ("INT64", [-1, T]),
    }
    for name, (datatype, shape) in expected.items():
        spec = inputs.get(name)
        if spec is None:
            continue
        got = [int(d) for d in spec.get("shape", [])]
        fits = len(got) == len(shape) and all(
            g == s or g == -1 or s == -1 for g, s in zip(got, shape, strict=True)
        )
        if spec.get("datatype") != datatype or not fits:
            raise BackendProtocolError(
                f"model {model!r} declares input {name!r} as {spec.get('datatype')} {got}; "
                f"its meta.json needs {datatype} {shape}"
            )
