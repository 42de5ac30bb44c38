"""Operator commands of the consent service:

    python -m confide_consent.cli seed-dev-recipients

registers the development stack's two recipients (a clinic and a hospital, with fixed ids that
clients and demos can name), so that `share_with_provider` works on a fresh stack. Development
data only: no migration seeds them, and a real deployment registers its recipients with
`POST /v1/recipients`. Running it again changes nothing."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from uuid import UUID

from confide_toolkit.clock import Clock, SystemClock
from confide_toolkit.commands import run_command
from confide_toolkit.database import create_engine
from confide_toolkit.migrations import upgrade_database
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_consent import store
from confide_consent.app import MIGRATIONS
from confide_consent.domain import Recipient, new_recipient
from confide_consent.settings import ConsentSettings

NORTHSIDE_CLINIC = UUID("01950000-0000-7000-8000-000000000001")
RIVERSIDE_HOSPITAL = UUID("01950000-0000-7000-8000-000000000002")

DEV_RECIPIENTS = (
    new_recipient(
        NORTHSIDE_CLINIC,
        "Northside Community Health Clinic",
        "healthcare_provider",
        ["share_with_provider"],
    ),
    new_recipient(
        RIVERSIDE_HOSPITAL,
        "Riverside Psychiatric Hospital",
        "healthcare_provider",
        ["share_with_provider"],
    ),
)
"""The recipients of a development stack (those the first migration used to seed everywhere)."""


async def seed_dev_recipients(engine: AsyncEngine, clock: Clock) -> list[Recipient]:
    """Register each of `DEV_RECIPIENTS` not registered yet; returns those it registered."""

    async def work(conn: AsyncConnection) -> list[Recipient]:
        added = []
        for recipient in DEV_RECIPIENTS:
            if await store.find_recipient(conn, recipient.recipient_id) is None:
                await store.add_recipient(conn, recipient, clock.now(), registered_by=None)
                added.append(recipient)
        return added

    return await run_command(engine, work)


async def _seed(settings: ConsentSettings) -> list[Recipient]:
    await asyncio.to_thread(upgrade_database, settings.database_url, MIGRATIONS)
    engine = create_engine(settings.database_url, pool_size=2)
    try:
        return await seed_dev_recipients(engine, SystemClock())
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m confide_consent.cli")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "seed-dev-recipients", help="register the development stack's recipients (idempotent)"
    )
    parser.parse_args(argv)
    added = asyncio.run(_seed(ConsentSettings()))  # settings from the environment
    for recipient in added:
        print(f"registered {recipient.recipient_id} {recipient.name}")
    if not added:
        print("the development recipients are already registered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
