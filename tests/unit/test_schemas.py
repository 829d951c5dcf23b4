"""The schema files: complete, consistent, compiled and self-checked at start-up."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from stream_app.codec import SCHEMA_DIR, SchemaError, load_schemas
from stream_app.codec.schemas import SCHEMA_NAMES


def test_every_schema_loads_with_metadata_and_examples() -> None:
    schemas = load_schemas()
    assert set(schemas) == set(SCHEMA_NAMES)
    for name, s in schemas.items():
        assert s.path.name == f"{name}.v1.json"
        assert s.id.endswith(s.path.name)
        assert s.definition["title"] and s.definition["description"]
        assert s.examples
        for example in s.examples:
            s.validate(example)


def test_no_stray_schema_files() -> None:
    on_disk = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert on_disk == {f"{name}.v1.json" for name in SCHEMA_NAMES}


def test_shared_definitions_are_identical_across_files() -> None:
    """Each file is self-contained, so the copies of `id` and `ts` must not drift apart."""
    schemas = load_schemas()
    event_ids = [schemas[n].subschema("id") for n in ("click", "purchase", "score-request")]
    assert event_ids[0] == event_ids[1] == event_ids[2]
    string_ids = [schemas[n].subschema("id") for n in ("prediction", "embedding")]
    assert string_ids[0] == string_ids[1]
    assert string_ids[0]["pattern"] == event_ids[0]["pattern"]
    assert string_ids[0]["maxLength"] == event_ids[0]["maxLength"]
    timestamps = [schemas[n].subschema("ts") for n in ("click", "purchase", "embedding")]
    assert timestamps[0] == timestamps[1]
    # Rows take times from 0: those learned before events were held to 1973 on still restore.
    assert timestamps[2]["minimum"] == 0 < timestamps[0]["minimum"]
    assert timestamps[2]["exclusiveMaximum"] == timestamps[0]["exclusiveMaximum"]


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, target)
    return target


def test_an_example_that_fails_its_schema_fails_loading(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    path = directory / "click.v1.json"
    definition = orjson.loads(path.read_bytes())
    definition["examples"].append({"event_id": "", "user_id": "u", "item_id": "i", "ts": 1})
    path.write_bytes(orjson.dumps(definition))
    with pytest.raises(SchemaError, match="examples"):
        load_schemas(directory)


def test_a_schema_that_does_not_compile_fails_loading(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    path = directory / "prediction.v1.json"
    definition = orjson.loads(path.read_bytes())
    definition["properties"]["latency_ms"] = {"type": "no-such-type"}
    path.write_bytes(orjson.dumps(definition))
    with pytest.raises(SchemaError, match="compile"):
        load_schemas(directory)


@pytest.mark.parametrize("field", ["$id", "title", "description", "examples"])
def test_missing_metadata_fails_loading(tmp_path: Path, field: str) -> None:
    directory = _copy(tmp_path)
    path = directory / "embedding.v1.json"
    definition = orjson.loads(path.read_bytes())
    del definition[field]
    path.write_bytes(orjson.dumps(definition))
    with pytest.raises(SchemaError, match=field.lstrip("$")):
        load_schemas(directory)


def test_missing_file_fails_loading(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    (directory / "dlq-record.v1.json").unlink()
    with pytest.raises(SchemaError, match="dlq-record"):
        load_schemas(directory)
