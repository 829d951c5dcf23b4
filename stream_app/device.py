"""Pick the torch device from a `device` setting ("auto" = CUDA when present).

Shared by the trainer and the scorer, so both read the setting the same way.
"""

from __future__ import annotations

import torch

from stream_app.config import ConfigError


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """`auto` -> cuda if available else cpu; an explicit device must exist here.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("cuda:99" if torch.cuda.is_available() else "cuda")
    Traceback (most recent call last):
    stream_app.config.ConfigError: ...
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"{setting}={name!r} is not a torch device ({exc}); "
                          "use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"{setting}={name!r} but CUDA is not available; use auto or cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{setting}={name!r} but this machine has {count} CUDA "
                              f"device(s), cuda:0 to cuda:{count - 1}")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise ConfigError(f"{setting}={name!r} is not available here; use auto, cpu, cuda or "
                      "cuda:N")
