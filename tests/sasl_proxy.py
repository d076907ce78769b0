"""A SASL-terminating Kafka proxy: the server side of SASL/PLAIN and SASL/SCRAM in front of Tansu.

Why: Tansu 0.6 cannot complete a SASL login (without --authentication it refuses every mechanism
in SaslHandshake; with it, `tansu user create` fails), so the clients' own SASL code (librdkafka's
and kafka-python's) could only be tested up to the handshake. This proxy plays the broker's part
of the login, per Kafka's protocol and RFC 5802/7677 (SCRAM), and then relays bytes unchanged to a
plaintext Tansu that advertises the proxy's address, so metadata sends every client back through
it (the same arrangement as secure_infra's TLS proxy; with `ssl_context` it terminates TLS too,
i.e. SASL_SSL).

Per connection, before a successful login: ApiVersions (18) is forwarded to Tansu and its answer
returned (SaslHandshake 17 v0-1 and SaslAuthenticate 36 v0-2 patched in if missing); SaslHandshake
and SaslAuthenticate are answered here (after SaslHandshake v0, the tokens come as bare frames);
any other request closes the connection, as a Kafka broker with a SASL listener does. A refused
login is answered SASL_AUTHENTICATION_FAILED (58) with Kafka's wording, then the connection is
closed. After the login the proxy pipes both ways. `versions` records every (api_key, api_version)
a client sent before its login, per client_id; `logins` and `failures` count per mechanism.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from secure_infra import LoopServer, _pump, start_tansu_behind  # the relay after the login, as behind the TLS proxy
from streamer.embedded import free_port

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_ITERATIONS = 4096
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_SASL_APIS = {SASL_HANDSHAKE: (0, 1), SASL_AUTHENTICATE: (0, 2)}  # what this proxy answers


class Refused(Exception):
    """A login the proxy refuses; the message is what the client is told (Kafka's words)."""


# --- wire format ---------------------------------------------------------------------------------

def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while buf[pos] & 0x80:
        value, shift, pos = value | (buf[pos] & 0x7F) << shift, shift + 7, pos + 1
    return value | buf[pos] << shift, pos + 1


def _put_uvarint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out, value = out + bytes([value & 0x7F | 0x80]), value >> 7
    return out + bytes([value])


def _skip_tags(buf: bytes, pos: int) -> int:
    count, pos = _uvarint(buf, pos)
    for _ in range(count):
        _, pos = _uvarint(buf, pos)
        size, pos = _uvarint(buf, pos)
        pos += size
    return pos


def parse_header(frame: bytes) -> tuple[int, int, int, str | None, int]:
    """(api_key, api_version, correlation_id, client_id, body offset) of a request frame (size removed).
    Header v2 (flexible requests: ApiVersions v3+, SaslAuthenticate v2+) adds tagged fields; its
    client_id stays a classic nullable string."""
    api_key, version, correlation_id, length = struct.unpack_from(">hhih", frame)
    pos = 10 + max(length, 0)
    client_id = frame[10:pos].decode() if length >= 0 else None
    if (api_key == API_VERSIONS and version >= 3) or (api_key == SASL_AUTHENTICATE and version >= 2):
        pos = _skip_tags(frame, pos)
    return api_key, version, correlation_id, client_id, pos


def api_versions(body: bytes, version: int) -> tuple[dict[int, tuple[int, int, bytes]], int]:
    """The entries {api_key: (min, max, tagged fields)} of an ApiVersions response body (after the
    correlation id; v3+ is flexible) and where the array ends; ({}, 0) for an error answer."""
    if struct.unpack_from(">h", body)[0]:
        return {}, 0  # e.g. UNSUPPORTED_VERSION: the client retries with an older version
    if version >= 3:
        count, pos = _uvarint(body, 2)
        count -= 1
    else:
        count, pos = struct.unpack_from(">i", body, 2)[0], 6
    entries = {}
    for _ in range(count):
        key, low, high = struct.unpack_from(">hhh", body, pos)
        end = _skip_tags(body, pos + 6) if version >= 3 else pos + 6
        entries[key], pos = (low, high, body[pos + 6:end]), end
    return entries, pos


def patch_api_versions(body: bytes, version: int) -> bytes:
    """`body` listing the SASL APIs this proxy answers, whatever Tansu listed for them."""
    entries, end = api_versions(body, version)
    if not entries:
        return body
    flexible = version >= 3
    entries |= {key: (low, high, b"\x00" if flexible else b"") for key, (low, high) in _SASL_APIS.items()}
    array = b"".join(struct.pack(">hhh", k, lo, hi) + tags for k, (lo, hi, tags) in sorted(entries.items()))
    size = _put_uvarint(len(entries) + 1) if flexible else struct.pack(">i", len(entries))
    return body[:2] + size + array + body[end:]


def _sized(data: bytes | None, compact: bool, width: str) -> bytes:
    """A (nullable) string or bytes field: classic (int16/int32 length, -1 = null) or compact (uvarint length + 1)."""
    if compact:
        return _put_uvarint(0 if data is None else len(data) + 1) + (data or b"")
    return struct.pack(width, -1 if data is None else len(data)) + (data or b"")


def authenticate_response(version: int, error: int, message: str | None, token: bytes) -> bytes:
    """SaslAuthenticate response body v0-v2 (v2: compact fields, tagged fields; session lifetime 0:
    no re-authentication)."""
    compact = version >= 2
    body = struct.pack(">h", error) + _sized(message and message.encode(), compact, ">h") + _sized(token, compact, ">i")
    if version >= 1:
        body += struct.pack(">q", 0)
    return body + (b"\x00" if compact else b"")


def _authenticate_token(frame: bytes, pos: int, version: int) -> bytes:
    if version >= 2:
        size, pos = _uvarint(frame, pos)
        return frame[pos:pos + size - 1]
    size, = struct.unpack_from(">i", frame, pos)
    return frame[pos + 4:pos + 4 + size]


# --- the server side of the mechanisms -----------------------------------------------------------

def _plain(token: bytes, users: dict[str, str]) -> tuple[str, bytes | None]:
    """PLAIN (RFC 4616): authzid NUL user NUL password, one message. Kafka's wording on failure."""
    try:
        authzid, user, password = token.decode().split("\0")
    except ValueError:
        raise Refused("Invalid SASL/PLAIN response: expected 3 tokens") from None
    if users.get(user) is None or not hmac.compare_digest(users[user].encode(), password.encode()):
        raise Refused("Authentication failed: Invalid username or password")
    if authzid and authzid != user:
        raise Refused("Authentication failed: Client requested an authorization id that is different from username")
    return user, None


class ScramServer:
    """The server of one SCRAM-SHA-256/512 exchange (RFC 5802, RFC 7677): two client messages."""

    def __init__(self, mechanism: str, users: dict[str, str], salt: bytes | None = None,
                 server_nonce: str | None = None) -> None:
        """`salt` and `server_nonce` are random unless given (RFC 7677's example fixes both)."""
        self.mechanism, self.users, self.hash = mechanism, users, _HASHES[mechanism]
        self.salt = salt or os.urandom(16)
        self.server_nonce = server_nonce or base64.b64encode(os.urandom(18)).decode()
        self.first: str | None = None  # client-first-message-bare + "," + server-first-message
        self.user = self.nonce = self.gs2 = ""
        self.salted = b""

    def _refuse(self) -> Refused:
        return Refused("Authentication failed during authentication due to invalid credentials with SASL "
                        f"mechanism {self.mechanism}")

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hash).digest()

    def step(self, token: bytes) -> tuple[str | None, bytes]:
        """The server's answer to one client message; the user once the login succeeded."""
        message = token.decode()
        if self.first is None:
            flag, authzid, bare = message.split(",", 2)  # gs2 header "n,," (no channel binding over Kafka)
            if flag not in ("n", "y"):
                raise Refused(f"Invalid SCRAM client first message: channel binding {flag!r} not supported")
            attrs = dict(a.split("=", 1) for a in bare.split(","))
            self.user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
            if self.user not in self.users or (authzid and authzid[2:] != self.user):
                raise self._refuse()
            self.salted = hashlib.pbkdf2_hmac(self.hash, self.users[self.user].encode(), self.salt, SCRAM_ITERATIONS)
            self.gs2 = f"{flag},{authzid},"
            self.nonce = attrs["r"] + self.server_nonce
            server_first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={SCRAM_ITERATIONS}"
            self.first = f"{bare},{server_first}"
            return None, server_first.encode()
        without_proof, _, proof = message.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(","))
        if attrs.get("r") != self.nonce or base64.b64decode(attrs.get("c", "")) != self.gs2.encode():
            raise Refused("Authentication failed: Invalid client final message")
        auth_message = f"{self.first},{without_proof}".encode()
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof),
                                                 self._hmac(self._stored_key(), auth_message)))
        if not hmac.compare_digest(hashlib.new(self.hash, client_key).digest(), self._stored_key()):
            raise self._refuse()
        signature = self._hmac(self._hmac(self.salted, b"Server Key"), auth_message)
        return self.user, b"v=" + base64.b64encode(signature)

    def _stored_key(self) -> bytes:
        return hashlib.new(self.hash, self._hmac(self.salted, b"Client Key")).digest()


