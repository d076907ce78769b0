"""Kafka over TLS against a real broker (issue 12): Tansu behind tests/secure_infra.py's TLS proxy,
with both Kafka clients seqcast supports (confluent-kafka and kafka-python).

Tansu itself serves plain TCP only, so the proxy terminates TLS and Tansu advertises the proxy's
`localhost:port`: a round trip that succeeds went through a verified TLS handshake (the proxy
counts them). The refusal tests check that a wrong CA fails `check_kafka` with the operator's
sentence (`SecurityError`: which server, why, which CA file) and fails both clients too, that a
plaintext client gets nothing from the TLS port, and that mutual TLS needs the client certificate.
"""
from __future__ import annotations

import ssl
import time
import uuid

import pytest

from streamer.connections import check_kafka
from streamer.security import SecurityError

pytest.register_assert_rewrite("secure_infra")  # it is a plugin too (pytest_plugins below): rewrite it on this import
from secure_infra import KafkaTls  # noqa: E402

pytest_plugins = ["secure_infra"]  # its fixtures: pki, kafka_tls, kafka_mtls


def confluent_roundtrip(options: dict, topic: str, value: bytes) -> bytes | None:
    """Create `topic`, produce `value` and read it back with confluent-kafka (None: nothing came)."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(options)
    for future in admin.create_topics([NewTopic(topic, 1, 1)], request_timeout=10).values():
        future.result(15)
    producer = Producer(options)
    producer.produce(topic, value)
    assert producer.flush(15) == 0
    consumer = Consumer({**options, "group.id": f"g-{topic}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                return message.value()
        return None
    finally:
        consumer.close()


def test_confluent_kafka_produces_and_consumes_over_tls_with_hostname_checks(kafka_tls: KafkaTls):
    security = kafka_tls.settings().kafka_security()
    options = {"bootstrap.servers": kafka_tls.bootstrap, **security.confluent_options()}
    assert options["security.protocol"] == "ssl" and options["ssl.endpoint.identification.algorithm"] == "https"
    before = kafka_tls.proxy.accepted
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    assert confluent_roundtrip(options, topic, b"over-tls") == b"over-tls"
    assert kafka_tls.proxy.accepted > before


def test_kafka_python_produces_and_consumes_over_tls_with_hostname_checks(kafka_tls: KafkaTls):
    import kafka

    options = kafka_tls.settings().kafka_security().kafka_python_options()
    assert options["ssl_check_hostname"] is True and options["ssl_cafile"] == kafka_tls.cafile
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    admin = kafka.KafkaAdminClient(bootstrap_servers=kafka_tls.bootstrap, **options)
    admin.create_topics([kafka.admin.NewTopic(topic, 1, 1)])
    admin.close()
    producer = kafka.KafkaProducer(bootstrap_servers=kafka_tls.bootstrap, **options)
    producer.send(topic, b"kafka-python-tls").get(timeout=15)
    producer.close()
    consumer = kafka.KafkaConsumer(bootstrap_servers=kafka_tls.bootstrap, enable_auto_commit=False, **options)
    consumer.assign([kafka.TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    try:
        deadline, got = time.monotonic() + 15, []
        while not got and time.monotonic() < deadline:
            got = [r.value for records in consumer.poll(timeout_ms=500).values() for r in records]
        assert got == [b"kafka-python-tls"]
    finally:
        consumer.close()


def test_a_wrong_ca_fails_the_tls_check_and_both_clients(kafka_tls: KafkaTls, pki):
    import kafka
    from confluent_kafka.admin import AdminClient

    settings = kafka_tls.settings(kafka_ssl_cafile=str(pki.other_ca))
    with pytest.raises(SecurityError) as refused:
        check_kafka(settings)
    assert "certificate verify failed" in str(refused.value) and str(pki.other_ca) in str(refused.value)

    errors: list[str] = []
    admin = AdminClient({"bootstrap.servers": kafka_tls.bootstrap, "error_cb": lambda e: errors.append(str(e)),
                         **settings.kafka_security().confluent_options()})
    with pytest.raises(Exception):
        admin.list_topics(timeout=2)
    admin.poll(0.5)  # serves error_cb
    assert any("certificate verify failed" in e for e in errors), errors

    with pytest.raises((kafka.errors.NoBrokersAvailable, ssl.SSLCertVerificationError)):
        kafka.KafkaAdminClient(bootstrap_servers=kafka_tls.bootstrap, request_timeout_ms=3000,
                               api_version_auto_timeout_ms=3000, **settings.kafka_security().kafka_python_options())


def test_the_tls_check_passes_and_a_plaintext_client_is_refused(kafka_tls: KafkaTls):
    from confluent_kafka.admin import AdminClient

    check_kafka(kafka_tls.settings())  # a real handshake with the proxy, verified against the test CA
    admin = AdminClient({"bootstrap.servers": kafka_tls.bootstrap, "security.protocol": "plaintext"})
    with pytest.raises(Exception):
        admin.list_topics(timeout=2)


def test_mutual_tls_kafka_needs_the_client_certificate(kafka_mtls: KafkaTls):
    from confluent_kafka.admin import AdminClient

    security = kafka_mtls.settings().kafka_security()
    topic = f"mtls-{uuid.uuid4().hex[:8]}"
    options = {"bootstrap.servers": kafka_mtls.bootstrap, **security.confluent_options()}
    assert confluent_roundtrip(options, topic, b"mutual") == b"mutual"
    no_cert = {k: v for k, v in options.items() if k not in ("ssl.certificate.location", "ssl.key.location")}
    with pytest.raises(Exception):
        AdminClient(no_cert).list_topics(timeout=2)
