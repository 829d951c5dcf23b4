"""Snapshot a registry into a JSONL file, so `stream-app report` can plot a run.

Prometheus is the live view; this is the offline one for a benchmark or a CI
run where no Prometheus server scrapes. One line per snapshot:
`{"ts": 1700000000.0, "samples": [{"name": ..., "labels": {...}, "value": ...}]}`
(NaN is written as null by orjson).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from prometheus_client import CollectorRegistry


def snapshot(registry: CollectorRegistry, names: Collection[str] | None = None,
             prefix: str = "stream_app_") -> list[dict[str, Any]]:
    """Current samples whose name starts with `prefix` (and is in `names`, when given)."""
    out: list[dict[str, Any]] = []
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.startswith(prefix) or sample.name.endswith("_created"):
                continue
            if names is not None and sample.name not in names:
                continue
            out.append({"name": sample.name, "labels": dict(sample.labels),
                        "value": sample.value})
    return out


class MetricsRecorder:
    """Appends a snapshot every `interval_s` from a daemon thread, and one at `close()`.

    >>> import tempfile
    >>> from prometheus_client import Gauge
    >>> reg = CollectorRegistry(); Gauge("stream_app_x_rows", "x", registry=reg).set(3)
    >>> path = Path(tempfile.mkdtemp()) / "run.jsonl"
    >>> with MetricsRecorder(reg, path, interval_s=60):
    ...     pass
    >>> orjson.loads(path.read_text().splitlines()[-1])["samples"][0]["value"]
    3.0
    """

    def __init__(self, registry: CollectorRegistry, path: Path, *, interval_s: float = 5.0,
                 names: Collection[str] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"recorder interval_s must be > 0, got {interval_s}")
        self._registry, self._path, self._interval_s = registry, path, interval_s
        self._names = frozenset(names) if names is not None else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-recorder", daemon=True)

    def record(self) -> None:
        """Append one snapshot now."""
        line = orjson.dumps({"ts": time.time(), "samples": snapshot(self._registry, self._names)},
                            option=orjson.OPT_SERIALIZE_NUMPY)
        with self._path.open("ab") as f:
            f.write(line + b"\n")

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.record()

    def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and write a final snapshot (the end state of the run)."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=5)
            self.record()

    def __enter__(self) -> MetricsRecorder:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
