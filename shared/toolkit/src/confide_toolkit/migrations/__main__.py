"""`python -m confide_toolkit.migrations <service migrations/> "message" --database-url ...`:
autogenerate a service's next revision against an empty scratch database."""

import argparse
from pathlib import Path

from confide_toolkit.migrations import make_revision

parser = argparse.ArgumentParser(description="Autogenerate a service's next migration.")
parser.add_argument("script_location", type=Path, help="the service's migrations/ folder")
parser.add_argument("message")
parser.add_argument("--database-url", required=True, help="an empty scratch database")
args = parser.parse_args()
make_revision(args.database_url, args.script_location, args.message)
