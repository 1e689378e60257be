"""The one way in for configuration: :class:`Settings` (pydantic-settings).

Every field reads the environment variable ``SHUFFLEGUARD_<FIELD>`` (upper case),
e.g. ``SHUFFLEGUARD_BACKEND_URL``, ``SHUFFLEGUARD_RESEARCH_MODE=1``,
``SHUFFLEGUARD_MAX_INFLIGHT=8``. Command-line options of ``shuffleguard serve``
are applied on top as keyword overrides (``Settings(**overrides)``), so the
gateway, the TorchServe supervisor and the tests all read one typed object.

Validators fail fast at start-up on values that could only fail later, on the
request path: a backend URL that does not parse, an ensemble below 1, a
threshold outside [0, 1], a limit of zero.

Beside it, small settings objects for what is not the gateway's: the API key a client
sends (:class:`ClientSettings`, ``SHUFFLEGUARD_API_KEY``), prometheus_client's
multiprocess directory (:class:`PrometheusSettings`, ``PROMETHEUS_MULTIPROC_DIR``) and
where the fetched real-clip sources are (:class:`SourcesSettings`,
``SHUFFLEGUARD_SOURCES``). An empty variable counts as unset in these. Nothing else in
``service`` reads the environment, except the TorchServe handler, which runs without
this package and reads its two variables once (``service.modelserver.handler.HandlerSettings``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import httpx
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

__all__ = [
    "MODEL_NAME_PATTERN",
    "MAX_ENSEMBLE",
    "BackendEndpoint",
    "ClientSettings",
    "PrometheusSettings",
    "Settings",
    "SourcesSettings",
    "management_url_for",
    "normalize_url",
    "split_urls",
]

#: Model names the gateway accepts (they become part of a backend URL path).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
#: The largest ensemble a request may ask for (SPEC §4).
MAX_ENSEMBLE = 64

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]
Port = Annotated[int, Field(ge=1, le=65535)]


def normalize_url(value: str, *, name: str) -> str:
    """``value`` as an absolute http(s) URL without a trailing slash, or ValueError."""
    text = str(value).strip()
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {text!r} is not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{name}: {text!r} must be an absolute http:// or https:// URL")
    if url.query or url.fragment:
        raise ValueError(f"{name}: {text!r} must not have a query or fragment")
    return text.rstrip("/")


def split_urls(value: str | Sequence[str], *, name: str) -> tuple[str, ...]:
    """One URL, a comma-separated list, or a sequence of them -> normalized URLs."""
    items = [value] if isinstance(value, str) else list(value)
    urls = tuple(
        normalize_url(part, name=name)
        for item in items
        for part in str(item).split(",")
        if part.strip()
    )
    if not urls:
        raise ValueError(f"{name}: no URL given")
    return urls


def management_url_for(inference_url: str) -> str:
    """TorchServe's management API next to ``inference_url``: same host, port + 1."""
    url = httpx.URL(inference_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return str(url.copy_with(port=port + 1)).rstrip("/")


@dataclass(frozen=True)
class BackendEndpoint:
    """One model server: its inference URL and (TorchServe only) its management URL."""

    url: str
    management_url: str


class Settings(BaseSettings):
    """Gateway and serving settings (env prefix ``SHUFFLEGUARD_``)."""

    model_config = SettingsConfigDict(
        env_prefix="SHUFFLEGUARD_",
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    # ---------------------------------------------------------------- backend
    backend_kind: Literal["torchserve", "oip"] = Field(
        default="torchserve",
        description="torchserve: TorchServe's REST APIs; oip: an Open Inference Protocol v2 "
        "server (KServe, Triton)",
    )
    backend_url: str = Field(
        default="http://127.0.0.1:8080",
        description="model server base URL (TorchServe: its inference API); several "
        "comma-separated URLs make a pool with least-in-flight spreading and failover",
    )
    backend_management_url: str = Field(
        default="http://127.0.0.1:8081",
        description="TorchServe management API base URL, one per backend URL (comma-separated); "
        "when left unset with several backend URLs: each inference URL's port + 1",
    )
    backend_probe_interval_s: PositiveFloat = Field(
        default=1.0, description="how often a pool re-probes a backend it found unhealthy"
    )
    backend_timeout_s: PositiveFloat = Field(
        default=30.0, description="no answer from the backend within this -> 504"
    )
    backend_connect_timeout_s: PositiveFloat = Field(
        default=2.0, description="TCP connect timeout to the backend"
    )
    backend_connect_retries: int = Field(
        default=2, ge=0, le=10, description="retries of connections that could not be opened"
    )
    backend_max_connections: PositiveInt = Field(
        default=64, description="pooled connections to the backend"
    )

    # ---------------------------------------------------------------- models
    default_model: str = Field(
        default="toy_mixed_r3d18",
        pattern=MODEL_NAME_PATTERN,
        description="model used when a request names none (falls back to the first listed)",
    )
    metadata_ttl_s: PositiveFloat = Field(
        default=30.0, description="how long model metadata and the model list are cached"
    )
    readiness_ttl_s: float = Field(
        default=1.0, ge=0, description="how long a /readyz answer is reused"
    )

    # ---------------------------------------------------------------- defense
    research_mode: bool = Field(
        default=False,
        description="open every request parameter and response field (oracle for attackers!)",
    )
    ensemble: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ENSEMBLE,
        description="server-wide ensemble size; default: each model's preset",
    )
    suspicion_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="vote share under this: suspected_adversarial"
    )
    shuffle_mode: Literal["index", "copy"] = Field(
        default="index",
        description="index: send the backend the clip once plus the [N + 1, T] frame indices "
        "and let it gather the shuffled copies on its device; copy: gather the N + 1 copies "
        "here and send them all (N + 1 times the bytes; see docs/benchmarks.md)",
    )
    early_stop: bool = Field(
        default=True,
        description="classify the shuffled copies in rounds and stop once the vote's label and "
        "suspected flag cannot change (same result as the full vote, fewer copies)",
    )
    early_stop_max_rounds: int = Field(
        default=3, ge=1, le=MAX_ENSEMBLE, description="backend rounds per request at most"
    )

    # ---------------------------------------------------------------- limits
    max_inflight: PositiveInt = Field(default=4, description="classify requests running at once")
    max_queue: int = Field(default=16, ge=0, description="classify requests waiting for a slot")
    queue_timeout_s: PositiveFloat = Field(
        default=10.0, description="longest wait for a slot before 429"
    )
    retry_after_s: PositiveInt = Field(default=1, description="Retry-After on 429 and 503")
    max_upload_bytes: PositiveInt = Field(
        default=50 * 1024 * 1024, description="upload size limit (bytes)"
    )
    upload_timeout_s: PositiveFloat = Field(
        default=30.0, description="time to receive the whole upload before 408"
    )
    max_pixels: PositiveInt = Field(default=3840 * 2160, description="pixels per decoded frame")
    max_frames: PositiveInt = Field(default=3000, description="frames decoded per upload")
    max_decode_seconds: PositiveFloat = Field(default=30.0, description="decode time per upload")
    decode_threads: PositiveInt = Field(
        default=2, description="threads for blocking work (decoding, copy-mode gathers)"
    )

    # ---------------------------------------------------------------- clients
    api_keys_file: Path | None = Field(
        default=None,
        description="YAML/JSON file of API key hashes, names and roles (written by "
        "`shuffleguard create-key`; docs/serving.md, API keys); unset, or a file listing "
        "no keys: the API is open",
    )
    api_keys_reload_s: PositiveFloat = Field(
        default=5.0, description="the key file is re-read at most this often when it changed"
    )
    quota_client_rate: PositiveFloat = Field(
        default=1.0, description="classify requests/s of a client-role key (token bucket)"
    )
    quota_client_burst: PositiveInt = Field(
        default=10, description="token bucket size of a client-role key"
    )
    quota_client_concurrency: PositiveInt = Field(
        default=2, description="classify requests at once of a client-role key"
    )
    quota_research_rate: PositiveFloat = Field(
        default=20.0, description="classify requests/s of a research-role key (token bucket)"
    )
    quota_research_burst: PositiveInt = Field(
        default=100, description="token bucket size of a research-role key"
    )
    quota_research_concurrency: PositiveInt = Field(
        default=8, description="classify requests at once of a research-role key"
    )

    # ------------------------------------------------------ query-attack watch
    detect_policy: Literal["off", "flag", "throttle", "refuse"] = Field(
        default="flag",
        description="what a detected query attack gets (docs/detection.md): off (no "
        "fingerprints), flag (log + metrics), throttle (one request per "
        "detect_throttle_s for detect_penalty_s, else 429), refuse (403 for detect_penalty_s)",
    )
    detect_history: int = Field(
        default=256, ge=1, le=100_000, description="distinct queries remembered per client"
    )
    detect_clients: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="clients whose history is kept (least recent "
        "evicted; about 2.8 MB each when full, docs/detection.md)",
    )
    detect_step: int = Field(
        default=32, ge=1, le=255, description="fingerprint quantization step (pixel levels)"
    )
    detect_window: int = Field(default=20, ge=1, le=3072, description="values per hashed run")
    detect_keep: int = Field(default=20, ge=1, le=256, description="hashes kept per frame")
    detect_size: int = Field(
        default=32, ge=1, le=512, description="frames are block-averaged to at most this side"
    )
    detect_match: int = Field(
        default=14, ge=1, description="a frame matches when this many of its hashes were seen"
    )
    detect_frames: float = Field(
        default=0.75, gt=0, le=1, description="share of a clip's frames that must match"
    )
    detect_hits: int = Field(
        default=4,
        ge=1,
        description="near-duplicates among the last detect_recent queries that make a detection",
    )
    detect_recent: int = Field(default=20, ge=1, description="see detect_hits")
    detect_penalty_s: PositiveFloat = Field(
        default=300.0, description="throttle/refuse: how long a detected client is penalized"
    )
    detect_throttle_s: PositiveFloat = Field(
        default=10.0, description="throttle: one request let through per this many seconds"
    )

    # ---------------------------------------------------------------- serve
    host: str = Field(default="127.0.0.1", description="gateway bind address")
    port: Port = Field(default=8000, description="gateway port")
    model_store: Path = Field(default=Path("model_store"), description="TorchServe model store")
    torchserve_host: str = Field(default="127.0.0.1", description="TorchServe bind address")
    torchserve_inference_port: Port = Field(default=8080, description="TorchServe inference port")
    torchserve_management_port: Port = Field(default=8081, description="TorchServe management port")
    torchserve_metrics_port: Port = Field(default=8082, description="TorchServe metrics port")
    torchserve_start_timeout_s: PositiveFloat = Field(
        default=180.0, description="longest wait for TorchServe's models to be ready"
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR")

    # ------------------------------------------------------------ validators
    @field_validator("backend_url", "backend_management_url", mode="before")
    @classmethod
    def _check_url(cls, value: str | Sequence[str], info: ValidationInfo) -> str:
        return ",".join(split_urls(value, name=info.field_name or "url"))

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return level

    @model_validator(mode="after")
    def _check_ports(self) -> Settings:
        ports = (
            self.torchserve_inference_port,
            self.torchserve_management_port,
            self.torchserve_metrics_port,
        )
        if len(set(ports)) != len(ports):
            raise ValueError(f"TorchServe inference/management/metrics ports must differ: {ports}")
        return self

    @model_validator(mode="after")
    def _check_detection(self) -> Settings:
        if self.detect_match > self.detect_keep:
            raise ValueError(
                f"detect_match ({self.detect_match}) must be <= detect_keep ({self.detect_keep})"
            )
        if not self.detect_hits <= self.detect_recent <= self.detect_history:
            raise ValueError(
                "need detect_hits <= detect_recent <= detect_history, got "
                f"{self.detect_hits}, {self.detect_recent}, {self.detect_history}"
            )
        if self.detect_window > self.detect_size * self.detect_size * 3:
            raise ValueError(
                f"detect_window ({self.detect_window}) exceeds a {self.detect_size}-pixel "
                "frame's values"
            )
        return self

    @model_validator(mode="after")
    def _check_backends(self) -> Settings:
        self._pair_backends()
        return self

    def _pair_backends(self) -> tuple[BackendEndpoint, ...]:
        urls = self.backend_url.split(",")
        management = self.backend_management_url.split(",")
        if len(set(urls)) != len(urls):
            raise ValueError(f"backend_url lists a URL twice: {self.backend_url}")
        if len(management) != len(urls):
            if len(urls) > 1 and "backend_management_url" not in self.model_fields_set:
                management = [management_url_for(u) for u in urls]
            else:
                raise ValueError(
                    f"{len(urls)} backend URL(s) but {len(management)} management URL(s); "
                    "give one management URL per backend URL, or none"
                )
        return tuple(BackendEndpoint(u, m) for u, m in zip(urls, management, strict=True))

    @classmethod
    def environment_fields(cls) -> frozenset[str]:
        """The fields a non-empty ``SHUFFLEGUARD_*`` environment variable sets (read by
        pydantic-settings' own environment source, as construction reads them)."""
        values = EnvSettingsSource(cls)()
        return frozenset(name for name, value in values.items() if value not in (None, ""))

    @property
    def backends(self) -> tuple[BackendEndpoint, ...]:
        """The model servers, in the order given (validated at construction)."""
        return self._pair_backends()

    @property
    def max_admitted(self) -> int:
        """Classify requests held at once (running + waiting): bounds upload memory."""
        return self.max_inflight + self.max_queue


class ClientSettings(BaseSettings):
    """A gateway client's settings (``shuffleguard classify``, the red-team client)."""

    model_config = SettingsConfigDict(
        env_prefix="SHUFFLEGUARD_", extra="ignore", env_ignore_empty=True, frozen=True
    )

    api_key: str | None = Field(
        default=None, description="the API key sent when a command is given none"
    )


class PrometheusSettings(BaseSettings):
    """prometheus_client's multiprocess mode: set, every worker process writes its
    metrics there and ``/metrics`` sums them (``serve --workers N`` sets it)."""

    model_config = SettingsConfigDict(
        env_prefix="PROMETHEUS_", extra="ignore", env_ignore_empty=True, frozen=True
    )

    multiproc_dir: str | None = Field(
        default=None, description="PROMETHEUS_MULTIPROC_DIR, prometheus_client's own variable"
    )


class SourcesSettings(BaseSettings):
    """Where ``scripts/fetch-real-clips.sh`` put the real-clip source files."""

    model_config = SettingsConfigDict(
        env_prefix="SHUFFLEGUARD_", extra="ignore", env_ignore_empty=True, frozen=True
    )

    sources: Path | None = Field(default=None, description="default: data/sources")
