"""The folder layout is the architecture: each layer imports only what README's
architecture table ("may import") lists for it. Read from the source with `ast`, so a
new import that crosses a layer fails here rather than in review."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "stream_app"

MAY_IMPORT: dict[str, set[str]] = {  # besides the standard library and the layer itself
    "core": {"torch", "numpy", "stream_app.events"},
    "serving": {"torch", "numpy", "orjson", "stream_app.codec", "stream_app.events",
                "stream_app.config", "stream_app.device"},
    "codec": {"orjson", "fastjsonschema", "numpy", "stream_app.events"},
    "kafka": {"confluent_kafka", "stream_app.codec", "stream_app.config", "stream_app.events",
              "stream_app.signals"},
    "observability": {"prometheus_client", "numpy", "orjson", "stream_app",
                      "stream_app.config"},
    "sources": {"numpy", "orjson", "stream_app.codec", "stream_app.events"},
}


def imports(path: Path) -> set[str]:
    """Third-party packages by top-level name, our own modules as `stream_app.<module>`."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            out.add(".".join(name.split(".")[:2]) if top == "stream_app" else top)
    return out


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_each_layer_imports_only_what_the_architecture_allows(layer: str) -> None:
    allowed = MAY_IMPORT[layer] | {f"stream_app.{layer}"}
    crossing = {f"{path.relative_to(PACKAGE)}: {name}"
                for path in (PACKAGE / layer).rglob("*.py")
                for name in imports(path) - allowed}
    assert crossing == set()


def test_only_the_kafka_layer_and_the_client_import_confluent_kafka() -> None:
    found = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
             if "confluent_kafka" in imports(path)}
    assert found and all(p.startswith("kafka/") or p == "client.py" for p in found), found


def test_a_crossing_import_is_seen(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom confluent_kafka import Consumer\n"
                     "from stream_app.kafka.clients import merge\nfrom . import sibling\n")
    assert imports(probe) == {"confluent_kafka", "stream_app.kafka"}
