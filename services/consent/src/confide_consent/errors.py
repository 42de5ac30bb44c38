"""What the consent ledger refuses, and why: each error names the request field it is about,
so the API can point at it (`problems` maps them to problem types). Messages carry codes and
pseudonymous ids only."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID


class ConsentError(Exception):
    """A command the ledger refuses. Messages carry codes and pseudonymous ids only."""

    field: str | None = None


class PurposeNeverAllowed(ConsentError):
    field = "purpose"

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"The purpose {code!r} is never allowed: {reason}")
        self.code = code


class UnknownPurpose(ConsentError):
    field = "purpose"

    def __init__(self, code: str) -> None:
        super().__init__(f"There is no purpose {code!r}; GET /v1/purposes lists them.")
        self.code = code


class RecipientRequired(ConsentError):
    field = "recipient_id"

    def __init__(self, purpose: str) -> None:
        super().__init__(f"The purpose {purpose!r} needs a recipient_id.")


class RecipientNotApplicable(ConsentError):
    field = "recipient_id"

    def __init__(self, purpose: str) -> None:
        super().__init__(f"The purpose {purpose!r} does not take a recipient.")


class UnknownRecipient(ConsentError):
    field = "recipient_id"

    def __init__(self, recipient_id: UUID) -> None:
        super().__init__(f"There is no registered recipient {recipient_id}.")


class RecipientNotRegisteredForPurpose(ConsentError):
    field = "recipient_id"

    def __init__(self, recipient_id: UUID, purpose: str) -> None:
        super().__init__(f"The recipient {recipient_id} is not registered for {purpose!r}.")


class CategoriesNotCovered(ConsentError):
    field = "data_categories"

    def __init__(self, purpose: str, categories: Sequence[str]) -> None:
        super().__init__(
            f"The purpose {purpose!r} does not cover the categories {', '.join(categories)}."
        )


class UnknownPolicyVersion(ConsentError):
    field = "policy_version"

    def __init__(self, purpose: str, version: str) -> None:
        super().__init__(f"The purpose {purpose!r} never had a policy version {version!r}.")


class StalePolicyVersion(ConsentError):
    """The person saw an older policy text than the one in force: they must read the new one."""

    field = "policy_version"

    def __init__(self, purpose: str, version: str, current: str) -> None:
        super().__init__(
            f"Policy version {version!r} of {purpose!r} is no longer current; "
            f"the current version is {current!r}."
        )
        self.current_version = current


class PolicyHashMismatch(ConsentError):
    field = "policy_hash"

    def __init__(self, purpose: str, version: str) -> None:
        super().__init__(
            f"The policy_hash is not the hash of the text of {purpose!r} version {version!r}."
        )


class ConsentNotFound(ConsentError):
    def __init__(self, consent_id: UUID) -> None:
        super().__init__(f"There is no consent {consent_id}.")


class AccountIsClosed(ConsentError):
    def __init__(self, subject_id: UUID) -> None:
        super().__init__(f"The account of {subject_id} is closed: no new consent is recorded.")


class RecipientAlreadyRegistered(ConsentError):
    field = "name"

    def __init__(self) -> None:
        super().__init__("A recipient with this name is already registered.")


class PurposeTakesNoRecipient(ConsentError):
    field = "purposes"

    def __init__(self, codes: Sequence[str]) -> None:
        super().__init__(
            f"Recipients can be registered only for purposes that name one; not {', '.join(codes)}."
        )
