"""The FastAPI gateway: upload -> decode -> shuffled ensemble -> backend -> majority vote.

``create_app(settings)`` builds an app; ``shuffleguard serve`` runs it under uvicorn.
Layout: ``app`` (factory and lifespan), ``routes/`` (one router per resource),
``pipeline`` (the defended classify path), ``backend`` (the model-server protocol
and its TorchServe client), ``catalog`` (model metadata and readiness),
``upload`` (streamed, size- and time-limited uploads), ``admission`` (overload
control), ``errors`` (typed exceptions and the code -> status table), ``metrics``, ``logs``,
``middleware`` (request id, access log, request counter).
"""

from service.gateway.app import create_app

__all__ = ["create_app"]
