"""One settings object per service process, read from the environment (prefix CONFIDE_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service needs to run. A service subclasses it for settings of its own."""

    model_config = SettingsConfigDict(env_prefix="CONFIDE_", extra="ignore")

    service_name: str = Field(description="identity, consent, ...: names its topic and group")
    database_url: str = Field(description="postgresql+psycopg:// URL of the service's own database")
    kafka_bootstrap: str = "127.0.0.1:19092"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    kek_provider: str = Field(
        default="local-file",
        description="where the key-encryption keys come from: a name registered with "
        "`kek.register_kek_provider`; `local-file` (the default) is the file `kek_file`",
    )
    kek_file: Path = Field(
        default=Path(".stack/keys/service.kek.json"),
        description="the local key-encryption-key file (created on first start)",
    )
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    log_level: str = "INFO"
    max_body_bytes: int = 64 * 1024
    consumer_group: str | None = Field(
        default=None, description="Kafka consumer group; the service name when unset"
    )
    relay_poll_interval: float = 1.0
    consumer_retry_attempts: int = 5
    graceful_shutdown_seconds: float = 15.0
    dependency_check_interval: float = Field(
        default=1.0,
        description="seconds between checks of the database and Kafka; while one fails, "
        "requests answer 503 naming it",
    )
