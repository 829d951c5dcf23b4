"""Load, compile and self-check the `schemas/*.v1.json` files: the one source of truth.

Every schema is compiled once (fastjsonschema turns it into plain Python) and
its own `examples` are validated against it, so a broken or inconsistent
schema file fails when `stream_app.codec` is imported, before the first poll.
`error_for` turns a fastjsonschema failure into our most specific `DlqReason`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from stream_app.codec.exceptions import DecodeError, DlqReason, SchemaError

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
"""`stream_app/schemas/`: in the repository a link to the top-level `schemas/`, in a
wheel a copy of it (package data), so an installed package finds them too."""

SCHEMA_NAMES = (
    "click",
    "purchase",
    "score-request",
    "prediction",
    "embedding",
    "trainer-meta",
    "dlq-record",
)
VERSION = 1

# Top-level fields whose every failure means "bad timestamp" / "bad k".
_TS_FIELDS = frozenset({"ts", "updated_at", "last_event_ts"})
_TOO_MANY = {
    "candidates": DlqReason.TOO_MANY_CANDIDATES,
    "exclude": DlqReason.TOO_MANY_EXCLUSIONS,
}
# Rules on an id definition (a subschema with the id pattern) -> reason.
_ID_RULES = {
    "minLength": DlqReason.EMPTY_ID,
    "maxLength": DlqReason.ID_TOO_LONG,
    "pattern": DlqReason.BAD_ID_CHARS,
    "minimum": DlqReason.ID_TOO_LONG,
    "maximum": DlqReason.ID_TOO_LONG,
    "type": DlqReason.WRONG_TYPE,
}
_RANGE_RULES = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxItems", "minItems"}
)
# Fields only the purchase schema has: seen on the clicks topic they mean the
# producer wrote a purchase to the wrong topic (the reverse is undetectable).
PURCHASE_ONLY_FIELDS = frozenset({"quantity", "price"})


@dataclass(frozen=True, slots=True)
class Schema:
    """One compiled schema: `validate(obj)` returns obj or raises JsonSchemaValueException."""

    name: str
    version: int
    id: str
    path: Path
    definition: Mapping[str, Any]
    validate: Callable[[Any], Any]

    @property
    def examples(self) -> list[Any]:
        """The schema's own `examples` (documented in the README, round-tripped in tests)."""
        return list(self.definition["examples"])

    def subschema(self, name: str) -> Mapping[str, Any]:
        """A named entry of `definitions`, so hand-written checks read their bounds from here."""
        found: Mapping[str, Any] = self.definition["definitions"][name]
        return found


@functools.cache
def load_schemas(directory: Path = SCHEMA_DIR) -> dict[str, Schema]:
    """Read, compile and self-check every schema; cached, so each compiles once per process."""
    return {name: _load_one(directory / f"{name}.v{VERSION}.json", name) for name in SCHEMA_NAMES}


def schema(name: str) -> Schema:
    """The compiled schema called `name` (e.g. "click", "score-request")."""
    return load_schemas()[name]


def _load_one(path: Path, name: str) -> Schema:
    try:
        definition = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SchemaError(f"{path}: cannot read schema: {exc}") from exc
    if not isinstance(definition, dict):
        raise SchemaError(f"{path}: a schema must be a JSON object")
    for field in ("$schema", "$id", "title", "description", "examples"):
        if field not in definition:
            raise SchemaError(f"{path}: missing {field!r}")
    if not str(definition["$id"]).endswith(path.name):
        raise SchemaError(f"{path}: $id {definition['$id']!r} must end with the file name")
    if not isinstance(definition["examples"], list) or not definition["examples"]:
        raise SchemaError(f"{path}: 'examples' must be a non-empty array")
    try:
        validate = fastjsonschema.compile(definition)
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise SchemaError(f"{path}: does not compile: {exc}") from exc
    for i, example in enumerate(definition["examples"]):
        try:
            validate(example)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise SchemaError(f"{path}: examples[{i}] fails its own schema: {exc}") from exc
    return Schema(name, VERSION, definition["$id"], path, definition, validate)


def error_for(exc: fastjsonschema.JsonSchemaValueException, schema_name: str) -> DecodeError:
    """Map a schema failure to the most specific reason; `detail` keeps the failing field."""
    reason = _reason_for(exc, schema_name)
    detail = exc.message
    if reason is DlqReason.BAD_ID_CHARS and exc.rule == "pattern":
        # fastjsonschema's message quotes the id pattern, a regex of invisible characters.
        detail = (f"{exc.name} {str(exc.value)[:64]!r}: an id may not hold control "
                  "characters or line / paragraph separators")
    elif reason is DlqReason.BAD_TIMESTAMP and exc.rule == "minimum" \
            and isinstance(exc.value, int) and exc.value >= 0:
        detail = (f"{exc.name} {exc.value} is before 1973-03-03 read as milliseconds since "
                  "1970, which event times are: seconds need multiplying by 1000")
    elif exc.rule == "additionalProperties" and isinstance(exc.value, dict):
        extra = sorted(set(exc.value) - set((exc.definition or {}).get("properties", {})))
        detail = f"{exc.name}: unknown field(s) {extra}"
    return DecodeError(reason, detail)


def _reason_for(exc: fastjsonschema.JsonSchemaValueException, schema_name: str) -> DlqReason:
    path = exc.path or ["data"]
    rule = exc.rule or ""
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    if len(path) == 1:
        if rule == "type":
            return DlqReason.NOT_OBJECT
        if rule == "required":
            return DlqReason.MISSING_FIELD
        if rule == "additionalProperties":
            extra = set(exc.value) - set(definition.get("properties", {}))
            if schema_name == "click" and extra & PURCHASE_ONLY_FIELDS:
                return DlqReason.WRONG_TOPIC
            return DlqReason.UNKNOWN_FIELD
        return DlqReason.SCHEMA
    return _field_reason(str(path[1]), len(path), rule, definition)


def _field_reason(field: str, depth: int, rule: str, definition: Mapping[str, Any]) -> DlqReason:
    if field in _TS_FIELDS and depth == 2:
        return DlqReason.BAD_TIMESTAMP
    if field == "k" and depth == 2:
        return DlqReason.BAD_K
    if field in _TOO_MANY and depth == 2 and rule == "maxItems":
        return _TOO_MANY[field]
    if field == "vector" and depth == 2 and rule == "pattern":
        return DlqReason.BAD_VECTOR
    if rule in _ID_RULES and _is_id(definition):
        return _ID_RULES[rule]
    if rule == "required":
        return DlqReason.MISSING_FIELD
    if rule == "additionalProperties":
        return DlqReason.UNKNOWN_FIELD
    if rule == "type":
        return DlqReason.WRONG_TYPE
    if rule in _RANGE_RULES:
        return DlqReason.OUT_OF_RANGE
    return DlqReason.SCHEMA


def _is_id(definition: Mapping[str, Any]) -> bool:
    """Id subschemas are recognised by their control-character pattern."""
    return "pattern" in definition and "\u2028" in str(definition["pattern"])
