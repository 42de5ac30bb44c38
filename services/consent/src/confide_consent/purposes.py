"""The purposes a person can consent to, as data: each with its versioned policy texts.

A policy version's text never changes once published: a new text is a new version, and the
older ones stay here so that a receipt's `policyUrl` and `policy_hash` can be checked against
the exact words the person saw. The hash is the SHA-256 of the UTF-8 text.

Some purposes are never allowed, whatever the person says (DESIGN: data is never sold or
shared for marketing); they are listed too, so a request for one is refused by name instead of
looking like a typo.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from confide_events.vocabulary import DataCategory


@dataclass(frozen=True)
class PolicyVersion:
    """One published text of a purpose's policy."""

    version: str
    text: str
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", hashlib.sha256(self.text.encode("utf-8")).hexdigest())


@dataclass(frozen=True)
class Purpose:
    """What a consent is for. `policies` are oldest first; the last one is current."""

    code: str
    title: str
    description: str
    requires_recipient: bool
    data_categories: tuple[DataCategory, ...]
    policies: tuple[PolicyVersion, ...]

    @property
    def current_policy(self) -> PolicyVersion:
        return self.policies[-1]

    def policy(self, version: str) -> PolicyVersion | None:
        """The policy text published under `version`, or None if there never was one."""
        return next((p for p in self.policies if p.version == version), None)


SHARE_WITH_PROVIDER: Final = Purpose(
    code="share_with_provider",
    title="Share my records with a healthcare provider",
    description=(
        "Confide sends the chosen categories of your records to one registered healthcare "
        "provider, for your care only."
    ),
    requires_recipient=True,
    data_categories=("identity.profile", "messaging.messages", "messaging.session_notes"),
    policies=(
        PolicyVersion(
            "2025-06",
            "I allow Confide to send the categories of my records I have chosen to the "
            "healthcare provider I have named, for my care. I can withdraw this at any time.",
        ),
        PolicyVersion(
            "2026-01",
            "I allow Confide to send the categories of my records I have chosen to the "
            "healthcare provider I have named, for my care only. The provider accepted "
            "Confide's terms for recipients: it may not pass my records on, sell them or use "
            "them for marketing. Each disclosure is recorded. I can withdraw this consent at "
            "any time, as easily as I gave it; withdrawal stops every later disclosure.",
        ),
    ),
)

RESEARCH: Final = Purpose(
    code="research",
    title="Contribute to research",
    description=(
        "Confide may use the chosen categories of your records, pseudonymised, in research "
        "on online therapy approved by an ethics board."
    ),
    requires_recipient=False,
    data_categories=("messaging.messages", "messaging.session_notes"),
    policies=(
        PolicyVersion(
            "2026-01",
            "I allow Confide to use the categories of my records I have chosen, pseudonymised, "
            "in research on online therapy approved by an ethics board. Nothing that names me "
            "leaves Confide. I can withdraw this consent at any time; records are not used in "
            "new research after I withdraw.",
        ),
    ),
)

PURPOSES: Final[Mapping[str, Purpose]] = MappingProxyType(
    {purpose.code: purpose for purpose in (SHARE_WITH_PROVIDER, RESEARCH)}
)
"""Every purpose a person can consent to, by code."""

NEVER_ALLOWED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "sell_data": "Confide never sells personal data.",
        "sale_of_data": "Confide never sells personal data.",
        "share_for_marketing": "Confide never shares personal data for marketing.",
        "marketing": "Confide never uses or shares personal data for marketing.",
        "advertising": "Confide never uses or shares personal data for advertising.",
        "targeted_advertising": "Confide never uses or shares personal data for advertising.",
    }
)
"""Purposes the platform refuses outright, even with the person's consent, and why."""
