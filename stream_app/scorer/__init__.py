"""The scorer process: a copy of the latest embeddings, and top-K answers to score requests.

- `embeddings`: the `embeddings` topic read into the table, first to its end (ready),
  then as it grows.
- `loop`: the request loop, the commits and the process (`run_scorer`).

The ranking itself, with no Kafka, is `stream_app.serving`.
"""

from stream_app.scorer.loop import Scorer, run_scorer

__all__ = ["Scorer", "run_scorer"]
