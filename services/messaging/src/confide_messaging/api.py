"""The messaging service's HTTP API (contract: API.md, "messaging"): parse, authorise, call one
handler, answer. The handlers' refusals answer as `problems.PROBLEM_TYPES` declares.

Who may do what:
- a signed-in client: open a conversation with a registered therapist, disclose their own
  records under a consent;
- the two participants of a conversation: read and post its messages (anyone else, compliance
  included, gets 404: a conversation they may not see does not exist for them);
- the client's therapist: record and read session notes about the client (each read audited);
- compliance: conversation metadata (ids, participants, times, counts), never a body;
- the holder of a download token: the disclosure's bundle, once, within 7 days.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the route annotations,
# and the caller dependencies they name are local to `router`.
from datetime import datetime
from typing import Annotated
from uuid import UUID

from confide_events.vocabulary import DataCategory
from confide_toolkit.auth import Caller, CallerDependency, require_role
from confide_toolkit.pagination import IdCursor, Page, PageSize, page_of
from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from confide_messaging import handlers
from confide_messaging.domain import (
    MAX_BODY_CHARACTERS,
    MESSAGING_CATEGORIES,
    ConversationSummary,
    Message,
    SessionNote,
)
from confide_messaging.handlers import Dependencies

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="A key of the sender's choosing: a retried post with the same key answers "
        "the first post's result and stores nothing again.",
    ),
]
Body = Annotated[str, Field(min_length=1, max_length=MAX_BODY_CHARACTERS)]


# --- bodies ----------------------------------------------------------------------------------


class _Body(BaseModel):
    # Unknown fields are refused, so a misspelt field is not silently ignored.
    model_config = ConfigDict(extra="forbid")


class OpenConversationRequest(_Body):
    therapist_id: UUID


class PostRequest(_Body):
    body: Body


class DisclosureRequest(_Body):
    recipient_id: UUID = Field(description="A registered recipient the client consented to.")
    data_categories: list[DataCategory] = Field(
        min_length=1,
        max_length=2,
        description="Categories messaging holds; another's answers 422 not-held-here.",
        # The document lists only what messaging can disclose, so a client sees it up front.
        json_schema_extra={"items": {"enum": list(MESSAGING_CATEGORIES)}},
    )


class DownloadRequest(_Body):
    token: str = Field(min_length=1, max_length=128)


class ConversationOut(BaseModel):
    conversation_id: UUID
    client_id: UUID
    therapist_id: UUID
    started_at: datetime
    closed_at: datetime | None


class ConversationMetadataOut(ConversationOut):
    message_count: int
    note_count: int
    last_message_at: datetime | None


class OpenedOut(BaseModel):
    conversation_id: UUID
    started_at: datetime


class SentOut(BaseModel):
    message_id: UUID
    sent_at: datetime


class MessageOut(BaseModel):
    message_id: UUID
    sender_id: UUID
    body: str | None = Field(description="Null when the message was erased.")
    erased: bool = Field(description="The message's key was shredded: its body is gone.")
    sent_at: datetime


class NoteRecordedOut(BaseModel):
    note_id: UUID
    recorded_at: datetime


class NoteOut(BaseModel):
    note_id: UUID
    conversation_id: UUID
    therapist_id: UUID
    body: str | None = Field(description="Null when the note was erased.")
    erased: bool
    recorded_at: datetime


class DisclosureOut(BaseModel):
    disclosure_id: UUID
    consent_id: UUID
    recipient_id: UUID
    data_categories: list[str]
    disclosed_at: datetime
    expires_at: datetime
    download_token: str = Field(
        description="Give it to the recipient: it fetches the bundle once, before expires_at, "
        "with POST /v1/disclosures/{disclosure_id}/download. It is shown only now."
    )


# --- answers ---------------------------------------------------------------------------------


def _conversation_out(summary: ConversationSummary) -> ConversationOut:
    return ConversationOut(
        conversation_id=summary.conversation_id,
        client_id=summary.client_id,
        therapist_id=summary.therapist_id,
        started_at=summary.started_at,
        closed_at=summary.closed_at,
    )


def _metadata_out(summary: ConversationSummary) -> ConversationMetadataOut:
    return ConversationMetadataOut(
        conversation_id=summary.conversation_id,
        client_id=summary.client_id,
        therapist_id=summary.therapist_id,
        started_at=summary.started_at,
        closed_at=summary.closed_at,
        message_count=summary.message_count,
        note_count=summary.note_count,
        last_message_at=summary.last_message_at,
    )


def _message_out(message: Message) -> MessageOut:
    return MessageOut(
        message_id=message.message_id,
        sender_id=message.sender_id,
        body=message.body,
        erased=message.erased,
        sent_at=message.sent_at,
    )


def _note_out(note: SessionNote) -> NoteOut:
    return NoteOut(
        note_id=note.note_id,
        conversation_id=note.conversation_id,
        therapist_id=note.therapist_id,
        body=note.body,
        erased=note.erased,
        recorded_at=note.recorded_at,
    )


# --- routes ----------------------------------------------------------------------------------


def router(deps: Dependencies, current_caller: CallerDependency) -> APIRouter:
    """The /v1 routes of the messaging service, bound to its dependencies and its token check."""
    api = APIRouter(prefix="/v1", tags=["messaging"])
    signed_in = Annotated[Caller, Depends(current_caller)]
    client = Annotated[Caller, Depends(require_role("client", caller=current_caller))]
    compliance = Annotated[Caller, Depends(require_role("compliance", caller=current_caller))]

    # -- conversations ------------------------------------------------------------------------

    @api.post(
        "/conversations",
        status_code=201,
        summary="Open a conversation with a registered therapist (signed-in client)",
        responses={404: {"description": "No registered therapist with an open account"}},
    )
    async def post_conversation(
        body: OpenConversationRequest, caller: client, response: Response
    ) -> OpenedOut:
        opened = await handlers.open_conversation(deps, caller.subject_id, body.therapist_id)
        response.headers["Location"] = f"/v1/conversations/{opened.conversation_id}/messages"
        return OpenedOut(conversation_id=opened.conversation_id, started_at=opened.started_at)

    @api.get("/conversations", summary="The caller's conversations, newest first")
    async def get_conversations(
        caller: signed_in, limit: PageSize = 50, cursor: IdCursor = None
    ) -> Page[ConversationOut]:
        found = await handlers.list_conversations(
            deps, caller.subject_id, limit=limit + 1, after=cursor
        )
        items, next_cursor = page_of(found, limit, lambda c: c.conversation_id)
        return Page[ConversationOut](
            items=[_conversation_out(c) for c in items], next_cursor=next_cursor
        )

    @api.post(
        "/conversations/{conversation_id}/messages",
        status_code=201,
        summary="Post a message (a participant); idempotent with an Idempotency-Key",
        responses={
            404: {"description": "No such conversation, or not a participant"},
            409: {"description": "The conversation is closed to new messages"},
            413: {"description": "The request is over 64 KiB"},
        },
    )
    async def post_message(
        conversation_id: UUID,
        body: PostRequest,
        caller: signed_in,
        idempotency_key: IdempotencyKey = None,
    ) -> SentOut:
        post = await handlers.post_message(
            deps,
            handlers.PostMessage(
                conversation_id=conversation_id,
                sender_id=caller.subject_id,
                body=body.body,
                idempotency_key=idempotency_key,
            ),
        )
        return SentOut(message_id=post.message_id, sent_at=post.sent_at)

    @api.get(
        "/conversations/{conversation_id}/messages",
        summary="A conversation's messages, newest first (a participant)",
    )
    async def get_messages(
        conversation_id: UUID, caller: signed_in, limit: PageSize = 50, cursor: IdCursor = None
    ) -> Page[MessageOut]:
        found = await handlers.list_messages(
            deps, caller.subject_id, conversation_id, limit=limit + 1, before=cursor
        )
        items, next_cursor = page_of(found, limit, lambda m: m.message_id)
        return Page[MessageOut](items=[_message_out(m) for m in items], next_cursor=next_cursor)

    # -- session notes ------------------------------------------------------------------------

    @api.post(
        "/clients/{client_id}/notes",
        status_code=201,
        summary="Record a session note about a client (the client's therapist)",
    )
    async def post_note(client_id: UUID, body: PostRequest, caller: signed_in) -> NoteRecordedOut:
        note_id, recorded_at = await handlers.record_note(
            deps, caller.subject_id, client_id, body.body
        )
        return NoteRecordedOut(note_id=note_id, recorded_at=recorded_at)

    @api.get(
        "/clients/{client_id}/notes",
        summary="The notes the caller recorded about a client, newest first; every read audited",
    )
    async def get_notes(
        client_id: UUID, caller: signed_in, limit: PageSize = 50, cursor: IdCursor = None
    ) -> Page[NoteOut]:
        found = await handlers.read_notes(
            deps, caller.subject_id, client_id, limit=limit, before=cursor
        )
        items, next_cursor = page_of(found, limit, lambda n: n.note_id)
        return Page[NoteOut](items=[_note_out(n) for n in items], next_cursor=next_cursor)

    # -- compliance ---------------------------------------------------------------------------

    @api.get(
        "/compliance/conversations",
        summary="Conversation metadata (compliance): ids, participants, times, counts; no body",
    )
    async def get_conversation_metadata(
        caller: compliance,
        participant_id: Annotated[UUID | None, Query()] = None,
        limit: PageSize = 50,
        cursor: IdCursor = None,
    ) -> Page[ConversationMetadataOut]:
        found = await handlers.list_conversations(
            deps, participant_id, limit=limit + 1, after=cursor
        )
        items, next_cursor = page_of(found, limit, lambda c: c.conversation_id)
        return Page[ConversationMetadataOut](
            items=[_metadata_out(c) for c in items], next_cursor=next_cursor
        )

    # -- disclosures --------------------------------------------------------------------------

    @api.post(
        "/disclosures",
        status_code=201,
        summary="Disclose the caller's records to a recipient they consented to (client)",
        responses={403: {"description": "No valid consent covers it (consent-required)"}},
    )
    async def post_disclosure(body: DisclosureRequest, caller: client) -> DisclosureOut:
        disclosure = await handlers.disclose(
            deps,
            handlers.Disclose(
                subject_id=caller.subject_id,
                recipient_id=body.recipient_id,
                data_categories=body.data_categories,
            ),
        )
        record = disclosure.record
        return DisclosureOut(
            disclosure_id=record.disclosure_id,
            consent_id=record.consent_id,
            recipient_id=record.recipient_id,
            data_categories=list(record.data_categories),
            disclosed_at=record.disclosed_at,
            expires_at=record.expires_at,
            download_token=disclosure.download_token,
        )

    @api.post(
        "/disclosures/{disclosure_id}/download",
        summary="The disclosure's bundle, once (the holder of its download token)",
        responses={404: {"description": "Wrong token, already downloaded, or expired"}},
    )
    async def download(disclosure_id: UUID, body: DownloadRequest) -> Response:
        bundle = await handlers.download_bundle(deps, disclosure_id, body.token)
        return Response(bundle, media_type="application/json")

    return api
