"""/healthz and /livez answer different questions; these tests pin the difference down.

Kubernetes restarts a container whose liveness probe fails, so /livez must stay 200 through what
seqcast is built to wait out (a Redis or broker outage, a slow start) and turn 503 only when the
loop has stopped polling for `live_after_s`. /healthz (the readiness probe) must keep saying 503
during those outages. Both are checked over real HTTP against `serve_http`, and /livez against a
real `seqcast serve` process that is waiting for a Redis that does not answer.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from streamer.embedded import free_port
from streamer.http import Health, serve_http

ROOT = Path(__file__).resolve().parents[1]


def get(port: int, path: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as resp:  # /healthz may spend seconds on a dead Redis
            code, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        code, body = err.code, err.read().decode()
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body


@pytest.fixture
def probe_server():
    """(port, health) of a real HTTP server; Redis is unreachable (port 1) unless a test sets one."""
    health = Health(redis_client=redis.Redis(port=1, socket_connect_timeout=0.2), model_loaded=True)
    port = free_port()
    server = serve_http("127.0.0.1", port, CollectorRegistry(), health)
    yield port, health
    server.shutdown()
    server.server_close()


def test_livez_is_alive_while_starting(probe_server) -> None:
    port, health = probe_server
    assert health.last_poll == 0.0
    assert get(port, "/livez") == (200, {"alive": True, "starting": True, "since_poll_s": None})
    assert get(port, "/healthz")[0] == 503  # not ready: nothing assigned, Redis down


def test_livez_ignores_dependency_outages_that_healthz_reports(probe_server) -> None:
    port, health = probe_server
    health.last_poll = time.monotonic()  # the loop polls through the outage (paused partitions)
    health.paused = "redis"
    health.assigned, health.broker_ok = True, False  # ... and the broker is gone too
    code, body = get(port, "/healthz")
    assert code == 503 and body["redis"] is False and body["broker"] is False
    code, body = get(port, "/livez")
    assert code == 200 and body["alive"] is True and body["starting"] is False
    assert 0 <= body["since_poll_s"] < 5


def test_livez_fails_only_when_the_loop_stops_polling(probe_server) -> None:
    port, health = probe_server
    health.live_after_s = 120.0
    health.last_poll = time.monotonic() - 100  # slow but within the window: a long flush, a backoff
    assert get(port, "/livez")[0] == 200
    health.last_poll = time.monotonic() - 121  # silent for longer: stuck
    code, body = get(port, "/livez")
    assert code == 503 and body["alive"] is False and body["since_poll_s"] >= 121


def test_default_live_window_exceeds_the_longest_healthy_gap() -> None:
    """The loop's longest silence between polls while working: a checkpoint flush (30 s default),
    a commit (COMMIT_TIMEOUT_MS), a delivery backoff (at most 10 s). /livez must outlast it."""
    import inspect

    from streamer.service import Service
    from streamer.transport import COMMIT_TIMEOUT_MS

    flush_s = inspect.signature(Service.checkpoint).parameters["flush_timeout_s"].default
    longest_gap = flush_s + COMMIT_TIMEOUT_MS / 1000 + 10.0
    assert Health().live_after_s > 2 * longest_gap, (Health().live_after_s, longest_gap)


def test_unknown_path_names_the_probes(probe_server) -> None:
    port, _ = probe_server
    code, body = get(port, "/readyz")
    assert code == 404 and "/livez" in body and "/healthz" in body


def test_serve_waiting_for_redis_is_alive_but_not_ready(bundle_dir, tmp_path) -> None:
    """A real `seqcast serve` whose Redis does not answer waits for it (backoff) instead of exiting:
    the liveness probe must leave it alone, the readiness probe must not route to it."""
    port = free_port()
    dead_redis = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
    env.update({"SEQCAST_BUNDLE": str(bundle_dir), "SEQCAST_REDIS_URL": f"redis://127.0.0.1:{dead_redis}/0",
                "SEQCAST_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "SEQCAST_METRICS_HOST": "127.0.0.1",
                "SEQCAST_METRICS_PORT": str(port), "PYTHONPATH": str(ROOT)})
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamer", "serve"], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "waiting for redis" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"never waited for Redis:\n{log_path.read_text()[-2000:]}"
            time.sleep(0.2)
        for _ in range(3):  # it keeps waiting, and the answers do not change
            assert get(port, "/livez") == (200, {"alive": True, "starting": True, "since_poll_s": None})
            code, body = get(port, "/healthz")
            assert code == 503 and body["ready"] is False
            time.sleep(0.5)
        assert proc.poll() is None
        proc.terminate()  # SIGTERM while waiting: a clean stop
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
