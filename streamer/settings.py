"""Every knob of the streamer, in one frozen object, read from the environment in one place.

`Settings.from_env()` maps `SEQCAST_<FIELD>` (upper case) onto the fields
below; command-line flags arrive as keyword overrides. A misspelt variable or
override is an error that names it, because a silently ignored knob is worse
than a refused start. Two exceptions, both conventions of the platforms seqcast runs on:
`SEQCAST_<NAME>_FILE=/path` reads the setting from a file (Docker and Kubernetes secrets),
and the variables Kubernetes injects for a Service named `seqcast...` (service links:
`SEQCAST_SERVICE_HOST`, `SEQCAST_PORT_9108_TCP_ADDR`, ...) are not settings and are skipped.
Secrets (passwords) are `Secret` objects that print as ********.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from streamer.security import KafkaSecurity, RedisSecurity, Secret, redact_url

ENV_PREFIX = "SEQCAST_"
FILE_SUFFIX = "_FILE"
# Variables with this prefix that belong to other parts of seqcast (trainer, tests, demo).
FOREIGN_ENV = frozenset({"SEQCAST_TEST_REDIS"})  # the test suite's Redis URL
# Kubernetes service links for a Service whose name starts with "seqcast" ({NAME}_SERVICE_HOST,
# {NAME}_SERVICE_PORT[_{PORT_NAME}], {NAME}_PORT, {NAME}_PORT_{N}_{PROTO}[_PROTO|_PORT|_ADDR]).
_SERVICE_LINK_NAME = re.compile(r"^SEQCAST(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|"
                                r"PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$")
_SERVICE_LINK_URL = re.compile(r"^(tcp|udp|sctp)://[^/\s]+:\d+$")  # the value of {NAME}_PORT


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Settings:
    """The streamer's configuration.

    Kafka
      bootstrap_servers     host:port[,host:port] of the brokers.
      input_topic           events are read from here ("events").
      output_topic          one prediction per valid event goes here ("predictions").
      dlq_topic             invalid messages go here unchanged, reason in headers ("events.dlq").
      group_id              consumer group; offsets are committed under it even with
                            assign_all_partitions.
      assign_all_partitions False: join the consumer group (scaling, failover). True: read every
                            partition of input_topic without group membership (one process;
                            no ~session_timeout/2 join delay; offsets still committed).
      session_timeout_ms    group session timeout. On Tansu a join takes about half of it and a
                            restart after a crash waits for the dead member to time out, so
                            smaller restarts faster; too small and a busy CPU causes rebalances.
      max_poll_records      most records per batch (one Redis round trip, one inference call).
      poll_timeout_ms       longest wait for a batch; also how quickly SIGTERM is noticed.
      commit_interval_ms    checkpoint (flush the producer, then commit offsets) once this much
                            time has passed since the last one; 0 = after every batch ...
      commit_max_records    ... or once this many records were processed since (0 = no count
                            trigger). Larger values mean fewer round trips and more re-sent
                            predictions after a crash.
      producer_linger_ms    producer batching delay; predictions leave at most this much later.
      kafka_client          "confluent" (confluent-kafka / librdkafka, the default: a fraction of the
                            CPU per message) or "kafka-python" (pure Python). Same guarantees either
                            way; see streamer/transport.py.
      dlq_max_message_bytes a rejected message larger than this (key + value + headers) goes to the
                            DLQ as a bounded record: the first 1 KiB of key and value, its size and
                            source coordinates in headers. Keep it at or below the DLQ topic's
                            max.message.bytes (Kafka's default is 1,048,588).
      kafka_security_protocol   PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL (Kafka's
                            security.protocol), for every Kafka client seqcast runs.
      kafka_sasl_mechanism  PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_* protocol).
      kafka_sasl_username, kafka_sasl_password   SASL credentials; the password is a secret
                            (SEQCAST_KAFKA_SASL_PASSWORD or ..._FILE), printed as ********.
      kafka_ssl_cafile      PEM file of the CA that signed the brokers' certificates ("" = the
                            system's CA store).
      kafka_ssl_certfile, kafka_ssl_keyfile, kafka_ssl_key_password   client certificate and key for
                            mutual TLS (the key's passphrase is a secret).
      kafka_ssl_check_hostname  verify that the broker's certificate names the host connected to
                            (on by default; turn off only for a broker reached by IP with a
                            certificate that does not list it).
    Redis
      redis_url             redis://host:port/db, or rediss:// for TLS; a cluster is used when
                            redis_cluster is true. Put no password in it: use redis_password.
      redis_username, redis_password   ACL user and its password (a secret; also ..._FILE).
      redis_ssl_cafile, redis_ssl_certfile, redis_ssl_keyfile   CA and client certificate/key (PEM)
                            for rediss://.
      redis_ssl_check_hostname  verify the server certificate's host name (on by default).
      redis_cluster         talk to Redis Cluster (the window keys carry a hash tag per user).
      key_prefix            first component of every key ("sc" -> "sc:{user}:win").
      window_len            events kept per user; 0 = the bundle's window length L.
      window_slack          extra (older) events kept beyond window_len so that an event
                            re-processed after a crash sees exactly the window it saw the first
                            time (as long as fewer than this many newer events of that user were
                            processed before the crash).
      window_ttl_seconds    an inactive user's window expires after this long (0 = never).
    Model
      bundle                a bundle directory (models/<name>/<version>); wins over the two below.
      models_dir            where bundles live ...
      model_name            ... and which one: the newest version of models_dir/model_name.
      top_k                 recommendations per prediction; 0 = the bundle's default.
      inference_threads     onnxruntime intra-op threads (leave cores for Kafka and Redis).
      trusted_keys          comma-separated Ed25519 public key files (PEM). When set, every bundle
                            served, promoted or inspected must carry a valid signature by one of
                            them (`seqcast sign`); "" = signatures are not required.
    Rollouts
      registry_poll_ms      how often the model registry in Redis ({key_prefix}:model:*) is checked
                            for promotions, canaries and shadows; 0 = serve `bundle` only, no registry.
      live_accuracy         score each user's previous prediction when the next event arrives
                            (HR@K, MAE per model version and arm); the marks are read with the windows (same
                            Redis call), so it costs one extra round trip per batch: the write.
      rollout_controller    run the automated rollout controller (`seqcast rollout`) as a duty of this
                            service: every instance competes for one lease in Redis and only the holder
                            acts; off = run `seqcast rollout controller` as its own process instead.
    Operations
      metrics_host, metrics_port  /metrics and /healthz listen here; port 0 = no HTTP server.
      log_level             DEBUG, INFO, WARNING or ERROR; logs are JSON lines on stderr.
      stats_interval_s      how often the loop logs a throughput summary.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    input_topic: str = "events"
    output_topic: str = "predictions"
    dlq_topic: str = "events.dlq"
    group_id: str = "seqcast"
    assign_all_partitions: bool = False
    session_timeout_ms: int = 10000
    max_poll_records: int = 500
    poll_timeout_ms: int = 200
    commit_interval_ms: int = 1000
    commit_max_records: int = 0
    producer_linger_ms: int = 5
    kafka_client: str = "confluent"  # = streamer.transport.DEFAULT_CLIENT
    dlq_max_message_bytes: int = 1_000_000
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: Secret = Secret()
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    kafka_ssl_key_password: Secret = Secret()
    kafka_ssl_check_hostname: bool = True
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_username: str = ""
    redis_password: Secret = Secret()
    redis_ssl_cafile: str = ""
    redis_ssl_certfile: str = ""
    redis_ssl_keyfile: str = ""
    redis_ssl_check_hostname: bool = True
    redis_cluster: bool = False
    key_prefix: str = "sc"
    window_len: int = 0
    window_slack: int = 32
    window_ttl_seconds: int = 7 * 24 * 3600
    bundle: str = ""
    models_dir: str = "models"
    model_name: str = ""
    top_k: int = 0
    inference_threads: int = 1
    trusted_keys: str = ""
    registry_poll_ms: int = 1000
    live_accuracy: bool = True
    rollout_controller: bool = True
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9108
    log_level: str = "INFO"
    stats_interval_s: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):  # secrets given as plain strings (keyword overrides, tests) are wrapped
            if f.type == "Secret" and not isinstance(getattr(self, f.name), Secret):
                object.__setattr__(self, f.name, Secret(getattr(self, f.name) or ""))
        problems = self.kafka_security().problems() + self.redis_security().problems(self.redis_url)
        if problems:
            raise SettingsError("; ".join(problems))
        for name in ("session_timeout_ms", "max_poll_records", "poll_timeout_ms", "inference_threads",
                     "dlq_max_message_bytes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("commit_interval_ms", "commit_max_records", "producer_linger_ms", "window_len",
                     "window_slack", "window_ttl_seconds", "top_k", "metrics_port", "stats_interval_s",
                     "registry_poll_ms"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.dlq_max_message_bytes < 4096:
            raise SettingsError(f"dlq_max_message_bytes must be at least 4096 (a bounded dead letter keeps "
                                f"1 KiB of key and value plus headers), got {self.dlq_max_message_bytes}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.kafka_client not in ("confluent", "kafka-python"):
            raise SettingsError(f"kafka_client must be confluent or kafka-python, got {self.kafka_client!r}")
        if len({self.input_topic, self.output_topic, self.dlq_topic}) != 3:
            raise SettingsError("input_topic, output_topic and dlq_topic must differ")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Settings from `SEQCAST_*` variables, then `overrides` (None values are ignored)."""
        environ = os.environ if environ is None else environ
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            name, from_file = setting_of(key, raw)
            if name is None:
                continue
            if name in values:
                raise SettingsError(f"{key} and {ENV_PREFIX}{name.upper()}{'' if from_file else FILE_SUFFIX} "
                                    "are both set: keep one")
            if from_file:
                raw = _read_setting_file(key, raw)
            values[name] = _convert(key, raw, known[name].type)
        for name, value in overrides.items():
            if name not in known:
                raise SettingsError(f"unknown setting {name!r}")
            if value is not None:
                values[name] = value
        return cls(**values)

    def __repr__(self) -> str:
        """Secrets print as ********, and so does a password written into redis_url."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["redis_url"] = redact_url(self.redis_url)
        shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
        return f"Settings({shown})"

    def secrets(self) -> list[str]:
        """Every secret value these settings hold (for log scrubbing: streamer.logs.redact)."""
        url_password = urlsplit(self.redis_url).password or ""
        return [s for s in (self.kafka_sasl_password.reveal(), self.kafka_ssl_key_password.reveal(),
                            self.redis_password.reveal(), url_password) if s]

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(self.kafka_security_protocol.upper(), self.kafka_sasl_mechanism.upper(),
                             self.kafka_sasl_username, self.kafka_sasl_password, self.kafka_ssl_cafile,
                             self.kafka_ssl_certfile, self.kafka_ssl_keyfile, self.kafka_ssl_key_password,
                             self.kafka_ssl_check_hostname)

    def redis_security(self) -> RedisSecurity:
        return RedisSecurity(self.redis_username, self.redis_password, self.redis_ssl_cafile,
                             self.redis_ssl_certfile, self.redis_ssl_keyfile, self.redis_ssl_check_hostname)

    def missing_files(self) -> list[str]:
        """Configured TLS and key files that cannot be read here (checked at start, not at parse
        time, so that a manifest naming mounted paths can be validated anywhere)."""
        named = {"kafka_ssl_cafile": self.kafka_ssl_cafile, "kafka_ssl_certfile": self.kafka_ssl_certfile,
                 "kafka_ssl_keyfile": self.kafka_ssl_keyfile, "redis_ssl_cafile": self.redis_ssl_cafile,
                 "redis_ssl_certfile": self.redis_ssl_certfile, "redis_ssl_keyfile": self.redis_ssl_keyfile}
        named |= {f"trusted_keys[{i}]": p for i, p in enumerate(self.trusted_key_files())}
        return [f"{name}: {path} is not a readable file" for name, path in named.items()
                if path and not os.access(path, os.R_OK)]

    def trusted_key_files(self) -> list[str]:
        return [p.strip() for p in self.trusted_keys.split(",") if p.strip()]

    def bundle_path(self) -> Path:
        """The bundle to serve: `bundle`, else the newest version under models_dir/model_name."""
        if self.bundle:
            return Path(self.bundle)
        if not self.model_name:
            raise SettingsError("set bundle (SEQCAST_BUNDLE / --bundle) or model_name (SEQCAST_MODEL_NAME)")
        root = Path(self.models_dir) / self.model_name
        versions = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if not versions:
            raise SettingsError(f"no bundle versions under {root}")
        return versions[-1]  # versions are timestamp-first, so lexical order is age order


def setting_of(key: str, value: str = "") -> tuple[str | None, bool]:
    """(field name, read from a file?) for an environment variable; (None, False) when it is not
    a streamer setting (another prefix, the test suite's own, a Kubernetes service link).
    Raises SettingsError for a SEQCAST_* name that is none of those (a misspelt setting)."""
    if not key.startswith(ENV_PREFIX) or key in FOREIGN_ENV:
        return None, False
    known = {f.name for f in fields(Settings)}
    name = key[len(ENV_PREFIX):].lower()
    if name in known:
        if name.endswith("_port") and _SERVICE_LINK_URL.match(value.strip()):
            return None, False  # e.g. SEQCAST_METRICS_PORT=tcp://10.0.0.7:9108 for a Service "seqcast-metrics"
        return name, False
    if key.endswith(FILE_SUFFIX) and name[: -len(FILE_SUFFIX)] in known:
        return name[: -len(FILE_SUFFIX)], True
    if key == "SEQCAST_PORT" or _SERVICE_LINK_NAME.match(key) or (
            key.endswith("_PORT") and _SERVICE_LINK_URL.match(value.strip())):  # {NAME}_PORT of Service "seqcast-x"
        return None, False
    raise SettingsError(f"unknown setting {key} (known: {', '.join(ENV_PREFIX + n.upper() for n in sorted(known))}; "
                        f"any of them also as {ENV_PREFIX}<NAME>{FILE_SUFFIX}=path)")


def _read_setting_file(key: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{key}: cannot read {path} ({err.__class__.__name__}: "
                            f"{getattr(err, 'strerror', None) or 'not UTF-8 text'})") from None
    return text.removesuffix("\n").removesuffix("\r")  # the one line end `echo` or an editor leaves


def _convert(key: str, raw: str, kind: Any) -> Any:
    if kind == "Secret":
        return Secret(raw)
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes")
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
