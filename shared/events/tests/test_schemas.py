"""The committed JSON Schemas follow the models, and published versions stay compatible."""

import json
from pathlib import Path

import pytest
from confide_events import REGISTRY
from confide_events.compatibility import find_incompatibilities
from confide_events.registry import EventRegistry
from confide_events.schemas import (
    DEFAULT_SCHEMA_DIR,
    REGENERATE_COMMAND,
    check,
    committed_schemas,
    event_schema,
    generated_schemas,
    main,
    schema_filename,
    write,
)


def _committed_keys() -> list[str]:
    return sorted(committed_schemas())


def test_every_registered_version_has_a_committed_schema() -> None:
    missing = sorted(generated_schemas().keys() - committed_schemas().keys())

    assert not missing, f"schemas not committed: {missing}; run `{REGENERATE_COMMAND}`"


def test_committed_schemas_equal_the_generated_ones() -> None:
    problems = check()

    assert not problems, (
        "the committed JSON Schemas differ from the models:\n"
        + "\n".join(problems)
        + f"\nIf the change is intended and compatible, run `{REGENERATE_COMMAND}`."
    )


@pytest.mark.parametrize("name", _committed_keys())
def test_current_model_reads_everything_its_committed_schema_accepted(name: str) -> None:
    committed = json.loads((DEFAULT_SCHEMA_DIR / name).read_text("utf-8"))
    key = next(
        (key for key in REGISTRY.models if schema_filename(*key) == name),
        None,
    )
    assert key is not None, (
        f"{name} is committed but no model has this type and version: a published version "
        "cannot be removed (keep its frozen model, or its upcaster and schema)"
    )

    problems = find_incompatibilities(committed, event_schema(REGISTRY.models[key]))

    assert not problems, (
        f"{name} changed incompatibly: {problems}. Revert the model change, or add a "
        f"new schema version of {key[0]} with an upcaster from v{key[1]}."
    )


def test_every_newer_version_has_an_upcaster_from_the_previous() -> None:
    # The registry refuses to be built otherwise; rebuilding it here proves it holds.
    from confide_events.registry import CATALOGUE, UPCASTERS

    assert EventRegistry(CATALOGUE, UPCASTERS).models == REGISTRY.models


def test_schemas_are_identified_by_their_dataschema_uri() -> None:
    schema = json.loads(
        (DEFAULT_SCHEMA_DIR / "confide.consent.ConsentGranted.v2.json").read_text("utf-8")
    )

    assert schema["$id"] == "urn:confide:events:confide.consent.ConsentGranted:v2"
    assert schema["additionalProperties"] is False
    assert "method" in schema["required"]


def test_write_then_check_is_clean_and_stable(tmp_path: Path) -> None:
    assert write(tmp_path) == []
    first = committed_schemas(tmp_path)

    assert check(tmp_path) == []
    assert write(tmp_path) == []
    assert committed_schemas(tmp_path) == first
    assert all(text.endswith("}\n") for text in first.values())


def test_check_reports_a_stale_schema_with_the_command_to_run(tmp_path: Path) -> None:
    write(tmp_path)
    path = tmp_path / "confide.identity.AccountClosed.v1.json"
    schema = json.loads(path.read_text("utf-8"))
    schema["properties"]["closed_at"]["title"] = "Old title"
    path.write_text(json.dumps(schema), "utf-8")

    assert check(tmp_path) == [
        f"confide.identity.AccountClosed.v1.json: stale; run `{REGENERATE_COMMAND}`"
    ]
    assert main(["check", "--dir", str(tmp_path)]) == 1


def test_check_reports_a_schema_left_without_a_model(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "confide.identity.UserRenamed.v1.json").write_text("{}\n", "utf-8")

    assert check(tmp_path) == [
        "confide.identity.UserRenamed.v1.json: committed but no registered model "
        "has this type and version"
    ]


def test_write_refuses_to_overwrite_a_schema_incompatibly(tmp_path: Path) -> None:
    write(tmp_path)
    path = tmp_path / "confide.consent.ConsentRevoked.v1.json"
    schema = json.loads(path.read_text("utf-8"))
    # Pretend the committed version accepted one more reason than the model now does.
    schema["properties"]["reason"]["enum"].append("consent_expired")
    path.write_text(json.dumps(schema), "utf-8")

    refusals = write(tmp_path)

    assert len(refusals) == 1
    assert "consent_expired" in refusals[0]
    assert "new schema version" in refusals[0]
    assert "consent_expired" in path.read_text("utf-8")
    assert main(["write", "--dir", str(tmp_path)]) == 1
