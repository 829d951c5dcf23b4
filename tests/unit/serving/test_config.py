"""ScorerConfig: the latency knobs are checked before any client exists."""

from __future__ import annotations

import pytest

from stream_app.config import ConfigError
from stream_app.serving import ScorerConfig


def test_latency_defaults() -> None:
    cfg = ScorerConfig()
    assert (cfg.batch_wait_ms, cfg.threads, cfg.commit_interval_ms) == (0.0, None, 200.0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("threads", 0, "scorer.threads must be 1..1024"),
    ("threads", 100_000, "scorer.threads must be 1..1024"),
    ("commit_interval_ms", -1.0, "scorer.commit_interval_ms must be in 0..60000"),
    ("max_k", 1001, "scorer.max_k must be <= 1000"),
    ("explain_max", 101, "scorer.explain_max must be <= 100"),
    ("client_id", " ", "scorer.client_id is empty"),
])
def test_bad_values_name_the_field(field: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ScorerConfig(**{field: value})  # type: ignore[arg-type]
