"""A backward-compatibility checker for the JSON Schemas of events.

`find_incompatibilities(old, new)` lists the ways in which a document valid under
`old` could be refused by `new`. An empty list means a consumer built on `new`
reads everything written under `old`, which is what changing a published
version of an event requires. When the checker cannot prove a change safe (a
changed regular expression, say) it reports it: a false alarm costs a new
version; a missed incompatibility costs a dead-lettered history.

It understands the subset of JSON Schema pydantic generates: `type`, `enum`,
`const`, `format`, `pattern`, length and range bounds, `properties`, `required`,
`additionalProperties`, `items`, `prefixItems`, `anyOf`/`oneOf` and local `$ref`.
"""

from typing import Any

Schema = dict[str, Any] | bool

# Keywords that only document a schema and never change what it accepts.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$defs", "$schema", "$id"})

_UPPER_BOUNDS = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")
_LOWER_BOUNDS = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")


def find_incompatibilities(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every way a document accepted by the `old` schema may be refused by `new`.

    Each entry names the JSON path (`$.outcomes[].category`) and the change.
    """
    problems: list[str] = []
    _compare(old, new, old, new, "$", problems)
    return problems


def _resolve(schema: Schema, root: dict[str, Any]) -> Schema:
    while isinstance(schema, dict) and "$ref" in schema:
        reference = schema["$ref"]
        if not reference.startswith("#/"):
            raise ValueError(f"only local references are supported, not {reference}")
        target: Any = root
        for part in reference[2:].split("/"):
            target = target[part]
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **siblings}
    return schema


def _accepts_anything(schema: Schema) -> bool:
    if isinstance(schema, bool):
        return schema
    return all(keyword in _ANNOTATIONS for keyword in schema)


def _branches(schema: dict[str, Any]) -> list[Schema] | None:
    branches = schema.get("anyOf", schema.get("oneOf"))
    return list(branches) if branches is not None else None


def _types(schema: dict[str, Any]) -> set[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    return {declared} if isinstance(declared, str) else set(declared)


def _allowed_values(schema: dict[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return list(schema["enum"])
    return None


def _compare(
    old: Schema,
    new: Schema,
    old_root: dict[str, Any],
    new_root: dict[str, Any],
    path: str,
    problems: list[str],
) -> None:
    old = _resolve(old, old_root)
    new = _resolve(new, new_root)
    if _accepts_anything(new):
        return
    if old is False:
        return
    if _accepts_anything(old) or isinstance(new, bool) or isinstance(old, bool):
        problems.append(f"{path}: now constrained where anything was accepted")
        return

    old_branches = _branches(old)
    if old_branches is not None:
        # Each alternative the old schema accepted must still be accepted.
        for branch in old_branches:
            _compare(branch, new, old_root, new_root, path, problems)
        return
    new_branches = _branches(new)
    if new_branches is not None:
        for branch in new_branches:
            trial: list[str] = []
            _compare(old, branch, old_root, new_root, path, trial)
            if not trial:
                return
        problems.append(f"{path}: no alternative of the new schema accepts the old one")
        return

    _compare_types(old, new, path, problems)
    _compare_values(old, new, path, problems)
    _compare_bounds(old, new, path, problems)
    _compare_objects(old, new, old_root, new_root, path, problems)
    _compare_arrays(old, new, old_root, new_root, path, problems)


def _compare_types(
    old: dict[str, Any], new: dict[str, Any], path: str, problems: list[str]
) -> None:
    old_types, new_types = _types(old), _types(new)
    if new_types is None:
        return
    if old_types is None:
        if _allowed_values(old) is None:
            problems.append(f"{path}: type restricted to {sorted(new_types)}")
        return
    widened = new_types | ({"integer"} if "number" in new_types else set())
    lost = old_types - widened
    if lost:
        problems.append(f"{path}: type no longer accepts {sorted(lost)}")


def _compare_values(
    old: dict[str, Any], new: dict[str, Any], path: str, problems: list[str]
) -> None:
    new_values = _allowed_values(new)
    if new_values is not None:
        old_values = _allowed_values(old)
        if old_values is None:
            problems.append(f"{path}: now restricted to the values {new_values}")
        else:
            removed = [value for value in old_values if value not in new_values]
            if removed:
                problems.append(f"{path}: values no longer accepted: {removed}")
    if "pattern" in new and new["pattern"] != old.get("pattern"):
        problems.append(f"{path}: pattern added or changed to {new['pattern']!r}")
    if "format" in new and new["format"] != old.get("format"):
        problems.append(f"{path}: format added or changed to {new['format']!r}")


def _compare_bounds(
    old: dict[str, Any], new: dict[str, Any], path: str, problems: list[str]
) -> None:
    for keyword in _UPPER_BOUNDS:
        if keyword in new and (keyword not in old or new[keyword] < old[keyword]):
            problems.append(f"{path}: {keyword} lowered to {new[keyword]}")
    for keyword in _LOWER_BOUNDS:
        if keyword in new and (keyword not in old or new[keyword] > old[keyword]):
            problems.append(f"{path}: {keyword} raised to {new[keyword]}")


def _compare_objects(
    old: dict[str, Any],
    new: dict[str, Any],
    old_root: dict[str, Any],
    new_root: dict[str, Any],
    path: str,
    problems: list[str],
) -> None:
    old_properties: dict[str, Any] = old.get("properties", {})
    new_properties: dict[str, Any] = new.get("properties", {})
    old_extra: Schema = old.get("additionalProperties", True)
    new_extra: Schema = new.get("additionalProperties", True)
    for name, old_property in old_properties.items():
        if name in new_properties:
            _compare(
                old_property, new_properties[name], old_root, new_root, f"{path}.{name}", problems
            )
        else:
            problems.append(f"{path}: property {name!r} removed")
    for name, new_property in new_properties.items():
        if name not in old_properties and old_extra is not False:
            # The old schema let any value through under this name.
            _compare(old_extra, new_property, old_root, new_root, f"{path}.{name}", problems)
    newly_required = set(new.get("required", [])) - set(old.get("required", []))
    for name in sorted(newly_required):
        problems.append(f"{path}: property {name!r} newly required")
    if old_extra is not False and new_extra is False:
        problems.append(f"{path}: additional properties no longer accepted")
    elif old_extra is not False:
        _compare(old_extra, new_extra, old_root, new_root, f"{path}.(additional)", problems)


def _compare_arrays(
    old: dict[str, Any],
    new: dict[str, Any],
    old_root: dict[str, Any],
    new_root: dict[str, Any],
    path: str,
    problems: list[str],
) -> None:
    if "items" in new:
        _compare(old.get("items", True), new["items"], old_root, new_root, f"{path}[]", problems)
    old_prefix: list[Schema] = old.get("prefixItems", [])
    new_prefix: list[Schema] = new.get("prefixItems", [])
    for index, new_item in enumerate(new_prefix):
        old_item = old_prefix[index] if index < len(old_prefix) else old.get("items", True)
        _compare(old_item, new_item, old_root, new_root, f"{path}[{index}]", problems)
