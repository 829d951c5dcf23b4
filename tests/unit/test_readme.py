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


EXAMPLES = ["click", "purchase", "click", "embedding", "score-request", "prediction",
            "dlq-record"]
"""The schema of each README JSON example, in README order. Matching any schema was too
weak: trainer-meta's accepts almost any object with a model_version."""


def test_every_json_example_validates_against_its_schema() -> None:
    schemas = load_schemas()
    blocks = _blocks("json")
    assert len(blocks) == len(EXAMPLES), "a README example was added or removed: name its schema"
    for block, name in zip(blocks, EXAMPLES, strict=True):
        try:
            schemas[name].validate(orjson.loads(block))
        except fastjsonschema.JsonSchemaValueException as exc:
            raise AssertionError(f"README {name} example: {exc}: {block[:80]}") from exc


def test_config_example_loads() -> None:
    (block,) = _blocks("toml")
    file = tomllib.loads(block)
    kafka = load_kafka(file, {}, {}, {})
    assert kafka.client["security.protocol"] == "SASL_SSL"
    build(TrainerConfig, "trainer", file["trainer"], {}, {})
    build(LearnerConfig, "learner", file["learner"], {}, {})
    assert build(ScorerConfig, "scorer", file["scorer"], {}, {}).threads == 1
