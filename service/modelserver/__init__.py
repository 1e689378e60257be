"""The model-server side of the wire: what runs in (or drives) TorchServe and KServe.

* :mod:`service.modelserver.handler` -- the TorchServe handler (copy and index mode:
  the clip once plus frame indices, gathered on its device). It runs inside TorchServe,
  where ``service`` is not importable: it needs only torch, numpy and the ``.npy``
  reader packed beside it.
* :mod:`service.modelserver.wire` -- the batch wire format shared by the gateway and
  the handler.
* :mod:`service.modelserver.meta` -- an archive's ``meta.json``, validated
  (:class:`~service.modelserver.meta.ModelMeta`).
* :mod:`service.modelserver.archive` -- the ``.mar`` builder (export, meta, handler).
* :mod:`service.modelserver.oip_server` -- the KServe (Open Inference Protocol v2)
  predictor for the same archives.
* :mod:`service.modelserver.torchserve_proc` -- starting and stopping a TorchServe process.

This package imports nothing itself.
"""
