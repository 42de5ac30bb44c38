"""The compatibility checker catches each kind of breaking change, and only those."""

import copy
from typing import Any

import pytest
from confide_events.compatibility import find_incompatibilities


def _event(properties: dict[str, Any], required: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": required,
        **extra,
    }


UUID_STRING = {"type": "string", "format": "uuid"}
OLD = _event(
    {
        "subject_id": UUID_STRING,
        "role": {"enum": ["client", "therapist"], "type": "string"},
        "code": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 32},
        "count": {"type": "integer", "minimum": 0},
        "amount": {"type": "number"},
        "note_ids": {"type": "array", "items": UUID_STRING, "maxItems": 10},
        "recipient_id": {"anyOf": [UUID_STRING, {"type": "null"}], "default": None},
        "outcome": {"$ref": "#/$defs/Outcome"},
    },
    ["subject_id", "role", "code", "count"],
    **{
        "$defs": {
            "Outcome": _event(
                {"category": {"type": "string", "enum": ["identity.profile"]}}, ["category"]
            )
        }
    },
)


def _changed(path: list[str], value: Any) -> dict[str, Any]:
    """A deep copy of OLD with the node at `path` replaced (or removed when value is ...)."""
    schema = copy.deepcopy(OLD)
    node = schema
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return schema


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        pytest.param(_changed(["properties", "count"], ...), "'count' removed", id="removed"),
        pytest.param(
            _changed(["required"], ["subject_id", "role", "code", "count", "amount"]),
            "'amount' newly required",
            id="newly-required",
        ),
        pytest.param(
            _changed(["properties", "amount"], {"type": "integer"}),
            "no longer accepts ['number']",
            id="type-narrowed",
        ),
        pytest.param(
            _changed(["properties", "count"], {"type": "string"}),
            "no longer accepts ['integer']",
            id="type-changed",
        ),
        pytest.param(
            _changed(["properties", "role", "enum"], ["client"]),
            "values no longer accepted: ['therapist']",
            id="enum-value-removed",
        ),
        pytest.param(
            _changed(["properties", "amount"], {"type": "number", "enum": [1, 2]}),
            "now restricted to the values",
            id="enum-added",
        ),
        pytest.param(
            _changed(["properties", "code", "pattern"], "^[a-z]{1,8}$"),
            "pattern added or changed",
            id="pattern-changed",
        ),
        pytest.param(
            _changed(["properties", "amount"], {"type": "number", "pattern": "^1$"}),
            "pattern added or changed",
            id="pattern-added",
        ),
        pytest.param(
            _changed(["properties", "code", "maxLength"], 16),
            "maxLength lowered to 16",
            id="max-length-lowered",
        ),
        pytest.param(
            _changed(["properties", "count", "minimum"], 1),
            "minimum raised to 1",
            id="minimum-raised",
        ),
        pytest.param(
            _changed(["properties", "subject_id", "format"], "email"),
            "format added or changed",
            id="format-changed",
        ),
        pytest.param(
            _changed(["properties", "note_ids", "items"], {"type": "string", "maxLength": 3}),
            "$.note_ids[]: maxLength lowered",
            id="array-items-narrowed",
        ),
        pytest.param(
            _changed(["properties", "recipient_id"], UUID_STRING),
            "$.recipient_id: type no longer accepts ['null']",
            id="nullable-made-mandatory",
        ),
        pytest.param(
            _changed(["$defs", "Outcome", "properties", "category", "enum"], []),
            "$.outcome.category: values no longer accepted",
            id="nested-model-via-ref",
        ),
    ],
)
def test_the_checker_catches_a_breaking_change(new: dict[str, Any], expected: str) -> None:
    problems = find_incompatibilities(OLD, new)

    assert any(expected in problem for problem in problems), problems


def test_the_checker_catches_additional_properties_being_forbidden() -> None:
    old = {"type": "object", "properties": {"a": {"type": "integer"}}}
    new = {**old, "additionalProperties": False}

    assert find_incompatibilities(old, new) == ["$: additional properties no longer accepted"]


@pytest.mark.parametrize(
    "new",
    [
        pytest.param(OLD, id="unchanged"),
        pytest.param(
            _changed(["properties", "method"], {"enum": ["api"], "type": "string"}),
            id="optional-property-added",
        ),
        pytest.param(
            _changed(["properties", "role", "enum"], ["client", "therapist", "compliance"]),
            id="enum-value-added",
        ),
        pytest.param(
            _changed(["properties", "code", "maxLength"], 64),
            id="max-length-raised",
        ),
        pytest.param(_changed(["required"], ["subject_id", "role"]), id="made-optional"),
        pytest.param(
            _changed(["properties", "count"], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
            id="made-nullable",
        ),
        pytest.param(_changed(["properties", "count", "type"], "number"), id="int-to-number"),
        pytest.param(
            _changed(["properties", "code", "title"], "Renamed title"), id="annotation-only"
        ),
    ],
)
def test_the_checker_accepts_a_compatible_change(new: dict[str, Any]) -> None:
    assert find_incompatibilities(OLD, new) == []
