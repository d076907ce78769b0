"""/metrics, /healthz and /livez on one small threaded HTTP server, next to the consumer loop.

/healthz answers 200 only when the service can do its job right now: the model
is loaded, Redis answers PING (with a short timeout, on a client of its own)
and the loop is not paused waiting for it, and the broker is usable: the loop
has a partition assignment, has polled recently (a stuck loop stops polling),
and its client has a live connection to a partition leader with no request
left unanswered (`Consumer.broker_reachable`; "has partitions and polled
recently" alone said ready through a whole broker outage). Otherwise 503,
with the failing parts named in the JSON body.

/livez answers whether restarting the process could help, which is a different question:
during a Redis or broker outage /healthz is 503 by design while the loop waits the outage out
(it keeps polling, so it keeps its partitions), and a restart would only add a group rejoin.
So /livez is 200 while the process is starting (it has not polled yet: start-up waits for
its dependencies with backoff, however long they take) and while the loop has polled within
`live_after_s`; 503 only when the loop has stopped polling for that long, i.e. it is stuck
(a hung native call, a deadlock). The longest gap a working loop leaves between two polls is
about 45 s (a checkpoint flush of up to 30 s, a commit of up to 5 s, a delivery backoff of up
to 10 s; see streamer/service.py), so the 120 s default never fires on a slow but healthy loop.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class Health:
    """Written by the loop, read by the HTTP thread (plain attributes: atomic under the GIL)."""

    redis_client: object = None
    model_loaded: bool = False
    assigned: bool = False
    broker_ok: bool = False
    paused: str | None = None  # the dependency the loop is waiting for, if any
    last_poll: float = 0.0  # time.monotonic() of the loop's last poll; 0.0 = not polled yet
    stale_after_s: float = 10.0
    live_after_s: float = 120.0  # /livez: a loop silent this long is stuck (see the module docstring)

    def check(self) -> dict[str, bool]:
        polling = time.monotonic() - self.last_poll < self.stale_after_s
        return {"model": self.model_loaded, "redis": self.paused != "redis" and self._redis_ok(),
                "broker": self.assigned and polling and self.broker_ok}

    def liveness(self) -> dict[str, object]:
        """{"alive": ..., "starting": ..., "since_poll_s": ...}: alive unless the loop that once polled
        has been silent for live_after_s (dependencies are deliberately not consulted)."""
        if not self.last_poll:
            return {"alive": True, "starting": True, "since_poll_s": None}
        silent = time.monotonic() - self.last_poll
        return {"alive": silent < self.live_after_s, "starting": False, "since_poll_s": round(silent, 3)}

    def _redis_ok(self) -> bool:
        try:
            return bool(self.redis_client is not None and self.redis_client.ping())
        except Exception:  # any failure means "not usable"
            return False


def serve_http(host: str, port: int, registry: CollectorRegistry, health: Health) -> ThreadingHTTPServer:
    """Start the server on a daemon thread; `.shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.startswith("/metrics"):
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                parts = health.check()
                ready = all(parts.values())
                body = json.dumps({"ready": ready, **parts}).encode()
                self._reply(200 if ready else 503, body, "application/json")
            elif self.path.startswith("/livez"):
                state = health.liveness()
                self._reply(200 if state["alive"] else 503, json.dumps(state).encode(), "application/json")
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /livez\n", "text/plain")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep stderr for the JSON logs
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
