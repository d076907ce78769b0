"""SASL logins end to end, with the clients' own SASL code (librdkafka's and kafka-python's).

Tansu 0.6 cannot complete a SASL login, so tests/sasl_proxy.py plays the broker's side (PLAIN,
SCRAM-SHA-256/512 per RFC 5802/7677) in front of a plaintext Tansu that advertises the proxy:
a round trip that succeeds logged in on every connection the client opened (the proxy closes
any that sends a request before logging in, and counts the logins per mechanism).
- Both backends of streamer.transport create a topic, produce and consume with each mechanism,
  over SASL_PLAINTEXT and (SCRAM-SHA-512) over SASL_SSL, the proxy terminating TLS too.
- A wrong password makes `check_connection` raise SecurityError naming the user and the
  mechanism, without the password.
- `seqcast replay` -> `seqcast serve` -> `seqcast tail` run over SASL with the password from a
  file, and no output carries it.
- A server that fails SCRAM's mutual authentication (a forged ServerSignature) is refused.
- The proxy itself: RFC 7677's SCRAM-SHA-256 example, SaslAuthenticate v2 (flexible) and
  SaslHandshake v0 (bare tokens), which neither client sends today, the ApiVersions patch, an
  unknown mechanism and a request before the login.
Versions measured (librdkafka 2.16.0 / kafka-python 2.2.21): ApiVersions v3 / v4, SaslHandshake
v1 / v1, SaslAuthenticate v1 / v0; Tansu lists SaslHandshake v0-1 and SaslAuthenticate v0-2.
"""
from __future__ import annotations

import base64
import socket
import ssl
import struct
import time
import uuid

import pytest

pytest.register_assert_rewrite("secure_infra", "sasl_proxy")
from conftest import REDIS_URL  # noqa: E402
from sasl_proxy import (SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM, KafkaSasl, SaslProxy,  # noqa: E402
                        ScramServer, api_versions, patch_api_versions, start_kafka_sasl)
from streamer import transport  # noqa: E402
from streamer.embedded import free_port  # noqa: E402
from streamer.security import KafkaSecurity, Secret, SecurityError, check_kafka_tls  # noqa: E402
from test_security_live import environment, pipeline  # noqa: E402

pytest_plugins = ["secure_infra"]  # pki (the SASL_SSL proxy's server certificate)
pytestmark = pytest.mark.slow

USER, PASSWORD = "svc-seqcast", "Sasl-Pw-77c1-MARKER"
WRONG = "Wrong-Sasl-Pw-MARKER"
MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]


@pytest.fixture(scope="session")
def kafka_sasl(tmp_path_factory) -> KafkaSasl:
    """Tansu behind the SASL proxy (SASL_PLAINTEXT)."""
    broker = start_kafka_sasl({USER: PASSWORD}, tmp_path_factory.mktemp("kafka-sasl") / "tansu.log")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_sasl_ssl(pki, tmp_path_factory) -> KafkaSasl:
    """Tansu behind the SASL proxy terminating TLS with the test PKI's localhost certificate (SASL_SSL)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.num_tickets = 0  # see secure_infra.TlsProxy: kafka-python drops a connection readable while idle
    broker = start_kafka_sasl({USER: PASSWORD}, tmp_path_factory.mktemp("kafka-sasl-ssl") / "tansu.log", context)
    yield broker
    broker.stop()


def sasl(mechanism: str, password: str = PASSWORD, protocol: str = "SASL_PLAINTEXT", **tls: object) -> KafkaSecurity:
    return KafkaSecurity(protocol=protocol, sasl_mechanism=mechanism, sasl_username=USER,
                         sasl_password=Secret(password), **tls)


def roundtrip(bootstrap: str, client: str, security: KafkaSecurity, value: bytes) -> list[bytes | None]:
    """Create a topic, produce `value` and read it back through streamer.transport's `client`."""
    topic = f"sasl-{uuid.uuid4().hex[:10]}"
    transport.create_topics(bootstrap, [topic], client=client, security=security)
    producer = transport.Producer(bootstrap, linger_ms=2, client=client, security=security)
    try:
        producer.send(topic, value, key=b"k")
        assert producer.flush(15) == 1
    finally:
        producer.close()
    consumer = transport.Consumer(bootstrap, topic, None, assign_all=True, client=client, security=security)
    try:
        deadline, got = time.monotonic() + 20, []
        while not got and time.monotonic() < deadline:
            got = [r.value for r in consumer.poll(500)]
        return got
    finally:
        consumer.close()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_both_clients_log_in_produce_and_consume(kafka_sasl: KafkaSasl, kafka_client: str, mechanism: str):
    proxy = kafka_sasl.proxy
    logins, failures = proxy.logins[mechanism], sum(proxy.failures.values())
    value = f"{kafka_client} {mechanism}".encode()
    assert roundtrip(kafka_sasl.bootstrap, kafka_client, sasl(mechanism), value) == [value]
    assert proxy.logins[mechanism] > logins
    assert sum(proxy.failures.values()) == failures and proxy.refused_requests == 0
    assert 17 in proxy.upstream_api_versions and 36 in proxy.upstream_api_versions  # Tansu lists them itself
    sent = set().union(*(v for cid, v in proxy.versions.items() if cid != "test"))  # "test": the raw-socket tests
    assert {v for k, v in sent if k == 17} == {1}, sent  # v0 (unframed tokens) is never needed
    assert {v for k, v in sent if k == 36} <= {0, 1, 2}, sent


