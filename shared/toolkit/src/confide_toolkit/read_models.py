"""A service's read models, rebuilt from its own event store by an operator while it serves.

Each service declares, in its `app.py`, the read models its event store's projections keep
(`Service.read_model`): a name, the tables the projection writes, the store and the projection.
Only tables whose rows come from the events alone are declared: a rebuild deletes them.

    python -m confide_toolkit.read_models list consent               # what can be rebuilt
    python -m confide_toolkit.read_models rebuild consent            # every read model
    python -m confide_toolkit.read_models rebuild consent --read-model consents

run with the service's own settings (its `CONFIDE_*` environment), beside the running service.
It exits 0 once done, 2 naming the problem for an unknown service or read model, and 2 for
`rebuild` of a service that declares none: audit keeps no event store of its own, and `list
audit` points at `python -m confide_audit replay`, which rebuilds its trail from Kafka
(`Service.read_models_rebuilt_by`).

A rebuild is one transaction: it locks the store's `stored_events` and then the read model's
tables in EXCLUSIVE mode, takes a digest of each table (md5 over its rows as text, in order),
deletes them, replays every stored event through the projection, digests again and commits.
Readers go on reading the old rows until the commit (EXCLUSIVE lets plain reads through; a
`SELECT ... FOR UPDATE` waits like a write), so nobody sees an empty or half-built model.
Appends wait: their projection writes these tables in the append's transaction, so an append
still in flight when the rebuild starts is committed before the lock is granted (and replayed),
and one arriving later waits and is projected onto the rebuilt rows; none is lost or applied
twice. Locking `stored_events` first takes the locks in the order an append does (its event row,
then the projection's tables), so a rebuild never deadlocks with an append that has already
projected into one of several tables.

The report per read model is what an operator wants to see: the events replayed, the rows of
each table before and after, and whether the content is unchanged (equal digests) or changed
(the read model had drifted from the events, and now follows them again).

The digest reads a whole table in one query: fine for the sizes a service's read model has here;
a table of many millions of rows wants a window in the maintenance schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Table, Text, cast, func, literal, select, text
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_toolkit.event_store import EventStore, ReadModelUpdate, stored_events

if TYPE_CHECKING:
    from confide_toolkit.service import Service


@dataclass(frozen=True)
class ReadModel:
    """A read model a service declared: its tables are written by `projection` alone, for
    each event `store` appends, and can be rebuilt from the store at any time."""

    name: str
    tables: tuple[Table, ...]
    store: EventStore
    projection: ReadModelUpdate


@dataclass(frozen=True)
class TableState:
    """A table's rows, counted, and an md5 digest of their content."""

    rows: int
    digest: str


@dataclass(frozen=True)
class Rebuilt:
    """What one rebuild did, table by table."""

    name: str
    events: int
    before: dict[str, TableState]
    after: dict[str, TableState]

    @property
    def changed_tables(self) -> list[str]:
        return [name for name in self.before if self.before[name] != self.after[name]]

    @property
    def unchanged(self) -> bool:
        return not self.changed_tables

    def report(self) -> str:
        rows = ", ".join(
            f"{name} {self.before[name].rows} -> {self.after[name].rows} rows"
            for name in self.before
        )
        verdict = (
            "unchanged"
            if self.unchanged
            else f"changed ({', '.join(self.changed_tables)} differed from the events)"
        )
        return f"{self.name}: {self.events} events replayed; {rows}; {verdict}"


def _quoted(conn: AsyncConnection, table: Table) -> str:
    return conn.dialect.identifier_preparer.format_table(table)


async def _state(conn: AsyncConnection, table: Table) -> TableState:
    # A row as text is its every column; ordering by it makes the digest independent of the
    # physical order the rows happen to be stored in.
    row = table.alias("_row")
    lines = select(cast(row.table_valued(), Text).label("line")).subquery("lines")
    ordered = aggregate_order_by(literal("\n"), lines.c.line)
    digest = func.md5(func.coalesce(func.string_agg(lines.c.line, ordered), ""))
    counted = (await conn.execute(select(func.count(), digest).select_from(lines))).one()
    return TableState(rows=int(counted[0]), digest=str(counted[1]))


async def rebuild_read_model(engine: AsyncEngine, model: ReadModel) -> Rebuilt:
    """Rebuild one read model from every stored event, in one transaction (see the module)."""
    async with engine.begin() as conn:
        locked = ", ".join(_quoted(conn, t) for t in (stored_events, *model.tables))
        await conn.execute(text(f"LOCK TABLE {locked} IN EXCLUSIVE MODE"))
        before = {t.name: await _state(conn, t) for t in model.tables}
        # Children first (the reverse of the declared order), should one reference another.
        for table in reversed(model.tables):
            await conn.execute(table.delete())
        events = await model.store.rebuild(conn, model.projection)
        after = {t.name: await _state(conn, t) for t in model.tables}
    return Rebuilt(name=model.name, events=events, before=before, after=after)


class UnknownName(Exception):
    """An unknown service or read model: said plainly, and the command exits 2."""


def _service_of(name: str) -> Service:
    """The named service as its application builds it, from its own settings (environment)."""
    try:
        app_module = importlib.import_module(f"confide_{name}.app")
    except ModuleNotFoundError as error:
        raise UnknownName(f"unknown service {name!r}: no module confide_{name}.app") from error
    service: Service = app_module.create_app().state.service
    return service


def _chosen(service: Service, only: str | None) -> list[ReadModel]:
    models = service.read_models()
    if only is None:
        return list(models.values())
    if only not in models:
        known = ", ".join(models) or "none"
        raise UnknownName(f"{service.name} has no read model {only!r} (it has: {known})")
    return [models[only]]


def _none_declared(service: Service) -> str:
    elsewhere = service.read_models_rebuilt_by
    if elsewhere:
        return f"{service.name} has no event store of its own to rebuild from: {elsewhere}"
    return f"{service.name} declares no read model"


async def _run(command: str, name: str, only: str | None) -> int:
    try:
        service = _service_of(name)
    except UnknownName as error:
        print(error, file=sys.stderr)
        return 2
    try:
        if not service.read_models():
            print(_none_declared(service), file=sys.stdout if command == "list" else sys.stderr)
            return 0 if command == "list" else 2
        try:
            models = _chosen(service, only)
        except UnknownName as error:
            print(error, file=sys.stderr)
            return 2
        if command == "list":
            for model in models:
                tables = ", ".join(t.name for t in model.tables)
                print(f"{model.name}: tables {tables}")
            return 0
        for model in models:
            print((await rebuild_read_model(service.engine, model)).report(), flush=True)
        return 0
    finally:
        await service.engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m confide_toolkit.read_models",
        description="List or rebuild a service's read models from its own event store, with "
        "its own settings, while it serves.",
    )
    parser.add_argument("command", choices=["list", "rebuild"])
    parser.add_argument("service", help="the service: identity, messaging, billing, consent...")
    parser.add_argument(
        "--read-model", dest="read_model", help="only this read model (default: every one)"
    )
    args = parser.parse_args(argv)
    return asyncio.run(_run(args.command, args.service, args.read_model))


if __name__ == "__main__":
    sys.exit(main())
