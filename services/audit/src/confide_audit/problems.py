"""How the audit service's refusals answer over HTTP: one `ProblemType` per domain exception,
passed by app.py to `Service.create_app`."""

from __future__ import annotations

from confide_toolkit.problem import ProblemType, ProblemTypes

from confide_audit.domain import SubjectNotFound

PROBLEM_TYPES: ProblemTypes = {
    SubjectNotFound: ProblemType(404, "Not Found"),
}
"""Every `AuditError` the service raises, and how it answers."""
