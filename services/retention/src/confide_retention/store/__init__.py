"""The retention service's tables, repositories and projections, and every SQL statement of it.

- Erasure cases are streams of the toolkit's event store; `erasure_cases` is their projection
  (status, for the scheduler's and the status's queries), written in the append's transaction.
- `subject_clocks`: per person, the latest time of each fact that starts a retention clock,
  learnt from identity, messaging and billing; `payment_methods` tells when the last card went.
- `expiries`: the schedule, one row per (person, category): due, then emitted (with its
  attempts and the time of the next), then answered by the owner. The scheduler claims due
  rows with `FOR UPDATE SKIP LOCKED`, so replicas never emit the same row twice.
- `legal_holds`: placed and released by compliance (reference data with its history in the
  columns; `LegalHoldPlaced`/`LegalHoldReleased` tell the suite).
- `certificates` and `certificate_signing_keys`: the signed erasure certificates and the keys.

In modules: `tables`; `cases` (erasure cases: repository, projection, and the per-person lock);
`clocks` (the retention clocks, and the payment methods billing told of); `expiry_schedule`;
`holds`; `certificate_records`.
"""

from confide_retention.store.cases import (
    ErasureCases,
    lock_subject,
    open_case_of,
    project_case,
)
from confide_retention.store.certificate_records import (
    StoredCertificate,
    add_certificate,
    certificate,
)
from confide_retention.store.clocks import (
    add_payment_method,
    clocks_of,
    record_clock,
    remove_payment_method,
)
from confide_retention.store.expiry_schedule import (
    Expiry,
    claim_due,
    expiries_of,
    expiry_for_change,
    lock_expiries_of,
    mark_answered,
    mark_emitted,
    move_due,
    schedule,
)
from confide_retention.store.holds import (
    add_hold,
    hold_for_change,
    release_hold,
    standing_holds,
)
from confide_retention.store.tables import (
    certificate_signing_keys,
    certificates,
    erasure_cases,
    expiries,
    legal_holds,
    metadata,
    payment_methods,
    subject_clocks,
)

__all__ = [
    "ErasureCases",
    "Expiry",
    "StoredCertificate",
    "add_certificate",
    "add_hold",
    "add_payment_method",
    "certificate",
    "certificate_signing_keys",
    "certificates",
    "claim_due",
    "clocks_of",
    "erasure_cases",
    "expiries",
    "expiries_of",
    "expiry_for_change",
    "hold_for_change",
    "legal_holds",
    "lock_expiries_of",
    "lock_subject",
    "mark_answered",
    "mark_emitted",
    "metadata",
    "move_due",
    "open_case_of",
    "payment_methods",
    "project_case",
    "record_clock",
    "release_hold",
    "remove_payment_method",
    "schedule",
    "standing_holds",
    "subject_clocks",
]
