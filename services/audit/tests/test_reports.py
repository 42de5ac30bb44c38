"""A person's report (JSON, HTML, PDF) from the trail, and replay: the PDF opens and holds the
person's timeline (read back with poppler's pdftotext); a replay rebuilds the trail beside the
live one while the service serves, switches to it, and the reports are byte-identical before
and after, twice over."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import uuid

import pytest
from confide_audit import store
from confide_audit.replay import Progress, replay

from .conftest import AuditService
from .journeys import Journey
from .test_answers import walk_journey

pytestmark = pytest.mark.integration


async def reports(audit: AuditService, subject_id: uuid.UUID) -> dict[str, bytes]:
    found = {}
    for kind in ("json", "html", "pdf"):
        response = await audit.get(
            f"/v1/subjects/{subject_id}/report", params={"format": kind}, headers=audit.officer
        )
        assert response.status_code == 200, response.text
        found[kind] = response.content
    return found


def pdf_text(pdf: bytes) -> str:
    pdftotext = shutil.which("pdftotext")
    assert pdftotext, "pdftotext (poppler-utils) is needed to read the report back"
    result = subprocess.run(  # noqa: S603 (the PATH's pdftotext, on our own bytes)
        [pdftotext, "-layout", "-", "-"], input=pdf, capture_output=True, check=True
    )
    return result.stdout.decode()


async def test_the_pdf_report_opens_and_holds_the_persons_timeline(audit: AuditService) -> None:
    journey = Journey()
    steps = await walk_journey(audit, journey)
    made = await reports(audit, journey.client)
    assert made["pdf"].startswith(b"%PDF-")
    text = pdf_text(made["pdf"])
    assert str(journey.client) in text
    names = [step.rsplit(".", 1)[-1] for step in steps]
    positions = [text.index(name) for name in dict.fromkeys(names)]
    assert positions == sorted(positions)  # in the order they happened
    assert "FLAGGED" not in text  # the one disclosure was on a valid consent
    assert str(journey.certificate_id) in text

    html = made["html"].decode()
    assert "data:image/png;base64," in html
    assert html.count("<tr><td>") >= len(steps)
    assert str(journey.certificate_id) in made["json"].decode()


async def test_a_report_in_an_unknown_format_is_refused_naming_the_field(
    audit: AuditService,
) -> None:
    response = await audit.get(
        f"/v1/subjects/{uuid.uuid4()}/report", params={"format": "docx"}, headers=audit.officer
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["query.format"]


async def test_replay_while_serving_gives_byte_identical_reports_twice(
    audit: AuditService,
) -> None:
    journey = Journey()
    await walk_journey(audit, journey)
    before = await reports(audit, journey.client)
    async with audit.deps.engine.connect() as conn:
        generation = await store.current_generation(conn)

    progress = io.StringIO()
    for round_ in (1, 2):
        # Live events keep coming while the replay runs: none may be lost or doubled.
        other = Journey()
        live = asyncio.create_task(
            audit.publish_and_keep(audit.topics.messaging, *other.conversation())
        )
        outcome = await replay(
            audit.settings, engine=audit.deps.engine, progress=Progress(progress, every=0)
        )
        await live
        assert (outcome.replaced, outcome.generation) == (generation, generation + 1)
        generation = outcome.generation
        after = await reports(audit, journey.client)
        assert after == before, f"round {round_}"
        timeline = await audit.get(f"/v1/subjects/{other.client}/timeline", headers=audit.officer)
        assert len(timeline.json()["items"]) == 3, f"round {round_}"
    assert "events/s" in progress.getvalue()
    assert "s left" in progress.getvalue()
    chain = await audit.get("/v1/chain", headers=audit.officer)
    assert chain.json()["intact"] is True
    assert [c["state"] for c in chain.json()["chains"]] == ["queries", "current"]
