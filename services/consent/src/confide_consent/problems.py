"""How the consent service's refusals answer over HTTP: one `ProblemType` per domain exception,
passed by app.py to `Service.create_app`.

Each answer's type URI ends in the kebab-cased class name (`StalePolicyVersion` →
`stale-policy-version`) and its detail is the exception's message. A 422 names the refused
request field as request validation does (`body.recipient_id`), from the exception's `field`.
The titles are the status phrases this API has always answered with (one, stale policy
version, says more), so clients that show them see no change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confide_toolkit.problem import ProblemType, ProblemTypes

from confide_consent.errors import (
    AccountIsClosed,
    CategoriesNotCovered,
    ConsentNotFound,
    PolicyHashMismatch,
    PurposeNeverAllowed,
    PurposeTakesNoRecipient,
    RecipientAlreadyRegistered,
    RecipientNotApplicable,
    RecipientNotRegisteredForPurpose,
    RecipientRequired,
    StalePolicyVersion,
    UnknownPolicyVersion,
    UnknownPurpose,
    UnknownRecipient,
)


def _current_policy_version(error: StalePolicyVersion) -> Mapping[str, Any]:
    # The client shows the person the text now in force, then grants again with its version.
    return {"current_policy_version": error.current_version}


_NOT_FOUND = ProblemType(404, "Not Found")
_CONFLICT = ProblemType(409, "Conflict")
_REFUSED_FIELD = ProblemType(422, "Unprocessable Content")

PROBLEM_TYPES: ProblemTypes = {
    ConsentNotFound: _NOT_FOUND,
    # The request was understood, but the ledger's state (or the policy in force) refuses it.
    StalePolicyVersion: ProblemType(
        409, "Stale policy version", extensions=_current_policy_version
    ),
    PolicyHashMismatch: _CONFLICT,
    AccountIsClosed: _CONFLICT,
    RecipientAlreadyRegistered: _CONFLICT,
    # A field refers to a recipient that does not exist: 404 naming the field, as a missing
    # path resource answers (Stripe answers a body's dangling reference the same way).
    UnknownRecipient: _NOT_FOUND,
    # A field names something that does not exist or does not fit the purpose.
    PurposeNeverAllowed: _REFUSED_FIELD,
    UnknownPurpose: _REFUSED_FIELD,
    RecipientRequired: _REFUSED_FIELD,
    RecipientNotApplicable: _REFUSED_FIELD,
    RecipientNotRegisteredForPurpose: _REFUSED_FIELD,
    CategoriesNotCovered: _REFUSED_FIELD,
    UnknownPolicyVersion: _REFUSED_FIELD,
    PurposeTakesNoRecipient: _REFUSED_FIELD,
}
"""Every `ConsentError` the domain raises, and how it answers."""
