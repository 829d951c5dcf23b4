"""Encode table rows as `EmbeddingRow`s and decode them back, exactly.

The compacted `embeddings` topic is the trainer's changelog, so a row carries
everything per-row the learner needs (`EmbeddingRow.state`):

- users: `id_vec` (dim,) float32, optimiser slots, recent items (in the row's
  `recent_items`, most recent first);
- items: `logpop` (float, log decayed popularity referenced to the global
  origin), optimiser slots.

Optimiser slots: Adagrad `acc` (float); Adam `m`, `v` (dim,) float32 and `t`.
Floats are float32 values held in Python floats, which JSON carries exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from stream_app.core.model import Table

STATE_FORMAT = 1
_NEG_INF_SUBSTITUTE = -1e30  # JSON has no -inf; an item row always has >= 1 event anyway


def encode_slots(table: Table, row: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, t in table.slots.items():
        value = t[row]
        out[name] = float(value.item()) if value.dim() == 0 else \
            value.detach().cpu().numpy().astype(np.float32).copy()
    return out


def gather_slots(table: Table, rows: torch.Tensor) -> dict[str, Any]:
    """Optimiser slots of many rows as `RowBlock` state columns, one device→host copy each.

    A scalar slot (Adagrad's `acc`) becomes a list of floats, a vector slot an
    (n, dim) float32 array.
    """
    out: dict[str, Any] = {}
    for name, t in table.slots.items():
        host = to_host(t.index_select(0, rows))
        out[name] = host.tolist() if host.ndim == 1 else host
    return out


def to_host(t: torch.Tensor) -> npt.NDArray[np.float32]:
    """A table gather (already a fresh tensor) as a float32 host array."""
    return t.detach().cpu().numpy().astype(np.float32, copy=False)


def decode_slots(table: Table, row: int, slots: dict[str, Any]) -> None:
    for name, t in table.slots.items():
        value = slot_value(slots, name)
        t[row] = torch.as_tensor(np.asarray(value, dtype=np.float32), device=t.device)


def slot_value(slots: dict[str, Any], name: str) -> Any:
    """One optimiser slot of a row's state; a clear error if the row has none."""
    if name not in slots:
        raise ValueError(f"row state lacks optimiser slot {name!r}: was it written by "
                         "a learner with a different optimizer?")
    return slots[name]


def finite_logpop(value: float) -> float:
    return value if math.isfinite(value) else _NEG_INF_SUBSTITUTE


def read_logpop(value: float) -> float:
    return float("-inf") if value <= _NEG_INF_SUBSTITUTE else value