# --- the proxy -----------------------------------------------------------------------------------

class SaslProxy(LoopServer):
    """SASL on 127.0.0.1:`port` (TLS too with `ssl_context`), then a relay to 127.0.0.1:`target_port`.

    A LoopServer (an asyncio loop on a daemon thread), like secure_infra.TlsProxy. `users` maps user -> password
    for every mechanism; `scram_server` makes the SCRAM side (a test may pass a misbehaving one)."""

    def __init__(self, port: int, target_port: int, users: dict[str, str],
                 ssl_context: ssl.SSLContext | None = None, scram_server: type[ScramServer] = ScramServer) -> None:
        self.target_port, self.users, self.scram_server = target_port, dict(users), scram_server
        self.logins: Counter[str] = Counter()  # successful logins per mechanism
        self.failures: Counter[str] = Counter()  # refused logins per mechanism
        self.refused_requests = 0  # connections closed for a request sent before logging in
        self.versions: dict[str, set[tuple[int, int]]] = defaultdict(set)  # client_id -> (api_key, version)
        self.upstream_api_versions: dict[int, tuple[int, int]] = {}  # SASL APIs as Tansu itself listed them
        super().__init__(port, ssl_context)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            logged_in = await self._login(reader, writer, up_reader, up_writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError, KeyError, struct.error):
            logged_in = False
        if not logged_in:
            for w in (writer, up_writer):
                w.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    async def _login(self, reader, writer, up_reader, up_writer) -> bool:
        """Serve frames until a login succeeds (True) or the connection must close (False)."""
        mechanism: str | None = None
        scram: ScramServer | None = None
        while True:
            size, = struct.unpack(">i", await reader.readexactly(4))
            frame = await reader.readexactly(size)
            api_key, version, correlation_id, client_id, pos = parse_header(frame)
            self.versions[client_id or ""].add((api_key, version))
            if api_key == API_VERSIONS:
                up_writer.write(struct.pack(">i", size) + frame)
                await up_writer.drain()
                answer = await up_reader.readexactly(struct.unpack(">i", await up_reader.readexactly(4))[0])
                listed = api_versions(answer[4:], version)[0]
                self.upstream_api_versions |= {k: v[:2] for k, v in listed.items() if k in _SASL_APIS}
                if listed and not set(_SASL_APIS) <= set(listed):
                    answer = answer[:4] + patch_api_versions(answer[4:], version)
                writer.write(struct.pack(">i", len(answer)) + answer)
            elif api_key == SASL_HANDSHAKE and mechanism is None:
                wanted = frame[pos + 2:pos + 2 + struct.unpack_from(">h", frame, pos)[0]].decode()
                supported = wanted in MECHANISMS
                body = struct.pack(">hi", 0 if supported else UNSUPPORTED_SASL_MECHANISM, len(MECHANISMS))
                body += b"".join(_sized(m.encode(), False, ">h") for m in MECHANISMS)
                writer.write(_frame(correlation_id, body, False))
                if not supported:
                    await writer.drain()
                    return False
                mechanism = wanted
                scram = self.scram_server(wanted, self.users) if wanted in _HASHES else None
                if version == 0:  # the tokens follow as bare size-prefixed frames, no SaslAuthenticate
                    await writer.drain()
                    return await self._bare_tokens(reader, writer, mechanism, scram)
            elif api_key == SASL_AUTHENTICATE and mechanism is not None:
                token = _authenticate_token(frame, pos, version)
                try:
                    user, reply = scram.step(token) if scram else _plain(token, self.users)
                except Refused as refused:
                    self.failures[mechanism] += 1
                    body = authenticate_response(version, SASL_AUTHENTICATION_FAILED, str(refused), b"")
                    writer.write(_frame(correlation_id, body, version >= 2))
                    await writer.drain()
                    return False
                writer.write(_frame(correlation_id, authenticate_response(version, 0, None, reply or b""),
                                    version >= 2))
                await writer.drain()
                if user is not None:
                    self.logins[mechanism] += 1
                    return True
            else:  # a request before the login (or SASL out of order): a SASL listener closes
                self.refused_requests += 1
                return False
            await writer.drain()

    async def _bare_tokens(self, reader, writer, mechanism: str, scram: ScramServer | None) -> bool:
        """SASL after SaslHandshake v0: each token in a size-prefixed frame; a refusal just closes."""
        while True:
            token = await reader.readexactly(struct.unpack(">i", await reader.readexactly(4))[0])
            try:
                user, reply = scram.step(token) if scram else _plain(token, self.users)
            except Refused:
                self.failures[mechanism] += 1
                return False
            writer.write(_sized(reply or b"", False, ">i"))
            await writer.drain()
            if user is not None:
                self.logins[mechanism] += 1
                return True