def test_both_clients_log_in_over_sasl_ssl(kafka_sasl_ssl: KafkaSasl, kafka_client: str, pki):
    security = sasl("SCRAM-SHA-512", protocol="SASL_SSL", ssl_cafile=str(pki.ca))
    before = kafka_sasl_ssl.proxy.logins["SCRAM-SHA-512"]
    assert roundtrip(kafka_sasl_ssl.bootstrap, kafka_client, security, b"sasl-ssl") == [b"sasl-ssl"]
    assert kafka_sasl_ssl.proxy.logins["SCRAM-SHA-512"] > before
    check_kafka_tls(kafka_sasl_ssl.bootstrap, security)  # TLS is really there, and verified:
    with pytest.raises(SecurityError, match="certificate verify failed"):
        check_kafka_tls(kafka_sasl_ssl.bootstrap,
                        sasl("SCRAM-SHA-512", protocol="SASL_SSL", ssl_cafile=str(pki.other_ca)))


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_wrong_password_is_a_security_error_naming_user_and_mechanism(kafka_sasl: KafkaSasl, kafka_client: str,
                                                                      mechanism: str):
    proxy = kafka_sasl.proxy
    failures = proxy.failures[mechanism]
    transport.check_connection(kafka_sasl.bootstrap, client=kafka_client, security=sasl(mechanism))  # accepted
    with pytest.raises(SecurityError) as refused:
        transport.check_connection(kafka_sasl.bootstrap, client=kafka_client, security=sasl(mechanism, WRONG))
    text = str(refused.value)
    assert text.startswith(f"SASL authentication failed for user '{USER}' (mechanism {mechanism})"), text
    assert kafka_sasl.bootstrap in text and WRONG not in text and PASSWORD not in text
    assert ("invalid credentials" if mechanism.startswith("SCRAM") else "Invalid username or password") in text
    assert proxy.failures[mechanism] > failures


class ForgedSignature(ScramServer):
    """A server that accepts the client's proof but cannot prove it knows the password (an impostor)."""

    def step(self, token: bytes) -> tuple[str | None, bytes]:
        user, reply = super().step(token)
        return (user, b"v=" + base64.b64encode(bytes(32))) if user else (user, reply)


@pytest.mark.parametrize("kafka_client", ["confluent", "kafka-python"])
def test_a_server_that_fails_scram_mutual_authentication_is_refused(kafka_sasl: KafkaSasl, kafka_client: str):
    """SCRAM authenticates the server too (RFC 5802 section 5: the ServerSignature)."""
    port = free_port()
    impostor = SaslProxy(port, int(kafka_sasl.plaintext.rsplit(":", 1)[1]), {USER: PASSWORD},
                         scram_server=ForgedSignature)
    try:
        with pytest.raises(SecurityError) as refused:
            transport.check_connection(f"localhost:{port}", client=kafka_client, security=sasl("SCRAM-SHA-256"),
                                       timeout_s=3)
        assert str(refused.value).startswith(f"SASL authentication failed for user '{USER}' (mechanism SCRAM-SHA-256)")
        assert PASSWORD not in str(refused.value)
    finally:
        impostor.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])  # PLAIN: the password itself goes on the wire
