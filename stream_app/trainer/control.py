"""Control records for the trainer, sent on the event topics themselves.

A forget request is keyed by the user id and goes to both `clicks` and
`purchases`, so in each topic it lands on the partition of that user's events.
The two records carry one request id, and the trainer's consumer hands them
out together once each heads its partition (`kafka.event_time`, barriers):
the user is forgotten after every earlier event of theirs on both topics and
before any later one. The trainer publishes a tombstone for `user:<id>`,
which the scorer honours too.
"""

from __future__ import annotations

import uuid

import orjson

from stream_app.codec.fastcheck import ID_MAX_LEN, fast_id
from stream_app.config import ConfigError, KafkaConfig
from stream_app.kafka.admin import require_topics
from stream_app.kafka.produce import EventProducer, Outgoing, check_event_settings
from stream_app.trainer.batch import CONTROL_HEADER


def send_forget(kafka: KafkaConfig, user_id: str) -> None:
    """Raises ConfigError for a user id the trainer would refuse (it dead-letters those),
    and `require_topics`' errors (no broker: exit 75; refused credentials, missing
    topics: exit 2) before sending anything."""
    if fast_id(user_id) is None:
        raise ConfigError(f"forget: {user_id[:64]!r} is not a user id (1-{ID_MAX_LEN} "
                          "characters, no control characters)")
    # The broker, the credentials and the topics first: a send to a dead port or a missing
    # topic waited out its 60 s delivery timeout, then failed without saying why.
    check_event_settings(kafka)
    require_topics(kafka, [kafka.topics.clicks, kafka.topics.purchases])
    value = orjson.dumps({"type": "forget", "user_id": user_id,
                          "request_id": uuid.uuid4().hex})
    with EventProducer(kafka, client_id="stream-app-forget") as producer:
        for topic in (kafka.topics.clicks, kafka.topics.purchases):
            producer.send(Outgoing(topic, user_id.encode(), value,
                                   headers=((CONTROL_HEADER, b"forget"),)))
