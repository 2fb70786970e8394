"""Worker settings: defaults, `MAILBAG_*` environment variables, then explicit values,
validated when the worker is built so a wrong setting fails at start."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: the idempotency store when none is named: in memory for the memory broker (its
#: messages die with the process too), else this SQLite file on the host
DEFAULT_SQLITE_STORE = "sqlite:///.mailbag/idempotency.sqlite3"


class WorkerSettings(BaseSettings):
    """Each field reads `MAILBAG_<NAME>`, e.g. `MAILBAG_CONCURRENCY=20`,
    `MAILBAG_QUEUES=orders,payments`, `MAILBAG_IDEMPOTENCY_URL=redis://127.0.0.1/0`."""

    model_config = SettingsConfigDict(env_prefix="MAILBAG_", extra="ignore", frozen=True)

    broker_url: str = "memory://"
    #: refuse to start unless `broker_url` is given (a container sets it, so a missing
    #: URL stops the worker instead of running it on an in-memory broker, healthy and idle)
    require_broker_url: bool = False
    #: handlers in flight at once. 100: handlers mostly wait on I/O, and the durable
    #: idempotency store commits the records of the handlers in flight together, so
    #: the more there are the less each message pays for the disk flush (at 10 the
    #: flush dominates: about 0.4x a raw consumer's drain rate; at 100 about 1x)
    concurrency: int = Field(100, ge=1)
    #: unsettled deliveries held per queue (default: twice concurrency, so the next
    #: messages are at hand when a handler finishes)
    prefetch: int | None = Field(None, ge=1)
    #: queues to consume (default: all of the app's)
    queues: Annotated[tuple[str, ...], NoDecode] = ()
    #: seconds in-flight handlers get to finish on shutdown
    grace_period: float = Field(30.0, ge=0)
    #: seconds a handler may run unless it sets its own `timeout` (None: no limit)
    handler_timeout: float | None = Field(None, gt=0)
    #: exponential backoff with full jitter; off, the delays are the policy's exactly
    retry_jitter: bool = True
    #: consecutive failures that open a named circuit, and how long it stays open
    breaker_failures: int = Field(5, ge=1)
    breaker_reset_after: float = Field(30.0, gt=0)
    #: where handled messages are recorded (None: see DEFAULT_SQLITE_STORE)
    idempotency_url: str | None = None
    #: how long a handled message is remembered, and the lease a run holds its key with:
    #: renewed every third of it while the handler runs, so a dead worker's keys free up
    #: within one lease however long handlers run
    idempotency_ttl: float = Field(7 * 24 * 3600.0, gt=0)
    idempotency_lease: float = Field(30.0, ge=3)
    log_level: str = "INFO"
    #: log lines as `text` (message key=value ...) or `json` (one object per line)
    log_format: Literal["text", "json"] = "text"
    #: `mailbag worker` records metrics and serves /metrics, /healthz and /readyz on
    #: this port (None: it records none)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    #: the address to serve them on: all interfaces, since probes and scrapers come
    #: from outside the container; 127.0.0.1 keeps them on the host
    metrics_host: str = "0.0.0.0"
    #: `mailbag worker` processes under one supervisor (CPU-bound handlers want one per core)
    processes: int = Field(1, ge=1)
    #: seconds between polls of queue depths (readiness follows events, not this poll)
    metrics_interval: float = Field(15.0, gt=0)

    @field_validator("queues", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(q.strip() for q in value.split(",") if q.strip())
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log level must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return level

    @model_validator(mode="after")
    def _broker_given(self) -> WorkerSettings:
        if self.require_broker_url and "broker_url" not in self.model_fields_set:
            raise ValueError(
                "no broker URL: set MAILBAG_BROKER_URL (or --broker); MAILBAG_BROKER_URL=memory:// runs on the "
                "in-memory broker on purpose"
            )
        return self

    def store_url(self, broker_url: str) -> str:
        """The idempotency store for a worker on `broker_url`."""
        if self.idempotency_url:
            return self.idempotency_url
        return "memory://" if broker_url.startswith("memory:") else DEFAULT_SQLITE_STORE
