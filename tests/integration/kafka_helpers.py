"""Helpers for tests against the real broker: wait on conditions, read topics back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import Consumer, Message, TopicPartition

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1,
               what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_topic(bootstrap: str, topic: str, *, read_committed: bool = True,
               timeout: float = 30.0, expect: int | None = None) -> list[Message]:
    """Every record of `topic` from the beginning to its current end (high watermark).

    With `expect`, keep reading until that many records arrived (or time out).
    """
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
    })
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
        consumer.assign(parts)
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expect is None:
                ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=5)[1]
                        for tp in parts}
                done = all(consumer.position([TopicPartition(topic, p)])[0].offset >= end
                           or end == 0 for p, end in ends.items())
                if done and (out or all(e == 0 for e in ends.values())):
                    break
            elif len(out) >= expect:
                break
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error() is None:
                    out.append(msg)
        return out
    finally:
        consumer.close()
