"""A person's report, from their history in the trail: as JSON, and as a document a person
reads (HTML, PDF through fpdf2) with a plot of their activity over time (matplotlib).

Nothing in a report depends on when or from which generation of the trail it was made (no
"printed at", no trail numbers; the PDF's date is the person's last event), so the same history
gives byte-identical reports, before and after a replay."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from datetime import UTC, date, datetime
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")  # no display: a server draws into PNG bytes

from fpdf import FPDF
from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib import pyplot

from confide_audit.domain import DisclosureCheck, ErasureCase, TrailEvent
from confide_audit.handlers import SubjectHistory

ReportFormat = Literal["json", "html", "pdf"]
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}

templates = Environment(
    loader=PackageLoader("confide_audit", "templates"),
    autoescape=select_autoescape(["html"]),
)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _event(event: TrailEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "occurred_at": _iso(event.occurred_at),
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "data": event.data,
    }


def _disclosure(check: DisclosureCheck) -> dict[str, Any]:
    consent = check.consent
    return {
        **check.disclosure.data,
        "consent_valid": check.valid,
        "flagged": check.flagged,
        "reason": check.reason,
        "consent": None
        if consent is None
        else {
            "consent_id": str(consent.consent_id),
            "purpose": consent.purpose,
            "recipient_id": str(consent.recipient_id) if consent.recipient_id else None,
            "data_categories": list(consent.data_categories),
            "granted_at": _iso(consent.granted_at),
            "revoked_at": _iso(consent.revoked_at),
        },
    }


def _erasure(case: ErasureCase) -> dict[str, Any]:
    return {
        "erasure_case_id": str(case.erasure_case_id),
        "origin": case.origin,
        "requested_at": _iso(case.requested_at),
        "data_categories": list(case.data_categories),
        "expiries": [
            {
                "category": e.category,
                "owner": e.owner,
                "expired_at": _iso(e.expired_at),
                "answer": e.answer,
                "answered_at": _iso(e.answered_at),
                "overdue": e.overdue,
            }
            for e in case.expiries
        ],
        "certificate_id": str(case.certificate_id) if case.certificate_id else None,
        "completed_at": _iso(case.completed_at),
        "outcomes": case.outcomes,
    }


def document(history: SubjectHistory) -> dict[str, Any]:
    """The report's content, as the JSON format gives it."""
    consents = [
        _event(e)
        for e in history.timeline
        if e.event_type in ("confide.consent.ConsentGranted", "confide.consent.ConsentRevoked")
    ]
    return {
        "subject_id": str(history.subject_id),
        "events": len(history.timeline),
        "first_event_at": _iso(history.timeline[0].occurred_at),
        "last_event_at": _iso(history.timeline[-1].occurred_at),
        "timeline": [_event(e) for e in history.timeline],
        "consents": consents,
        "disclosures": [_disclosure(c) for c in history.disclosures],
        "accesses": [_event(e) for e in history.accesses],
        "erasures": [_erasure(c) for c in history.erasures],
        "activity_by_day": activity_by_day(history),
    }


def activity_by_day(history: SubjectHistory) -> dict[str, int]:
    days: Counter[date] = Counter(
        e.occurred_at.astimezone(UTC).date() for e in history.timeline if e.occurred_at
    )
    return {day.isoformat(): days[day] for day in sorted(days)}


def activity_plot(history: SubjectHistory) -> bytes:
    """A bar chart of the person's events per day, as PNG bytes (no timestamp in them)."""
    days = activity_by_day(history)
    figure, axes = pyplot.subplots(figsize=(7, 2.6), dpi=100)
    try:
        axes.bar(list(days), list(days.values()), color="#3b6ea5")
        axes.set_title("Activity over time (events per day)")
        axes.set_ylabel("events")
        axes.tick_params(axis="x", labelrotation=30, labelsize=7)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
        return buffer.getvalue()
    finally:
        pyplot.close(figure)


def render(history: SubjectHistory, kind: ReportFormat) -> bytes:
    """The report in one format, as bytes."""
    content = document(history)
    if kind == "json":
        return json.dumps(content, sort_keys=True, indent=2).encode()
    plot = activity_plot(history)
    if kind == "html":
        return render_html(content, plot).encode()
    return render_pdf(content, plot, history)


def render_html(content: dict[str, Any], plot: bytes) -> str:
    return templates.get_template("report.html").render(
        report=content, plot=base64.b64encode(plot).decode()
    )


def _line(value: Any) -> str:
    # The PDF's core font is Latin-1; a report holds ids, codes and times only.
    return str(value).encode("latin-1", "replace").decode("latin-1")


def render_pdf(content: dict[str, Any], plot: bytes, history: SubjectHistory) -> bytes:
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_title(f"Report of subject {content['subject_id']}")
    pdf.set_creation_date(history.timeline[-1].occurred_at or datetime(1970, 1, 1, tzinfo=UTC))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 9, "Personal data report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    for label, value in (
        ("Subject", content["subject_id"]),
        ("Events", content["events"]),
        ("First event", content["first_event_at"]),
        ("Last event", content["last_event_at"]),
    ):
        pdf.cell(0, 5, _line(f"{label}: {value}"), new_x="LMARGIN", new_y="NEXT")
    pdf.image(io.BytesIO(plot), w=180)

    def heading(title: str) -> None:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 12)
        pdf.cell(0, 7, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=8)

    heading("Timeline")
    for event in content["timeline"]:
        name = (event["event_type"] or "unreadable").rsplit(".", 1)[-1]
        pdf.cell(0, 4.5, _line(f"{event['occurred_at']}  {name}"), new_x="LMARGIN", new_y="NEXT")
    heading("Disclosures")
    for item in content["disclosures"] or [{"none": True}]:
        if "none" in item:
            pdf.cell(0, 4.5, "None.", new_x="LMARGIN", new_y="NEXT")
            continue
        verdict = "FLAGGED" if item["flagged"] else "valid"
        pdf.multi_cell(
            0,
            4.5,
            _line(
                f"{item['disclosed_at']}  to {item['recipient_id']}: "
                f"{', '.join(item['data_categories'])} - consent {verdict} ({item['reason']})"
            ),
            new_x="LMARGIN",
            new_y="NEXT",
        )
    heading("Accesses to records")
    for event in content["accesses"] or [None]:
        text = (
            "None."
            if event is None
            else f"{event['data']['accessed_at']}  {event['data']['category']} read by "
            f"{event['data']['accessor_role']} {event['data']['accessor_id']}"
        )
        pdf.cell(0, 4.5, _line(text), new_x="LMARGIN", new_y="NEXT")
    heading("Erasure")
    for case in content["erasures"] or [None]:
        if case is None:
            pdf.cell(0, 4.5, "No erasure case.", new_x="LMARGIN", new_y="NEXT")
            continue
        certificate = case["certificate_id"] or "not yet issued"
        pdf.multi_cell(
            0,
            4.5,
            _line(
                f"Case {case['erasure_case_id']} requested {case['requested_at']}; "
                f"certificate {certificate}"
            ),
            new_x="LMARGIN",
            new_y="NEXT",
        )
        for expiry in case["expiries"]:
            state = expiry["answer"] or ("OVERDUE" if expiry["overdue"] else "awaiting answer")
            pdf.cell(
                0,
                4.5,
                _line(f"  {expiry['category']} ({expiry['owner']}): {state}"),
                new_x="LMARGIN",
                new_y="NEXT",
            )
    return bytes(pdf.output())
