"""Wiring for `seqcast serve`: settings -> (bundle, Redis, Kafka, HTTP) -> Service.run -> exit code.

Start-up order follows what can fail cheaply first: the bundle (checksums,
warm-up), Redis (script load), the output topics, then the consumer (the slow
group join). A dependency that is down at start-up is waited for (with
backoff, /healthz not ready, SIGTERM still honoured) rather than treated as
fatal: exiting would only turn an outage into a crash loop. A configuration
that cannot work (a bad bundle, a bad setting, a refused authorisation)
fails at once. Exit codes: 0 after a graceful stop, 1 after an error (nothing
of the failed batch was committed; a supervisor restarts the process and the
records are read again).
"""
from __future__ import annotations

import logging
import signal
import threading

from prometheus_client import CollectorRegistry

from streamer.bundle import BundleError, load_bundle
from streamer.connections import check_files, check_kafka, check_redis, redis_client
from streamer.http import Health, serve_http
from streamer.live_accuracy import LiveScorer
from streamer.logs import configure, log_event, redact
from streamer.metrics import Metrics
from streamer.predict import Models
from streamer.registry import Registry
from streamer.rollout import ModelManager, ref_for
from streamer.rollout_controller import Controller, RolloutMetrics
from streamer.outages import Backoff, redis_unavailable, sleep_unless
from streamer.security import SecurityError
from streamer.service import Service
from streamer.settings import Settings, SettingsError
from streamer.transport import Consumer, Producer, broker_unavailable, create_topics, partition_count
from streamer.window_store import WindowStore

log = logging.getLogger("streamer.app")


class Stopped(Exception):
    """SIGTERM/SIGINT arrived while start-up was waiting for a dependency."""


def wait_until_up(what: str, step, stop) -> object:
    """`step()`, retried with backoff while it fails because Redis or the broker is unavailable."""
    backoff = Backoff(0.5, 10.0)
    while True:
        if stop():
            raise Stopped(what)
        try:
            return step()
        except Exception as err:
            if not (redis_unavailable(err) or broker_unavailable(err)):
                raise
            delay = backoff.next()
            if backoff.failures == 1 or backoff.failures % 10 == 0:
                log_event(log, f"waiting for {what}", logging.WARNING, error=repr(err)[:300],
                          attempts=backoff.failures, retry_in_s=delay)
            sleep_unless(stop, delay)


def load_models(settings: Settings, metrics: Metrics) -> Models | None:
    """The configured bundle (--bundle / --model-name), or None when only the registry names one."""
    try:
        path = settings.bundle_path()
    except SettingsError:
        if settings.registry_poll_ms:
            return None  # the registry must name an active bundle (checked by start_models)
        raise
    from streamer.signing import trusted_from_settings  # trusted_keys: the bundle must be signed by one

    try:
        bundle = load_bundle(path, settings.inference_threads, trusted_from_settings(settings))
    except BundleError as err:
        if settings.bundle or not settings.registry_poll_ms:
            raise  # the bundle asked for by path, or the only source: a bad one must stop the start
        # the newest version of model_name is only a fallback while a registry decides: a bad one
        # (unsigned, corrupt, mid-write) must not keep every pod down while the registry names a good one
        log_event(log, "newest bundle refused; the registry must name one", logging.WARNING, path=str(path),
                  error=str(err))
        return None
    m = bundle.manifest
    metrics.model_info.labels(m.name, m.version, m.arch, "primary").set(1)
    log_event(log, "model loaded", path=str(bundle.path), name=m.name, version=m.version, arch=m.arch,
              window=m.window, horizon=m.horizon, signed_by=bundle.signer)
    return Models.single(bundle, settings.top_k)


def start_models(settings: Settings, client, metrics: Metrics,
                 fallback: Models | None) -> tuple[Models, ModelManager | None]:
    """Models to serve first, and the registry watcher (None when registry_poll_ms is 0).

    An empty registry is seeded with the configured bundle (SET NX semantics via promote only
    when nothing is active), so `seqcast models list` always shows what serves.
    """
    if not settings.registry_poll_ms:
        return fallback, None
    registry = Registry(client, settings.key_prefix)
    if fallback is not None and registry.read().active is None:
        registry.promote(ref_for(settings.models_dir, fallback.arms["primary"].path))
    from streamer.signing import trusted_from_settings

    manager = ModelManager(registry, settings.models_dir, fallback, metrics, settings.top_k,
                           settings.inference_threads, settings.registry_poll_ms / 1000,
                           trusted=trusted_from_settings(settings))  # registry bundles: signed, when required
    manager.refresh()  # apply the registry before the first batch
    if manager.current is None:
        raise SettingsError("no bundle to serve: the registry names none that loads, and no --bundle was given")
    manager.start()
    return manager.current, manager


