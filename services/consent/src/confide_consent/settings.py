"""The consent service's settings, from the environment (prefix CONFIDE_)."""

from __future__ import annotations

from confide_toolkit.settings import ServiceSettings


class ConsentSettings(ServiceSettings):
    """What the consent service needs besides what every service needs."""

    service_name: str = "consent"
    http_port: int = 8004
    receipt_controller: str = "Confide"
    """The data controller named in consent receipts."""
    receipt_contact: str = "privacy@confide.dev"
    """The controller's privacy contact printed on receipts (an office, not a person)."""
    receipt_jurisdiction: str = "EU"
