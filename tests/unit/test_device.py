"""`resolve_device`: a device this machine lacks is a configuration error (exit 2), not a
traceback from the first tensor put on it."""

from __future__ import annotations

import pytest
import torch

from stream_app.config import ConfigError
from stream_app.device import resolve_device


def test_cpu_and_auto_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["bogus", "cuda:99", "xla"]
                         + ([] if torch.backends.mps.is_available() else ["mps"])
                         + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"]))
def test_a_device_missing_here_is_a_config_error_naming_the_setting(name: str) -> None:
    """mps on a machine without it raised RuntimeError / NotImplementedError (exit 1) in
    the trainer and the scorer; cuda:N past the device count, an invalid ordinal later."""
    with pytest.raises(ConfigError, match=rf"trainer\.device='{name}'"):
        resolve_device(name, "trainer.device")
