"""Security settings: secrets that never print, the *_FILE convention, Kubernetes service links,
and the mapping of the Kafka/Redis security knobs onto each client's own option names.

Everything here is checked against the real client libraries (their own config tables, a
real librdkafka instance that validates its properties); the live refusals are in
tests/test_security_live.py.
"""
from __future__ import annotations

import dataclasses
import io
import logging

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.conn import BrokerConnection

from streamer.logs import JsonFormatter, redact
from streamer.security import KafkaSecurity, RedisSecurity, Secret, redact_url
from streamer.settings import Settings, SettingsError, setting_of

PASSWORD = "Pw-7f3a9c-MARKER"  # recognisable, so that a leak is found by grep


def test_secrets_never_print_from_settings() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                        kafka_sasl_username="svc", kafka_sasl_password=PASSWORD, redis_password=PASSWORD,
                        kafka_ssl_certfile="/c.pem", kafka_ssl_keyfile="/k.pem", kafka_ssl_key_password=PASSWORD)
    dumps = [repr(settings), str(settings), f"{settings}", str(dataclasses.asdict(settings)),
             repr(settings.kafka_security()), repr(settings.redis_security())]
    for dump in dumps:
        assert PASSWORD not in dump
        assert "********" in dump
    assert settings.kafka_sasl_password.reveal() == PASSWORD  # the clients still get it
    assert settings.kafka_security().confluent_options()["sasl.password"] == PASSWORD


def test_file_variant_reads_a_secret_and_names_an_unreadable_file(tmp_path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")  # `kubectl create secret --from-file` keeps a trailing newline
    settings = Settings.from_env({"SEQCAST_REDIS_PASSWORD_FILE": str(secret),
                                  "SEQCAST_REDIS_USERNAME_FILE": str(secret)})
    assert settings.redis_password.reveal() == PASSWORD and settings.redis_username == PASSWORD
    with pytest.raises(SettingsError, match=r"SEQCAST_REDIS_PASSWORD_FILE: cannot read /nonexistent/x") as err:
        Settings.from_env({"SEQCAST_REDIS_PASSWORD_FILE": "/nonexistent/x"})
    assert PASSWORD not in str(err.value)
    with pytest.raises(SettingsError, match="both set"):
        Settings.from_env({"SEQCAST_REDIS_PASSWORD": "a", "SEQCAST_REDIS_PASSWORD_FILE": str(secret)})


def test_kubernetes_service_links_are_skipped_and_misspellings_still_refused() -> None:
    injected = {  # what the kubelet injects for Services "seqcast" and "seqcast-metrics"
        "SEQCAST_SERVICE_HOST": "10.0.0.1", "SEQCAST_SERVICE_PORT": "9108", "SEQCAST_SERVICE_PORT_METRICS": "9108",
        "SEQCAST_PORT": "tcp://10.0.0.1:9108", "SEQCAST_PORT_9108_TCP": "tcp://10.0.0.1:9108",
        "SEQCAST_PORT_9108_TCP_PROTO": "tcp", "SEQCAST_PORT_9108_TCP_PORT": "9108",
        "SEQCAST_PORT_9108_TCP_ADDR": "10.0.0.1", "SEQCAST_METRICS_SERVICE_HOST": "10.0.0.2",
        "SEQCAST_METRICS_PORT": "tcp://10.0.0.2:9108", "SEQCAST_METRICS_PORT_9108_TCP_ADDR": "10.0.0.2",
    }
    assert Settings.from_env(injected).metrics_port == 9108  # the link is not mistaken for the setting
    assert Settings.from_env({**injected, "SEQCAST_TOP_K": "5"}).top_k == 5
    # a Service "seqcast-redis": its {NAME}_PORT is no setting, and not a misspelt one either
    assert Settings.from_env({**injected, "SEQCAST_REDIS_PORT": "tcp://10.0.0.3:6379"}) == Settings()
    with pytest.raises(SettingsError, match="unknown setting SEQCAST_REDIS_PORT"):
        setting_of("SEQCAST_REDIS_PORT", "6379")
    for wrong in ("SEQCAST_METRIC_PORT", "SEQCAST_SERVICE", "SEQCAST_REDIS_PASSWORD_FILES", "SEQCAST_PORTS"):
        with pytest.raises(SettingsError, match=f"unknown setting {wrong}"):
            setting_of(wrong, "1")
    with pytest.raises(SettingsError, match="SEQCAST_METRICS_PORT"):  # a port that is no link is still checked
        Settings.from_env({"SEQCAST_METRICS_PORT": "nine"})


@pytest.mark.parametrize("values, message", [
    ({"kafka_security_protocol": "SASL_SSL"}, "needs kafka_sasl_username and kafka_sasl_password"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol must be one of"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI", "kafka_sasl_username": "u",
      "kafka_sasl_password": "p"}, "kafka_sasl_mechanism must be one of"),
    ({"kafka_ssl_cafile": "/ca.pem"}, "does not use TLS"),
    ({"kafka_sasl_username": "u"}, "does not authenticate"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c.pem"}, "go together"),
    ({"redis_ssl_cafile": "/ca.pem"}, "is not rediss://"),
    ({"redis_username": "svc"}, "without redis_password"),
])
def test_combinations_that_cannot_work_are_refused_by_name(values, message) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings(**values)


def test_missing_tls_files_are_named_at_start_not_at_parse(tmp_path) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile="/etc/seqcast/ca.pem",
                        redis_url="rediss://r:6380/0", redis_ssl_cafile=str(tmp_path / "none.pem"))
    missing = settings.missing_files()
    assert missing == ["kafka_ssl_cafile: /etc/seqcast/ca.pem is not a readable file",
                       f"redis_ssl_cafile: {tmp_path / 'none.pem'} is not a readable file"]


