"""The identity service's history as it was before the toolkit had its own (up to 2026-11): its
revisions created the toolkit's tables beside its own. Kept, frozen, to build the databases
that `upgrade_database` must adopt."""

from alembic import context
from sqlalchemy import create_engine

engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
