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
from streamer.live_accuracy import LiveScorer
from streamer.logs import configure, log_event
from streamer.metrics import Metrics
from streamer.predict import Models
from streamer.registry import Registry
from streamer.rollout import ModelManager, ref_for
from streamer.service import Service
from streamer.settings import Settings, SettingsError
from streamer.transport import Consumer, Producer, create_topics, partition_count
from streamer.window_store import WindowStore

log = logging.getLogger("streamer.app")


def redis_client(settings: Settings):
    """A binary-safe client for `redis_url` (RedisCluster when redis_cluster is set)."""
    options = {"socket_timeout": 10, "socket_connect_timeout": 3, "health_check_interval": 30}
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)


def load_models(settings: Settings, metrics: Metrics) -> Models | None:
    """The configured bundle (--bundle / --model-name), or None when only the registry names one."""
    try:
        path = settings.bundle_path()
    except SettingsError:
        if settings.registry_poll_ms:
            return None  # the registry must name an active bundle (checked by start_models)
        raise
    bundle = load_bundle(path, settings.inference_threads)
    m = bundle.manifest
    metrics.model_info.labels(m.name, m.version, m.arch, "primary").set(1)
    log_event(log, "model loaded", path=str(bundle.path), name=m.name, version=m.version, arch=m.arch,
              window=m.window, horizon=m.horizon)
    return Models.single(bundle, settings.top_k)


def start_models(settings: Settings, client, metrics: Metrics) -> tuple[Models, ModelManager | None]:
    """Models to serve first, and the registry watcher (None when registry_poll_ms is 0).

    An empty registry is seeded with the configured bundle (SET NX semantics via promote only
    when nothing is active), so `seqcast models list` always shows what serves.
    """
    fallback = load_models(settings, metrics)
    if not settings.registry_poll_ms:
        return fallback, None
    registry = Registry(client, settings.key_prefix)
    if fallback is not None and registry.read().active is None:
        registry.promote(ref_for(settings.models_dir, fallback.arms["primary"].path))
    manager = ModelManager(registry, settings.models_dir, fallback, metrics, settings.top_k,
                           settings.inference_threads, settings.registry_poll_ms / 1000)
    manager.refresh()  # apply the registry before the first batch
    if manager.current is None:
        raise SettingsError("no bundle to serve: the registry names none that loads, and no --bundle was given")
    manager.start()
    return manager.current, manager


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
    consumer = producer = manager = None
    try:
        client = redis_client(settings)
        health.redis_client = client
        models, manager = start_models(settings, client, metrics)
        health.model_loaded = True
        store = WindowStore(client, settings.key_prefix, settings.window_len or models.window_len,
                            settings.window_ttl_seconds, settings.window_slack)
        ensure_output_topics(settings)
        producer = Producer(settings.bootstrap_servers, linger_ms=settings.producer_linger_ms)
        consumer = Consumer(settings.bootstrap_servers, settings.input_topic, settings.group_id,
                            assign_all=settings.assign_all_partitions, max_poll_records=settings.max_poll_records,
                            session_timeout_ms=settings.session_timeout_ms)
        log_event(log, "started", input_topic=settings.input_topic, group_id=settings.group_id,
                  window_len=store.window_len, metrics_port=settings.metrics_port)
        live = LiveScorer(client, settings.key_prefix, settings.window_ttl_seconds, metrics) \
            if settings.live_accuracy else None
        Service(settings, consumer, producer, store, models, metrics, health, manager, live).run(stop.is_set)
        log_event(log, "stopped cleanly", reason="signal" if stop.is_set() else "end")
        return 0
    except Exception as err:  # log it as one JSON line; the supervisor restarts us
        log.exception("fatal", extra={"fields": {"error": repr(err)}})
        return 1
    finally:
        health.model_loaded = False
        if manager is not None:
            manager.stop()
        if consumer is not None:
            consumer.close()
        if producer is not None:
            producer.close()
        if http is not None:
            http.shutdown()