def test_kafka_security_maps_onto_each_clients_own_options(tmp_path) -> None:
    from confluent_kafka import KafkaException, Producer as RdProducer

    from secure_infra import make_pki

    pki = make_pki(tmp_path)
    security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", "svc", Secret(PASSWORD), str(pki.ca), str(pki.client_cert),
                             str(pki.client_key), Secret(""), True)
    python_options = security.kafka_python_options()
    for known in (KafkaConsumer.DEFAULT_CONFIG, KafkaProducer.DEFAULT_CONFIG, KafkaAdminClient.DEFAULT_CONFIG,
                  BrokerConnection.DEFAULT_CONFIG):
        assert set(python_options) <= set(known), set(python_options) - set(known)
    assert python_options["ssl_check_hostname"] is True and python_options["sasl_plain_password"] == PASSWORD
    # librdkafka refuses unknown properties and bad values when the client is created (no connection needed)
    RdProducer({"bootstrap.servers": "127.0.0.1:1", **security.confluent_options()})
    for flag in (True, False):
        options = dataclasses.replace(security, ssl_check_hostname=flag).confluent_options()
        assert options["ssl.endpoint.identification.algorithm"] == ("https" if flag else "none")
    with pytest.raises(KafkaException):  # the check has teeth: a misspelt property is refused
        RdProducer({"bootstrap.servers": "127.0.0.1:1", "ssl.ca.locaton": str(pki.ca)})
    plain = KafkaSecurity().confluent_options()
    assert plain == {"security.protocol": "plaintext"}


def test_redis_security_reaches_redis_py_connections(tmp_path) -> None:
    security = RedisSecurity("svc", Secret(PASSWORD), "/ca.pem", "/c.pem", "/k.pem", False)
    url = "rediss://cache.example:6380/2"
    pool = redis.Redis.from_url(url, **security.client_options(url)).connection_pool
    assert pool.connection_class is redis.SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["ssl_ca_certs"], kwargs["ssl_certfile"],
            kwargs["ssl_keyfile"], kwargs["ssl_check_hostname"], kwargs["ssl_cert_reqs"]) == \
        ("svc", PASSWORD, "/ca.pem", "/c.pem", "/k.pem", False, "required")
    plain = redis.Redis.from_url("redis://x:1/0", **RedisSecurity().client_options("redis://x:1/0")).connection_pool
    assert plain.connection_class is redis.Connection and "password" not in plain.connection_kwargs


def test_urls_are_redacted() -> None:
    assert redact_url(f"rediss://svc:{PASSWORD}@cache:6380/0") == "rediss://svc:********@cache:6380/0"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert PASSWORD not in repr(Settings(redis_url=f"redis://:{PASSWORD}@cache:6379/0"))


def test_a_secret_file_loses_one_line_end_only(tmp_path) -> None:
    secret = tmp_path / "s"
    for written, read in (("pw\n", "pw"), ("pw\r\n", "pw"), ("pw\n\n", "pw\n"), ("pw ", "pw "), ("pw", "pw")):
        secret.write_text(written, newline="")
        assert Settings.from_env({"SEQCAST_REDIS_PASSWORD_FILE": str(secret)}).redis_password.reveal() == read


