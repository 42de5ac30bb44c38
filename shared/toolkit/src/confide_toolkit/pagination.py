"""Cursor pagination, as every list endpoint answers it: newest first, `limit` items a page,
and `next_cursor` (the last item's id, a UUIDv7, so ids order as time does) for the next one.

A store is asked for `limit + 1` rows: the extra row only says whether a next page exists, and
is never shown (nor, where reading is audited, counted as read)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

from fastapi import Query
from pydantic import BaseModel, Field

T = TypeVar("T")

# The query parameters of every list endpoint, declared once so each service's contract says
# the same about them.
PageSize = Annotated[int, Query(ge=1, le=200, description="Page size.")]
IdCursor = Annotated[
    UUID | None, Query(description="The `next_cursor` of the previous page; omit for the first.")
]
# A position in an append-only sequence (a PostgreSQL bigint): bounded in the contract, so a
# number past the column's range is a 422 naming `query.cursor`, never a database error.
SequenceCursor = Annotated[
    int | None,
    Query(
        ge=0,
        le=2**63 - 1,
        description="The `next_cursor` of the previous page; omit for the first.",
    ),
]


class Page(BaseModel, Generic[T]):
    """One page of a list endpoint's answer."""

    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


def page_of(
    found: Sequence[T], limit: int, cursor_of: Callable[[T], Any]
) -> tuple[list[T], str | None]:
    """The page among `found` (up to `limit + 1` rows from a store) and the cursor of the next
    page, None when `found` held no more than `limit`."""
    if len(found) > limit:
        return list(found[:limit]), str(cursor_of(found[limit - 1]))
    return list(found), None
