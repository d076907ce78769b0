"""`seqcast dev`: the local development loop, driven the way a developer drives it.

`seqcast dev` runs in one process; `seqcast serve`, `replay` and `tail` run as other processes configured only
by the SEQCAST_* exports it printed (here: its --env-file); Ctrl-C stops the broker and Redis it started.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from conftest import ROOT

READY_S = 60.0


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
    return env | {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def seqcast(*argv: str) -> list[str]:
    return [sys.executable, "-m", "seqcast_cli", *argv]


def read_exports(path: Path) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if line)
    return {k: v for k, v in pairs}


def accepts(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


class Dev:
    """A running `seqcast dev` and the exports it printed."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.out_path, self.env_file = tmp_path / "dev.out", tmp_path / "dev.env"
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(seqcast("dev", "--kafka-port", "0", "--redis-port", "0", "--env-file",
                                             str(self.env_file), *extra), cwd=tmp_path, env=base_env(),
                                     stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_S
        while "ready" not in self.output():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.2)
        self.exports = read_exports(self.env_file)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def interrupt(self) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        self._out.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.slow
def test_serve_replay_and_tail_run_against_seqcast_dev_and_ctrl_c_stops_it(tmp_path, bundle_dir):
    dev = Dev(tmp_path)
    service = None
    try:
        exports = dev.exports
        bootstrap, redis_url = exports["SEQCAST_BOOTSTRAP_SERVERS"], exports["SEQCAST_REDIS_URL"]
        assert f"export SEQCAST_BOOTSTRAP_SERVERS={bootstrap}" in dev.output() and redis_url in dev.output()
        assert redis.Redis.from_url(redis_url).ping()
        env = base_env() | exports | {"SEQCAST_METRICS_PORT": "0", "SEQCAST_KEY_PREFIX": f"dev{uuid.uuid4().hex[:6]}"}
        with open(tmp_path / "serve.log", "wb") as log:
            service = subprocess.Popen(seqcast("serve", "--bundle", str(bundle_dir)), env=env, cwd=tmp_path,
                                       stdout=log, stderr=subprocess.STDOUT)
        tail = subprocess.Popen(seqcast("tail", "--from-beginning", "--limit", "40"), env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        replay = subprocess.run(seqcast("replay", "synthetic:users=20,items=30,events=2,seed=5"), env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert replay.returncode == 0 and "sent 40 events to events" in replay.stderr, replay.stderr[-2000:]
        out, err = tail.communicate(timeout=90)
        predictions = [json.loads(line) for line in out.splitlines()]
        assert len({p["event_id"] for p in predictions}) == 40, err[-2000:]
        assert all(p["model"]["version"] == bundle_dir.name for p in predictions)
    finally:
        if service is not None:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=30)
        code, took = dev.interrupt() if dev.proc.poll() is None else (dev.proc.returncode, 0.0)
        dev.kill()
    assert code == 0 and took < 15, (code, took, dev.output()[-2000:])
    assert not accepts(bootstrap) and not accepts(redis_url.removeprefix("redis://").split("/")[0]), \
        "Ctrl-C must stop the broker and redis-server"
    assert "stopped" in dev.output()


@pytest.mark.slow
def test_dev_says_when_its_broker_dies_and_stops_redis_too(tmp_path):
    dev = Dev(tmp_path)
    try:
        redis_url = dev.exports["SEQCAST_REDIS_URL"]
        tansu = tansu_child(dev.proc.pid)
        os.kill(tansu, signal.SIGKILL)
        code = dev.proc.wait(timeout=30)
    finally:
        dev.kill()
    assert code == 1 and "tansu exited" in dev.output(), dev.output()[-2000:]
    assert not accepts(redis_url.removeprefix("redis://").split("/")[0])


def tansu_child(parent: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == parent and "tansu" in (entry / "cmdline").read_text():
                    return int(entry.name)
            except (OSError, IndexError, ValueError):
                pass
    raise AssertionError(f"no tansu child of {parent}")


@pytest.mark.slow
def test_dev_validate_makes_the_broker_refuse_a_malformed_event_at_produce_time(tmp_path):
    from streamer.transport import DeliveryError, Producer

    dev = Dev(tmp_path, "--validate")
    try:
        bootstrap, topic = dev.exports["SEQCAST_BOOTSTRAP_SERVERS"], dev.exports["SEQCAST_INPUT_TOPIC"]
        assert "events checked against" in dev.output()
        producer = Producer(bootstrap, client="kafka-python")  # carries on after a refusal (librdkafka is fenced)
        try:
            producer.send(topic, b'{"event_id":"e-1","user_id":"u1","ts":1704067200,"item_id":"i1"}', b"u1")
            assert producer.flush() == 1
            producer.send(topic, b'{"event_id":"e-2","ts":1704067200,"item_id":"i1"}', b"u1")  # no user_id
            with pytest.raises(DeliveryError, match="InvalidRecord"):
                producer.flush()
        finally:
            producer.close()
    finally:
        code, _ = dev.interrupt()
        dev.kill()
    assert code == 0
