"""The librdkafka settings of a kafka source as Kafka's Java client (Spark's Kafka reader) takes them."""

from __future__ import annotations

import pytest

from icefield.errors import ConfigError
from icefield.ingest.kafka import java_consumer_options


def test_servers_protocol_and_a_scram_login_become_the_java_clients_settings() -> None:
    out = java_consumer_options({
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SASL_SSL", "sasl.mechanisms": "scram-sha-512",
        "sasl.username": "ice", "sasl.password": 'p"w\\d', "ssl.ca.location": "/etc/ca.pem",
        "group.id": "icefield.p", "queued.min.messages": "1000000", "enable.partition.eof": "true",
    })
    assert out == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required username="ice" password="p\\"w\\\\d";',
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": "/etc/ca.pem",
    }


def test_a_mechanism_without_a_translation_is_refused_with_the_setting_that_reads_in_the_icefield_process() -> None:
    with pytest.raises(ConfigError, match=r"sasl.mechanism 'OAUTHBEARER'.*read_sources: false"):
        java_consumer_options({"bootstrap.servers": "b:9092", "sasl.mechanism": "OAUTHBEARER"})
