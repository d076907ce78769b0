"""Secured Redis against real servers (issue 12): TLS with a least-privilege ACL user (single node,
mutual TLS, a 3-node TLS cluster), from tests/secure_infra.py. Kafka over TLS is in
tests/test_secure_kafka.py.

The tests drive seqcast's own Redis users (window store, live accuracy, registry, served
heartbeats) through `streamer.connections.redis_client`, then read the server's ACL LOG: an empty
log proves the ACL documented for operators (`SEQCAST_REDIS_ACL`) covers every command they send,
inside Lua scripts included. The refusal tests require a `SecurityError` carrying the operator's
sentence (who was refused, why, where) and never the password: a bare redis-py error is a failure.
A user whose ACL lacks one command seqcast needs must come out as "lacks a permission", whether the
command is refused at top level (NOPERM) or inside one of the Lua scripts.
"""
from __future__ import annotations

import time
import uuid

import pytest
import redis
from prometheus_client import CollectorRegistry

from streamer.outages import redis_unavailable
from streamer.connections import check_redis, redis_client
from streamer.events import Event
from streamer.live_accuracy import LiveScorer, read_totals
from streamer.metrics import Metrics
from streamer.predict import Scored
from streamer.registry import Registry
from streamer.security import SecurityError, describe_redis_failure
from streamer.served import Heartbeat, read_served
from streamer.window_store import WindowStore

pytest.register_assert_rewrite("secure_infra")  # it is a plugin too (pytest_plugins below): rewrite it on this import
from secure_infra import REDIS_PASSWORD, REDIS_USER, SEQCAST_REDIS_ACL, RedisTls  # noqa: E402

pytest_plugins = ["secure_infra"]  # its fixtures: pki, redis_tls, redis_mtls, redis_tls_cluster
WRONG_PASSWORD = "not-the-password-5e1d"


@pytest.fixture
def prefix() -> str:
    return f"sec{uuid.uuid4().hex[:8]}"


def connect(server: RedisTls, **overrides):
    settings = server.settings(**overrides)
    client = redis_client(settings, timeout_s=5.0)
    check_redis(settings, client)
    return client


def acl_denials(server: RedisTls, user: str = REDIS_USER) -> list[tuple[str, str]]:
    """(command or key, reason) of every ACL denial of `user` logged on any node since the last reset."""
    found = []
    for port in server.ports:
        admin = server.admin(port)
        found += [(e["object"], e["reason"]) for e in admin.acl_log() if e["username"] == user]
        admin.close()
    return found


def reset_acl_log(server: RedisTls) -> None:
    for port in server.ports:
        admin = server.admin(port)
        admin.acl_log_reset()
        admin.close()


def delete_prefix(server: RedisTls, prefix: str) -> None:
    for port in server.ports:
        admin = server.admin(port)
        keys = list(admin.scan_iter(match=f"{prefix}:*", count=1000))
        for key in keys:  # one by one: on a cluster node a multi-key DEL must stay in one slot
            admin.delete(key)
        admin.close()


def scored(user: str, n: int, value: float) -> Scored:
    event = Event(f"{user}-e{n}", user, 1000.0 + n, "i1", value)
    return Scored(event, "primary", "v1", {"forecast": [10.0], "recommendations": [{"item_id": "i1", "score": 1.0}]},
                  1.0)


def exercise_seqcast(client, prefix: str) -> None:
    """Every Redis user of seqcast, once, as the service and `seqcast models` use them."""
    users = [f"u{k}" for k in range(12)]
    store = WindowStore(client, prefix, window_len=3, ttl_seconds=60, slack=1, max_per_call=5)
    live = LiveScorer(client, prefix, 60, Metrics.create(CollectorRegistry()))
    for n, value in enumerate((10.0, 12.0, 13.0)):
        batch = [scored(u, n, value) for u in users]
        windows, marks = store.append_and_read_marks([s.event for s in batch])
        assert [len(w.items) for w in windows] == [n + 1] * len(users)
        live.score(batch, marks)
    assert store.read("u0").items == ["i1"] * 3 and store.event_ids("u0") == ["u0-e0", "u0-e1", "u0-e2"]
    totals = read_totals(client, prefix, "v1")["primary"]
    assert (totals["items_scored"], totals["hits"]) == (2 * len(users), 2 * len(users))
    assert totals["MAE"] == pytest.approx(2.5)  # forecasts of 10 against values 12, then 13

    registry = Registry(client, prefix)
    registry.promote("m/v1")
    registry.promote("m/v2")
    registry.set_canary("m/v3", 10.0)
    registry.set_shadow("m/v4")
    assert registry.read().canary == "m/v3" and registry.history() == ["m/v1"]
    assert registry.rollback() == "m/v1" and registry.read().active == "m/v1"
    assert registry.epoch() == 5

    beat = Heartbeat(client, prefix, interval_s=5.0, instance="tls-test")
    assert beat.beat(registry.epoch(), {"primary": {"ref": "m/v1", "version": "v1"}}, 0.0, None)
    assert [e.instance for e in read_served(client, prefix)[0]] == ["tls-test"]
    assert beat.clear()


