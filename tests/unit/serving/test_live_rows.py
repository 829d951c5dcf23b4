"""Once ready, the scorer reads requests between small slices of embedding rows.

Stand-ins for the `embeddings` tail and the request consumer: what is tested is
the loop's interleaving. A trainer commit's rows were applied 5,000 at a time
(`load_batch`), holding every request for up to 0.3 s on the development machine.
"""

from __future__ import annotations

import threading
from typing import Any, cast

import numpy as np

from stream_app.codec import encode_embedding
from stream_app.config import KafkaConfig
from stream_app.events import EmbeddingRow
from stream_app.kafka.records import Partition, RawRecord
from stream_app.kafka.tail import TailBatch
from stream_app.scorer import Scorer
from stream_app.scorer.embeddings import LIVE_ROWS
from stream_app.serving import ScorerConfig

ROWS = 5 * LIVE_ROWS + 7


def _row(n: int) -> RawRecord:
    row = EmbeddingRow(entity="item", id=f"i{n}", vector=np.ones(4, np.float32), bias=0.0,
                       model_version="v", updates=1, updated_at=1_700_000_000_000,
                       last_event_ts=1_700_000_000_000)
    return RawRecord("embeddings", 0, n, f"item:i{n}".encode(), encode_embedding(row), 0)


class _Tail:
    """A trainer commit's rows, all fetched at once."""

    topic = "embeddings"

    def __init__(self) -> None:
        self.left = [_row(n) for n in range(ROWS)]

    def poll(self, max_records: int, timeout_s: float) -> TailBatch:
        out, self.left = self.left[:max_records], self.left[max_records:]
        return TailBatch(out)

    def lag(self) -> dict[int, int]:
        return {0: len(self.left)}


class _Requests:
    """No requests; notes the table's size and the timeout at each poll."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.polls: list[tuple[int, float]] = []

    def poll(self, room: int, timeout: float) -> list[RawRecord]:
        self.polls.append((self.scorer.table.n_items, timeout))
        if len(self.polls) > 20:
            self.scorer.stop.set()
        return []

    def stuck(self) -> list[Partition]:
        return []

    def commit(self, offsets: dict[Partition, int], *, asynchronous: bool = True) -> None:
        pass

    def lag(self) -> dict[Partition, int]:
        return {}


class _Producer:
    def poll(self, timeout: float = 0) -> int:
        return 0


def test_rows_are_applied_in_small_slices_with_requests_read_between_without_waiting() -> None:
    scorer = Scorer(KafkaConfig(), ScorerConfig(device="cpu"), stop=threading.Event())
    scorer.ready.set()
    requests = _Requests(scorer)
    scorer._requests = cast(Any, requests)  # noqa: SLF001
    assert scorer._loop(cast(Any, _Tail()), cast(Any, _Producer())) == 0  # noqa: SLF001
    sizes = [n for n, _ in requests.polls]
    assert sizes[:7] == [LIVE_ROWS * k for k in range(1, 6)] + [ROWS, ROWS]
    # A request poll may block only once no rows are waiting: else the table goes stale.
    assert [t for _, t in requests.polls[:5]] == [0.0] * 5
    assert requests.polls[6][1] > 0
