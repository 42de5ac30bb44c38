"""A service's key-encryption keys on their schedule (`kek.KekSchedule`): which versions are
live and when each dies, rotation with the re-wrap of every data key, and the destruction of
versions whose backups have aged out.

The operator command, run with the service's own settings (its environment):

    python -m confide_toolkit.keys status            # versions, when each dies, what they wrap
    python -m confide_toolkit.keys rotate            # a new version now, every data key onto it
    python -m confide_toolkit.keys retire-expired    # destroy the versions past their death
    python -m confide_toolkit.keys maintain          # rotate if due, re-wrap, retire-expired

`maintain` is what a schedule runs (a daily timer, a Kubernetes CronJob); it does only what is
due, so it can run as often as wanted, from several hosts at once. Each command prints the
status afterwards (`--json` for a machine-readable one).

A version is destroyed only when nothing in the database is wrapped under it any more: every
table with a `kek_version` column is counted, not only the keyring's `data_keys` (identity
wraps its signing keys and secrets with the same KEKs), and the re-wrap moves those rows too
when the table has one `wrapped_*` column beside it. A version still holding rows past its
death is reported as blocked and kept: losing live data is worse than a late destruction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import column, func, select, text, update
from sqlalchemy import table as sql_table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_toolkit.clock import Clock, SystemClock
from confide_toolkit.database import create_engine
from confide_toolkit.kek import (
    KekSchedule,
    KekVersion,
    KeyEncryptionKeys,
    backups_clear_from,
    keks_from_settings,
)
from confide_toolkit.keyring import Keyring, data_keys
from confide_toolkit.settings import ServiceSettings


class ScheduledKeks(KeyEncryptionKeys, Protocol):
    """A provider whose versions carry their dates, so a schedule can run them (`LocalKeyFile`)."""

    def lifecycle(self) -> list[KekVersion]: ...

    def rotate(self, *, if_made_by: datetime | None = None) -> int: ...

    def retire(self, version: int) -> None: ...


@dataclass(frozen=True)
class VersionStatus:
    """One version: its dates, when it dies, and how many rows each table wraps under it."""

    version: int
    current: bool
    created_at: datetime | None
    superseded_at: datetime | None
    dies_at: datetime | None
    wraps: dict[str, int]

    @property
    def wrapped(self) -> int:
        return sum(self.wraps.values())

    def state(self, now: datetime) -> str:
        if self.current:
            return "current"
        if self.dies_at is not None and self.dies_at <= now:
            return "blocked" if self.wrapped else "expired"
        return "superseded"

    def as_json(self, now: datetime) -> dict[str, Any]:
        def stamp(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "version": self.version,
            "state": self.state(now),
            "created_at": stamp(self.created_at),
            "superseded_at": stamp(self.superseded_at),
            "dies_at": stamp(self.dies_at),
            "wraps": self.wraps,
        }


@dataclass
class Maintenance:
    """What one `KekLifecycle.maintain` did."""

    rotated_to: int | None = None
    rewrapped: int = 0
    retired: list[int] = field(default_factory=list)
    blocked: dict[int, dict[str, int]] = field(default_factory=dict)


async def _wrapping_tables(conn: AsyncConnection) -> dict[str, list[str]]:
    """Every table of the schema with a `kek_version` column, with its `wrapped_*` columns."""
    rows = await conn.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
            " AND (column_name = 'kek_version' OR column_name LIKE 'wrapped%')"
            " ORDER BY table_name, column_name"
        )
    )
    columns: dict[str, list[str]] = {}
    for table_name, column_name in rows:
        columns.setdefault(table_name, []).append(column_name)
    return {
        table_name: [c for c in names if c != "kek_version"]
        for table_name, names in columns.items()
        if "kek_version" in names
    }


async def rewrap_other_tables(engine: AsyncEngine, keks: KeyEncryptionKeys) -> int:
    """Re-wraps, under the current version, what a service wraps with its KEKs outside the
    keyring (identity's signing keys and secrets): every row of a table with a `kek_version`
    column and exactly one `wrapped_*` column. Each row is moved only if it still holds the
    bytes read, so a concurrent writer wins. Returns how many rows moved."""
    target = keks.current_version
    moved = 0
    async with engine.connect() as conn:
        tables = await _wrapping_tables(conn)
        for name, wrapped_columns in tables.items():
            if name == data_keys.name or len(wrapped_columns) != 1:
                continue
            wrapped = sql_table(name, column("kek_version"), column(wrapped_columns[0]))
            version_column, bytes_column = wrapped.c.kek_version, wrapped.c[wrapped_columns[0]]
            rows = (
                await conn.execute(
                    select(version_column, bytes_column).where(version_column != target)
                )
            ).all()
            for version, old in rows:
                new_version, new = keks.wrap(keks.unwrap(version, bytes(old)))
                result = await conn.execute(
                    update(wrapped)
                    .where(version_column == version, bytes_column == old)
                    .values({version_column: new_version, bytes_column: new})
                )
                moved += result.rowcount
            await conn.commit()
    return moved


async def wrapped_counts(engine: AsyncEngine) -> dict[int, dict[str, int]]:
    """Rows per KEK version and table, over every table of the schema with a `kek_version`."""
    counts: dict[int, dict[str, int]] = {}
    async with engine.connect() as conn:
        tables = (
            await conn.scalars(
                text(
                    "SELECT table_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND column_name = 'kek_version'"
                    " ORDER BY table_name"
                )
            )
        ).all()
        for table in tables:
            wrapped = sql_table(table, column("kek_version"))
            rows = await conn.execute(
                select(wrapped.c.kek_version, func.count()).group_by(wrapped.c.kek_version)
            )
            for version, n in rows:
                counts.setdefault(version, {})[table] = n
    return counts


class KekLifecycle:
    """Runs one service's KEK versions on `schedule` against its own database."""

    def __init__(
        self,
        keks: ScheduledKeks,
        keyring: Keyring,
        engine: AsyncEngine,
        schedule: KekSchedule,
        clock: Clock | None = None,
    ) -> None:
        self.keks = keks
        self.keyring = keyring
        self.engine = engine
        self.schedule = schedule
        self.clock: Clock = clock or SystemClock()

    async def status(self) -> list[VersionStatus]:
        """Every version that still exists, oldest first."""
        now = self.clock.now()
        counts = await wrapped_counts(self.engine)
        return [
            VersionStatus(
                version=v.version,
                current=v.current,
                created_at=v.created_at,
                superseded_at=v.superseded_at,
                dies_at=self.schedule.dies_at(v, now),
                wraps=counts.get(v.version, {}),
            )
            for v in self.keks.lifecycle()
        ]

    async def rotate(self, *, only_if_due: bool = False) -> int | None:
        """A new current version (only if the current one served its period, with
        `only_if_due`), then every data key re-wrapped under it; the new version or None."""
        rotated_to = self._new_version(only_if_due=only_if_due)
        await self.rewrap()
        return rotated_to

    def _new_version(self, *, only_if_due: bool) -> int | None:
        now = self.clock.now()
        before = self.keks.current_version
        cutoff = now - self.schedule.rotation_period if only_if_due else None
        current = self.keks.rotate(if_made_by=cutoff) if only_if_due else self.keks.rotate()
        return current if current != before else None

    async def rewrap(self) -> int:
        """Every data key, and every other row wrapped by the KEKs (`rewrap_other_tables`),
        not yet under the current version moved onto it."""
        async with self.engine.connect() as conn:
            moved = await self.keyring.rewrap_all(conn)
        return moved + await rewrap_other_tables(self.engine, self.keks)

    async def retire_expired(self) -> tuple[list[int], dict[int, dict[str, int]]]:
        """Destroy every superseded version past its death that wraps nothing; returns those
        destroyed and those kept because rows are still wrapped under them."""
        await self.rewrap()
        return await self._retire_unused()

    async def _retire_unused(self) -> tuple[list[int], dict[int, dict[str, int]]]:
        now = self.clock.now()
        retired: list[int] = []
        blocked: dict[int, dict[str, int]] = {}
        for version in await self.status():
            if version.current or version.dies_at is None or version.dies_at > now:
                continue
            if version.wrapped:
                blocked[version.version] = version.wraps
                continue
            self.keks.retire(version.version)
            retired.append(version.version)
        return retired, blocked

    async def maintain(self) -> Maintenance:
        """What a schedule runs: rotate if due, re-wrap, destroy the expired versions; one
        re-wrap pass for the three (each reads every wrapped row, every interval)."""
        report = Maintenance()
        report.rotated_to = self._new_version(only_if_due=True)
        report.rewrapped = await self.rewrap()
        report.retired, report.blocked = await self._retire_unused()
        return report

    def backups_clear_from(self, erased_at: datetime) -> datetime:
        """From when no backup of this service can unwrap a key shredded at `erased_at`: when
        the version current then dies (the schedule's bound when the file cannot say)."""
        versions = [v for v in self.keks.lifecycle() if v.created_at is not None]
        then = [v for v in versions if v.created_at is not None and v.created_at <= erased_at]
        if not then:
            return backups_clear_from(erased_at, self.schedule)
        dies = self.schedule.dies_at(then[-1], self.clock.now())
        return dies if dies is not None else backups_clear_from(erased_at, self.schedule)


def lifecycle_from_settings(
    settings: ServiceSettings, schedule: KekSchedule, clock: Clock | None = None
) -> KekLifecycle:
    """The lifecycle of the keys the settings choose; refuses a provider without dates."""
    keks = keks_from_settings(settings)
    if not (hasattr(keks, "lifecycle") and hasattr(keks, "retire")):
        raise SystemExit(
            f"CONFIDE_KEK_PROVIDER={settings.kek_provider!r} keeps no version dates: "
            "rotate and retire its keys with the provider's own tools"
        )
    scheduled: ScheduledKeks = keks  # type: ignore[assignment]
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url, pool_size=2)
    keyring = Keyring(settings.service_name, scheduled, clock)
    return KekLifecycle(scheduled, keyring, engine, schedule, clock)


