"""`python -m confide_toolkit.topics_cli create`: create the suite's topics (idempotent)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from confide_toolkit.topics import ensure_topics, suite_topics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create Confide's Kafka topics.")
    parser.add_argument("command", choices=["create", "list"])
    parser.add_argument("--bootstrap", default=os.environ.get("CONFIDE_KAFKA_BOOTSTRAP"))
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(suite_topics()))
        return 0
    if not args.bootstrap:
        parser.error("no broker: pass --bootstrap or set CONFIDE_KAFKA_BOOTSTRAP")
    created = asyncio.run(ensure_topics(args.bootstrap, suite_topics(), args.partitions))
    print(f"created {len(created)} topic(s): {', '.join(created) or 'none missing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
