"""Pick the torch device from the config's `device` string ("auto" = CUDA when present),
and set torch's intra-op thread count (`stream_app.device`, shared with the trainer)."""

from __future__ import annotations

from stream_app.device import resolve_device, set_threads

__all__ = ["resolve_device", "set_threads"]
