"""Secured Kafka and Redis: the settings users know, mapped onto each client's own option names.

Why one module: the same six Kafka knobs (security protocol, SASL mechanism, user, password,
CA file, client certificate and key, hostname verification) must reach two Kafka backends
whose option names differ (librdkafka's `ssl.ca.location` is kafka-python's `ssl_cafile`), and
redis-py for a single Redis and for Redis Cluster. Keeping the mapping here keeps it in one
table (docs/operations.md prints the same table for operators).

Secrets are `Secret` objects, never plain strings, so that an f-string, a repr of the settings
or a log line shows "********" instead of the password; only the client constructors call
`reveal()`. Errors say what failed in operator terms (`describe_kafka_failure`,
`describe_redis_failure`), without the secret.
"""
from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MASK = "********"


class SecurityError(RuntimeError):
    """A connection refused for a reason waiting will not fix: bad credentials, an untrusted
    certificate, a missing key file. The message names the server, the user or the file."""


class Secret:
    """A password or key passphrase that prints as ******** everywhere except `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = str(value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __str__(self) -> str:
        return MASK if self._value else ""

    def __repr__(self) -> str:
        return f"Secret({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact_url(url: str) -> str:
    """`url` with any password in its user-info replaced by ********."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client of seqcast authenticates and encrypts (defaults: plaintext)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: Secret = Secret()
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_key_password: Secret = Secret()
    ssl_check_hostname: bool = True

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def problems(self) -> list[str]:
        """What is wrong with this combination, in settings' names (empty when usable)."""
        found = []
        if self.protocol not in PROTOCOLS:
            found.append(f"kafka_security_protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
            return found
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                found.append(f"kafka_sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)}, "
                             f"got {self.sasl_mechanism!r}")
            if not self.sasl_username or not self.sasl_password:
                found.append(f"kafka_security_protocol={self.protocol} needs kafka_sasl_username and "
                             "kafka_sasl_password (or SEQCAST_KAFKA_SASL_PASSWORD_FILE)")
        elif self.sasl_username or self.sasl_password:
            found.append(f"kafka_sasl_username/password are set but kafka_security_protocol={self.protocol} "
                         "does not authenticate: use SASL_SSL or SASL_PLAINTEXT")
        tls_files = {"kafka_ssl_cafile": self.ssl_cafile, "kafka_ssl_certfile": self.ssl_certfile,
                     "kafka_ssl_keyfile": self.ssl_keyfile}
        if not self.uses_tls and any(tls_files.values()):
            found.append(f"{', '.join(k for k, v in tls_files.items() if v)} set but kafka_security_protocol="
                         f"{self.protocol} does not use TLS: use SSL or SASL_SSL")
        found += _file_problems(tls_files, "kafka_ssl")
        return found

    def confluent_options(self) -> dict[str, Any]:
        """librdkafka's names (confluent-kafka)."""
        options: dict[str, Any] = {"security.protocol": self.protocol.lower()}
        if self.uses_sasl:
            options |= {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                        "sasl.password": self.sasl_password.reveal()}
        if self.uses_tls:
            options["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
            options |= _given({"ssl.ca.location": self.ssl_cafile, "ssl.certificate.location": self.ssl_certfile,
                               "ssl.key.location": self.ssl_keyfile,
                               "ssl.key.password": self.ssl_key_password.reveal()})
        return options

    def kafka_python_options(self) -> dict[str, Any]:
        """kafka-python's names (the same for KafkaConsumer, KafkaProducer and KafkaAdminClient)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            options |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                        "sasl_plain_password": self.sasl_password.reveal()}
        if self.uses_tls:
            options |= {"ssl_check_hostname": self.ssl_check_hostname, "ssl_cafile": self.ssl_cafile or None,
                        "ssl_certfile": self.ssl_certfile or None, "ssl_keyfile": self.ssl_keyfile or None,
                        "ssl_password": self.ssl_key_password.reveal() or None}
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context these settings describe (used by `check_kafka_tls`)."""
        return _context(self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, self.ssl_key_password,
                        self.ssl_check_hostname)

    def ca_text(self) -> str:
        return _ca_text(self.ssl_cafile)


PLAINTEXT = KafkaSecurity()


@dataclass(frozen=True)
class RedisSecurity:
    """ACL user, password and TLS files for redis-py (single Redis and Redis Cluster alike)."""

    username: str = ""
    password: Secret = Secret()
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_check_hostname: bool = True

    def problems(self, url: str) -> list[str]:
        found = []
        tls_files = {"redis_ssl_cafile": self.ssl_cafile, "redis_ssl_certfile": self.ssl_certfile,
                     "redis_ssl_keyfile": self.ssl_keyfile}
        if any(tls_files.values()) and not url.startswith("rediss://"):
            found.append(f"{', '.join(k for k, v in tls_files.items() if v)} set but redis_url "
                         f"{redact_url(url)} is not rediss:// (TLS)")
        if self.username and not self.password:
            found.append("redis_username is set without redis_password (or SEQCAST_REDIS_PASSWORD_FILE)")
        found += _file_problems(tls_files, "redis_ssl")
        return found

    def client_options(self, url: str) -> dict[str, Any]:
        """Keyword arguments for redis.Redis.from_url / redis.RedisCluster.from_url."""
        options: dict[str, Any] = {}
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password.reveal()
        if url.startswith("rediss://"):
            options |= {"ssl_cert_reqs": "required", "ssl_check_hostname": self.ssl_check_hostname}
            options |= _given({"ssl_ca_certs": self.ssl_cafile, "ssl_certfile": self.ssl_certfile,
                               "ssl_keyfile": self.ssl_keyfile})
        return options

    def ca_text(self) -> str:
        return _ca_text(self.ssl_cafile)


def _ca_text(cafile: str) -> str:
    """Which CA a failed verification was checked against, for the operator's sentence."""
    return f"CA file {cafile}" if cafile else "the system's CA certificates"


def _given(options: dict[str, str]) -> dict[str, str]:
    """The options that are set: an empty file name or passphrase means "leave the client's default"."""
    return {name: value for name, value in options.items() if value}


def _file_problems(files: dict[str, str], prefix: str) -> list[str]:
    """Combination problems only: whether the files exist is checked where they are used
    (Settings.missing_files), so that a manifest naming mounted paths validates anywhere."""
    cert, key = files[f"{prefix}_certfile"], files[f"{prefix}_keyfile"]
    if bool(cert) != bool(key):
        return [f"{prefix}_certfile and {prefix}_keyfile go together (mutual TLS needs both)"]
    return []


def _context(cafile: str, certfile: str, keyfile: str, key_password: Secret, check_hostname: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile or None)
    context.check_hostname = check_hostname
    if certfile:
        context.load_cert_chain(certfile, keyfile or None, key_password.reveal() or None)
    return context


def check_kafka_tls(bootstrap_servers: str, security: KafkaSecurity, timeout_s: float = 5.0) -> None:
    """Complete a TLS handshake with each reachable bootstrap server, or raise SecurityError
    naming the server, the reason and the CA file. A server that does not accept TCP at all is
    left to the client's own retry (the broker may still be starting)."""
    if not security.uses_tls:
        return
    try:
        context = security.ssl_context()
    except (ssl.SSLError, OSError) as err:
        raise SecurityError(f"cannot load the Kafka TLS files (kafka_ssl_certfile {security.ssl_certfile}, "
                            f"kafka_ssl_keyfile {security.ssl_keyfile}): {err}") from None
    for server in filter(None, (s.strip() for s in bootstrap_servers.split(","))):
        host, _, port = server.rpartition(":")
        host = host.strip("[]")  # [::1]:9093
        try:
            raw = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError):
            continue  # not listening (yet): the client's reconnect loop deals with it
        try:
            with context.wrap_socket(raw, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as err:
            raise SecurityError(f"TLS handshake with {server} failed: certificate verify failed: "
                                f"{err.verify_message} ({security.ca_text()})") from None
        except ssl.SSLError as err:
            if isinstance(err, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) or not _refusing_alert(err):
                continue  # cut short (a broker starting or restarting): the client retries
            raise SecurityError(f"TLS handshake with {server} failed: {err.reason or err} "
                                f"({security.ca_text()})") from None
        except OSError:
            continue  # reset, timeout: the same
        finally:
            raw.close()


def _refusing_alert(err: ssl.SSLError) -> bool:
    """A TLS failure that the next attempt will meet again: the server rejected our certificate
    (or lack of one), or it does not speak TLS at all on that port."""
    reason = (err.reason or str(err)).upper()
    return any(word in reason for word in ("CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE_FAILURE", "WRONG_VERSION_NUMBER",
                                           "PROTOCOL_VERSION", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                                           "ACCESS_DENIED"))


def describe_kafka_failure(message: str, security: KafkaSecurity, where: str) -> str | None:
    """An operator's sentence for a client error text that means "refused", else None."""
    detail = re.sub(r"<BrokerConnection (?:[^<>]|<[^<>]*>)*>:?\s*", "", message).strip()
    text = detail.lower()
    if "sasl" in text or "authentication" in text or "signature" in text:
        return (f"SASL authentication failed for user '{security.sasl_username}' "
                f"(mechanism {security.sasl_mechanism}) at {where}: {detail}")
    if "certificate" in text or "ssl" in text or "tls" in text or "handshake" in text:
        return f"TLS handshake with {where} failed: {detail} ({security.ca_text()})"
    return None


def describe_redis_failure(err: BaseException, url: str, security: RedisSecurity) -> str | None:
    """An operator's sentence for a redis-py error that waiting will not fix, else None."""
    import redis.exceptions as rex

    where = redact_url(url)
    text = str(err)
    user = security.username or "default"
    if isinstance(err, rex.NoPermissionError) or "NOPERM" in text or "user executing the script can't run" in text:
        # redis-py strips NOPERM into NoPermissionError; a command refused inside Lua is a plain ResponseError
        return f"Redis user '{user}' at {where} lacks a permission seqcast needs: {text}"
    if isinstance(err, rex.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return f"Redis authentication failed for user '{user}' at {where}: {text}"
    lowered = text.lower()
    if "certificate required" in lowered or (url.startswith("rediss://") and "eof occurred in violation" in lowered):
        return (f"TLS handshake with Redis at {where} failed: the server closed the connection during TLS; it may "
                f"require a client certificate (redis_ssl_certfile, redis_ssl_keyfile) ({security.ca_text()})")
    if "certificate verify failed" in lowered or "wrong version number" in lowered or "ssl" in lowered and (
            "handshake" in lowered or "alert" in lowered):
        return f"TLS handshake with Redis at {where} failed: {text} ({security.ca_text()})"
    return None


def speaks_tls(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when host:port completes a TLS handshake (certificate not checked): used to tell an
    operator that a plain redis:// URL points at a TLS port."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False