# --- Redis: single node over TLS -------------------------------------------------------------------

def test_seqcast_works_over_tls_as_the_least_privileged_acl_user(redis_tls, prefix):
    reset_acl_log(redis_tls)
    client = connect(redis_tls)
    try:
        assert client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "required"
        exercise_seqcast(client, prefix)
        assert acl_denials(redis_tls) == [], "seqcast sent a command its documented ACL does not allow"
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()  # and the ACL is not "+@all": a command seqcast never sends is refused
        assert acl_denials(redis_tls) == [("flushall", "command")]
    finally:
        client.close()
        delete_prefix(redis_tls, prefix)


def test_the_ip_address_of_the_server_verifies_too(redis_tls):
    connect(redis_tls, redis_url=redis_tls.url.replace("localhost", "127.0.0.1")).close()  # SAN IP:127.0.0.1


def test_a_wrong_password_names_the_user_and_hides_the_password(redis_tls):
    with pytest.raises(SecurityError) as refused:
        connect(redis_tls, redis_password=WRONG_PASSWORD)
    text = str(refused.value)
    assert f"user '{REDIS_USER}'" in text and "authentication failed" in text and redis_tls.url in text
    assert WRONG_PASSWORD not in text and REDIS_PASSWORD not in text


def test_no_credentials_is_refused_because_the_default_user_is_off(redis_tls):
    with pytest.raises(SecurityError, match="authentication failed for user 'default'"):
        connect(redis_tls, redis_username="", redis_password="")


def test_a_wrong_ca_says_certificate_verify_failed_and_names_the_ca_file(redis_tls, pki):
    with pytest.raises(SecurityError) as refused:
        connect(redis_tls, redis_ssl_cafile=str(pki.other_ca))
    text = str(refused.value)
    assert "TLS handshake" in text and "certificate verify failed" in text and str(pki.other_ca) in text
    assert REDIS_PASSWORD not in text


def test_plain_redis_url_against_the_tls_port_is_a_security_error_at_once(redis_tls):
    plain = redis_tls.url.replace("rediss://", "redis://")
    started = time.monotonic()
    with pytest.raises(SecurityError) as refused:
        connect(redis_tls, redis_url=plain, redis_ssl_cafile="")
    assert time.monotonic() - started < 5, "a plaintext client must not hang on a TLS port"
    text = str(refused.value)
    assert f"Redis at {plain} speaks TLS: use a rediss:// URL" in text and REDIS_PASSWORD not in text


# --- Redis: a user whose ACL lacks a command seqcast needs ----------------------------------------

LIMITED_USER, LIMITED_PASSWORD = "seqcast-limited", "limited-tls-pw-3b8e"


@pytest.fixture
def limited(redis_tls, prefix):
    """Settings for LIMITED_USER: the documented ACL (SEQCAST_REDIS_ACL) minus the commands named
    (a fresh user per call), removed with its keys after the test (redis_tls is shared)."""
    admin = redis_tls.admin()

    def settings_without(*commands: str):
        rules = SEQCAST_REDIS_ACL.split() + [f"-{c}" for c in commands]
        admin.execute_command("ACL", "SETUSER", LIMITED_USER, "reset", f">{LIMITED_PASSWORD}", *rules)
        admin.acl_log_reset()
        return redis_tls.settings(redis_username=LIMITED_USER, redis_password=LIMITED_PASSWORD)

    yield settings_without
    admin.acl_deluser(LIMITED_USER)
    admin.close()
    delete_prefix(redis_tls, prefix)


def assert_lacks_permission(err: BaseException, settings, command: str, server: RedisTls) -> None:
    """describe_redis_failure names the user and the server (its URL has no password, so the redacted
    form is the URL itself), says "lacks a permission", hides the password; and the server logged
    exactly that command as the one refused."""
    described = describe_redis_failure(err, settings.redis_url, settings.redis_security())
    assert described is not None, f"not recognised as a permission refusal: {type(err).__name__}: {err}"
    assert f"Redis user '{LIMITED_USER}' at {server.url} lacks a permission" in described, described
    assert LIMITED_PASSWORD not in described and REDIS_PASSWORD not in described
    assert acl_denials(server, LIMITED_USER) == [(command, "command")]
    # the service holds the batch (as in an outage) instead of dead-lettering every event until the ACL is fixed
    assert redis_unavailable(err), f"{type(err).__name__}: {err}"


def one_scored_batch(store: WindowStore, live: LiveScorer, n: int) -> None:
    batch = [scored("u0", n, 10.0 + n)]
    _, marks = store.append_and_read_marks([s.event for s in batch])
    live.score(batch, marks)


