"""Secured test infrastructure: a throwaway PKI, Redis over TLS with an ACL user (single node, mutual
TLS, a 3-node cluster) and Kafka over TLS, all real processes on loopback ports.

Why each piece looks the way it does:
- Certificates are made here with `cryptography`, per session, so no key material lives in the repo
  and every run proves the whole chain (CA -> server/client) works. The server certificate names
  localhost and 127.0.0.1 (clients verify host names: seqcast's default) and carries both serverAuth
  and clientAuth, because Redis Cluster nodes present it to each other on the TLS cluster bus.
  A second, unrelated CA is the "wrong CA" of the refusal tests.
- Redis runs with the default user switched off, an `admin` user for the fixtures' own setup and
  cleanup, and a `seqcast` user allowed only the commands seqcast sends (`SEQCAST_REDIS_ACL`), so a
  new command in the window store, live accuracy or the registry fails these tests until the ACL
  documented for operators is extended too. Users come from a 0600 config file, not argv (ps).
- Tansu 0.6 accepts `--cert`/`--key` but serves plain TCP regardless (a TLS ClientHello is read as
  a Kafka frame and the handshake hangs), so Kafka TLS is a TLS-terminating proxy (`TlsProxy`) in
  front of a plaintext Tansu that advertises the proxy's `localhost:port`: metadata sends every
  client back through the proxy, never straight to the plaintext port.

A test module gets the fixtures with `pytest_plugins = ["secure_infra"]` (one plugin instance, so the
session fixtures are shared by every module that names it); call `pytest.register_assert_rewrite(
"secure_infra")` before also importing names from it, as tests/test_secure_redis.py does.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streamer.embedded import free_cluster_ports, free_port, tansu_command, wait_for_port
from streamer.settings import Settings

# Every command seqcast sends as its Redis user: the client side (window store, live accuracy,
# registry, served heartbeats, health checks) and what their Lua scripts call (ACLs apply inside
# scripts too). Cluster clients additionally discover the topology (SEQCAST_REDIS_CLUSTER_ACL).
SEQCAST_REDIS_COMMANDS = (
    "ping", "evalsha", "script|load",
    "get", "set", "incrby", "del", "lpush", "ltrim", "lpop", "lrange",  # registry (redis-py sends INCR as INCRBY)
    "hset", "hdel", "hget", "hmget", "hgetall", "hincrby", "hincrbyfloat",  # windows, marks, heartbeats
    "zadd", "zcard", "zrange", "zrank", "zremrangebyrank", "expire",  # window index
    "sadd", "smembers",  # live accuracy's per-slot total shards
)
SEQCAST_REDIS_ACL = "on ~* resetchannels -@all " + " ".join(f"+{c}" for c in SEQCAST_REDIS_COMMANDS)
SEQCAST_REDIS_CLUSTER_ACL = SEQCAST_REDIS_ACL + " +cluster|slots +command"  # redis-py: topology, key specs
REDIS_USER, REDIS_PASSWORD = "seqcast", "seqcast-tls-pw-7f3a"
ADMIN_USER, ADMIN_PASSWORD = "admin", "admin-tls-pw-91c2"


# --- certificates ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    """PEM files of one test PKI (keys unencrypted, readable by the owner only)."""

    ca: Path  # signed the server and client certificates
    server_cert: Path  # CN=localhost, SAN localhost + 127.0.0.1, serverAuth + clientAuth
    server_key: Path
    client_cert: Path  # CN=seqcast-client, clientAuth (mutual TLS)
    client_key: Path
    other_ca: Path  # an unrelated CA: trusting it must fail verification


def make_pki(directory: Path) -> Pki:
    """Create a CA, a server and a client certificate signed by it, and an unrelated CA, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("seqcast test CA")
    _, other_cert = _ca("unrelated test CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "localhost", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, "seqcast-client", server=False)
    files = {"ca": ca_cert, "server_cert": server_cert, "server_key": server_key, "client_cert": client_cert,
             "client_key": client_key, "other_ca": other_cert}
    names = {"ca": "ca.pem", "server_cert": "server.pem", "server_key": "server.key", "client_cert": "client.pem",
             "client_key": "client.key", "other_ca": "other-ca.pem"}
    paths = {}
    for role, obj in files.items():
        path = directory / names[role]
        if isinstance(obj, x509.Certificate):
            data = obj.public_bytes(serialization.Encoding.PEM)
        else:
            data = obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        path.write_bytes(data)
        path.chmod(0o600)
        paths[role] = path
    return Pki(**paths)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    cert = (_validity(x509.CertificateBuilder()).subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert: x509.Certificate, common_name: str, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    uses = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (_validity(x509.CertificateBuilder())
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(uses), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


# --- Redis over TLS --------------------------------------------------------------------------------

@dataclass
class RedisTls:
    """One TLS Redis (or a cluster: `ports` has every node) and how to reach it."""

    url: str  # rediss://localhost:<port>/0
    ports: list[int]
    pki: Pki
    client_auth: bool  # the server requires a client certificate
    cluster: bool = False
    procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def settings(self, **overrides: Any) -> Settings:
        """seqcast settings for the `seqcast` ACL user (client certificate included when required)."""
        values: dict[str, Any] = {"redis_url": self.url, "redis_username": REDIS_USER, "redis_password": REDIS_PASSWORD,
                                  "redis_ssl_cafile": str(self.pki.ca), "redis_cluster": self.cluster}
        if self.client_auth:
            values |= {"redis_ssl_certfile": str(self.pki.client_cert), "redis_ssl_keyfile": str(self.pki.client_key)}
        return Settings(**(values | overrides))

    def admin(self, port: int | None = None) -> redis.Redis:
        """A client of the fixtures' `admin` user (setup, ACL changes, cleanup), on one node."""
        return redis.Redis(host="localhost", port=port or self.ports[0], username=ADMIN_USER, password=ADMIN_PASSWORD,
                           ssl=True, ssl_ca_certs=str(self.pki.ca), ssl_certfile=str(self.pki.client_cert),
                           ssl_keyfile=str(self.pki.client_key), socket_timeout=10)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)


def redis_tls_conf(pki: Pki, client_auth: bool, cluster: bool = False) -> str:
    """redis.conf text: TLS only (plain port 0), no persistence, default user off, admin + seqcast users."""
    lines = ["port 0", "bind 127.0.0.1", f"tls-cert-file {pki.server_cert}", f"tls-key-file {pki.server_key}",
             f"tls-ca-cert-file {pki.ca}", f"tls-auth-clients {'yes' if client_auth else 'no'}",
             "save \"\"", "appendonly no", "user default off",
             f"user {ADMIN_USER} on >{ADMIN_PASSWORD} ~* &* +@all",
             f"user {REDIS_USER} >{REDIS_PASSWORD} {SEQCAST_REDIS_CLUSTER_ACL if cluster else SEQCAST_REDIS_ACL}"]
    if cluster:
        lines += ["cluster-enabled yes", "tls-cluster yes", "tls-replication yes"]
    return "\n".join(lines) + "\n"


def start_redis_tls(workdir: Path, pki: Pki, client_auth: bool = False) -> RedisTls:
    """A single TLS redis-server on a free port (returns once it answers PING as `admin`)."""
    return _start_nodes(workdir, pki, client_auth, [free_port()], cluster=False)


def start_redis_tls_cluster(workdir: Path, pki: Pki, nodes: int = 3, timeout_s: float = 30.0) -> RedisTls:
    """`nodes` cluster-mode TLS redis-servers (TLS cluster bus too), slots split evenly, state ok."""
    ports = free_cluster_ports(nodes)
    server = _start_nodes(workdir, pki, False, ports, cluster=True)
    try:
        admins = [server.admin(p) for p in ports]
        bounds = [i * 16384 // nodes for i in range(nodes + 1)]
        for admin, start, stop in zip(admins, bounds, bounds[1:]):
            admin.execute_command("CLUSTER ADDSLOTSRANGE", start, stop - 1)
        for port in ports[1:]:
            admins[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        deadline = time.monotonic() + timeout_s
        while not all(a.cluster("INFO").get("cluster_state") == "ok" for a in admins):
            if time.monotonic() > deadline:
                raise TimeoutError(f"TLS Redis Cluster on {ports} did not converge in {timeout_s}s")
            time.sleep(0.1)
        for admin in admins:
            admin.close()
    except BaseException:
        server.stop()
        raise
    return server


def _start_nodes(workdir: Path, pki: Pki, client_auth: bool, ports: list[int], cluster: bool) -> RedisTls:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "redis-tls.conf"
    conf.write_text(redis_tls_conf(pki, client_auth, cluster))
    conf.chmod(0o600)
    procs = []
    for port in ports:
        args = ["redis-server", str(conf), "--tls-port", str(port), "--dir", str(workdir)]
        if cluster:
            args += ["--cluster-config-file", f"nodes-{port}.conf"]
        log = open(workdir / f"redis-{port}.log", "wb")
        procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    server = RedisTls(f"rediss://localhost:{ports[0]}/0", ports, pki, client_auth, cluster, procs)
    try:
        for port in ports:
            wait_for_port(port)
            _wait_ping(server.admin(port))
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ping(client: redis.Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            client.close()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- Kafka over TLS --------------------------------------------------------------------------------

class LoopServer:
    """An asyncio TCP server on 127.0.0.1:`port`, run by its own event loop on a daemon thread, so
    a synchronous test can start and stop it; subclasses give `_handle(reader, writer)`."""

    def __init__(self, port: int, ssl_context: ssl.SSLContext | None = None, **options) -> None:
        self.port = port
        self._ssl, self._options = ssl_context, options
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(lambda loop, context: None)  # refused or dropped connections are expected
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{type(self).__name__}-{port}",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self._ssl,
                                                  reuse_address=True, **self._options)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


class TlsProxy(LoopServer):
    """Terminates TLS on 127.0.0.1:`port` and relays the plaintext bytes to 127.0.0.1:`target_port`.

    An asyncio loop in a daemon thread; `accepted` counts completed TLS handshakes (tests use it to
    prove clients came through the proxy). With `client_ca`, a client certificate signed by it is
    required (mutual TLS)."""

    def __init__(self, port: int, target_port: int, certfile: Path, keyfile: Path, client_ca: Path | None = None) -> None:
        self.target_port = target_port
        self.accepted = 0
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certfile, keyfile)
        # No TLS 1.3 session tickets: they arrive after the handshake, and kafka-python closes a
        # connection that turns readable with no request in flight ("Socket EVENT_READ without
        # in-flight-requests"), which made its admin client fail one connection in three.
        context.num_tickets = 0
        if client_ca is not None:
            context.load_verify_locations(client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        super().__init__(port, context, ssl_handshake_timeout=10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        try:
            dst.close()
        except (OSError, RuntimeError):
            pass


@dataclass
class KafkaTls:
    """A plaintext in-memory Tansu reachable only through a TLS proxy that it advertises."""

    bootstrap: str  # localhost:<proxy port>: what clients use (host name verified against "localhost")
    pki: Pki
    client_auth: bool
    plaintext: str  # 127.0.0.1:<tansu port>: the broker itself (for tests that need to bypass TLS)
    proxy: TlsProxy = field(repr=False)
    proc: subprocess.Popen = field(repr=False)

    @property
    def cafile(self) -> str:
        return str(self.pki.ca)

    def settings(self, **overrides: Any) -> Settings:
        """seqcast settings for this broker: security protocol SSL, the test CA, hostname checks on."""
        values: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "kafka_security_protocol": "SSL",
                                  "kafka_ssl_cafile": self.cafile}
        if self.client_auth:
            values |= {"kafka_ssl_certfile": str(self.pki.client_cert), "kafka_ssl_keyfile": str(self.pki.client_key)}
        return Settings(**(values | overrides))

    def stop(self) -> None:
        self.proxy.close()
        self.proc.kill()
        self.proc.wait(timeout=10)


def start_tansu_behind(proxy_port: int, log_path: Path) -> tuple[subprocess.Popen, int]:
    """A plaintext in-memory Tansu on a free port that advertises tcp://localhost:<proxy_port>, so
    metadata sends every client back through the proxy; returns (process, its own port)."""
    broker_port = free_port()
    command = tansu_command(broker_port)
    command[command.index("--advertised-listener-url") + 1] = f"tcp://localhost:{proxy_port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(broker_port)
    except BaseException:
        proc.kill()
        raise
    return proc, broker_port


def start_kafka_tls(pki: Pki, log_path: Path, client_auth: bool = False) -> KafkaTls:
    """Tansu advertising the TLS proxy, and the proxy (server certificate of `pki`) in front of it."""
    proxy_port = free_port()
    proc, broker_port = start_tansu_behind(proxy_port, log_path)
    try:
        proxy = TlsProxy(proxy_port, broker_port, pki.server_cert, pki.server_key, pki.ca if client_auth else None)
    except BaseException:
        proc.kill()
        raise
    return KafkaTls(f"localhost:{proxy_port}", pki, client_auth, f"127.0.0.1:{broker_port}", proxy, proc)


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def redis_tls(pki, tmp_path_factory) -> RedisTls:
    """TLS Redis with ACL users; no client certificate required (tls-auth-clients no)."""
    server = start_redis_tls(tmp_path_factory.mktemp("redis-tls"), pki, client_auth=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_mtls(pki, tmp_path_factory) -> RedisTls:
    """TLS Redis with ACL users that also requires a client certificate of the test CA."""
    server = start_redis_tls(tmp_path_factory.mktemp("redis-mtls"), pki, client_auth=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_tls_cluster(pki, tmp_path_factory) -> RedisTls:
    """A 3-node Redis Cluster over TLS (client port and cluster bus), ACL users on every node."""
    server = start_redis_tls_cluster(tmp_path_factory.mktemp("redis-tls-cluster"), pki)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_tls(pki, tmp_path_factory) -> KafkaTls:
    """Tansu behind a TLS proxy (server authentication only)."""
    broker = start_kafka_tls(pki, tmp_path_factory.mktemp("kafka-tls") / "tansu.log")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_mtls(pki, tmp_path_factory) -> KafkaTls:
    """Tansu behind a TLS proxy that requires a client certificate of the test CA."""
    broker = start_kafka_tls(pki, tmp_path_factory.mktemp("kafka-mtls") / "tansu.log", client_auth=True)
    yield broker
    broker.stop()


__all__ = ["Pki", "make_pki", "RedisTls", "start_redis_tls", "start_redis_tls_cluster", "TlsProxy", "KafkaTls",
           "start_kafka_tls", "pki", "redis_tls", "redis_mtls", "redis_tls_cluster", "kafka_tls", "kafka_mtls",
           "SEQCAST_REDIS_ACL", "SEQCAST_REDIS_CLUSTER_ACL", "SEQCAST_REDIS_COMMANDS", "REDIS_USER",
           "REDIS_PASSWORD"]
