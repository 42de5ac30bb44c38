"""JSON Schemas of every event version, generated from the models and committed.

    python -m confide_events.schemas write   # regenerate shared/events/schemas/
    python -m confide_events.schemas check   # fail if they are stale

One file per (type, version): `schemas/<type>.v<N>.json`, with sorted keys so
that it is stable and diffs read well. `write` refuses to overwrite a committed
schema with one that is not backward compatible: change the model back, or add
a new version of the event with an upcaster.
"""

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from confide_events.base import IntegrationEvent
from confide_events.compatibility import find_incompatibilities
from confide_events.envelope import dataschema_uri
from confide_events.registry import REGISTRY, EventKey

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

DEFAULT_SCHEMA_DIR: Final = Path(__file__).resolve().parents[2] / "schemas"
"""`shared/events/schemas/` in the workspace."""

REGENERATE_COMMAND: Final = "uv run python -m confide_events.schemas write"


def schema_filename(event_type: str, schema_version: int) -> str:
    """The file name of the committed schema of one version of an event type."""
    return f"{event_type}.v{schema_version}.json"


def event_schema(event_class: type[IntegrationEvent]) -> dict[str, Any]:
    """The JSON Schema of an event's `data`, identified by its `dataschema` URI."""
    schema = event_class.model_json_schema(mode="validation")
    schema["$schema"] = SCHEMA_DIALECT
    schema["$id"] = dataschema_uri(event_class.event_type, event_class.schema_version)
    return schema


def render(schema: Mapping[str, Any]) -> str:
    """The committed text of a schema: indented, sorted keys, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated_schemas(
    models: Mapping[EventKey, type[IntegrationEvent]] | None = None,
) -> dict[str, str]:
    """File name -> text of the schema of every registered event version."""
    models = REGISTRY.models if models is None else models
    return {
        schema_filename(event_type, version): render(event_schema(event_class))
        for (event_type, version), event_class in sorted(models.items())
    }


def committed_schemas(directory: Path = DEFAULT_SCHEMA_DIR) -> dict[str, str]:
    """File name -> text of every schema committed in `directory`."""
    return {path.name: path.read_text("utf-8") for path in sorted(directory.glob("*.json"))}


def check(directory: Path = DEFAULT_SCHEMA_DIR) -> list[str]:
    """Every difference between the committed schemas and the models; empty when in step."""
    generated, committed = generated_schemas(), committed_schemas(directory)
    problems = []
    for name in sorted(generated.keys() - committed.keys()):
        problems.append(f"{name}: not committed; run `{REGENERATE_COMMAND}`")
    for name in sorted(committed.keys() - generated.keys()):
        problems.append(f"{name}: committed but no registered model has this type and version")
    for name in sorted(generated.keys() & committed.keys()):
        if generated[name] != committed[name]:
            breaks = find_incompatibilities(
                json.loads(committed[name]), json.loads(generated[name])
            )
            if breaks:
                problems.append(f"{name}: incompatible change: {'; '.join(breaks)}")
            else:
                problems.append(f"{name}: stale; run `{REGENERATE_COMMAND}`")
    return problems


def write(directory: Path = DEFAULT_SCHEMA_DIR) -> list[str]:
    """Write the schema of every registered event version into `directory`.

    Returns the refusals: schemas left untouched because the new one is not
    backward compatible with the committed one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    refusals = []
    for name, text in generated_schemas().items():
        path = directory / name
        if path.exists():
            committed = path.read_text("utf-8")
            if committed == text:
                continue
            breaks = find_incompatibilities(json.loads(committed), json.loads(text))
            if breaks:
                refusals.append(
                    f"{name}: not written, incompatible with the committed version "
                    f"({'; '.join(breaks)}); add a new schema version with an upcaster instead"
                )
                continue
        path.write_text(text, "utf-8")
    return refusals


def main(argv: list[str] | None = None) -> int:
    """Command line: `write` or `check` the committed schemas."""
    parser = argparse.ArgumentParser(prog="python -m confide_events.schemas")
    parser.add_argument("command", choices=["write", "check"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_SCHEMA_DIR, help="schema directory")
    arguments = parser.parse_args(argv)
    problems = write(arguments.dir) if arguments.command == "write" else check(arguments.dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
