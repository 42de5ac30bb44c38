"""Alembic environment of the toolkit's probe service: the toolkit's history (core), then the
probe's own revisions, which create nothing (the probe keeps no tables of its own)."""

from confide_toolkit.migrations import run_migrations
from sqlalchemy import MetaData

run_migrations(MetaData())
