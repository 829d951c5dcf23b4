from __future__ import annotations

import dataclasses

import pytest

from stream_app.core import LearnerConfig


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dim": 0}, "learner.dim must be > 0, got 0"),
    ({"lr": -1.0}, "learner.lr must be > 0, got -1.0"),
    ({"lr": float("nan")}, "learner.lr must be > 0"),
    ({"optimizer": "sgd"}, "learner.optimizer must be 'adagrad' or 'adam', got 'sgd'"),
    ({"accumulate_steps": 0}, "learner.accumulate_steps must be > 0, got 0"),
    ({"click_weight": -1.0}, "learner.click_weight must be >= 0"),
    ({"click_weight": 0.0, "purchase_weight": 0.0}, "set at least one > 0"),
    ({"negatives": "hard"}, "learner.negatives must be"),
    ({"negatives": "sampled", "num_sampled_negatives": 0}, "learner.num_sampled_negatives"),
    ({"recent_decay": 1.5}, "learner.recent_decay must be in [0, 1]"),
    ({"idle_ttl_ms": -5}, "learner.idle_ttl_ms must be >= 0, got -5"),
    ({"eval_k": 0}, "learner.eval_k must be > 0, got 0"),
    ({"adam_betas": (1.0, 0.9)}, "learner.adam_betas must be in [0, 1)"),
    # float32 rounds it to 1: Adam's bias correction was 0/0, NaN rows published
    ({"adam_betas": (0.9, 0.99999999)}, "below 1 in float32 (at most 0.99999994)"),
    ({"dim": 4097}, "learner.dim must be at most 4096, got 4097"),
    ({"recent_items": 1001}, "learner.recent_items must be at most 1000, got 1001"),
    ({"seed": 2**64}, "learner.seed must be at most 4294967295"),
    # float32 rounds it to 0: a zero row's first update was 0/0, NaN rows published
    ({"eps": 1e-50}, "learner.eps must be at least 1e-30 (float32 rounds a smaller one to 0)"),
    # Far past these a typo raised in the model or the sampler after the trainer had
    # joined its group (exit 1 at every restart), or dead-lettered every event.
    ({"purchase_weight": 1e100}, "learner.purchase_weight must be at most 1000000.0"),
    ({"history_weight": 1e30}, "learner.history_weight must be at most 1000000.0"),
    ({"release_window_ms": 10**20}, "learner.release_window_ms must be at most 31536000000000"),
    ({"eval_k": 10**20}, "learner.eval_k must be at most 10000"),
    ({"num_sampled_negatives": 10**9}, "learner.num_sampled_negatives must be at most 100000"),
])
def test_invalid_values_name_the_field_and_fix(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        LearnerConfig(**overrides)  # type: ignore[arg-type]


def test_config_is_frozen_and_keyword_only() -> None:
    cfg = LearnerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        LearnerConfig(8)  # type: ignore[misc]
    assert cfg.eval_k == 20 and cfg.optimizer == "adagrad"


def test_row_limits_are_the_embedding_schemas() -> None:
    """A learner whose rows the schema refuses could not restore its own changelog."""
    from stream_app.codec.schemas import schema
    from stream_app.core.config import DIM_MAX, RECENT_ITEMS_MAX

    props = schema("embedding").definition["properties"]
    assert (DIM_MAX, RECENT_ITEMS_MAX) == (props["dim"]["maximum"],
                                           props["recent_items"]["maxItems"])
