"""The audit service's settings, from the environment (prefix CONFIDE_)."""

from __future__ import annotations

from confide_events.topics import ALL_EVENT_TOPICS
from confide_toolkit.settings import ServiceSettings
from pydantic import Field


class AuditSettings(ServiceSettings):
    """What the audit service needs besides what every service needs."""

    service_name: str = "audit"
    http_port: int = 8006
    trail_topics: list[str] = Field(
        default_factory=lambda: list(ALL_EVENT_TOPICS),
        description="the event topics whose every record the trail keeps (all `*.events`)",
    )
    acknowledgement_hours: float = Field(
        default=24.0,
        description="an expiry its owner has not answered (SubjectDataShredded) after this "
        "long is reported as overdue",
    )
