"""The erasure case: one aggregate per request to erase a person, rebuilt from its events.

A case plans each category when it opens: a category with no legal obligation expires at once;
one the law keeps (session notes, financial records) is retained until its legal end, and
expires then. It records each expiry emitted for it (the first, then each retry) and each
owner's answer (shredded with the key's id, or nothing held). It is settled once every category
is answered or retained; it then completes, naming its certificate. Compliance may pause an
open case (no expiry of it is emitted while paused) and resume it. The execution log of the
status is the case's own history.

No I/O here: the scheduler, the consumers and the handlers load, decide and save.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID

from confide_events.retention import CategoryOutcome, ErasureOrigin, LegalHoldReason
from confide_events.shredding import ShreddingOutcome
from confide_events.vocabulary import DataCategory
from confide_toolkit.domain_events import DomainEvent
from pydantic import BaseModel, ConfigDict

from confide_retention.policies import LegalObligation

STREAM_TYPE = "erasure_case"

# --- errors ----------------------------------------------------------------------------------


class RetentionError(Exception):
    """A command retention refuses. Messages carry pseudonymous ids only."""

    field: str | None = None


class ErasureCaseNotFound(RetentionError):
    def __init__(self, case_id: UUID) -> None:
        super().__init__(f"There is no erasure request {case_id}.")


class ErasureAlreadyRequested(RetentionError):
    """The person already has an erasure case under way."""

    def __init__(self, case_id: UUID) -> None:
        super().__init__(f"An erasure request for this person is already open: {case_id}.")
        self.case_id = case_id


class ErasureCaseCompleted(RetentionError):
    def __init__(self, case_id: UUID) -> None:
        super().__init__(f"The erasure request {case_id} is complete; it can no longer change.")


class ErasureCaseAlreadyPaused(RetentionError):
    def __init__(self, case_id: UUID) -> None:
        super().__init__(f"The erasure request {case_id} is already paused.")


class ErasureCaseNotPaused(RetentionError):
    def __init__(self, case_id: UUID) -> None:
        super().__init__(f"The erasure request {case_id} is not paused.")


class FreshSignInRequired(RetentionError):
    """Erasure cannot be undone: the person must have signed in moments ago."""

    def __init__(self, max_age_seconds: int) -> None:
        super().__init__(
            f"Erasing your data cannot be undone: sign in again (within the last "
            f"{max_age_seconds} seconds) and repeat the request."
        )
        self.max_age_seconds = max_age_seconds


class SubjectRequired(RetentionError):
    field = "subject_id"

    def __init__(self) -> None:
        super().__init__("Compliance names the person to erase: subject_id is required.")


class LegalHoldNotFound(RetentionError):
    def __init__(self, hold_id: UUID) -> None:
        super().__init__(f"There is no legal hold {hold_id}.")


class LegalHoldAlreadyReleased(RetentionError):
    def __init__(self, hold_id: UUID) -> None:
        super().__init__(f"The legal hold {hold_id} was already released.")


class CertificateNotFound(RetentionError):
    def __init__(self, certificate_id: UUID) -> None:
        super().__init__(f"There is no erasure certificate {certificate_id}.")


# --- the case's events -----------------------------------------------------------------------


class PlannedCategory(BaseModel):
    """How a case treats one category: expire at `due_at` (its opening, or its legal end)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    category: DataCategory
    policy: str
    due_at: datetime
    legal_obligation: LegalObligation | None = None


class ErasureCaseOpened(DomainEvent):
    stream_type = STREAM_TYPE
    event_type = "ErasureCaseOpened"
    schema_version = 1

    case_id: UUID
    subject_id: UUID
    origin: ErasureOrigin
    requested_by: UUID
    requested_at: datetime
    plan: tuple[PlannedCategory, ...]


class ExpiryEmitted(DomainEvent):
    stream_type = STREAM_TYPE
    event_type = "ExpiryEmitted"
    schema_version = 1

    category: DataCategory
    attempt: int
    emitted_at: datetime


class OwnerAnswered(DomainEvent):
    stream_type = STREAM_TYPE
    event_type = "OwnerAnswered"
    schema_version = 1

    category: DataCategory
    outcome: ShreddingOutcome
    key_id: UUID | None
    answered_by: str
    answered_at: datetime


