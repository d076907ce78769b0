"""Automated rollouts end to end (issue 14): `seqcast serve` on the real Tansu broker and Redis, traffic
with a sequence worth learning, and the controller deciding by itself.

1. a clearly worse model is rolled back in the shadow phase (or at the first canary step) and
   traffic stays with the primary, no event lost or predicted twice;
2. a clearly better one goes through every canary step to 100% and becomes active;
3. the controller (its own process) is SIGKILLed mid-rollout; a restarted one resumes from
   Redis without a double step;
4. a canary whose predictions equal the primary's but whose model call is ~20x slower is rolled
   back by the latency guard rail.
The A/A false-alarm rate is tests/test_sequential.py (offline, thousands of runs).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import REDIS_URL, rollout_log
from slow_bundle import slow_copy
from stream_helpers import read_until, replay_in_background, wait_for
from streamer.events import Event
from streamer.registry import Registry
from streamer.rollout_state import RolloutStore
from streamer.transport import DEFAULT_CLIENT

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])]
ROOT = Path(__file__).resolve().parents[1]
# small minimums so a rollout fits in a test; the statistics are the defaults' (alpha = beta = 0.05)
FAST = ["--shadow-min-scored", "300", "--steps", "5,25,50", "--step-min-scored", "60", "--step-min-seconds", "1",
        "--min-evidence", "100", "--max-regression", "0.05"]


@pytest.fixture
def models_dir(tmp_path) -> Path:
    return tmp_path / "models"


def install(bundle: Path, models_dir: Path) -> str:
    """Copy a bundle to models_dir/<name>/<version>; returns its registry ref."""
    shutil.copytree(bundle, models_dir / bundle.parent.name / bundle.name)
    return f"{bundle.parent.name}/{bundle.name}"


def traffic(seed: int = 7) -> list[Event]:
    """The rollout log's kind of traffic (another seed, 800 users: the canary's 5% must be enough users
    to vouch for a model, the test counts users), in event-time order."""
    log = rollout_log(seed, users=800, events_per_user=20)
    events = [Event(f"r{seed}-{n}", str(u), float(ts), str(item), float(value))
              for n, (u, ts, item, value) in enumerate(zip(log.users, log.ts, log.items, log.values))]
    return sorted(events, key=lambda e: (e.ts, e.event_id))


def rollout_cli(key_prefix: str, models_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqcast_cli", "rollout", "--key-prefix", key_prefix,
                           "--models-dir", str(models_dir), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)




def serve(service_factory, topics, models_dir: Path, primary: Path, **settings):
    service = service_factory(bundle=str(models_dir / primary.parent.name / primary.name), models_dir=str(models_dir),
                              registry_poll_ms=200, max_poll_records=100, **topics, **settings)
    service.wait_ready()
    return service


def outcomes(store: RolloutStore) -> list[str]:
    return [d["outcome"] for d in reversed(store.decisions(50))]


def exactly_once(records, events: list[Event]) -> list[dict]:
    """Every event predicted once, none twice; the predictions in topic order."""
    bodies = [json.loads(r.value) for r in records]
    counts = Counter(b["event_id"] for b in bodies)
    assert set(counts) == {e.event_id for e in events}, "an event was lost"
    assert max(counts.values()) == 1, f"predicted twice: {[k for k, c in counts.items() if c > 1][:5]}"
    return bodies


def done(store: RolloutStore) -> bool:
    state = store.load()[1]
    return state is not None and state.terminal and state.applied


def roll_out(broker, topics, service_factory, redis_client, key_prefix, models_dir: Path, primary: Path,
             candidate: Path):
    """Serve `primary`, start a rollout of `candidate` (the FAST policy, `--wait`: the CLI follows it to
    its end), wait for its shadow, then stream the traffic at 1,500 events/s; returns (store, registry,
    primary ref, candidate ref, events, sender, the following CLI process)."""
    primary_ref, candidate_ref = install(primary, models_dir), install(candidate, models_dir)
    serve(service_factory, topics, models_dir, primary)
    store, registry = RolloutStore(redis_client, key_prefix), Registry(redis_client, key_prefix)
    follower = subprocess.Popen([sys.executable, "-m", "seqcast_cli", "rollout", "--key-prefix", key_prefix,
                                 "--models-dir", str(models_dir), "start", candidate_ref, *FAST, "--wait"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: registry.read().shadow == candidate_ref or follower.poll() is not None, 15,
             "the shadow to be applied")
    assert follower.poll() is None, follower.communicate()
    events = traffic()
    sender = replay_in_background(broker, topics["input_topic"], events, rate=1500.0)
    return store, registry, primary_ref, candidate_ref, events, sender, follower


def test_a_clearly_worse_model_is_rolled_back_before_most_users_see_it(
        broker, topics, consumer_factory, service_factory, redis_client, key_prefix, models_dir,
        good_bundle_dir, bad_bundle_dir):
    store, registry, good, bad, events, sender, follower = roll_out(
        broker, topics, service_factory, redis_client, key_prefix, models_dir, good_bundle_dir, bad_bundle_dir)
    wait_for(lambda: done(store), 60, "the rollout to end")
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 1 and out.strip().endswith("rolled_back") and "rollback: " in out, (out, err)
    assert outcomes(store) == ["rollback"]
    decision = store.decisions()[0]
    assert decision["from"] in ("shadow", "canary step 1/3 (5% of users)"), decision
    assert "worse than tolerated" in decision["reason"] or "guard rail" in decision["reason"], decision
    roles = registry.read()
    assert roles.active == good and roles.shadow is None and roles.canary is None
    sender.join(timeout=60)
    bodies = exactly_once(read_until(consumer_factory(topics["output_topic"]),
                                     lambda r: len(r) >= len(events), 90), events)
    versions = Counter(b["model"]["version"] for b in bodies)
    assert versions[bad_bundle_dir.name] <= 0.05 * len(events), versions  # at most the first step's share saw it
    status = rollout_cli(key_prefix, models_dir, "status")
    assert "phase: rolled_back" in status.stdout, status.stdout


def test_a_clearly_better_model_goes_through_every_step_and_becomes_active(
        broker, topics, consumer_factory, service_factory, redis_client, key_prefix, models_dir,
        good_bundle_dir, bad_bundle_dir):
    store, registry, bad, good, events, sender, follower = roll_out(
        broker, topics, service_factory, redis_client, key_prefix, models_dir, bad_bundle_dir, good_bundle_dir)
    wait_for(lambda: done(store), 90, "the rollout to end")
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0 and out.strip().endswith("promoted"), (out, err)
    assert out.count("advance: ") == 3 and "promote: canary step 3/3" in out, out
    assert outcomes(store) == ["advance", "advance", "advance", "promote"], store.decisions()
    steps = [d["to"] for d in reversed(store.decisions())]
    assert steps == ["canary step 1/3 (5% of users)", "canary step 2/3 (25% of users)",
                     "canary step 3/3 (50% of users)", "promoted"]
    roles = registry.read()
    assert roles.active == good and roles.canary is None and roles.shadow is None
    assert registry.history()[0] == bad
    sender.join(timeout=60)
    bodies = exactly_once(read_until(consumer_factory(topics["output_topic"]),
                                     lambda r: len(r) >= len(events), 90), events)
    arms = Counter((b["model"]["version"], b["model"]["arm"]) for b in bodies)
    assert arms[(good_bundle_dir.name, "canary")] > 0 and arms[(good_bundle_dir.name, "primary")] > 0, arms
    assert arms[(good_bundle_dir.name, "shadow")] == 0, arms  # a shadow is never emitted


class ControllerProcess:
    """`seqcast rollout controller` as its own process (the Flagger-like deployment)."""

    def __init__(self, key_prefix: str, models_dir: Path, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
        env.update(PYTHONPATH=str(ROOT), SEQCAST_REDIS_URL=REDIS_URL)
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "seqcast_cli", "rollout", "--key-prefix", key_prefix,
                                      "--models-dir", str(models_dir), "controller", "--metrics-port", "0",
                                      "--interval-s", "0.2", "--lease-s", "2"], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self.log.close()
        return code


def test_a_killed_controller_is_resumed_from_redis_without_a_double_step(
        broker, topics, consumer_factory, service_factory, redis_client, key_prefix, models_dir, tmp_path,
        good_bundle_dir, bad_bundle_dir):
    install(bad_bundle_dir, models_dir)
    good = install(good_bundle_dir, models_dir)
    serve(service_factory, topics, models_dir, bad_bundle_dir, rollout_controller=False)
    store, registry = RolloutStore(redis_client, key_prefix), Registry(redis_client, key_prefix)
    first = ControllerProcess(key_prefix, models_dir, tmp_path / "controller-1.log")
    try:
        assert rollout_cli(key_prefix, models_dir, "start", good, *FAST, "--step-min-seconds", "3").returncode == 0
        wait_for(lambda: registry.read().shadow == good, 15, "the first controller to apply the shadow")
        holder = store.lease_holder()
        events = traffic()
        sender = replay_in_background(broker, topics["input_topic"], events, rate=400.0)  # outlasts the rollout
        wait_for(lambda: len(store.decisions()) >= 1, 60, "the first decision")
        first.kill()  # mid-rollout: in a canary step, its lease still held
        assert not done(store) and outcomes(store) == ["advance"]
        epoch = registry.epoch()
        assert store.lease_holder() == holder
        second = ControllerProcess(key_prefix, models_dir, tmp_path / "controller-2.log")
        try:
            wait_for(lambda: done(store), 90, "the second controller to finish the rollout")
        finally:
            assert second.stop() == 0
        sender.join(timeout=60)
    finally:
        if first.proc.poll() is None:
            first.kill()
    assert outcomes(store) == ["advance", "advance", "advance", "promote"], store.decisions()
    assert {d["by"] for d in store.decisions()} - {holder} != set()  # the second one took the later steps
    assert registry.read().active == good
    # each step changed the registry once: canary 25%, canary 50%, promote (which ends the canary), and the
    # first step's canary 5% if the kill came before it was applied; a repeated step would add more
    assert registry.epoch() - epoch <= 4
    exactly_once(read_until(consumer_factory(topics["output_topic"]), lambda r: len(r) >= len(events), 90), events)


def test_a_canary_that_is_accurate_but_slow_is_rolled_back_by_the_latency_guard(
        broker, topics, consumer_factory, service_factory, redis_client, key_prefix, models_dir,
        good_bundle_dir):
    good = install(good_bundle_dir, models_dir)
    slow_dir = slow_copy(good_bundle_dir, models_dir / good_bundle_dir.parent.name / (good_bundle_dir.name + "-slow"))
    slow = f"{slow_dir.parent.name}/{slow_dir.name}"
    serve(service_factory, topics, models_dir, good_bundle_dir)
    store, registry = RolloutStore(redis_client, key_prefix), Registry(redis_client, key_prefix)
    started = rollout_cli(key_prefix, models_dir, "start", slow, *FAST, "--shadow-min-scored", "0",
                          "--step-min-scored", "100000")  # no shadow; the step cannot pass on accuracy alone
    assert started.returncode == 0, started.stderr
    wait_for(lambda: registry.read().canary == slow, 10, "the canary to be applied")
    events = traffic()
    sender = replay_in_background(broker, topics["input_topic"], events, rate=1500.0)
    wait_for(lambda: done(store), 60, "the rollout to end")
    (decision,) = store.decisions()
    assert decision["outcome"] == "rollback" and "guard rail: p99 model call" in decision["reason"], decision
    guard = decision["evidence"]["guard"]
    assert guard["candidate_p99_ms"] > guard["p99_limit_ms"] and guard["candidate_calls"] >= 20
    assert registry.read().canary is None and registry.read().active == good
    sender.join(timeout=60)
    exactly_once(read_until(consumer_factory(topics["output_topic"]), lambda r: len(r) >= len(events), 90), events)
