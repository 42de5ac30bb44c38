"""The billing service's settings, from the environment (prefix CONFIDE_)."""

from __future__ import annotations

from confide_toolkit.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    """What the billing service needs besides what every service needs."""

    service_name: str = "billing"
    http_port: int = 8003
    gateway_timeout_seconds: float = 10.0
    """How long a charge waits for the gateway before answering 503 (outcome unknown: a retry
    with the same Idempotency-Key reconciles it)."""