def test_serve_runs_over_sasl_and_prints_no_password(kafka_sasl: KafkaSasl, bundle_dir, key_prefix, tmp_path,
                                                     kafka_client: str, mechanism: str) -> None:
    run, port = key_prefix, free_port()
    env = environment(tmp_path, bootstrap_servers=kafka_sasl.bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
                      kafka_sasl_mechanism=mechanism, kafka_sasl_username=USER, kafka_sasl_password=PASSWORD,
                      redis_url=REDIS_URL, input_topic=f"{run}-events", output_topic=f"{run}-predictions",
                      dlq_topic=f"{run}-dlq", key_prefix=run, group_id=run, assign_all_partitions="true",
                      bundle=bundle_dir, metrics_port=port, metrics_host="127.0.0.1", poll_timeout_ms=100,
                      log_level="DEBUG", stats_interval_s=1, kafka_client=kafka_client)
    logins = kafka_sasl.proxy.logins[mechanism]
    outputs = pipeline(env, port, tmp_path, events=100)
    assert kafka_sasl.proxy.logins[mechanism] >= logins + 3  # replay, serve and tail each logged in
    for name, text in outputs.items():
        assert PASSWORD not in text, f"the SASL password appears in {name}"


# --- the proxy itself, on raw sockets --------------------------------------------------------------

def test_the_scram_server_reproduces_rfc7677s_example():
    """RFC 7677 section 3: user "user", password "pencil", fixed nonces and salt."""
    server = ScramServer("SCRAM-SHA-256", {"user": "pencil"}, salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="),
                         server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    user, first = server.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert user is None and first == b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0," \
                                     b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    user, final = server.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                              b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert user == "user" and final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def request(api_key: int, version: int, correlation_id: int, body: bytes, flexible: bool = False) -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"test" + (b"\x00" if flexible else b"")
    return struct.pack(">i", len(header + body)) + header + body


def response(sock: socket.socket) -> bytes:
    """One response frame's payload (correlation id first), or b"" when the proxy closed."""
    size = sock.recv(4, socket.MSG_WAITALL)
    return sock.recv(struct.unpack(">i", size)[0], socket.MSG_WAITALL) if len(size) == 4 else b""


def varint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out, value = out + bytes([value & 0x7F | 0x80]), value >> 7
    return out + bytes([value])


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while data[pos] & 0x80:
        value, shift, pos = value | (data[pos] & 0x7F) << shift, shift + 7, pos + 1
    return value | data[pos] << shift, pos + 1


def connect(kafka: KafkaSasl) -> socket.socket:
    return socket.create_connection(("127.0.0.1", kafka.proxy.port), timeout=10)


def handshake(sock: socket.socket, mechanism: str, version: int = 1) -> bytes:
    sock.sendall(request(17, version, 1, struct.pack(">h", len(mechanism)) + mechanism.encode()))
    return response(sock)


@pytest.mark.parametrize("version", [0, 3])  # classic and flexible (compact array, tagged fields)
def test_api_versions_are_patched_to_what_the_proxy_answers(kafka_sasl: KafkaSasl, version: int):
    """Tansu lists SaslHandshake and SaslAuthenticate itself, so the proxy relays its answer as it is;
    the patch (for a broker that does not) must keep every other entry and the fields after them."""
    host, port = kafka_sasl.plaintext.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request(18, version, 7, b"\x04seq\x021\x00" if version >= 3 else b"", flexible=version >= 3))
        body = response(sock)[4:]
    entries, end = api_versions(body, version)
    assert len(entries) > 10 and 3 in entries and 17 in entries and 36 in entries
    patched = patch_api_versions(body, version)
    new, new_end = api_versions(patched, version)
    others = {k: v for k, v in entries.items() if k not in (17, 36)}
    assert {k: v for k, v in new.items() if k not in (17, 36)} == others
    assert new[17][:2] == (0, 1) and new[36][:2] == (0, 2) and patched[new_end:] == body[end:]
    del entries[17], entries[36]  # a broker without SASL APIs: patched in
    flexible = version >= 3
    array = b"".join(struct.pack(">hhh", k, lo, hi) + tags for k, (lo, hi, tags) in entries.items())
    bare = body[:2] + (varint(len(entries) + 1) if flexible else struct.pack(">i", len(entries))) + array + body[end:]
    assert api_versions(patch_api_versions(bare, version), version)[0] == new


