"""The retention service's settings, from the environment (prefix CONFIDE_)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from confide_toolkit.settings import ServiceSettings
from pydantic import Field


class RetentionSettings(ServiceSettings):
    """What the retention service needs besides what every service needs."""

    service_name: str = "retention"
    http_port: int = 8005
    policies_file: Path | None = Field(
        default=None,
        description="a JSON policy set replacing the defaults (the shape of data/policies.json)",
    )
    policy_periods: dict[str, str] = Field(
        default_factory=dict,
        description="category -> ISO 8601 duration overriding the policy file's period, e.g. "
        '{"identity.profile": "PT2S"}',
    )
    scheduler_interval: float = Field(
        default=1.0, gt=0, description="seconds between the scheduler's passes"
    )
    scheduler_batch: int = Field(default=100, ge=1, description="expiries emitted per transaction")
    answer_timeout: timedelta = Field(
        default=timedelta(minutes=5),
        gt=timedelta(0),
        description="how long an expiry waits for its owner's answer before it is emitted again",
    )
    fresh_sign_in: timedelta = Field(
        default=timedelta(minutes=5),
        description="how recent a person's sign-in (auth_time) must be to request their erasure",
    )
    events_topic: str | None = Field(
        default=None,
        description="publish retention's events to this topic instead of retention.events: for "
        "tests that must not reach the owners running on the same broker",
    )
