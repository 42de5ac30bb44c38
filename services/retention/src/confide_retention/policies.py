"""Retention policies as versioned data: for each category of personal data, how long it is kept
(an ISO 8601 duration), which facts start its clock, and whether a legal obligation keeps it
past a person's erasure request.

The defaults are DESIGN.md's, in `data/policies.json` (its `version` labels the set; each
policy has its own `version`, and `RetentionExpired.policy` names `<category>.v<version>`). An
operator replaces the set with a file of the same shape (`CONFIDE_POLICIES_FILE`) or overrides
single periods (`CONFIDE_POLICY_PERIODS='{"identity.profile": "PT2S"}'`), which is how tests
use seconds. No I/O here but reading the file the settings name.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final, Literal, get_args

from confide_events.vocabulary import DATA_CATEGORIES, DataCategory
from pydantic import BaseModel, ConfigDict, Field

ClockTrigger = Literal["account_closed", "last_message", "last_note", "card_removed", "last_charge"]
"""A fact, learnt from another service's topic, that starts (or restarts) a category's clock:
identity's `AccountClosed`; messaging's `MessageSent` and `SessionNoteRecorded`; billing's
`PaymentMethodRemoved` (when it leaves the person no payment method) and `ChargeSucceeded`."""

CLOCK_TRIGGERS: Final[tuple[ClockTrigger, ...]] = get_args(ClockTrigger)

LegalObligation = Literal["clinical_record", "tax_law"]
"""Why the law keeps a category past an erasure request, until its period ends."""

DEFAULT_POLICIES_FILE: Final = Path(__file__).parent / "data" / "policies.json"

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class InvalidPolicy(ValueError):
    """A policy file or override that cannot be applied (named by what is wrong)."""


@dataclass(frozen=True)
class RetentionPeriod:
    """An ISO 8601 duration (`P7Y`, `P30D`, `PT2S`). Years and months are calendar years and
    months (seven years from 29 Feb ends on 28 Feb, never a day early as 7 x 365 days would);
    the rest is exact time."""

    text: str
    years: int
    months: int
    exact: timedelta

    @classmethod
    def parse(cls, text: str) -> RetentionPeriod:
        found = _DURATION.match(text)
        if found is None:
            raise InvalidPolicy(f"{text!r} is not an ISO 8601 duration such as P30D or PT2S")
        part = {name: value or "0" for name, value in found.groupdict().items()}
        exact = timedelta(
            weeks=int(part["weeks"]),
            days=int(part["days"]),
            hours=int(part["hours"]),
            minutes=int(part["minutes"]),
            seconds=float(Decimal(part["seconds"])),
        )
        return cls(text, int(part["years"]), int(part["months"]), exact)

    def after(self, moment: datetime) -> datetime:
        """The moment this period ends when it starts at `moment`."""
        months = moment.month - 1 + self.months + 12 * self.years
        year, month = moment.year + months // 12, months % 12 + 1
        day = min(moment.day, calendar.monthrange(year, month)[1])
        return moment.replace(year=year, month=month, day=day) + self.exact


@dataclass(frozen=True)
class Policy:
    """How long one category is kept, from which facts, and on what legal ground."""

    category: DataCategory
    version: int
    keep_for: RetentionPeriod
    clock_starts_on: tuple[ClockTrigger, ...]
    waits_for_account_closure: bool
    legal_obligation: LegalObligation | None
    overridden: bool = False
    """Its period was set by the deployment (`CONFIDE_POLICY_PERIODS`), not by the file."""

    @property
    def code(self) -> str:
        """The code `RetentionExpired.policy` carries, e.g. `identity.profile.v1` (and
        `identity.profile.v1.local` when the deployment overrode its period)."""
        return f"{self.category}.v{self.version}" + (".local" if self.overridden else "")

    def due_at(self, clocks: Mapping[ClockTrigger, datetime]) -> datetime | None:
        """When the category expires given the facts seen so far (`clocks`: each trigger's
        latest time): its period after the latest of its triggers, or None while none happened
        (or, for a policy that waits for the account's closure, while the account is open)."""
        if self.waits_for_account_closure and "account_closed" not in clocks:
            return None
        started = [clocks[t] for t in self.clock_starts_on if t in clocks]
        return self.keep_for.after(max(started)) if started else None

    def legal_end(
        self, clocks: Mapping[ClockTrigger, datetime], requested_at: datetime
    ) -> datetime:
        """Until when the law keeps the category after an erasure requested at `requested_at`:
        the request ends the relationship as a closure would, if the account is still open."""
        closed = clocks.get("account_closed", requested_at)
        due = self.due_at({**clocks, "account_closed": min(closed, requested_at)})
        assert due is not None  # account_closed is set just above
        return due


@dataclass(frozen=True)
class PolicySet:
    """The policies in force, one per category, and the label of the set."""

    version: str
    policies: Mapping[DataCategory, Policy]

    def __getitem__(self, category: DataCategory) -> Policy:
        return self.policies[category]

    def starting_on(self, trigger: ClockTrigger) -> list[Policy]:
        """The policies whose clock this trigger starts."""
        return [p for p in self.policies.values() if trigger in p.clock_starts_on]


class _PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: DataCategory
    version: int = Field(ge=1)
    keep_for: str
    clock_starts_on: tuple[ClockTrigger, ...] = Field(min_length=1)
    waits_for_account_closure: bool = False
    legal_obligation: LegalObligation | None = None


class _PolicySetDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z._+-]*$", max_length=32)
    policies: list[_PolicyDocument]


def load_policies(path: Path | None = None, periods: Mapping[str, str] | None = None) -> PolicySet:
    """The policy set of the file at `path` (the defaults when None), with the periods of
    `periods` (category -> ISO 8601 duration) overriding the file's. An override changes the
    set's label (`+local`) and each overridden policy's code (`.local`), so an event names a
    policy that says what it did. Raises `InvalidPolicy`."""
    try:
        document = _PolicySetDocument.model_validate(
            json.loads((path or DEFAULT_POLICIES_FILE).read_text(encoding="utf-8"))
        )
    except (OSError, ValueError) as error:
        raise InvalidPolicy(f"the policy file cannot be read: {error}") from error
    policies: dict[DataCategory, Policy] = {}
    for entry in document.policies:
        if entry.category in policies:
            raise InvalidPolicy(f"two policies for {entry.category}")
        policies[entry.category] = Policy(
            category=entry.category,
            version=entry.version,
            keep_for=RetentionPeriod.parse(entry.keep_for),
            clock_starts_on=entry.clock_starts_on,
            waits_for_account_closure=entry.waits_for_account_closure,
            legal_obligation=entry.legal_obligation,
        )
    missing = [c for c in DATA_CATEGORIES if c not in policies]
    if missing:
        raise InvalidPolicy(f"no policy for {', '.join(missing)}")
    version = document.version
    for category, period in (periods or {}).items():
        if category not in policies:
            raise InvalidPolicy(f"no category {category!r} to override")
        known = policies[category]
        # Events must not name the file's policy for what an override decided.
        policies[known.category] = replace(
            known, keep_for=RetentionPeriod.parse(period), overridden=True
        )
        version = f"{document.version}+local"
    return PolicySet(version, policies)
