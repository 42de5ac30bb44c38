"""Identity's settings, from the environment (prefix CONFIDE_, like every service)."""

from __future__ import annotations

from confide_toolkit.settings import ServiceSettings
from pydantic import Field


class IdentitySettings(ServiceSettings):
    """What identity needs beyond what every service needs. Times are in seconds."""

    service_name: str = "identity"
    http_port: int = 8001

    access_token_ttl_seconds: int = Field(default=600, ge=30, le=3600)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    """A session (refresh-token family) ends this long after sign-in, however often refreshed."""

    # Argon2id: the OWASP minimum is m=19 MiB, t=2, p=1; raising any of them makes the next
    # successful sign-in rehash the password.
    argon2_memory_kib: int = Field(default=19 * 1024, ge=19 * 1024)
    argon2_iterations: int = Field(default=2, ge=2)
    argon2_lanes: int = Field(default=1, ge=1)
    argon2_max_concurrency: int = Field(default=4, ge=1)
    """Hashes computed at once; each holds argon2_memory_kib, so this bounds memory under load."""

    account_failure_limit: int = Field(default=5, ge=1)
    """Failed sign-ins on one email within the window that lock it for the cool-down."""
    address_failure_limit: int = Field(default=20, ge=1)
    """Failed sign-ins from one client address within the window before it gets 429s."""
    failure_window_seconds: int = Field(default=15 * 60, ge=1)
    lockout_seconds: int = Field(default=15 * 60, ge=1)

    signing_key_rotation_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    """How long one signing key signs before its successor takes over."""
    signing_key_publish_ahead_seconds: int = Field(default=24 * 3600, ge=1)
    """A successor is published this long before it starts signing, so every service has
    learnt it from identity.events before the first token it signs arrives."""
    signing_key_wait_seconds: float = Field(default=30.0, gt=0)
    """At first start, how long sign-in waits for the first key to come back from Kafka."""
