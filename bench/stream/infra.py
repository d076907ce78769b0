"""What every run stands on: the Tansu broker and Redis (`Context`), a `seqcast serve` subprocess
(`ServiceRun`) and the CPU sampler that charges each process its CPU seconds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import redis

from bench.stream.common import CLK_TCK, ROOT

# ----------------------------------------------------------------------------- CPU sampling


def proc_cpu(pid: int) -> float:
    """utime + stime of `pid` in seconds (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, niced, total) jiffies of the whole machine."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait = parts[:5]
    total = sum(parts[:8])
    return total - idle - iowait, nice, total


class CpuSampler(threading.Thread):
    """Samples process CPU (utime+stime) of named pids and the machine every `interval` s.

    Sampling (rather than reading once at the start and end) lets a run charge exactly the CPU
    spent between its first and last prediction, interpolated, leaving out start-up and shut-down.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: list[tuple[float, dict[str, float], tuple]] = []
        self._halt = threading.Event()
        self._take()

    def _take(self) -> None:
        cpu = {}
        for name, pid in self.pids.items():
            try:
                cpu[name] = proc_cpu(pid)
            except (OSError, IndexError):
                pass
        self.samples.append((time.time(), cpu, machine_cpu()))

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._take()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self._take()

    def at(self, name: str, t: float) -> float:
        pts = [(s[0], s[1][name]) for s in self.samples if name in s[1]]
        return float(np.interp(t, [p[0] for p in pts], [p[1] for p in pts]))

    def services_at(self, t: float) -> float:
        """CPU seconds of all the service processes together at time t."""
        return sum(self.at(name, t) for name in self.pids if name.startswith("service"))

    def per_1k(self, t0: float, t1: float, events: int) -> dict[str, float]:
        """CPU seconds per 1000 events between t0 and t1: the services together, Tansu, Redis."""
        per = max(events, 1) / 1000
        return {"service": round((self.services_at(t1) - self.services_at(t0)) / per, 3),
                "redis": round((self.at("redis", t1) - self.at("redis", t0)) / per, 3),
                "tansu": round((self.at("tansu", t1) - self.at("tansu", t0)) / per, 3)}

    def machine_between(self, t0: float, t1: float) -> dict:
        inside = [s for s in self.samples if t0 <= s[0] <= t1] or self.samples[-2:]
        (_, _, a), (_, _, b) = inside[0], inside[-1]
        total = max(b[2] - a[2], 1)
        return {"busy_share": round((b[0] - a[0]) / total, 3), "niced_share": round((b[1] - a[1]) / total, 3)}


# ----------------------------------------------------------------------------- the service subprocess


def kafka_client_setting() -> bool:
    """Whether this checkout's Settings know `kafka_client` (SEQCAST_KAFKA_CLIENT); older ones do not,
    and `serve` refuses an unknown SEQCAST_ variable."""
    from streamer.settings import Settings

    return "kafka_client" in getattr(Settings, "__dataclass_fields__", {})


def client_kwargs(client: str | None) -> dict:
    """`client=` for streamer.transport's Producer/Consumer where this checkout has two clients; an older
    one has only kafka-python and no such argument."""
    if client is None:
        return {}
    if kafka_client_setting():
        return {"client": client}
    if client != "kafka-python":
        raise RuntimeError(f"this checkout's streamer/settings.py has no kafka_client: cannot run {client}")
    return {}


class ServiceRun:
    """One `python -m streamer serve` subprocess, configured through SEQCAST_* variables only."""

    def __init__(self, ctx: "Context", bundle: str, prefix: str, input_topic: str, log_name: str,
                 profile: Path | None = None, client: str | None = None, **settings) -> None:
        from streamer.embedded import free_port

        self.port = free_port()
        self.output_topic = f"bench-out-{uuid.uuid4().hex[:8]}"
        values = {"bootstrap_servers": ctx.broker, "input_topic": input_topic, "output_topic": self.output_topic,
                  "dlq_topic": f"bench-dlq-{uuid.uuid4().hex[:8]}", "group_id": f"bench-{uuid.uuid4().hex[:8]}",
                  "assign_all_partitions": "true", "redis_url": ctx.redis_url, "key_prefix": prefix,
                  "bundle": bundle, "models_dir": str(ctx.models_dir), "metrics_port": self.port,
                  "metrics_host": "127.0.0.1", "log_level": "INFO", "stats_interval_s": 5,
                  "max_poll_records": ctx.batch, **settings}
        if client_kwargs(client):  # a checkout from before the setting has kafka-python only
            values["kafka_client"] = client
        self.client = client
        self.settings = values
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
        env.update({f"SEQCAST_{k.upper()}": str(v) for k, v in values.items()})
        env["PYTHONPATH"] = str(ROOT)
        self.log_path = ctx.tmp / f"{log_name}.log"
        self._log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "streamer", "serve"]
        if profile is not None:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "streamer", "serve"]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if self._get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service not ready after {timeout_s}s:\n{self.log_path.read_text()[-3000:]}")

    def emitted(self) -> float:
        try:
            _, text = self._get("/metrics")
        except OSError:
            return 0.0
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith("seqcast_predictions_emitted_total"))

    def wait_emitted(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.emitted() < n:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.emitted():.0f} of {n} predictions after {timeout_s:.0f}s")
            time.sleep(0.25)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text(errors="replace").splitlines()
                if line.startswith("{")]


# ----------------------------------------------------------------------------- broker, Redis, topics, keys


class Context:
    """A Tansu broker started for this run, the Redis at --redis-url, and every key prefix handed out
    (deleted at the end, so a run leaves nothing behind in a shared Redis)."""

    def __init__(self, args, tmp: Path) -> None:
        from streamer.embedded import free_port, start_tansu

        self.args, self.tmp = args, tmp
        self.redis_url, self.batch, self.models_dir = args.redis_url, args.batch, Path(args.models_dir).resolve()
        self.client = redis.Redis.from_url(args.redis_url)
        self.prefixes: list[str] = []
        port = free_port()
        self._tansu_log = open(tmp / "tansu.log", "wb")
        self.tansu = start_tansu(port, self._tansu_log)
        self.broker = f"127.0.0.1:{port}"
        self.redis_pid = int(self.client.info("server")["process_id"])

    def prefix(self, label: str) -> str:
        p = f"bench{uuid.uuid4().hex[:6]}{label}"
        self.prefixes.append(p)
        return p

    def topic(self, label: str, partitions: int = 1) -> str:
        from streamer.transport import create_topics

        name = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        create_topics(self.broker, [name], partitions)
        return name

    def sampler(self, *services: ServiceRun) -> CpuSampler:
        pids = {f"service{i or ''}": svc.proc.pid for i, svc in enumerate(services)}
        s = CpuSampler({**pids, "tansu": self.tansu.pid, "redis": self.redis_pid})
        s.start()
        return s

    def read(self, topic: str, n: int, timeout_s: float = 180.0) -> list:
        from streamer.transport import Consumer

        consumer = Consumer(self.broker, topic, None, assign_all=True)
        records = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(records) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"read {len(records)} of {n} records of {topic}")
                records.extend(consumer.poll(500, 20000))
        finally:
            consumer.close()
        return records

    def close(self) -> None:
        self.tansu.kill()
        self.tansu.wait(10)
        self._tansu_log.close()
        for prefix in self.prefixes:
            keys = list(self.client.scan_iter(match=f"{prefix}:*", count=5000))
            for start in range(0, len(keys), 1000):
                self.client.delete(*keys[start:start + 1000])
