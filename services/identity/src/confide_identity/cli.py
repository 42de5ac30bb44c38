"""Operator commands. Staff (compliance) accounts come from here, never from the public API:

    echo "$PASSWORD" | python -m confide_identity.cli create-staff --email a@b.c --display-name X

The password is read from stdin so it never appears in the process list or shell history.
The account and its UserRegistered event commit together; the running service's relay
publishes the event."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from confide_toolkit.migrations import upgrade_database

from confide_identity.app import MIGRATIONS, build
from confide_identity.domain import IdentityError
from confide_identity.handlers import accounts
from confide_identity.settings import IdentitySettings


async def create_staff(
    settings: IdentitySettings, email: str, display_name: str, password: str
) -> str:
    """Create a compliance account; returns its id."""
    await asyncio.to_thread(upgrade_database, settings.database_url, MIGRATIONS)
    service, deps = build(settings)
    try:
        account_id = await accounts.register_account(
            deps, email, password, display_name, "compliance"
        )
    finally:
        # Nothing was started but the engine; the dead-letter producer is closed unused.
        await service.dead_letters.stop()
        await service.engine.dispose()
    return str(account_id)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m confide_identity.cli")
    commands = parser.add_subparsers(dest="command", required=True)
    staff = commands.add_parser("create-staff", help="create a compliance staff account")
    staff.add_argument("--email", required=True)
    staff.add_argument("--display-name", default="Compliance")
    args = parser.parse_args(argv)

    password = sys.stdin.readline().rstrip("\r\n")
    settings = IdentitySettings()  # from the environment
    try:
        account_id = asyncio.run(create_staff(settings, args.email, args.display_name, password))
    except IdentityError as refusal:
        # Refusals and their field messages name no personal data.
        reasons = "; ".join(message for _, message, _ in getattr(refusal, "field_errors", []))
        print(f"refused: {refusal}{' ' + reasons if reasons else ''}", file=sys.stderr)
        return 2
    print(account_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
