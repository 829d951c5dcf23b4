"""Pick the torch device from a `device` setting ("auto" = CUDA when present).

Shared by the trainer and the scorer, so both read the setting the same way.
"""

from __future__ import annotations

import torch

from stream_app.config import ConfigError


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """`auto` -> cuda if available else cpu; an explicit CUDA device must exist.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}={name!r} but CUDA is not available; use auto or cpu")
    return device
