"""Stand-ins for librdkafka clients in unit tests: a module's client factory hands out a fake."""

from __future__ import annotations

from types import ModuleType
from typing import TypeVar

import pytest

from stream_app.config import KafkaConfig

T = TypeVar("T")

NO_BROKER = KafkaConfig(bootstrap_servers="127.0.0.1:1")
"""A configuration for clients that never reach a broker: their factory is replaced."""


def stand_in(monkeypatch: pytest.MonkeyPatch, module: ModuleType, factory: str, fake: T) -> T:
    """`module.factory` (`make_producer`, `make_consumer`) returns `fake` for this test."""
    monkeypatch.setattr(module, factory, lambda *_a, **_k: fake)
    return fake
