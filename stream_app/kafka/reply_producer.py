"""`ReplyProducer`: the scorer's low-latency producer of answers, with a delivery callback each.

Idempotent like every producer of ours, but with LATENCY_PRODUCER_DEFAULTS
(linger <= 1 ms, Nagle off): an answer waits for no batch. The callback gets
`None` on success or the error text, so the caller can commit the input
offsets only once every answer is acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream_app.config import KafkaConfig
from stream_app.events import Headers
from stream_app.kafka.clients import LATENCY_PRODUCER_DEFAULTS, make_producer
from stream_app.kafka.exceptions import KafkaEdgeError

OnDelivered = Callable[[str | None], None]


class ReplyProducer:
    """`send` never blocks for long (a full local queue is served, then retried).

    Call `poll(0)` every loop turn: delivery callbacks run only there.
    """

    def __init__(self, kafka: KafkaConfig, *, client_id: str) -> None:
        self._producer: Producer = make_producer(kafka, client_id, **LATENCY_PRODUCER_DEFAULTS)

    def send(self, topic: str, key: bytes | None, value: bytes, on_delivered: OnDelivered,
             headers: Headers = ()) -> None:
        def report(err: KafkaError | None, _msg: Message) -> None:
            on_delivered(None if err is None else err.str())

        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=report,
                                       headers=list(headers) or None)
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise KafkaEdgeError(f"produce to {topic} failed: {exc}") from exc

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery callbacks (they run in the calling thread)."""
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        """Wait for every delivery; returns how many are still undelivered."""
        return int(self._producer.flush(timeout_s))