class ErasureCasePaused(DomainEvent):
    stream_type = STREAM_TYPE
    event_type = "ErasureCasePaused"
    schema_version = 1

    paused_by: UUID
    paused_at: datetime


class ErasureCaseResumed(DomainEvent):
    stream_type = STREAM_TYPE
    event_type = "ErasureCaseResumed"
    schema_version = 1

    resumed_by: UUID
    resumed_at: datetime


class ErasureCaseClosed(DomainEvent):
    stream_type = STREAM_TYPE
    event_type = "ErasureCaseClosed"
    schema_version = 1

    certificate_id: UUID
    backups_clear_from: datetime
    completed_at: datetime


CASE_EVENTS: tuple[type[DomainEvent], ...] = (
    ErasureCaseOpened,
    ExpiryEmitted,
    OwnerAnswered,
    ErasureCasePaused,
    ErasureCaseResumed,
    ErasureCaseClosed,
)

# --- the aggregate ---------------------------------------------------------------------------

CaseStatus = Literal["open", "paused", "completed"]

LogStep = Literal[
    "requested", "retained_until", "emitted", "retried", "acknowledged", "nothing_held"
]


@dataclass(frozen=True)
class LogEntry:
    """One step of a category's execution, as privacy-request tools show it."""

    step: LogStep
    at: datetime
    attempt: int | None = None
    key_id: UUID | None = None
    by: str | None = None
    until: datetime | None = None
    ground: LegalObligation | None = None


@dataclass
class CategoryProgress:
    """Where one category of a case stands."""

    plan: PlannedCategory
    retained: bool
    attempts: int = 0
    answer: OwnerAnswered | None = None
    log: list[LogEntry] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        """Answered by its owner, or kept (on its legal ground) until a later expiry."""
        return self.answer is not None or self.retained


_NOBODY = UUID(int=0)


