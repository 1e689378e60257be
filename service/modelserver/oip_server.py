"""A KServe predictor for ShuffleGuard model archives: the ``.mar`` behind an Open
Inference Protocol (v2) server.

``python -m service.modelserver.oip_server --model-store DIR --http-port PORT`` serves every
``*.mar`` in ``DIR`` with KServe's own Python ``ModelServer`` (``kserve`` from
PyPI, imported here only: the gateway never needs it). Each archive's
``meta.json`` and weights are loaded by the TorchServe handler packed in the
archive (:class:`service.modelserver.handler.ShuffleGuardHandler`), and every request goes
through that handler's ``parse`` (dtype, shape, size and index checks) and
``forward`` (gather on the device, one forward pass per chunk): the two servers
answer the same bytes with the same logits.

OIP v2 tensors (names fixed here and in :mod:`service.gateway.oip`):

* copy mode: input ``clips`` UINT8 ``[B, T, H, W, 3]`` (RGB, 0..255);
* index mode: inputs ``clip`` UINT8 ``[T, H, W, 3]`` and ``indices`` INT64
  ``[R, T]`` (each value in ``[0, T)``): row ``r`` is ``clip[indices[r]]``;
* output ``logits`` FP32 ``[B or R, K]``.

Both ways of sending tensors work (KServe 0.21 parses the binary tensor data
extension: ``Inference-Header-Content-Length`` + ``parameters.binary_data_size``,
and answers binary outputs when asked with ``parameters.binary_data``).

The model's ``meta.json`` (labels, preset, clip geometry) is published through
the model configuration extension Triton also implements:
``GET /v2/models/{name}/config`` answers ``{"name", "parameters":
{"shuffleguard_meta": {"string_value": <meta.json>}}}`` (a model ``parameters``
entry in Triton's ``config.pbtxt`` gives the same answer there).

KServe binds its HTTP port on all interfaces (0.21 has no host option): run it
where only the gateway can reach it (a pod behind a NetworkPolicy, a private
network), as the TorchServe notes in docs/deployment.md say.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np

from service.modelserver import wire
from service.options import ExperimentConfig, opt

logger = logging.getLogger(__name__)

#: OIP tensor names (the gateway's side: service/gateway/oip.py)
CLIPS, CLIP, INDICES, LOGITS = "clips", "clip", "indices", "logits"
#: the model configuration parameter holding meta.json
META_PARAMETER = "shuffleguard_meta"


def load_handler(mar: Path, workdir: Path) -> Any:
    """The archive's handler, initialized on the CPU from ``mar`` unpacked into ``workdir``."""
    from service.modelserver.handler import ShuffleGuardHandler

    target = workdir / mar.stem
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(target)
    handler = ShuffleGuardHandler()
    handler.initialize(SimpleNamespace(system_properties={"model_dir": str(target)}))
    return handler


def build_model(name: str, handler: Any) -> Any:
    """A ``kserve.Model`` answering OIP v2 requests with ``handler`` (imports kserve)."""
    from kserve import InferRequest, InferResponse, Model
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput

    from service.modelserver.handler import RequestError

    meta = handler.meta
    T, S = int(meta["clip_len"]), int(meta["crop_size"])

    class ShuffleGuardPredictor(Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name)
            self.ready = True

        def get_input_types(self) -> list[dict[str, Any]]:
            return [
                {"name": CLIPS, "datatype": "UINT8", "shape": [-1, T, S, S, 3]},
                {"name": CLIP, "datatype": "UINT8", "shape": [T, S, S, 3]},
                {"name": INDICES, "datatype": "INT64", "shape": [-1, T]},
            ]

        def get_output_types(self) -> list[dict[str, Any]]:
            return [{"name": LOGITS, "datatype": "FP32", "shape": [-1, len(meta["labels"])]}]

        async def predict(
            self, payload: InferRequest, headers: dict[str, str] | None = None
        ) -> InferResponse:
            tensors = {i.name: i for i in payload.inputs}
            try:
                if set(tensors) == {CLIPS}:
                    body = wire.encode_clips(_array(tensors[CLIPS], np.uint8))
                elif set(tensors) == {CLIP, INDICES}:
                    body = wire.encode_indexed(
                        _array(tensors[CLIP], np.uint8), _array(tensors[INDICES], np.int64)
                    )
                else:
                    raise RequestError(
                        f"send input {CLIPS!r} (copy mode) or inputs {CLIP!r} and {INDICES!r} "
                        f"(index mode), got {sorted(tensors)}"
                    )
                request = handler.parse(body)  # the TorchServe handler's checks, unchanged
            except RequestError as exc:
                raise InvalidInput(str(exc)) from None
            logits = np.ascontiguousarray(handler.forward([request]), dtype=np.float32)
            output = InferOutput(name=LOGITS, shape=list(logits.shape), datatype="FP32")
            binary = _wants_binary(payload)
            output.set_data_from_numpy(logits, binary_data=binary)
            # KServe encodes the answer from these two, not from the output itself
            return InferResponse(
                response_id=payload.id or "",
                model_name=name,
                infer_outputs=[output],
                use_binary_outputs=binary,
                requested_outputs=payload.request_outputs or None,
            )

    return ShuffleGuardPredictor()


