"""Shared by the benchmarks: a broker to run against, topics, the machine's description."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream_app.config import KafkaConfig
from stream_app.kafka import broker
from stream_app.kafka.admin import TopicPlan, create_topics, delete_topics


@contextlib.contextmanager
def bench_broker() -> Iterator[str]:
    """Reuse STREAM_APP_BOOTSTRAP_SERVERS, else a local KRaft broker for the run."""
    given = os.environ.get("STREAM_APP_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as state:
        settings = broker.BrokerSettings(port=0, state_dir=Path(state), heap="1g",
                                         dies_with_caller=True)
        try:
            yield broker.start(settings).bootstrap_servers
        finally:
            broker.stop(settings)


@contextlib.contextmanager
def fresh_topics(bootstrap: str, partitions: int = 3) -> Iterator[KafkaConfig]:
    kafka = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=f"b{uuid.uuid4().hex[:8]}.")
    create_topics(kafka, TopicPlan(event_partitions=partitions, embeddings_partitions=partitions,
                                   request_partitions=partitions))
    try:
        yield kafka
    finally:
        delete_topics(kafka, list(kafka.topics.all()))


def machine() -> dict[str, Any]:
    """What the numbers were measured on (shared, noisy machines: hence ratios)."""
    import torch

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gb, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d"),
            # 1/5/15-minute load when the result is written: other work on a
            # shared 2-core machine moves absolute rates a lot.
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process's metrics endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http_ok(proc: subprocess.Popen[bytes], port: int, path: str,
                 timeout_s: float = 600.0, every_s: float = 0.5) -> float:
    """Poll `http://127.0.0.1:port/path` until it answers 200; returns `time.monotonic()` then.

    Exits if the process dies or the time runs out, saying which.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode} before {path} answered")
        time.sleep(every_s)
    raise SystemExit(f"{path} did not answer 200 in {timeout_s:.0f} s")
