"""Every knob of the streamer, in one frozen object, read from the environment in one place.

`Settings.from_env()` maps `SEQCAST_<FIELD>` (upper case) onto the fields
below; command-line flags arrive as keyword overrides. A misspelt variable or
override is an error that names it, because a silently ignored knob is worse
than a refused start.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "SEQCAST_"
# Variables with this prefix that belong to other parts of seqcast (trainer, tests, demo).
FOREIGN_ENV = frozenset({"SEQCAST_TEST_REDIS"})  # the test suite's Redis URL


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
    Redis
      redis_url             redis://host:port/db; a cluster is used when redis_cluster is true.
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
    Rollouts
      registry_poll_ms      how often the model registry in Redis ({key_prefix}:model:*) is checked
                            for promotions, canaries and shadows; 0 = serve `bundle` only, no registry.
      live_accuracy         score each user's previous prediction when the next event arrives
                            (HR@K, MAE per model version and arm); the marks are read with the windows (same
                            Redis call), so it costs one extra round trip per batch: the write.
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
    redis_url: str = "redis://127.0.0.1:6379/0"
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
    registry_poll_ms: int = 1000
    live_accuracy: bool = True
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9108
    log_level: str = "INFO"
    stats_interval_s: float = 10.0

    def __post_init__(self) -> None:
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
            if not key.startswith(ENV_PREFIX) or key in FOREIGN_ENV:
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in known:
                raise SettingsError(f"unknown setting {key} (known: {', '.join(ENV_PREFIX + n.upper() for n in known)})")
            values[name] = _convert(key, raw, known[name].type)
        for name, value in overrides.items():
            if name not in known:
                raise SettingsError(f"unknown setting {name!r}")
            if value is not None:
                values[name] = value
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

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


def _convert(key: str, raw: str, kind: Any) -> Any:
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
