"""How fast is decode+validate, next to a bare `orjson.loads` of the same payloads?

Measures, on synthetic click/purchase records (stream_app.sources.generate):
- `orjson.loads` alone (the floor),
- `decode_event` with the hand-written fast check (what the trainer runs),
- the same pipeline validated by the compiled schema only,
- `decode_event` on the same events reshaped (`SHAPES`: a context, a
  context holding colons, an item id with a colon), against `orjson.loads` of each: the
  check for a repeated key proves the common case with one colon count, and takes a
  regex scan where a colon sits in a value,
and embedding-row decoding (the scorer's start-up cost). Best of `--repeat`.

    python -m bench.codec_speed [--events 50000] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.common import machine
from stream_app.codec import decode_embedding, decode_event, encode_embedding
from stream_app.codec.events import schema_event
from stream_app.codec.wire import (
    EVENT_MAX_BYTES,
    check_key_matches,
    check_value,
    decode_key,
    parse_object,
)
from stream_app.events import EmbeddingRow, EventKind
from stream_app.sources.generate import generate

Payload = tuple[bytes, bytes, EventKind]


def _schema_only(value: bytes, key: bytes, kind: EventKind) -> object:
    """decode_event's steps with the schema validator in place of the fast check."""
    value = check_value(value, EVENT_MAX_BYTES)
    key_text = decode_key(key)
    event = schema_event(parse_object(value), kind)
    check_key_matches(key_text, event.user_id, "user_id")
    return event


def _best(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure_events(payloads: Sequence[Payload], repeat: int) -> dict[str, float]:
    """Events per second of each decoder over `payloads`."""
    n = len(payloads)
    runs: dict[str, Callable[[], object]] = {
        "orjson_loads": lambda: [orjson.loads(v) for v, _, _ in payloads],
        "decode_event_fast": lambda: [decode_event(v, k, kind) for v, k, kind in payloads],
        "decode_event_schema": lambda: [_schema_only(v, k, kind) for v, k, kind in payloads],
    }
    return {name: n / _best(run, repeat) for name, run in runs.items()}


SHAPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "as generated": lambda o: o,
    "with a context": lambda o: {**o, "context": {"page": "home", "slot": 3}},
    "context with colons": lambda o: {**o, "context": {"url": "https://shop.example/p/1",
                                                      "at": "12:30:05"}},
    "item id with a colon": lambda o: {**o, "item_id": f"sku:{o['item_id']}"},
}


def measure_shapes(payloads: Sequence[Payload], repeat: int) -> dict[str, dict[str, float]]:
    """Per shape: events/s of `orjson.loads` and of `decode_event`, and their ratio."""
    out: dict[str, dict[str, float]] = {}
    for name, shape in SHAPES.items():
        shaped = [(orjson.dumps(shape(orjson.loads(v))), k, kind) for v, k, kind in payloads]
        n = len(shaped)
        loads = n / _best(lambda: [orjson.loads(v) for v, _, _ in shaped], repeat)
        decode = n / _best(lambda: [decode_event(v, k, kind) for v, k, kind in shaped], repeat)
        out[name] = {"orjson_loads": loads, "decode_event_fast": decode,
                     "ratio_vs_orjson": loads / decode}
    return out


def measure_embeddings(n_rows: int, dim: int, repeat: int) -> dict[str, float]:
    """Rows per second of decode_embedding (with a small state) vs orjson.loads."""
    rng = np.random.default_rng(0)
    rows = [
        EmbeddingRow(
            entity="item",
            id=f"i{i}",
            vector=rng.standard_normal(dim).astype(np.float32),
            bias=0.1,
            model_version="m1",
            updates=3,
            updated_at=1,
            last_event_ts=1,
            state={"acc": rng.random(dim).astype(np.float32), "n": 3},
        )  # fmt: skip
        for i in range(n_rows)
    ]
    records = [(r.key.encode(), encode_embedding(r)) for r in rows]
    runs: dict[str, Callable[[], object]] = {
        "orjson_loads": lambda: [orjson.loads(v) for _, v in records],
        "decode_embedding": lambda: [decode_embedding(k, v) for k, v in records],
        "decode_embedding_no_state": lambda: [
            decode_embedding(k, v, with_state=False) for k, v in records
        ],
    }
    return {name: n_rows / _best(run, repeat) for name, run in runs.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="payloads to decode")
    parser.add_argument("--rows", type=int, default=10_000, help="embedding rows to decode")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    payloads = [
        (r.value, r.key, r.kind)
        for r in generate(args.events, 5_000, 20_000, seed=1, purchase_share=0.2)
        if r.value is not None and r.key is not None
    ]
    events = measure_events(payloads, args.repeat)
    shapes = measure_shapes(payloads, args.repeat)
    rows = measure_embeddings(args.rows, args.dim, args.repeat)
    result: dict[str, Any] = {
        "machine": machine(),
        "events": events,
        "events_ratio_vs_orjson": {
            k: events["orjson_loads"] / v for k, v in events.items() if k != "orjson_loads"
        },
        "shapes": shapes,
        "embeddings": rows,
        "embeddings_ratio_vs_orjson": {
            k: rows["orjson_loads"] / v for k, v in rows.items() if k != "orjson_loads"
        },
        "n_events": len(payloads),
        "n_rows": args.rows,
        "dim": args.dim,
    }
    lines = [f"{name:>26}: {rate:12,.0f} events/s" for name, rate in events.items()]
    lines += [f"{name:>26}: {ratio:5.2f}x slower than orjson.loads"
              for name, ratio in result["events_ratio_vs_orjson"].items()]  # fmt: skip
    lines += [f"{name:>26}: {v['ratio_vs_orjson']:5.2f}x slower than orjson.loads"
              for name, v in shapes.items()]
    lines += [f"{name:>26}: {rate:12,.0f} rows/s (dim {args.dim})" for name, rate in rows.items()]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