#: numpy dtype name -> OIP datatype, for the inputs
_OIP_TYPES = {"uint8": "UINT8", "int64": "INT64"}


def _array(tensor: Any, dtype: type[np.generic]) -> np.ndarray:
    from service.modelserver.handler import RequestError

    want = _OIP_TYPES[np.dtype(dtype).name]
    if tensor.datatype != want:
        raise RequestError(f"input {tensor.name!r} must be {want}, got {tensor.datatype}")
    try:
        array = tensor.as_numpy()
    except Exception as exc:  # a data length that does not match the shape
        raise RequestError(f"input {tensor.name!r}: {exc}") from None
    return np.ascontiguousarray(array, dtype=dtype)


def _wants_binary(payload: Any) -> bool:
    requested = {o.name: o for o in (payload.request_outputs or [])}
    out = requested.get(LOGITS)
    if out is not None and out.parameters and "binary_data" in out.parameters:
        return bool(out.parameters["binary_data"])
    return bool((payload.parameters or {}).get("binary_data_output", False))


def add_config_route(metas: dict[str, dict[str, Any]]) -> None:
    """``GET /v2/models/{name}/config`` on KServe's app: the models' meta.json."""
    from fastapi import HTTPException
    from kserve.model_server import app

    async def model_config(model_name: str) -> dict[str, Any]:
        meta = metas.get(model_name)
        if meta is None:
            raise HTTPException(404, f"model {model_name!r} is not served")
        return {
            "name": model_name,
            "parameters": {META_PARAMETER: {"string_value": json.dumps(meta)}},
        }

    app.add_api_route("/v2/models/{model_name}/config", model_config, methods=["GET"])


@dataclass
class OIPServerConfig(ExperimentConfig):
    """Settings of ``python -m service.modelserver.oip_server``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("python", "-m", "service.modelserver.oip_server")
    USAGE_ERRORS: ClassVar[bool] = True

    model_store: Path = opt(help="directory of .mar files")
    http_port: int = opt(help="OIP REST port")
    models: str = opt("", "comma-separated names (default: all)")

    def archives(self) -> list[Path]:
        """The ``.mar`` files to serve."""
        wanted = {m for m in self.models.split(",") if m}
        return sorted(p for p in self.model_store.glob("*.mar") if not wanted or p.stem in wanted)

    def check(self) -> None:
        if not self.archives():
            raise ValueError(f"no .mar archive in {self.model_store}")


def serve(config: OIPServerConfig) -> int:
    """Load every archive's handler and run KServe's ``ModelServer`` (blocks)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="shuffleguard-oip-"))
    models, metas = [], {}
    for mar in config.archives():
        handler = load_handler(mar, workdir)
        name = str(handler.meta.get("name") or mar.stem)
        metas[name] = {**handler.meta, "wire_modes": ["copy", "index"]}
        models.append(build_model(name, handler))
        logger.info("serving %s from %s", name, mar)

    from kserve import ModelServer

    add_config_route(metas)
    ModelServer(http_port=config.http_port, enable_grpc=False, workers=1).start(models)
    return 0


def main(argv: list[str] | None = None) -> int:
    from service.cli import run_config_command

    help_text = (__doc__ or "").split("\n\n")[0]
    return run_config_command(
        "python -m service.modelserver.oip_server",
        OIPServerConfig,
        serve,
        argv,
        " ".join(help_text.split()),
    )


if __name__ == "__main__":
    raise SystemExit(main())
