"""Pick the torch device from the config's `device` string ("auto" = CUDA when present),
and set torch's intra-op thread count."""

from __future__ import annotations

import torch

from stream_app.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available else cpu; an explicit CUDA device must exist.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"scorer.device={name!r} but CUDA is not available; use auto or cpu")
    return device


def set_threads(n: int) -> None:
    """`torch.set_num_threads(n)`: process-wide, so it is set once, at start.

    >>> set_threads(torch.get_num_threads())
    """
    torch.set_num_threads(n)