@dataclass
class ErasureCase:
    """One person's erasure request: its plan, its progress, and its history."""

    case_id: UUID
    # Set by the case's first event (`ErasureCaseOpened`), as every field below.
    subject_id: UUID = _NOBODY
    origin: ErasureOrigin = "subject_request"
    requested_by: UUID = _NOBODY
    requested_at: datetime | None = None
    status: CaseStatus = "open"
    categories: dict[DataCategory, CategoryProgress] = field(default_factory=dict)
    certificate_id: UUID | None = None
    backups_clear_from: datetime | None = None
    completed_at: datetime | None = None
    version: int = 0
    pending: list[DomainEvent] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        case_id: UUID,
        subject_id: UUID,
        origin: ErasureOrigin,
        requested_by: UUID,
        now: datetime,
        plan: Sequence[PlannedCategory],
    ) -> ErasureCase:
        """A new case for `subject_id`, planned category by category."""
        case = cls(case_id)
        case._record(
            ErasureCaseOpened(
                case_id=case_id,
                subject_id=subject_id,
                origin=origin,
                requested_by=requested_by,
                requested_at=now,
                plan=tuple(plan),
            )
        )
        return case

    @classmethod
    def replay(cls, case_id: UUID, events: Iterable[DomainEvent], version: int) -> ErasureCase:
        case = cls(case_id)
        for event in events:
            case._apply(event)
        case.version = version
        return case

    # -- decisions ------------------------------------------------------------------------

    def record_emission(self, category: DataCategory, now: datetime) -> None:
        """An expiry of `category` went out for this case (a retry when not the first)."""
        progress = self.categories[category]
        self._record(
            ExpiryEmitted(category=category, attempt=progress.attempts + 1, emitted_at=now)
        )

    def record_answer(
        self,
        category: DataCategory,
        outcome: ShreddingOutcome,
        key_id: UUID | None,
        answered_by: str,
        answered_at: datetime,
    ) -> bool:
        """The owner answered the expiry of `category`; False (nothing recorded) when that
        expiry was already answered or never emitted for this case."""
        progress = self.categories.get(category)
        if progress is None or progress.attempts == 0 or progress.answer is not None:
            return False
        self._record(
            OwnerAnswered(
                category=category,
                outcome=outcome,
                key_id=key_id,
                answered_by=answered_by,
                answered_at=answered_at,
            )
        )
        return True

    def pause(self, by: UUID, now: datetime) -> None:
        if self.status == "completed":
            raise ErasureCaseCompleted(self.case_id)
        if self.status == "paused":
            raise ErasureCaseAlreadyPaused(self.case_id)
        self._record(ErasureCasePaused(paused_by=by, paused_at=now))

    def resume(self, by: UUID, now: datetime) -> None:
        if self.status == "completed":
            raise ErasureCaseCompleted(self.case_id)
        if self.status != "paused":
            raise ErasureCaseNotPaused(self.case_id)
        self._record(ErasureCaseResumed(resumed_by=by, resumed_at=now))

    @property
    def settled(self) -> bool:
        """Every category is answered by its owner or retained on its legal ground."""
        return bool(self.categories) and all(p.settled for p in self.categories.values())

    def close(self, certificate_id: UUID, backups_clear_from: datetime, now: datetime) -> None:
        """Complete the settled case, naming its certificate."""
        if self.status == "completed":
            raise ErasureCaseCompleted(self.case_id)
        if not self.settled:
            raise ValueError("an erasure case closes only once every category is settled")
        self._record(
            ErasureCaseClosed(
                certificate_id=certificate_id,
                backups_clear_from=backups_clear_from,
                completed_at=now,
            )
        )

    def outcomes(self) -> list[CategoryOutcome]:
        """What the case did to each category (for the certificate and `ErasureCompleted`)."""
        found = []
        for category, progress in self.categories.items():
            if progress.answer is not None:
                answer = progress.answer
                found.append(
                    CategoryOutcome(
                        category=category,
                        outcome=answer.outcome,
                        key_id=answer.key_id,
                        shredded_at=answer.answered_at if answer.outcome == "shredded" else None,
                    )
                )
            else:
                found.append(
                    CategoryOutcome(
                        category=category,
                        outcome="retained",
                        retained_until=progress.plan.due_at,
                        retained_on="legal_obligation",
                    )
                )
        return found

    # -- history --------------------------------------------------------------------------

    def _record(self, event: DomainEvent) -> None:
        self._apply(event)
        self.pending.append(event)

    def _apply(self, event: DomainEvent) -> None:
        if isinstance(event, ErasureCaseOpened):
            self.subject_id = event.subject_id
            self.origin = event.origin
            self.requested_by = event.requested_by
            self.requested_at = event.requested_at
            for planned in event.plan:
                retained = planned.legal_obligation is not None and planned.due_at > (
                    event.requested_at
                )
                progress = CategoryProgress(planned, retained)
                progress.log.append(LogEntry("requested", event.requested_at))
                if retained:
                    progress.log.append(
                        LogEntry(
                            "retained_until",
                            event.requested_at,
                            until=planned.due_at,
                            ground=planned.legal_obligation,
                        )
                    )
                self.categories[planned.category] = progress
        elif isinstance(event, ExpiryEmitted):
            progress = self.categories[event.category]
            progress.attempts = event.attempt
            step: LogStep = "emitted" if event.attempt == 1 else "retried"
            progress.log.append(LogEntry(step, event.emitted_at, attempt=event.attempt))
        elif isinstance(event, OwnerAnswered):
            progress = self.categories[event.category]
            progress.answer = event
            progress.retained = False
            progress.log.append(
                LogEntry(
                    "acknowledged" if event.outcome == "shredded" else "nothing_held",
                    event.answered_at,
                    key_id=event.key_id,
                    by=event.answered_by,
                )
            )
        elif isinstance(event, ErasureCasePaused):
            self.status = "paused"
        elif isinstance(event, ErasureCaseResumed):
            self.status = "open"
        elif isinstance(event, ErasureCaseClosed):
            self.status = "completed"
            self.certificate_id = event.certificate_id
            self.backups_clear_from = event.backups_clear_from
            self.completed_at = event.completed_at


@dataclass(frozen=True)
class LegalHold:
    """A legal hold as it stands: every expiry of its person waits while it is not released."""

    hold_id: UUID
    subject_id: UUID
    reason: LegalHoldReason
    placed_by: UUID
    placed_at: datetime
    released_by: UUID | None = None
    released_at: datetime | None = None
