"""The compliance console: a few read-only, server-rendered pages (find a person, their
timeline, open erasure cases, flagged disclosures, the chain's status) for compliance officers
only, over the same handlers as the API, so each page viewed is recorded in the trail too.

The access token comes from the `Authorization` header or, for a browser, from the
`confide_console` cookie, which the sign-in page sets from the URL's fragment (never sent to a
server, so it stays out of logs)."""

from typing import Annotated
from uuid import UUID

from confide_toolkit.auth import Caller, TokenVerifier
from confide_toolkit.problem import Problem
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from confide_audit import api, handlers, report
from confide_audit.domain import SubjectNotFound
from confide_audit.handlers import Dependencies

COOKIE = "confide_console"


class ConsoleRefused(Exception):
    """A console page asked without a valid compliance officer's token."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _page(name: str, status: int = 200, **values: object) -> HTMLResponse:
    html = report.templates.get_template(f"console/{name}.html").render(**values)
    return HTMLResponse(html, status_code=status)


def router(deps: Dependencies, verifier: TokenVerifier) -> APIRouter:
    """The console's pages under /console."""
    pages = APIRouter(prefix="/console", include_in_schema=False)

    async def officer(request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else None
        token = token or request.cookies.get(COOKIE)
        if not token:
            raise ConsoleRefused(401, "Sign in with a compliance officer's token.")
        try:
            caller = await verifier.verify(token)
        except Problem as refused:
            raise ConsoleRefused(401, "Your token is not valid any more; sign in again.") from (
                refused
            )
        if caller.role != "compliance":
            raise ConsoleRefused(403, "Only compliance officers may use the audit console.")
        return caller

    async def guarded(request: Request) -> Caller | HTMLResponse:
        try:
            return await officer(request)
        except ConsoleRefused as refused:
            return _page("refused", refused.status, message=str(refused))

    Officer = Annotated[Caller | HTMLResponse, Depends(guarded)]

    @pages.get("/sign-in")
    async def sign_in() -> HTMLResponse:
        return _page("sign_in")

    @pages.get("")
    async def home(caller: Officer, q: Annotated[str, Query(max_length=36)] = "") -> Response:
        if isinstance(caller, HTMLResponse):
            return caller
        found = await handlers.find_subjects(deps, caller, q.strip()) if q.strip() else None
        return _page("home", q=q, found=found)

    @pages.get("/subjects/{subject_id}")
    async def subject(subject_id: UUID, caller: Officer) -> Response:
        if isinstance(caller, HTMLResponse):
            return caller
        try:
            history = await handlers.subject_history(deps, caller, subject_id)
        except SubjectNotFound as missing:
            return _page("refused", 404, message=str(missing))
        return _page("subject", report=report.document(history))

    @pages.get("/subjects/{subject_id}/report.{kind}")
    async def subject_report(subject_id: UUID, kind: str, caller: Officer) -> Response:
        if isinstance(caller, HTMLResponse):
            return caller
        if kind not in ("html", "pdf", "json"):
            return _page("refused", 404, message="No such report format.")
        history = await handlers.subject_history(deps, caller, subject_id)
        return Response(report.render(history, kind), media_type=report.MEDIA_TYPES[kind])  # type: ignore[arg-type]

    @pages.get("/erasures")
    async def open_erasures(caller: Officer) -> Response:
        if isinstance(caller, HTMLResponse):
            return caller
        cases = await handlers.erasures(deps, caller, subject_id=None, open_only=True)
        return _page("erasures", cases=[api.erasure_out(c) for c in cases])

    @pages.get("/disclosures")
    async def flagged_disclosures(caller: Officer) -> Response:
        if isinstance(caller, HTMLResponse):
            return caller
        checks = await handlers.disclosures(
            deps, caller, subject_id=None, flagged_only=True, after=None, limit=200
        )
        return _page("disclosures", disclosures=[api.disclosure_out(c) for c in checks])

    @pages.get("/chain")
    async def chain(caller: Officer) -> Response:
        if isinstance(caller, HTMLResponse):
            return caller
        return _page("chain", chains=api.chains_out(await handlers.chain_status(deps, caller)))

    return pages
