"""A model arm whose call raises (issue 14), with a real bundle that breaks at run time
(`broken_bundle.broken_copy`: loads and warms up at batch 8, raises on any other batch size).

1. the broken copy itself: a sealed new version that loads, predicts what the original predicts
   at batch 8 and raises at every other size (so the tests below cannot pass by accident);
2. `predict_batch`: a broken SHADOW costs only its own predictions, reported to ArmPerf (Prometheus
   and Redis); a broken CANARY raises `ArmFailed` naming the arm and version;
3. `seqcast serve` on the real broker with a broken shadow: every event predicted once, correctly,
   nothing dead-lettered, the shadow's failures on /metrics and in Redis;
4. a rollout of the broken copy as canary is rolled back by the error-rate guard rail, and every
   event is predicted once or dead-lettered once (internal_error), never both, never lost.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from broken_bundle import VERSION_SUFFIX, broken_copy
from stream_helpers import (assert_matches, metric_value, offline_predictions, read_until, replay_in_background,
                            store_batch, wait_for)
from streamer.arm_perf import FIELDS, ArmPerf, read_perf
from streamer.bundle import MODEL_FILE, load_bundle
from streamer.events import Event
from streamer.metrics import Metrics
from streamer.predict import CANARY, PRIMARY, SHADOW, ArmFailed, Models, predict_batch
from streamer.registry import Registry, on_canary
from streamer.replay import replay
from streamer.rollout_state import RolloutState, RolloutStore
from streamer.transport import DEFAULT_CLIENT

ROOT = Path(__file__).resolve().parents[1]
CALLS, ROWS, ERRORS = (FIELDS.index(f) for f in ("calls", "rows", "errors"))


@pytest.fixture(scope="module")
def broken_dir(bundle_dir, tmp_path_factory) -> Path:
    return broken_copy(bundle_dir, tmp_path_factory.mktemp("broken") / "broken")




def _unversioned(body: dict) -> dict:
    return {**body, "model": {k: v for k, v in body["model"].items() if k != "version"}}


# -- 1. the broken copy ---------------------------------------------------------------------------

def test_the_broken_copy_loads_and_fails_unless_its_batch_is_8(bundle_dir, broken_dir):
    original, broken = load_bundle(bundle_dir), load_bundle(broken_dir)  # digests checked, warm-up (batch 8) passed
    assert broken.manifest.version == original.manifest.version + VERSION_SUFFIX
    assert broken.manifest.files[MODEL_FILE] != original.manifest.files[MODEL_FILE]
    assert not list(broken_dir.parent.glob(".*")), "a staging directory was left behind"
    events, windows = store_batch(original, 8)
    want, got = (predict_batch(Models.single(b), events, windows) for b in (original, broken))
    assert [_unversioned(s.body) for s in got] == [_unversioned(s.body) for s in want]
    for rows in (1, 5, 7, 9, 16):
        events, windows = store_batch(original, rows)
        predict_batch(Models.single(original), events, windows)  # the original answers every size
        with pytest.raises(Exception, match="Reshape"):
            predict_batch(Models.single(broken), events, windows)
    with pytest.raises(FileExistsError):
        broken_copy(bundle_dir, broken_dir)


# -- 2. predict_batch -----------------------------------------------------------------------------

def test_a_failing_shadow_costs_only_its_own_predictions(bundle_dir, broken_dir, redis_client, key_prefix):
    good, broken = load_bundle(bundle_dir), load_bundle(broken_dir)
    version = broken.manifest.version
    events, windows = store_batch(good, 5)
    alone = predict_batch(Models.single(good), events, windows)
    metrics = Metrics.create(CollectorRegistry())
    perf = ArmPerf(metrics)
    served = predict_batch(Models({PRIMARY: good, SHADOW: broken}), events, windows, perf=perf)
    assert [s.arm for s in served] == [PRIMARY] * 5
    assert [s.event for s in served] == events
    assert [s.body for s in served] == [s.body for s in alone]
    assert metrics.arm_errors.labels(SHADOW)._value.get() == 5
    assert metrics.arm_errors.labels(PRIMARY)._value.get() == 0
    assert metrics.inference.labels(PRIMARY)._sum.get() > 0  # the primary's call was observed ...
    assert metrics.inference.labels(SHADOW)._sum.get() == 0  # ... the shadow's never completed
    assert perf.flush(redis_client, key_prefix) > 0
    shadow = read_perf(redis_client, key_prefix, version)[SHADOW]
    assert (shadow[CALLS], shadow[ROWS], shadow[ERRORS]) == (0, 0, 5)
    primary = read_perf(redis_client, key_prefix, good.manifest.version)[PRIMARY]
    assert (primary[CALLS], primary[ROWS], primary[ERRORS]) == (1, 5, 0)
    assert sum(primary[len(FIELDS):]) == 1  # one call in the latency buckets
    # the failure is the bundle's bug at this batch size, not the shadow arm's wiring: at 8 it predicts
    events8, windows8 = store_batch(good, 8)
    both = predict_batch(Models({PRIMARY: good, SHADOW: broken}), events8, windows8, perf=perf)
    assert [s.arm for s in both] == [PRIMARY] * 8 + [SHADOW] * 8
    assert metrics.arm_errors.labels(SHADOW)._value.get() == 5


def test_a_failing_shadow_without_an_observer_is_logged(bundle_dir, broken_dir, caplog):
    good, broken = load_bundle(bundle_dir), load_bundle(broken_dir)
    events, windows = store_batch(good, 5)
    with caplog.at_level(logging.ERROR, logger="streamer.predict"):
        served = predict_batch(Models({PRIMARY: good, SHADOW: broken}), events, windows)
    assert [s.arm for s in served] == [PRIMARY] * 5
    assert any("shadow model failed" in r.getMessage() for r in caplog.records), caplog.text


def test_a_failing_canary_raises_arm_failed_naming_it(bundle_dir, broken_dir):
    good, broken = load_bundle(bundle_dir), load_bundle(broken_dir)
    version = broken.manifest.version
    events, windows = store_batch(good, 5)
    models = Models({PRIMARY: good, CANARY: broken}, canary_percent=100.0)
    assert {models.route(e) for e in events} == {CANARY}
    metrics = Metrics.create(CollectorRegistry())
    with pytest.raises(ArmFailed) as raised:
        predict_batch(models, events, windows, perf=ArmPerf(metrics))
    assert (raised.value.arm, raised.value.version) == (CANARY, version)
    assert CANARY in str(raised.value) and version in str(raised.value)
    assert "Reshape" in str(raised.value.__cause__)  # onnxruntime's own error, chained
    # a served arm's failure is counted by the service as the events go to the DLQ, not here
    assert metrics.arm_errors.labels(CANARY)._value.get() == 0


# -- 3 and 4: `seqcast serve` on the real broker ---------------------------------------------------

@pytest.fixture
def models_dir(tmp_path, bundle_dir) -> Path:
    """models/<name>/<version> (the served bundle) and models/<name>/<version>-broken."""
    root = tmp_path / "models"
    shutil.copytree(bundle_dir, root / bundle_dir.parent.name / bundle_dir.name)
    broken_copy(bundle_dir, root / bundle_dir.parent.name / (bundle_dir.name + VERSION_SUFFIX))
    return root


def _ref(bundle_dir: Path, suffix: str = "") -> str:
    return f"{bundle_dir.parent.name}/{bundle_dir.name}{suffix}"


def _events(bundle, users: int, per_user: int, prefix: str) -> list[Event]:
    known = bundle.vocab.item_ids[2:]
    return [Event(f"{prefix}{u}-{n}", f"{prefix}user-{u}", 1_700_000_000.0 + 60.0 * n + u, known[(u + 3 * n) % len(known)],
                  float((u * 7 + n) % 11)) for n in range(per_user) for u in range(users)]




@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_a_broken_shadow_never_costs_a_served_prediction(topics, producer, consumer_factory, service_factory,
                                                         redis_client, key_prefix, bundle_dir, models_dir, bundle):
    broken_version = bundle.manifest.version + VERSION_SUFFIX
    Registry(redis_client, key_prefix).set_shadow(_ref(bundle_dir, VERSION_SUFFIX))
    events = _events(bundle, users=12, per_user=6, prefix="s")  # 72: batches of 5 (and a last of 2), never 8
    replay(events, producer, topics["input_topic"])
    service = service_factory(bundle=str(models_dir / _ref(bundle_dir)), models_dir=str(models_dir),
                              registry_poll_ms=200, max_poll_records=5, assign_all_partitions=True, **topics)
    records = read_until(consumer_factory(topics["output_topic"]), lambda r: len(r) >= len(events), 60)
    bodies = [json.loads(r.value) for r in records]
    assert sorted(b["event_id"] for b in bodies) == sorted(e.event_id for e in events)  # once each
    expected = offline_predictions(bundle, events, bundle.manifest.top_k)
    for body in bodies:
        assert body["model"]["arm"] == PRIMARY and body["model"]["version"] == bundle.manifest.version
        assert_matches(body, expected[body["event_id"]])
    emitted = lambda text: metric_value(text, "seqcast_predictions_emitted_total",  # noqa: E731
                                        model_version=bundle.manifest.version, arm="primary")
    wait_for(lambda: emitted(service.get("/metrics")[1]) == len(events), 10, "the last batch's counts")
    text = service.get("/metrics")[1]
    # one count per event: the shadow's failure did not make the service retry the batch event by event
    assert metric_value(text, "seqcast_arm_errors_total", arm="shadow") == len(events)
    assert metric_value(text, "seqcast_arm_errors_total", arm="primary") == 0
    assert metric_value(text, "seqcast_inference_seconds_count", arm="shadow") == 0
    assert metric_value(text, "seqcast_inference_seconds_count", arm="primary") > 0
    assert metric_value(text, "seqcast_events_invalid_total", reason="internal_error") == 0
    wait_for(lambda: read_perf(redis_client, key_prefix, broken_version).get(SHADOW, [0] * 3)[ERRORS] == len(events),
             10, "the shadow's failures in Redis")
    dead = consumer_factory(topics["dlq_topic"])
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert not dead.poll(200, 100), "a record went to the dead-letter topic"


def rollout_cli(key_prefix: str, models_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqcast_cli", "rollout", "--key-prefix", key_prefix,
                           "--models-dir", str(models_dir), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_a_broken_canary_is_rolled_back_by_the_error_rate_guard_rail(
        broker, topics, consumer_factory, service_factory, redis_client, key_prefix, bundle_dir, models_dir, bundle,
        tmp_path):
    good, broken = _ref(bundle_dir), _ref(bundle_dir, VERSION_SUFFIX)
    service_factory(bundle=str(models_dir / good), models_dir=str(models_dir), registry_poll_ms=200,
                    max_poll_records=20, **topics).wait_ready()
    store, registry = RolloutStore(redis_client, key_prefix), Registry(redis_client, key_prefix)
    # only the error rail can act: no shadow phase, a step that cannot pass on accuracy, no latency rail;
    # one step of 50% (in a policy file: the flag `--steps 50` is refused, "steps must be a list, got 50")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"steps": [50]}))
    started = rollout_cli(key_prefix, models_dir, "start", broken, "--policy", str(policy), "--shadow-min-scored", "0",
                          "--step-min-scored", "100000", "--max-latency-ratio", "1000")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: registry.read().canary == broken, 15, "the canary to be applied")
    events = _events(bundle, users=40, per_user=15, prefix="c")
    sender = replay_in_background(broker, topics["input_topic"], events, rate=400.0)  # batches of varied sizes

    def ended() -> bool:
        state: RolloutState | None = store.load()[1]
        return state is not None and state.terminal and state.applied
    wait_for(ended, 30, "the rollout to end")
    (decision,) = store.decisions()
    assert decision["outcome"] == "rollback", decision
    assert decision["reason"].startswith("guard rail: error rate"), decision
    guard = decision["evidence"]["guard"]
    assert guard["candidate_failed"] >= 3 and guard["candidate_error_rate"] > 0.01, guard
    roles = registry.read()
    assert roles.active == good and roles.canary is None and roles.shadow is None
    sender.join(timeout=30)

    output, dlq = consumer_factory(topics["output_topic"]), consumer_factory(topics["dlq_topic"])
    predicted, dead = [], []
    deadline = time.monotonic() + 60
    while len(predicted) + len(dead) < len(events):
        assert time.monotonic() < deadline, f"{len(predicted)} predicted + {len(dead)} dead of {len(events)}"
        predicted += output.poll(200, 5000)
        dead += dlq.poll(100, 5000)
    bodies = [json.loads(r.value) for r in predicted]
    dead_ids = [json.loads(r.value)["event_id"] for r in dead]  # the input message, unchanged
    counts = Counter([b["event_id"] for b in bodies] + dead_ids)
    assert set(counts) == {e.event_id for e in events}, "an event was lost"
    assert max(counts.values()) == 1, f"handled twice: {[k for k, c in counts.items() if c > 1][:5]}"
    assert dead, "the canary failed no event"
    assert {dict(r.headers)["reason"] for r in dead} == {b"internal_error"}
    by_id = {e.event_id: e for e in events}
    assert all(on_canary(by_id[i].user_id, 50.0) for i in dead_ids)  # only the canary's users lost theirs
    # a canary prediction exists only for a canary batch of exactly 8 (the broken copy's one good size)
    arms = Counter((b["model"]["version"], b["model"]["arm"]) for b in bodies)
    assert set(arms) <= {(bundle.manifest.version, PRIMARY), (bundle.manifest.version + VERSION_SUFFIX, CANARY)}
    # each dead-lettered canary event counted once as the canary's failure (flushed to Redis every poll)
    failed = lambda: read_perf(redis_client, key_prefix, bundle.manifest.version + VERSION_SUFFIX)  # noqa: E731
    wait_for(lambda: failed().get(CANARY, [0] * 3)[ERRORS] == len(dead_ids), 10,
             f"{len(dead_ids)} canary failures in Redis (got {failed().get(CANARY, [0] * 3)[ERRORS]})")