def test_live_accuracy_without_hincrbyfloat_lacks_a_permission_inside_lua(redis_tls, limited, prefix):
    settings = limited("hincrbyfloat")  # live accuracy's totals, called only inside its Lua script
    client = redis_client(settings, timeout_s=5.0)
    try:
        check_redis(settings, client)  # PING is allowed: the refusal comes with the first totals
        store = WindowStore(client, prefix, window_len=3, ttl_seconds=60)
        live = LiveScorer(client, prefix, 60, Metrics.create(CollectorRegistry()))
        one_scored_batch(store, live, 0)  # the first prediction of a user has nothing to score yet
        with pytest.raises(redis.ResponseError) as refused:
            one_scored_batch(store, live, 1)
        assert_lacks_permission(refused.value, settings, "hincrbyfloat", redis_tls)
    finally:
        client.close()


def test_the_window_store_without_hincrby_lacks_a_permission_inside_lua(redis_tls, limited, prefix):
    settings = limited("hincrby")  # the window store's arrival counter, called only inside its Lua script
    client = redis_client(settings, timeout_s=5.0)
    try:
        store = WindowStore(client, prefix, window_len=3, ttl_seconds=60)
        with pytest.raises(redis.ResponseError) as refused:
            store.append_and_read_marks([Event("e1", "u0", 1.0, "i1", 1.0)])
        assert_lacks_permission(refused.value, settings, "hincrby", redis_tls)
    finally:
        client.close()


def test_the_window_store_without_evalsha_lacks_a_permission_at_top_level(redis_tls, limited, prefix):
    settings = limited("evalsha")  # refused before any script runs: redis-py raises NoPermissionError
    client = redis_client(settings, timeout_s=5.0)
    try:
        store = WindowStore(client, prefix, window_len=3, ttl_seconds=60)
        with pytest.raises(redis.exceptions.NoPermissionError) as refused:
            store.append_and_read_marks([Event("e1", "u0", 1.0, "i1", 1.0)])
        assert_lacks_permission(refused.value, settings, "evalsha", redis_tls)
    finally:
        client.close()


def test_check_redis_says_lacks_a_permission_when_ping_is_refused(redis_tls, limited):
    settings = limited("ping")
    client = redis_client(settings, timeout_s=5.0)
    try:
        with pytest.raises(SecurityError) as refused:
            check_redis(settings, client)
    finally:
        client.close()
    text = str(refused.value)
    assert f"Redis user '{LIMITED_USER}' at {redis_tls.url} lacks a permission" in text, text
    assert LIMITED_PASSWORD not in text and acl_denials(redis_tls, LIMITED_USER) == [("ping", "command")]


# --- Redis: mutual TLS -----------------------------------------------------------------------------

def test_mutual_tls_with_the_client_certificate_works(redis_mtls, prefix):
    client = connect(redis_mtls)
    try:
        store = WindowStore(client, prefix, window_len=2, ttl_seconds=60)
        assert [w.items for w in store.append_and_read([Event("e1", "u", 1.0, "i1", 1.0)])] == [["i1"]]
    finally:
        client.close()
        delete_prefix(redis_mtls, prefix)


def test_mutual_tls_without_a_client_certificate_is_a_security_error(redis_mtls):
    with pytest.raises(SecurityError) as refused:
        connect(redis_mtls, redis_ssl_certfile="", redis_ssl_keyfile="")
    text = str(refused.value)
    assert f"TLS handshake with Redis at {redis_mtls.url} failed" in text
    assert "client certificate (redis_ssl_certfile, redis_ssl_keyfile)" in text and REDIS_PASSWORD not in text


# --- Redis Cluster over TLS ------------------------------------------------------------------------

def test_seqcast_works_on_a_tls_redis_cluster_as_the_acl_user(redis_tls_cluster, prefix):
    reset_acl_log(redis_tls_cluster)
    client = connect(redis_tls_cluster)
    try:
        assert isinstance(client, redis.RedisCluster) and len(client.get_primaries()) == 3
        exercise_seqcast(client, prefix)
        keys = [f"{prefix}:{{u{k}}}:win" for k in range(12)]
        assert len({client.get_node_from_key(k).port for k in keys}) > 1, "the users must span several nodes"
        assert acl_denials(redis_tls_cluster) == []
    finally:
        client.close()
        delete_prefix(redis_tls_cluster, prefix)


CLUSTER_REFUSALS = {"wrong password": ({"redis_password": WRONG_PASSWORD}, f"authentication failed for user '{REDIS_USER}'"),
                    "wrong CA": ({"redis_ssl_cafile": "other_ca"}, "certificate verify failed")}


@pytest.mark.parametrize("case", CLUSTER_REFUSALS)
def test_the_cluster_refusals_are_security_errors_without_the_password(redis_tls_cluster, pki, case):
    overrides = {k: str(pki.other_ca) if v == "other_ca" else v for k, v in CLUSTER_REFUSALS[case][0].items()}
    with pytest.raises(SecurityError) as refused:
        connect(redis_tls_cluster, **overrides)
    text = str(refused.value)
    assert CLUSTER_REFUSALS[case][1] in text and "rediss://localhost:" in text
    assert WRONG_PASSWORD not in text and REDIS_PASSWORD not in text