def render(lifecycle: KekLifecycle, versions: Sequence[VersionStatus], service: str) -> str:
    now = lifecycle.clock.now()
    schedule = lifecycle.schedule

    def day(value: datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M UTC") if value else "unknown"

    lines = [
        f"KEK versions of {service}: rotated every {schedule.rotation_period}, "
        f"destroyed {schedule.backup_retention} after being replaced (backup retention)",
        f"{'version':>7}  {'state':<10}  {'made':<20}  {'replaced':<20}  {'dies':<20}  wraps",
    ]
    for v in versions:
        replaced = day(v.superseded_at)
        if v.current:
            due = v.created_at + schedule.rotation_period if v.created_at else now
            replaced = f"due {day(max(due, now))}"
        wraps = ", ".join(f"{t} {n}" for t, n in sorted(v.wraps.items())) or "nothing"
        lines.append(
            f"{v.version:>7}  {v.state(now):<10}  {day(v.created_at):<20}  "
            f"{replaced:<20}  {day(v.dies_at):<20}  {wraps}"
        )
    return "\n".join(lines)


async def _run(command: str, as_json: bool) -> int:
    settings = ServiceSettings()  # the service's own environment
    lifecycle = lifecycle_from_settings(settings, KekSchedule())
    try:
        outcome: dict[str, Any] = {}
        if command == "rotate":
            outcome["rotated_to"] = await lifecycle.rotate()
        elif command == "retire-expired":
            retired, blocked = await lifecycle.retire_expired()
            outcome.update(retired=retired, blocked=blocked)
        elif command == "maintain":
            report = await lifecycle.maintain()
            outcome.update(
                rotated_to=report.rotated_to,
                rewrapped=report.rewrapped,
                retired=report.retired,
                blocked=report.blocked,
            )
        versions = await lifecycle.status()
        now = lifecycle.clock.now()
        if as_json:
            document = {**outcome, "versions": [v.as_json(now) for v in versions]}
            print(json.dumps(document, indent=2))
        else:
            for name, value in outcome.items():
                print(f"{name}: {value}")
            print(render(lifecycle, versions, settings.service_name))
        blocked_now = [v.version for v in versions if v.state(now) == "blocked"]
        if blocked_now:
            print(
                f"versions {blocked_now} are past their death but still wrap rows: re-wrap "
                "them before they can be destroyed",
                file=sys.stderr,
            )
            return 2
        return 0
    finally:
        await lifecycle.engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m confide_toolkit.keys",
        description="A service's key-encryption keys: which versions are live and when each "
        "dies; rotation and destruction on the schedule (CONFIDE_KEK_ROTATION_PERIOD, "
        "CONFIDE_KEK_BACKUP_RETENTION). Reads the service's settings from the environment.",
    )
    parser.add_argument("command", choices=["status", "rotate", "retire-expired", "maintain"])
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    arguments = parser.parse_args(argv)
    return asyncio.run(_run(arguments.command, arguments.json))


if __name__ == "__main__":
    sys.exit(main())
