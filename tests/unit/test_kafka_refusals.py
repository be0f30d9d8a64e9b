"""A Kafka broker refusing the login or the access ends a read at once with a configuration error
(issue 13, F19: "authentication failures are terminal, never 75").

The real broker cases (a wrong SASL password, missing ACLs, the ``debezium`` source) are in
``tests/integration/test_kafka_auth.py``. Here, without a broker, the reader's polling loop is fed what
librdkafka hands it while a run reads: a refused login arrives through the error callback when the
client re-authenticates, a refused access as a consumer error. Before the fix the former was only
logged, and the read went on until it stalled (a TransientError, exit 75); the latter was a
TransientError too.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from icefield.config.secrets import register_secret
from icefield.errors import ConfigError, TransientError
from icefield.ingest.kafka import KafkaReader

ck = pytest.importorskip("confluent_kafka")
KafkaError = ck.KafkaError


class _Event:
    """A consumer error event as ``consume`` returns it."""

    def __init__(self, err: Any) -> None:
        self._err = err

    def error(self) -> Any:
        return self._err

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


class _Script:
    """What the fake client does. With ``connect``, metadata never comes (each request times out) and
    ``connect`` is reported through the error callback whenever the client is polled, as librdkafka does
    with a refused login. ``reading`` is reported at each poll of the read, ``events`` are what each poll
    returns."""

    connect: Any = None
    reading: Any = None
    events: tuple[Any, ...] = ()


def fake_client(monkeypatch: pytest.MonkeyPatch, script: _Script) -> None:
    """Replace confluent_kafka's Consumer with one that follows ``script`` (partition t/0, offsets 0-10)."""

    class Topic:
        error = None
        partitions = {0: None}

    class Consumer:
        def __init__(self, conf: dict[str, Any]) -> None:
            self.report = conf["error_cb"]

        def list_topics(self, topic: str, timeout: float) -> Any:
            if script.connect is None:
                return type("Meta", (), {"topics": {"t": Topic()}})()
            time.sleep(timeout)  # librdkafka retries the refused login until the call times out
            raise ck.KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure"))

        def committed(self, tps: list[Any], timeout: float) -> list[Any]:
            return [ck.TopicPartition("t", 0, -1001)]

        def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
            return 0, 10

        def assign(self, tps: list[Any]) -> None:
            pass

        def poll(self, timeout: float) -> Any:
            if script.connect is not None:
                self.report(script.connect)
            return None

        def consume(self, n: int, timeout: float) -> list[Any]:
            time.sleep(min(timeout, 0.05))
            if script.reading is not None:
                self.report(script.reading)
            return [_Event(e) for e in script.events]

        def position(self, tps: list[Any]) -> list[Any]:
            return []

        def close(self) -> None:
            pass

    monkeypatch.setattr(ck, "Consumer", Consumer)


def first_batch(config: dict[str, str], stall: float = 3.0) -> tuple[BaseException, float]:
    """Open a reader of topic t (giving up on the broker after 3 s) and read its first batch."""
    reader = KafkaReader({"bootstrap.servers": "127.0.0.1:9", "group.id": "icefield.events", **config}, ["t"], timeout=3, stall_seconds=stall)
    began = time.monotonic()
    with pytest.raises((ConfigError, TransientError)) as info:
        reader.open(None)
        next(reader.batches(100, 1.0))
    reader.close()
    return info.value, time.monotonic() - began


def test_a_login_refused_while_opening_ends_the_wait_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _Script()
    script.connect = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed: Invalid username or password")
    fake_client(monkeypatch, script)
    error, took = first_batch({"security.protocol": "SASL_PLAINTEXT", "sasl.username": "etl"})
    assert isinstance(error, ConfigError), error
    assert "refused the login of user 'etl'" in str(error) and "sasl.username and sasl.password in source.properties" in str(error)
    assert took < 2.0  # the reader gives up on a broker that does not answer after 3 s


def test_a_login_refused_while_reading_ends_the_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _Script()
    script.reading = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed: Invalid username or password")
    fake_client(monkeypatch, script)
    error, took = first_batch({"security.protocol": "SASL_PLAINTEXT", "sasl.username": "etl"})
    assert isinstance(error, ConfigError), error
    assert "refused the login of user 'etl'" in str(error) and "sasl.username and sasl.password in source.properties" in str(error)
    assert took < 1.0


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "access to topic 't' (Broker: Topic authorization failed); grant it Describe and Read"),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, "access to consumer group 'icefield.events'"),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, "a cluster operation"),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "refused the login"),
    ],
)
def test_a_refusal_polled_as_a_consumer_error_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, code: int, says: str) -> None:
    script = _Script()
    script.events = (KafkaError(code),)
    fake_client(monkeypatch, script)
    error, _ = first_batch({})
    assert isinstance(error, ConfigError), error
    assert says in str(error) and "this client" in str(error), error


def test_a_broker_that_stops_answering_stays_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _Script()
    script.reading = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9: Connect to ipv4#127.0.0.1:9 failed")
    fake_client(monkeypatch, script)
    error, _ = first_batch({}, stall=0.5)
    assert isinstance(error, TransientError), error


def test_the_refusal_message_never_holds_a_registered_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "Sekr1t-in-a-broker-message-9931"
    register_secret(secret)
    script = _Script()
    script.reading = KafkaError(KafkaError._AUTHENTICATION, f"SASL authentication error: bad {secret}")
    fake_client(monkeypatch, script)
    error, _ = first_batch({"sasl.username": "etl"})
    assert isinstance(error, ConfigError) and secret not in str(error), error
