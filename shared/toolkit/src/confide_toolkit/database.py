"""The service's PostgreSQL database: one async engine, one metadata for the toolkit's own
tables (event store, outbox, inbox, keyring, signing keys), transactions that carry the outbox.

Every service owns exactly one database; the toolkit's tables live in it beside the service's."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Constraint names are deterministic so that Alembic migrations stay stable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

toolkit_metadata = MetaData(naming_convention=NAMING_CONVENTION)
"""The tables every service has; a service's Alembic environment includes them."""


def create_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """An async engine on psycopg 3 for a `postgresql+psycopg://` URL."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, echo=echo
    )


def libpq_url(url: str) -> str:
    """The same URL without the SQLAlchemy driver suffix, for psycopg's own connections."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)
