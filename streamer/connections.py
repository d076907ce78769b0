"""Clients built from Settings, the one place that turns security settings into connections.

Every command (serve, replay, tail, models, demo) gets its Redis client and its Kafka security
here, so a secured cluster works for all of them or for none, and start-up failures that waiting
will not fix (a wrong password, an untrusted certificate, a missing key file) end with one
operator's sentence instead of a retry loop or a bare timeout.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import redis

from streamer.security import SecurityError, check_kafka_tls, describe_redis_failure, redact_url, speaks_tls
from streamer.settings import Settings, SettingsError


def redis_client(settings: Settings, timeout_s: float = 10.0):
    """A binary-safe client for `redis_url` (RedisCluster when redis_cluster is set), with the
    ACL user, password and TLS files of the settings."""
    options = {"socket_timeout": timeout_s, "socket_connect_timeout": min(3.0, timeout_s),
               "health_check_interval": 30, **settings.redis_security().client_options(settings.redis_url)}
    if settings.redis_cluster:
        try:  # RedisCluster connects as it is built: a refusal surfaces here, wrapped
            return redis.RedisCluster.from_url(settings.redis_url, **options)
        except (redis.RedisError, redis.exceptions.RedisClusterException) as err:
            described = describe_redis_failure(err.__cause__ or err, settings.redis_url, settings.redis_security())
            if described:
                raise SecurityError(described) from None
            raise
    return redis.Redis.from_url(settings.redis_url, **options)


def check_files(settings: Settings) -> None:
    """SettingsError naming every configured TLS/key file that cannot be read here."""
    missing = settings.missing_files()
    if missing:
        raise SettingsError("; ".join(missing))


def check_redis(settings: Settings, client) -> None:
    """PING once; raise SecurityError for a refusal that waiting will not fix (authentication,
    TLS). Anything else (Redis down) is left to the caller's retry."""
    try:
        client.ping()
    except redis.RedisError as err:
        described = describe_redis_failure(err, settings.redis_url, settings.redis_security())
        if described:
            raise SecurityError(described) from None
        url = urlsplit(settings.redis_url)
        if url.scheme == "redis" and isinstance(err, redis.ConnectionError) and url.hostname \
                and speaks_tls(url.hostname, url.port or 6379):
            raise SecurityError(f"Redis at {where_redis(settings)} speaks TLS: use a rediss:// URL "
                                "(and redis_ssl_cafile for a private CA)") from None
        raise


def check_kafka(settings: Settings) -> None:
    """A TLS handshake with each bootstrap server that accepts connections (SSL, SASL_SSL), then
    one connection through the configured client (SASL): SecurityError naming what was refused."""
    from streamer.transport import check_connection

    check_kafka_tls(settings.bootstrap_servers, settings.kafka_security())
    if settings.kafka_security().protocol != "PLAINTEXT":
        check_connection(settings.bootstrap_servers, client=settings.kafka_client, security=settings.kafka_security())


def where_redis(settings: Settings) -> str:
    """The Redis URL with any password masked, for messages."""
    return redact_url(settings.redis_url)
