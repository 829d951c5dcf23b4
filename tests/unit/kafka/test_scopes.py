"""The consumer-only and producer-only settings are the loaded librdkafka's own."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import tempfile
from pathlib import Path

import confluent_kafka
import pytest

from stream_app.config import KafkaConfig
from stream_app.kafka.clients import consumer_config, producer_config
from stream_app.kafka.scopes import CONSUMER_ONLY, PRODUCER_ONLY


def _library() -> ctypes.CDLL:
    """The librdkafka that confluent_kafka bundles (a wheel), else the system's."""
    package = Path(confluent_kafka.__file__).parent
    bundled = sorted(package.parent.glob("confluent_kafka.libs/librdkafka*.so*"))
    name = str(bundled[0]) if bundled else ctypes.util.find_library("rdkafka")
    assert name, "no librdkafka found beside confluent_kafka or on the system"
    return ctypes.CDLL(name)


def _property_table() -> str:
    """`rd_kafka_conf_properties_show`'s Markdown table (librdkafka's CONFIGURATION.md)."""
    lib, libc = _library(), ctypes.CDLL(None)
    libc.fdopen.restype = ctypes.c_void_p
    libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_conf_properties_show.argtypes = [ctypes.c_void_p]
    with tempfile.TemporaryFile() as out:
        stream = libc.fdopen(os.dup(out.fileno()), b"w")
        lib.rd_kafka_conf_properties_show(stream)
        libc.fclose(stream)
        out.seek(0)
        return out.read().decode()


def test_the_sets_are_the_loaded_librdkafkas_property_scopes() -> None:
    scopes: dict[str, set[str]] = {"C": set(), "P": set()}
    for name, scope in re.findall(r"^([a-z][a-z0-9_.]*)\s*\|\s*([CP*])\s*\|",
                                  _property_table(), re.M):
        scopes.get(scope, set()).add(name)
    assert scopes["C"] and scopes["P"]
    assert (CONSUMER_ONLY, PRODUCER_ONLY) == (scopes["C"], scopes["P"]), \
        f"librdkafka {confluent_kafka.libversion()[0]}: update stream_app/kafka/scopes.py"


@pytest.mark.parametrize("setting", ["fetch.wait.max.ms", "linger.ms", "client.rack"])
def test_each_client_gets_the_settings_of_its_kind(setting: str) -> None:
    """A consumer setting on every producer (and the reverse) made librdkafka log a
    CONFWARN line each time one was created."""
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:1", client={setting: "7"})
    producer, consumer = producer_config(kafka, "p"), consumer_config(kafka, "c", "g")
    assert producer.get(setting) == (None if setting in CONSUMER_ONLY else "7")
    assert consumer.get(setting) == (None if setting in PRODUCER_ONLY else "7")
