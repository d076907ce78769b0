"""Wiring for `seqcast serve`: settings -> (bundle, Redis, Kafka, HTTP) -> Service.run -> exit code.

Start-up order follows what can fail cheaply first: the bundle (checksums,
warm-up), Redis (script load), the output topics, then the consumer (the slow
group join). Exit codes: 0 after a graceful stop, 1 after an error (nothing
of the failed batch was committed; a supervisor restarts the process and the
records are read again).
"""
from __future__ import annotations

import logging
import signal
import threading

import redis
from prometheus_client import CollectorRegistry

from streamer.bundle import load_bundle
from streamer.http import Health, serve_http
from streamer.logs import configure, log_event
from streamer.metrics import Metrics
from streamer.predict import Models
from streamer.service import Service
from streamer.settings import Settings
from streamer.transport import Consumer, Producer, create_topics, partition_count
from streamer.window_store import WindowStore

log = logging.getLogger("streamer.app")


def redis_client(settings: Settings):
    """A binary-safe client for `redis_url` (RedisCluster when redis_cluster is set)."""
    options = {"socket_timeout": 10, "socket_connect_timeout": 3, "health_check_interval": 30}
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)


def load_models(settings: Settings, metrics: Metrics) -> Models:
    bundle = load_bundle(settings.bundle_path(), settings.inference_threads)
    m = bundle.manifest
    metrics.model_info.labels(m.name, m.version, m.arch, "primary").set(1)
    log_event(log, "model loaded", path=str(bundle.path), name=m.name, version=m.version, arch=m.arch,
              window=m.window, horizon=m.horizon)
    return Models.single(bundle, settings.top_k)


def ensure_output_topics(settings: Settings) -> None:
    """Create the prediction and DLQ topics if missing, with as many partitions as the input."""
    partitions = max(1, partition_count(settings.bootstrap_servers, settings.input_topic))
    create_topics(settings.bootstrap_servers, [settings.output_topic, settings.dlq_topic], partitions)


def serve(settings: Settings) -> int:
    configure(settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())  # no logging here: not signal-safe
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    health = Health(stale_after_s=max(10.0, 5 * settings.poll_timeout_ms / 1000))
    http = serve_http(settings.metrics_host, settings.metrics_port, registry, health) if settings.metrics_port else None
    consumer = producer = None
    try:
        models = load_models(settings, metrics)
        health.model_loaded = True
        client = redis_client(settings)
        health.redis_client = client
        store = WindowStore(client, settings.key_prefix, settings.window_len or models.window_len,
                            settings.window_ttl_seconds, settings.window_slack)
        ensure_output_topics(settings)
        producer = Producer(settings.bootstrap_servers, linger_ms=settings.producer_linger_ms)
        consumer = Consumer(settings.bootstrap_servers, settings.input_topic, settings.group_id,
                            assign_all=settings.assign_all_partitions, max_poll_records=settings.max_poll_records,
                            session_timeout_ms=settings.session_timeout_ms)
        log_event(log, "started", input_topic=settings.input_topic, group_id=settings.group_id,
                  window_len=store.window_len, metrics_port=settings.metrics_port)
        Service(settings, consumer, producer, store, models, metrics, health).run(stop.is_set)
        log_event(log, "stopped cleanly", reason="signal" if stop.is_set() else "end")
        return 0
    except Exception as err:  # log it as one JSON line; the supervisor restarts us
        log.exception("fatal", extra={"fields": {"error": repr(err)}})
        return 1
    finally:
        health.model_loaded = False
        if consumer is not None:
            consumer.close()
        if producer is not None:
            producer.close()
        if http is not None:
            http.shutdown()
