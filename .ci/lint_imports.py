"""The architecture contracts, checked by import-linter (`make lint`), over every service found:
each `services/<name>/src/confide_<name>` package is a service, so a new service is covered
the day it is added, without editing a list. import-linter has no wildcard for root packages,
so this script writes its configuration and runs it."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def services() -> list[str]:
    """The package of every service under services/, by name."""
    return sorted(path.name for path in ROOT.glob("services/*/src/confide_*") if path.is_dir())


def contracts(service_packages: list[str]) -> str:
    """The configuration (TOML) of the contracts between the shared packages and the services."""

    def strings(names: list[str]) -> str:
        return json.dumps(names)

    ours = ["confide_events", "confide_toolkit", "confide_testing", *service_packages]

    return f"""[tool.importlinter]
root_packages = {strings(ours)}

[[tool.importlinter.contracts]]
name = "The event contract imports nothing of ours"
type = "forbidden"
source_modules = ["confide_events"]
forbidden_modules = {strings(["confide_toolkit", "confide_testing", *service_packages])}

[[tool.importlinter.contracts]]
name = "The toolkit never imports a service"
type = "forbidden"
source_modules = ["confide_toolkit"]
forbidden_modules = {strings(["confide_testing", *service_packages])}

[[tool.importlinter.contracts]]
name = "Services never import each other"
type = "independence"
modules = {strings(service_packages)}

[[tool.importlinter.contracts]]
name = "Services run without the test plugin"
type = "forbidden"
source_modules = {strings(service_packages)}
forbidden_modules = ["confide_testing"]
"""


def main() -> int:
    found = services()
    if not found:
        print("no service found under services/*/src/confide_*", file=sys.stderr)
        return 1
    print(f"import contracts over the services: {', '.join(found)}")
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "importlinter.toml"
        config.write_text(contracts(found))
        return lint_imports(config_filename=str(config), no_logo=True)


if __name__ == "__main__":
    raise SystemExit(main())
