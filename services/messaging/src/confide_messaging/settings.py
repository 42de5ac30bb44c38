"""The messaging service's settings, from the environment (prefix CONFIDE_)."""

from __future__ import annotations

from confide_toolkit.settings import ServiceSettings


class MessagingSettings(ServiceSettings):
    """What the messaging service needs besides what every service needs."""

    service_name: str = "messaging"
    http_port: int = 8002
    disclosure_days: int = 7
    """How long a disclosure's sealed bundle can be downloaded, once."""