def ensure_output_topics(settings: Settings) -> None:
    """Create the prediction and DLQ topics if missing, with as many partitions as the input."""
    client, security = settings.kafka_client, settings.kafka_security()
    check_kafka(settings)  # a TLS handshake first: its failure names the CA file, a client's timeout would not
    partitions = max(1, partition_count(settings.bootstrap_servers, settings.input_topic, client=client,
                                        security=security))
    create_topics(settings.bootstrap_servers, [settings.output_topic, settings.dlq_topic], partitions, client=client,
                  security=security)


def serve(settings: Settings) -> int:
    configure(settings.log_level)
    redact(*settings.secrets())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())  # no logging here: not signal-safe
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    rollout_metrics = RolloutMetrics.create(registry)  # exposed by every instance; set by the lease holder
    health = Health(stale_after_s=max(10.0, 5 * settings.poll_timeout_ms / 1000))
    http = serve_http(settings.metrics_host, settings.metrics_port, registry, health) if settings.metrics_port else None
    consumer = producer = manager = controller = None
    try:
        check_files(settings)  # a TLS or key file that is not there fails now, naming the setting
        fallback = load_models(settings, metrics)  # a bad bundle fails now, before any waiting
        client = redis_client(settings)
        health.redis_client = redis_client(settings, timeout_s=1.0)  # /healthz must answer quickly
        up = lambda what, step: wait_until_up(what, step, stop.is_set)
        up("redis", lambda: check_redis(settings, client))  # a wrong password or CA fails now, named
        models, manager = up("redis", lambda: start_models(settings, client, metrics, fallback))
        health.model_loaded = True
        if settings.rollout_controller and manager is not None:  # one of the group's candidates for the lease
            controller = Controller(client, settings.key_prefix, rollout_metrics).start()
        store = up("redis", lambda: WindowStore(client, settings.key_prefix, settings.window_len or models.window_len,
                                                settings.window_ttl_seconds, settings.window_slack))
        live = up("redis", lambda: LiveScorer(client, settings.key_prefix, settings.window_ttl_seconds, metrics)) \
            if settings.live_accuracy else None
        up("the broker", lambda: ensure_output_topics(settings))
        producer = up("the broker", lambda: Producer(settings.bootstrap_servers, linger_ms=settings.producer_linger_ms,
                                                     client=settings.kafka_client,
                                                     security=settings.kafka_security()))
        consumer = up("the broker", lambda: Consumer(
            settings.bootstrap_servers, settings.input_topic, settings.group_id,
            assign_all=settings.assign_all_partitions, max_poll_records=settings.max_poll_records,
            session_timeout_ms=settings.session_timeout_ms, client=settings.kafka_client,
            security=settings.kafka_security()))
        log_event(log, "started", input_topic=settings.input_topic, group_id=settings.group_id,
                  window_len=store.window_len, metrics_port=settings.metrics_port)
        Service(settings, consumer, producer, store, models, metrics, health, manager, live).run(stop.is_set)
        log_event(log, "stopped cleanly", reason="signal" if stop.is_set() else "end")
        return 0
    except Stopped as waiting_for:
        log_event(log, "stopped cleanly", reason="signal", waiting_for=str(waiting_for))
        return 0
    except (SecurityError, SettingsError) as err:  # a configuration to fix: one line that says what, no traceback
        log_event(log, "fatal", logging.ERROR, error=str(err))
        return 1
    except Exception as err:  # log it as one JSON line; the supervisor restarts us
        log.exception("fatal", extra={"fields": {"error": repr(err)}})
        return 1
    finally:
        health.model_loaded = False
        if controller is not None:
            controller.stop()
        if manager is not None:
            manager.stop()
        if consumer is not None:
            consumer.close()
        if producer is not None:
            producer.close()
        if http is not None:
            http.shutdown()
