"""The README's message examples and config example stay true to the code."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import fastjsonschema
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from stream_app.cli import build_parser
from stream_app.codec import load_schemas
from stream_app.config_load import build, load_kafka
from stream_app.core import LearnerConfig
from stream_app.observability import ScorerMetrics, TrainerMetrics
from stream_app.observability.bulk import BulkHistogram
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


def _registered() -> dict[str, tuple[str, set[str]]]:
    """Every metric the trainer and scorer register: exposed name -> (type, labels)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for metrics in (TrainerMetrics(CollectorRegistry(), k=20), ScorerMetrics(CollectorRegistry())):
        for obj in vars(metrics).values():
            if isinstance(obj, BulkHistogram):
                out[obj.name] = ("histogram", {obj.label})
            elif isinstance(obj, MetricWrapperBase):
                kind = obj._type  # noqa: SLF001 (no public accessor in prometheus_client)
                name = obj._name + {"counter": "_total", "info": "_info"}.get(kind, "")  # noqa: SLF001
                labels = set(obj._labelnames)  # noqa: SLF001
                if kind == "info":  # an info's labels are its value's keys
                    labels = {k for family in obj.collect() for sample in family.samples
                              for k in sample.labels}
                out[name] = (kind, labels)
    return out


def test_the_metrics_table_lists_every_metric_with_its_type_and_labels() -> None:
    """A metric added without a README row, or a row left after its metric went, or a
    label added to one and not the other, is a README that no longer tells the truth."""
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in README.read_text().splitlines():
        if line.startswith("| `stream_app_"):
            names, kind, labels = (cell.strip() for cell in line.split("|")[1:4])
            for name in re.findall(r"`(stream_app_\w+)`", names):
                rows[name] = (kind, {lb.strip() for lb in labels.split(",") if lb.strip()})
    registered = _registered()
    assert len(registered) >= 30
    assert sorted(rows) == sorted(registered)
    for name, (kind, labels) in registered.items():
        assert rows[name] == (kind, labels), name


def test_every_alert_has_a_readme_row_and_every_row_an_alert() -> None:
    rules = Path(README.parent / "deploy" / "prometheus" / "alerts.yml").read_text()
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", rules, flags=re.M))
    rows = {name for line in README.read_text().splitlines()
            if (cells := re.match(r"\| ((?:[A-Z]\w+)(?: / [A-Z]\w+)*) \|", line))
            for name in cells.group(1).split(" / ")}
    assert len(alerts) >= 15
    assert rows == alerts


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """Each command's parser; `broker` and `topics` nest one level more."""
    def choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:  # noqa: SLF001 (argparse keeps no public list)
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                return dict(action.choices)
        return {}

    out: dict[str, argparse.ArgumentParser] = {}
    for name, parser in choices(build_parser()).items():
        out[name] = parser
        for inner, nested in choices(parser).items():
            out[f"{name} {inner}"] = nested
    return out


def test_every_flag_in_the_commands_block_is_one_the_command_takes() -> None:
    parts = README.read_text().split("```")  # fenced blocks are the odd parts
    (block,) = [p.removeprefix("\n") for p in parts[1::2]
                if p.startswith("\nstream-app broker start|")]
    commands = _subcommands()
    seen, current = set(), [""]
    for line in block.splitlines():
        line = line.split("#")[0]
        if line.startswith("stream-app "):
            words = [*line.split(), ""]
            inner = [f"{words[1]} {w}" for w in words[2].split("|")]  # broker start|stop|status
            current = inner if all(c in commands for c in inner) else [words[1]]
            seen.add(words[1])
        for flag in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line):
            for command in current:  # each of `start|stop|status` takes the line's flags
                assert command in commands, f"README: no command `stream-app {command}`"
                options = {o for a in commands[command]._actions  # noqa: SLF001
                           for o in a.option_strings}
                assert flag in options, f"README: `stream-app {command}` has no {flag}"
    assert seen == {name.split()[0] for name in commands}  # every command is in the block