def _frame(correlation_id: int, body: bytes, header_v1: bool) -> bytes:
    """A response frame; header v1 (flexible responses) adds an empty tagged-field section."""
    payload = struct.pack(">i", correlation_id) + (b"\x00" if header_v1 else b"") + body
    return struct.pack(">i", len(payload)) + payload


@dataclass
class KafkaSasl:
    """A plaintext in-memory Tansu reachable, as it advertises, only through a SaslProxy."""

    bootstrap: str  # localhost:<proxy port>
    plaintext: str  # 127.0.0.1:<tansu port>: the broker itself, no login
    proxy: SaslProxy = field(repr=False)
    proc: subprocess.Popen = field(repr=False)

    def stop(self) -> None:
        self.proxy.close()
        self.proc.kill()
        self.proc.wait(timeout=10)


def start_kafka_sasl(users: dict[str, str], log_path: Path, ssl_context: ssl.SSLContext | None = None) -> KafkaSasl:
    """Tansu on a free port advertising tcp://localhost:<proxy>, and the SASL proxy on <proxy>
    (SASL_SSL when `ssl_context` is given, else SASL_PLAINTEXT)."""
    proxy_port = free_port()
    proc, broker_port = start_tansu_behind(proxy_port, log_path)
    try:
        proxy = SaslProxy(proxy_port, broker_port, users, ssl_context)
    except BaseException:
        proc.kill()
        raise
    return KafkaSasl(f"localhost:{proxy_port}", f"127.0.0.1:{broker_port}", proxy, proc)
