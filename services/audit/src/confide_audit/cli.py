"""`python -m confide_audit [serve|verify|replay]`: serve the audit service (the default), walk
the trail's chains and name the first broken link, or rebuild the trail from offset 0 beside
the one that answers (the service may keep serving)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from confide_toolkit.database import create_engine
from confide_toolkit.migrations import upgrade_database

from confide_audit import handlers
from confide_audit.replay import Progress, replay
from confide_audit.settings import AuditSettings


async def verify(settings: AuditSettings, every_generation: bool) -> int:
    """Print each chain's verdict; exit status 1 when one is broken."""
    engine = create_engine(settings.database_url, pool_size=2)
    try:
        reports = await handlers.verify_chains(engine, every_generation=every_generation)
    finally:
        await engine.dispose()
    for report in reports:
        verdict = "intact" if report.broken is None else f"BROKEN at {report.broken.describe()}"
        print(f"chain {report.generation} ({report.state}): {report.entries} entries, {verdict}")
    return 0 if all(report.broken is None for report in reports) else 1


async def rebuild(settings: AuditSettings) -> int:

    from confide_audit.replay import MIGRATIONS

    await asyncio.to_thread(upgrade_database, settings.database_url, MIGRATIONS)
    outcome = await replay(settings, progress=Progress(sys.stderr))
    print(
        f"generation {outcome.generation} replaced {outcome.replaced}: {outcome.events:,} "
        f"records in {outcome.seconds:.1f} s ({outcome.rate:,.0f} records/s)"
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m confide_audit", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the audit service (the default)")
    check = commands.add_parser("verify", help="walk the chains, name the first broken link")
    check.add_argument(
        "--every-generation", action="store_true", help="also the retired generations"
    )
    commands.add_parser("replay", help="rebuild the trail from offset 0 beside the live one")
    args = parser.parse_args(argv)
    if args.command in (None, "serve"):
        from confide_audit.app import main as serve

        serve()
        return
    settings = AuditSettings()  # from the environment
    if args.command == "verify":
        sys.exit(asyncio.run(verify(settings, args.every_generation)))
    sys.exit(asyncio.run(rebuild(settings)))
