"""The README's message examples and config example stay true to the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import fastjsonschema
import orjson

from stream_app.codec import load_schemas
from stream_app.config import build, load_kafka
from stream_app.core import LearnerConfig
from stream_app.serving import ScorerConfig
from stream_app.trainer import TrainerConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_every_json_example_validates_against_a_schema() -> None:
    schemas = load_schemas()
    blocks = _blocks("json")
    assert len(blocks) >= 6
    for block in blocks:
        doc = orjson.loads(block)
        matches = []
        for name, schema in schemas.items():
            try:
                schema.validate(doc)
                matches.append(name)
            except fastjsonschema.JsonSchemaValueException:
                continue
        assert matches, f"README example matches no schema: {block[:80]}"


def test_config_example_loads() -> None:
    (block,) = _blocks("toml")
    file = tomllib.loads(block)
    kafka = load_kafka(file, {}, {}, {})
    assert kafka.client["security.protocol"] == "SASL_SSL"
    build(TrainerConfig, "trainer", file["trainer"], {}, {})
    build(LearnerConfig, "learner", file["learner"], {}, {})
    assert build(ScorerConfig, "scorer", file["scorer"], {}, {}).threads == 1
