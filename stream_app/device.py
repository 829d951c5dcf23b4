"""Pick the torch device from a `device` setting ("auto" = CUDA when present), and
torch's intra-op thread count from a `threads` setting.

Shared by the trainer and the scorer, so both read the settings the same way.
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


THREADS_MAX = 1024
"""More torch threads than any host has cores: 100,000 failed to start threads and then
crashed the process (exit 139)."""


def check_threads(threads: int | None, setting: str) -> None:
    """A `threads` setting: unset (torch's default, one per core) or 1..THREADS_MAX."""
    if threads is not None and not 1 <= threads <= THREADS_MAX:
        raise ConfigError(f"{setting} must be 1..{THREADS_MAX} (or unset for torch's "
                          f"default), got {threads}")


def set_threads(n: int) -> None:
    """`torch.set_num_threads(n)`: process-wide, so it is set once, at start.

    >>> set_threads(torch.get_num_threads())
    """
    torch.set_num_threads(n)
