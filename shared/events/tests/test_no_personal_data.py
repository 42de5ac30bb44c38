"""No event can carry personal data in the clear (rule 5 of the house).

Every event's JSON Schema is walked, nested models and arrays included. A string
property must be an id or a time (`uuid`/`date-time` format), an enumerated code
(`enum`/`const`), or a short token: a `pattern` that refuses spaces and `@`, with
`maxLength` <= 128. Field names that suggest personal data are refused outright,
whatever their type, except ids (`*_id`) that are UUIDs.
"""

import re
from typing import Any, ClassVar

import pytest
from confide_events import REGISTRY, IntegrationEvent
from pydantic import BaseModel, Field

DENIED_WORDS = frozenset(
    {
        "email",
        "name",
        "phone",
        "address",
        "street",
        "city",
        "postcode",
        "zip",
        "birth",
        "dob",
        "body",
        "text",
        "content",
        "note",
        "message",
        "comment",
        "password",
        "secret",
        "ip",
        "card",
        "pan",
        "cvc",
        "cvv",
        "iban",
        "description",
        "subject_line",
    }
)

# Strings a code pattern must refuse: anything with a space or an @, and typical
# personal data. A pattern that matches none of them is a token pattern.
PROBES = (
    " ",
    "@",
    "a b",
    "a@b",
    "jane@example.com",
    "Jane Doe",
    "jane.doe@example.com",
    "x y",
    "12 Main Street",
    "+44 20 7946 0958",
    "I feel anxious",
)
MAX_TOKEN_LENGTH = 128


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _is_safe_string(node: dict[str, Any]) -> bool:
    if node.get("format") in {"uuid", "date-time"}:
        return True
    if "enum" in node or "const" in node:
        return True
    pattern, max_length = node.get("pattern"), node.get("maxLength")
    if pattern is None or max_length is None or max_length > MAX_TOKEN_LENGTH:
        return False
    return not any(re.search(pattern, probe) for probe in PROBES)


def _is_denied_name(name: str, node: dict[str, Any]) -> bool:
    words = set(name.lower().split("_"))
    is_uuid_id = name.endswith(("_id", "_ids")) and "uuid" in _formats(node)
    return bool(words & DENIED_WORDS or name.lower() in DENIED_WORDS) and not is_uuid_id


def _formats(node: dict[str, Any]) -> set[str]:
    found = {node["format"]} if "format" in node else set()
    for branch in node.get("anyOf", []) + node.get("oneOf", []):
        found |= _formats(branch)
    if isinstance(node.get("items"), dict):
        found |= _formats(node["items"])
    return found


def personal_data_risks(schema: dict[str, Any]) -> list[str]:
    """Every property of a schema that could carry personal data in the clear."""
    risks: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        node = _resolve(node, schema)
        for branch in node.get("anyOf", []) + node.get("oneOf", []) + node.get("allOf", []):
            walk(branch, path)
        for name, child in node.get("properties", {}).items():
            if _is_denied_name(name, _resolve(child, schema)):
                risks.append(f"{path}.{name}: name suggests personal data")
            walk(child, f"{path}.{name}")
        for child in node.get("prefixItems", []):
            walk(child, f"{path}[]")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")
        types = node.get("type")
        is_string = types == "string" or (isinstance(types, list) and "string" in types)
        if is_string and not _is_safe_string(node):
            risks.append(f"{path}: free string (not an id, a time, a code or a short token)")
        if node.get("type") == "object" and node.get("additionalProperties") is not False:
            risks.append(f"{path}: open object (accepts any property)")

    walk(schema, "$")
    return risks


@pytest.mark.parametrize(
    "event_class",
    list(REGISTRY.models.values()),
    ids=[f"{t}.v{v}" for t, v in REGISTRY.models],
)
def test_no_event_can_carry_personal_data(event_class: type[IntegrationEvent]) -> None:
    assert personal_data_risks(event_class.model_json_schema()) == []


class _Leaky(IntegrationEvent):
    event_type: ClassVar[str] = "confide.identity.Leaky"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = "identity"

    email: str


class _Contact(BaseModel):
    value: str


class _NestedLeak(IntegrationEvent):
    event_type: ClassVar[str] = "confide.identity.NestedLeak"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = "identity"

    contacts: tuple[_Contact, ...]
    label: str | None = None
    free_code: str = Field(pattern=r"^.*$", max_length=64)
    long_token: str = Field(pattern=r"^[a-z]+$", max_length=4096)
    note_id: str = Field(pattern=r"^[a-z]+$", max_length=32)


def test_the_check_catches_an_email_field() -> None:
    assert personal_data_risks(_Leaky.model_json_schema()) == [
        "$.email: name suggests personal data",
        "$.email: free string (not an id, a time, a code or a short token)",
    ]


def test_the_check_catches_free_strings_at_any_depth() -> None:
    risks = personal_data_risks(_NestedLeak.model_json_schema())

    assert "$.contacts[].value: free string (not an id, a time, a code or a short token)" in risks
    assert "$.contacts[]: open object (accepts any property)" in risks
    assert "$.label: free string (not an id, a time, a code or a short token)" in risks
    assert "$.free_code: free string (not an id, a time, a code or a short token)" in risks
    assert "$.long_token: free string (not an id, a time, a code or a short token)" in risks
    # A non-UUID "_id" does not escape the name check.
    assert "$.note_id: name suggests personal data" in risks