def test_librdkafka_errors_are_refusals_by_code_not_by_words() -> None:
    from confluent_kafka import KafkaError

    from streamer.confluent_refusals import refusal

    sasl = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "svc", Secret(PASSWORD))
    down = KafkaError(KafkaError._TRANSPORT, "sasl_ssl://k:9093/bootstrap: Connect to ipv4#10.0.0.1:9093 failed: "
                                             "Connection refused (after 0ms in state CONNECT)")
    assert refusal(down, sasl, "k:9093") is None  # "ssl" and "sasl" in the text: still an outage
    assert refusal(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"), sasl, "k:9093") is None
    cut = KafkaError(KafkaError._SSL, "ssl://k:9093/bootstrap: SSL handshake failed: Disconnected: connection reset")
    assert refusal(cut, sasl, "k:9093") is None
    bad_ca = KafkaError(KafkaError._SSL, "ssl://k:9093/bootstrap: SSL handshake failed: error:0A000086:SSL "
                                         "routines::certificate verify failed: broker certificate could not be verified")
    assert refusal(bad_ca, sasl, "k:9093").startswith("TLS handshake with k:9093 failed: SSL handshake failed: ")
    login = KafkaError(KafkaError._AUTHENTICATION, "sasl_ssl://k:9093/bootstrap: SASL authentication error: "
                                                   "Authentication failed due to invalid credentials")
    assert refusal(login, sasl, "k:9093").startswith("SASL authentication failed for user 'svc' (mechanism "
                                                     "SCRAM-SHA-512) at k:9093: SASL authentication error")
    acl = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Broker: Topic authorization failed")
    assert "check the ACLs of user 'svc'" in refusal(acl, sasl, "k:9093")


def test_kafka_python_log_lines_are_refusals_by_phrase_not_by_names() -> None:
    from streamer.kafka_python_client import _RefusalLog, _refused, _refusal_log

    conn = logging.getLogger("kafka.conn")
    sasl = KafkaSecurity("SASL_SSL", "PLAIN", "svc", Secret(PASSWORD))
    since = _refusal_log.seen
    conn.error("<BrokerConnection client_id=seqcast-glassline, host=kafka-ssl-0:9093 <connecting>>: "
               "Closing connection. KafkaConnectionError: 111 ECONNREFUSED")  # names full of "ssl"/"sasl"
    assert _refusal_log.seen == since and _refused(since, sasl, "k:9093") is None
    conn.error("<BrokerConnection client_id=seqcast-x, host=k:9093 <authenticating>>: Closing connection. "
               "[Error 58] SaslAuthenticationFailedError: Authentication failed during authentication")
    assert _refusal_log.seen == since + 1
    assert str(_refused(since, sasl, "k:9093")).startswith("SASL authentication failed for user 'svc'")
    assert _refused(since, KafkaSecurity(), "k:9093") is None  # plaintext: nothing can refuse credentials
    since = _refusal_log.seen  # kafka-python's repr nests <authenticating>; the first line says why
    conn.error("<BrokerConnection client_id=x, host=k:9093 <authenticating> [IPv4 ('10.0.0.1', 9093)]>: "
               "SaslAuthenticate error: SaslAuthenticationFailedError (bad credentials)")
    conn.error("<BrokerConnection client_id=x, host=k:9093 <authenticating> [IPv4 ('10.0.0.1', 9093)]>: "
               "Closing connection. [Error 58] SaslAuthenticationFailedError: bad credentials")
    assert str(_refused(since, sasl, "k:9093")) == ("SASL authentication failed for user 'svc' (mechanism PLAIN) at "
                                                    "k:9093: SaslAuthenticate error: SaslAuthenticationFailedError "
                                                    "(bad credentials)")
    assert isinstance(_refusal_log, _RefusalLog)


@pytest.fixture
def scrubbed_logger(monkeypatch):
    """kafka-python's admin logger at DEBUG with a JSON handler, restored afterwards, and the
    registered secrets restored too (they are process-wide)."""
    from streamer import logs

    monkeypatch.setattr(logs, "_secrets", set())
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("kafka.admin.client")  # kafka-python logs its whole config at DEBUG
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_registered_secrets_never_reach_a_log_line(scrubbed_logger) -> None:
    logger, stream = scrubbed_logger
    redact(*Settings(redis_url=f"redis://u:{PASSWORD}@h:1/0", redis_password='q"uote\\d').secrets())
    logger.debug("Starting KafkaAdminClient with configuration: %s", {"sasl_plain_password": PASSWORD})
    logger.warning("odd", extra={"fields": {"password": 'q"uote\\d'}})
    text = stream.getvalue()
    assert PASSWORD not in text and "uote" not in text and text.count("********") == 2
