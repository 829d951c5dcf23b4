"""Control records for the trainer, sent on the event topics themselves.

A forget request is keyed by the user id and goes to `clicks`, so it lands on
the same partition as that user's events: the trainer applies it after every
earlier event of the user, inside the same transaction, and publishes a
tombstone for `user:<id>` that the scorer honours too.
"""

from __future__ import annotations

import orjson

from stream_app.config import KafkaConfig
from stream_app.kafka.produce import EventProducer, Outgoing
from stream_app.trainer.batch import CONTROL_HEADER


def send_forget(kafka: KafkaConfig, user_id: str) -> None:
    if not user_id:
        raise ValueError("forget needs a non-empty user id")
    value = orjson.dumps({"type": "forget", "user_id": user_id})
    with EventProducer(kafka, client_id="stream-app-forget") as producer:
        producer.send(Outgoing(kafka.topics.clicks, user_id.encode(), value,
                               headers=((CONTROL_HEADER, b"forget"),)))
