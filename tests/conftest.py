"""Fixtures that build real things: a Tansu broker, Redis key spaces, a trained bundle, a service process.

- `broker` (session): an in-memory Tansu on a free loopback port, killed at the end.
- `topic_factory`: fresh uuid-named topics per call, so tests never see each other's data.
- `redis_client` / `key_prefix`: the Redis at 127.0.0.1:6379 with a per-test key prefix
  (everything under it is deleted afterwards).
- `bundle_dir` (session): one tiny LSTM bundle trained by `training.pipeline.build_bundle`,
  cached in pytest's cache dir keyed by the training sources, so it is trained once per change.
- `service_factory`: `python -m streamer serve` in a subprocess with SEQCAST_* env, so tests can
  SIGTERM or SIGKILL it; its JSON-line logs land in a file the test can read.
- `kafka_client`: both Kafka backends ("confluent", "kafka-python"). `service_factory`, `producer`
  and `consumer_factory` use it, so every test built on them runs once per backend; a test that
  needs only one pins it with `@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis

from schema_oracle import watch_predictions
from streamer.embedded import free_port, start_tansu
from streamer.transport import CLIENTS, Consumer, Producer, create_topics

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("SEQCAST_TEST_REDIS", "redis://127.0.0.1:6379/0")
TEST_SESSION_TIMEOUT_MS = 3000  # a Tansu group join takes ~half of this


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> str:
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    port = free_port()
    with open(log_path, "wb") as log:
        proc = start_tansu(port, log)
    yield f"127.0.0.1:{port}"
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def topic_factory(broker):
    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topics(broker, [name], partitions)
        return name
    return make


@pytest.fixture
def topics(topic_factory):
    """One-partition input, prediction and dead-letter topics, as service settings (`**topics`)."""
    return {"input_topic": topic_factory(1, "events"), "output_topic": topic_factory(1, "predictions"),
            "dlq_topic": topic_factory(1, "dlq")}


@pytest.fixture(scope="session")
def redis_client():
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def key_prefix(redis_client) -> str:
    prefix = f"sct{uuid.uuid4().hex[:8]}"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        redis_client.delete(*keys[start:start + 500])


@pytest.fixture(params=CLIENTS)
def kafka_client(request) -> str:
    """The Kafka backend under test: the service (SEQCAST_KAFKA_CLIENT) and the test's own clients."""
    return request.param


@pytest.fixture
def producer(broker, kafka_client):
    prod = Producer(broker, linger_ms=2, client=kafka_client)
    yield prod
    prod.close()


@pytest.fixture
def consumer_factory(broker, kafka_client):
    made: list[Consumer] = []

    def make(topic: str, group_id: str | None = None) -> Consumer:
        consumer = Consumer(broker, topic, group_id, assign_all=True, client=kafka_client)
        made.append(consumer)
        return watch_predictions(consumer)  # a prediction topic's records are checked against schemas/v1
    yield make
    for consumer in made:
        consumer.close()


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("training/**/*.py"), ROOT / "streamer/features.py", ROOT / "streamer/bundle.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _bundle_log():
    from training.data.synthetic import synthetic_log

    return synthetic_log(users=60, items=50, events_per_user=30, seed=0)


def _cached_bundle(request, name: str, arch: str, log_=None, **fit) -> Path:
    """Train (once per training-code change) a small bundle on the shared synthetic log (or `log_`)."""
    if getattr(request.config, "cache", None) is not None:
        root = Path(request.config.cache.mkdir(f"seqcast-bundle-{name}"))
    else:  # -p no:cacheprovider: the same layout under the system temp dir
        root = Path(tempfile.gettempdir()) / "seqcast-test-cache" / f"seqcast-bundle-{name}"
    cache = root / _sources_digest()
    found = sorted(cache.glob(f"{name}/*/manifest.json"))
    if found:
        return found[-1].parent
    shutil.rmtree(cache, ignore_errors=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.pipeline import build_bundle

    fit = {"window": 20, "horizon": 3, "epochs": 2, "seed": 0, **fit}
    return build_bundle(_bundle_log() if log_ is None else log_, cache, name, arch=arch, **fit)


@pytest.fixture(scope="session")
def bundle_dir(request) -> Path:
    """A small trained LSTM bundle (L=20, H=3, items + forecast), built once per training-code change."""
    return _cached_bundle(request, "tiny", "lstm")


@pytest.fixture(scope="session")
def bundle_dir_v2(request) -> Path:
    """A second, different bundle (a Transformer on the same data) to roll out over `bundle_dir`."""
    return _cached_bundle(request, "tiny2", "transformer")


def rollout_log(seed: int = 0, users: int = 200, events_per_user: int = 40):
    """Synthetic traffic with a sequence worth learning: a model trained on it reaches HR@10 ~0.8 where
    most-popular gets ~0.2 (100 items; another seed = more of the same kind)."""
    from training.data.synthetic import synthetic_log

    return synthetic_log(users=users, items=100, events_per_user=events_per_user, seed=seed)


@pytest.fixture(scope="session")
def good_bundle_dir(request) -> Path:
    """A model that learned `rollout_log`'s sequences (about 10 s of training)."""
    return _cached_bundle(request, "rollgood", "lstm", rollout_log(), width=32, epochs=14, learning_rate=5e-3)


@pytest.fixture(scope="session")
def bad_bundle_dir(request) -> Path:
    """A clearly worse one: one epoch on the same log with its items shuffled across events."""
    import numpy as np

    from training.data.eventlog import EventLog

    log = rollout_log()
    shuffled = EventLog(log.users, log.ts, np.random.default_rng(1).permutation(log.items), log.values, log.source)
    return _cached_bundle(request, "rollbad", "lstm", shuffled, width=32, epochs=1, learning_rate=5e-3)


@pytest.fixture(scope="session")
def bundle(bundle_dir):
    from streamer.bundle import load_bundle

    return load_bundle(bundle_dir)


class ServiceProcess:
    """`python -m streamer serve` in a subprocess, with the handles a test needs."""

    def __init__(self, env: dict[str, str], log_path: Path, metrics_port: int) -> None:
        self.log_path = log_path
        self.metrics_port = metrics_port
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamer", "serve"], env=env, cwd=ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def logs(self) -> list[dict]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"service not ready after {timeout_s}s:\n{self.log_path.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()


@pytest.fixture
def service_factory(broker, bundle_dir, key_prefix, tmp_path, kafka_client):
    """start(input_topic=..., output_topic=..., dlq_topic=..., **settings) -> ServiceProcess."""
    started: list[ServiceProcess] = []

    def start(**settings) -> ServiceProcess:
        port = free_port()
        values = {"bootstrap_servers": broker, "redis_url": REDIS_URL, "key_prefix": key_prefix,
                  "bundle": str(bundle_dir), "metrics_port": port, "metrics_host": "127.0.0.1",
                  "session_timeout_ms": TEST_SESSION_TIMEOUT_MS, "poll_timeout_ms": 100,
                  "stats_interval_s": 1.0, "kafka_client": kafka_client, **settings}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
        env.update({f"SEQCAST_{k.upper()}": str(v) for k, v in values.items()})
        env["PYTHONPATH"] = str(ROOT)
        service = ServiceProcess(env, tmp_path / f"service-{len(started)}.log", port)
        started.append(service)
        return service
    yield start
    for service in started:
        service.stop()
