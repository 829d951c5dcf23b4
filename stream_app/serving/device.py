"""Pick the torch device from the config's `device` string ("auto" = CUDA when present),
and set torch's intra-op thread count."""

from __future__ import annotations

import torch

from stream_app.device import resolve_device

__all__ = ["resolve_device", "set_threads"]


def set_threads(n: int) -> None:
    """`torch.set_num_threads(n)`: process-wide, so it is set once, at start.

    >>> set_threads(torch.get_num_threads())
    """
    torch.set_num_threads(n)