def test_sasl_handshake_v0_then_bare_scram_tokens(kafka_sasl: KafkaSasl):
    """SaslHandshake v0: the SASL tokens follow as bare size-prefixed frames (no SaslAuthenticate)."""
    from kafka.sasl.scram import SaslMechanismScram

    before = kafka_sasl.proxy.logins["SCRAM-SHA-512"]
    with connect(kafka_sasl) as sock:
        assert struct.unpack_from(">h", handshake(sock, "SCRAM-SHA-512", version=0), 4)[0] == 0
        client = SaslMechanismScram(sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=USER,
                                    sasl_plain_password=PASSWORD)
        while not client.is_done():
            token = client.auth_bytes()
            sock.sendall(struct.pack(">i", len(token)) + token)
            client.receive(response(sock))
        sock.sendall(request(18, 0, 5, b""))
        assert struct.unpack_from(">ih", response(sock)) == (5, 0)
    assert kafka_sasl.proxy.logins["SCRAM-SHA-512"] == before + 1
    with connect(kafka_sasl) as sock:  # a wrong password: closed without an answer, as Kafka does for v0
        handshake(sock, "PLAIN", version=0)
        token = f"\0{USER}\0{WRONG}".encode()
        sock.sendall(struct.pack(">i", len(token)) + token)
        assert response(sock) == b""


def test_sasl_authenticate_v2_flexible_scram_and_apiversions(kafka_sasl: KafkaSasl):
    """SaslAuthenticate v2 (compact bytes, tagged fields, response header v1), driven by kafka-python's
    SCRAM client code, which also checks the proxy's server signature; ApiVersions lists 17 and 36."""
    from kafka.sasl.scram import SaslMechanismScram

    def authenticate(sock: socket.socket, token: bytes, correlation_id: int) -> tuple[int, bytes]:
        sock.sendall(request(36, 2, correlation_id, varint(len(token) + 1) + token + b"\x00", flexible=True))
        answer = response(sock)
        assert struct.unpack_from(">ib", answer) == (correlation_id, 0)  # header v1: no tagged fields
        error, message_len = struct.unpack_from(">hB", answer, 5)
        assert message_len == 0  # a compact null string: no error message
        size, start = read_varint(answer, 8)
        assert answer[start + size - 1:] == bytes(8) + b"\x00"  # session lifetime 0, no tagged fields
        return error, answer[start:start + size - 1]

    with connect(kafka_sasl) as sock:
        sock.sendall(request(18, 3, 0, b"\x04seq\x021\x00", flexible=True))
        entries, _ = api_versions(response(sock)[4:], 3)
        assert entries[17][:2] == (0, 1) and entries[36][1] >= 2, entries
        assert handshake(sock, "SCRAM-SHA-256")[4:6] == b"\x00\x00"
        client = SaslMechanismScram(sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=USER,
                                    sasl_plain_password=PASSWORD)
        for correlation_id in (2, 3):
            error, token = authenticate(sock, client.auth_bytes(), correlation_id)
            assert error == 0
            client.receive(token)  # raises on a wrong server signature
        assert client.is_authenticated()
        sock.sendall(request(18, 0, 4, b""))  # now relayed to Tansu as it is
        assert struct.unpack_from(">ih", response(sock)) == (4, 0)


def test_unknown_mechanisms_bad_logins_and_requests_before_login_are_refused(kafka_sasl: KafkaSasl):
    proxy = kafka_sasl.proxy
    with connect(kafka_sasl) as sock:
        answer = handshake(sock, "GSSAPI")
        assert struct.unpack_from(">h", answer, 4)[0] == UNSUPPORTED_SASL_MECHANISM
        assert b"SCRAM-SHA-512" in answer and response(sock) == b""  # listed, then closed
    with connect(kafka_sasl) as sock:
        handshake(sock, "PLAIN")
        token = f"\0{USER}\0{WRONG}".encode()
        sock.sendall(request(36, 1, 2, struct.pack(">i", len(token)) + token))
        answer = response(sock)
        assert struct.unpack_from(">h", answer, 4)[0] == SASL_AUTHENTICATION_FAILED
        assert b"Authentication failed: Invalid username or password" in answer and response(sock) == b""
    refused = proxy.refused_requests
    with connect(kafka_sasl) as sock:
        sock.sendall(request(3, 1, 1, struct.pack(">i", -1)))  # Metadata (all topics) before any login
        assert response(sock) == b""
    assert proxy.refused_requests == refused + 1
