"""Model rollouts against a running service: promote, canary, shadow, corrupt bundle, rollback,
and live accuracy, on the real Tansu broker and the real Redis.

Every test drives the registry the way an operator does (the `seqcast models` CLI or the
`Registry` it wraps) while the service runs in a subprocess.
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from deploy_checks import assert_dashboard_matches_scrape
from stream_helpers import (assert_matches, covers, metric_value, offline_predictions, predictions_by_id,
                            read_until, replay_in_background)
import redis

from streamer.bundle import load_bundle
from streamer.embedded import free_port
from streamer.events import Event
from streamer.live_accuracy import read_totals
from streamer.registry import Registry, on_canary
from streamer.replay import replay
from streamer.served import Heartbeat, read_served, served_key

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry(redis_client, key_prefix) -> Registry:
    return Registry(redis_client, key_prefix)


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    """The services' models directory: registry refs must lie inside it (streamer.rollout.resolve).
    SEQCAST_MODELS_DIR reaches `seqcast models` (models_cli); service_factory passes it as a setting."""
    root = tmp_path / "models"
    monkeypatch.setenv("SEQCAST_MODELS_DIR", str(root))
    return root


def install(bundle: Path, models_dir: Path) -> Path:
    """A copy of `bundle` at models_dir/<name>/<version>."""
    dst = models_dir / bundle.parent.name / bundle.name
    shutil.copytree(bundle, dst)
    return dst


@pytest.fixture
def bundle_dir(bundle_dir, models_dir) -> Path:  # the session's bundle, inside this test's models_dir
    return install(bundle_dir, models_dir)


@pytest.fixture
def bundle_dir_v2(bundle_dir_v2, models_dir) -> Path:
    return install(bundle_dir_v2, models_dir)


@pytest.fixture
def service_factory(service_factory, models_dir):
    return lambda **settings: service_factory(**{"models_dir": str(models_dir), **settings})


def stream(users: int, per_user: int, start: int = 0, seed: int = 0) -> list[Event]:
    """Interleaved events of `users` users, strictly increasing ts per user, items and values."""
    events = []
    for step in range(start, start + per_user):
        for u in range(users):
            n = step * users + u
            events.append(Event(f"e{seed}-{n}", f"user-{u}", 1_700_000_000.0 + 60 * n, f"i{(u * 7 + step * 3) % 50}",
                                float(20 + (u % 5) + step % 7)))
    return events


def models_cli(key_prefix: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqcast_cli", "models", "--key-prefix", key_prefix, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def wait_for(condition, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def serving(service, version: str, arm: str = "primary") -> bool:
    text = service.get("/metrics")[1]
    return any(line.startswith("seqcast_model_info{") and f'version="{version}"' in line and f'arm="{arm}"' in line
               for line in text.splitlines())


def test_promote_mid_stream_switches_once_without_loss(broker, topics, consumer_factory, service_factory,
                                                       key_prefix, bundle_dir, bundle_dir_v2):
    v1, v2 = load_bundle(bundle_dir), load_bundle(bundle_dir_v2)
    service = service_factory(assign_all_partitions=True, max_poll_records=50, registry_poll_ms=200, **topics)
    service.wait_ready()
    events = stream(users=20, per_user=30)
    sender = replay_in_background(broker, topics["input_topic"], events, rate=120.0)
    output = consumer_factory(topics["output_topic"])
    records = read_until(output, lambda r: len(r) >= 150)
    promoted = models_cli(key_prefix, "promote", str(bundle_dir_v2))
    assert promoted.returncode == 0, promoted.stderr
    sender.join(timeout=60)
    records += read_until(output, covers({e.event_id for e in events[len(records):]}))
    by_id = predictions_by_id(records)
    assert len(records) == len(events) and set(by_id) == {e.event_id for e in events}  # none lost, none twice
    versions = [json.loads(r.value)["model"]["version"] for r in records]
    switch = versions.index(v2.manifest.version)
    assert set(versions[:switch]) == {v1.manifest.version} and set(versions[switch:]) == {v2.manifest.version}
    assert 150 <= switch < len(events)
    expected = {b.manifest.version: offline_predictions(b, events, b.manifest.top_k) for b in (v1, v2)}
    for (prediction,) in by_id.values():  # each prediction is its version's model on the right window
        assert_matches(prediction, expected[prediction["model"]["version"]][prediction["event_id"]])
    assert metric_value(service.get("/metrics")[1], "seqcast_model_swaps_total", role="active") == 1


def test_canary_share_is_stable_per_user(broker, topics, producer, consumer_factory, service_factory,
                                         registry, bundle_dir_v2):
    registry.set_canary(str(bundle_dir_v2), 20)
    events = stream(users=400, per_user=2)
    replay(events, producer, topics["input_topic"])
    service = service_factory(assign_all_partitions=True, **topics)
    records = read_until(consumer_factory(topics["output_topic"]), covers({e.event_id for e in events}))
    arms = defaultdict(set)
    for record in records:
        body = json.loads(record.value)
        arms[body["user_id"]].add(body["model"]["arm"])
    assert all(len(a) == 1 for a in arms.values())  # a user always gets the same arm
    canary_users = {u for u, a in arms.items() if a == {"canary"}}
    assert canary_users == {u for u in arms if on_canary(u, 20)}  # exactly the stable hash
    assert 0.14 <= len(canary_users) / len(arms) <= 0.26
    version = load_bundle(bundle_dir_v2).manifest.version
    wait_for(lambda: metric_value(service.get("/metrics")[1], "seqcast_predictions_emitted_total",
                                  model_version=version, arm="canary") == 2 * len(canary_users),
             what="the canary's emitted count")


def test_shadow_is_scored_but_never_emitted(broker, topics, producer, consumer_factory, service_factory,
                                           registry, bundle_dir, bundle_dir_v2):
    registry.set_shadow(str(bundle_dir_v2))
    events = stream(users=10, per_user=12)
    replay(events, producer, topics["input_topic"])
    service = service_factory(assign_all_partitions=True, **topics)
    records = read_until(consumer_factory(topics["output_topic"]), covers({e.event_id for e in events}))
    assert len(records) == len(events)
    assert {json.loads(r.value)["model"]["arm"] for r in records} == {"primary"}
    shadow_version = load_bundle(bundle_dir_v2).manifest.version
    scored = lambda text, head: metric_value(text, "seqcast_live_scored_total", model_version=shadow_version,
                                             arm="shadow", head=head)
    # a batch is scored just after its predictions are produced: wait for the last one
    wait_for(lambda: scored(service.get("/metrics")[1], "forecast") == len(events) - 10, what="shadow scoring")
    text = service.get("/metrics")[1]
    assert scored(text, "items") == scored(text, "forecast") == len(events) - 10  # all but each user's first
    assert metric_value(text, "seqcast_predictions_emitted_total", model_version=shadow_version, arm="shadow") == 0
    assert_dashboard_matches_scrape(text)  # the Grafana dashboard only names metrics a live service exposes


def test_corrupt_bundle_is_refused_and_old_model_keeps_serving(broker, topics, producer, consumer_factory,
                                                                service_factory, registry, key_prefix,
                                                                bundle_dir, models_dir):
    corrupt = models_dir / "corrupt" / "v1"
    shutil.copytree(bundle_dir, corrupt)
    with open(corrupt / "model.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00garbage\x00")
    refused = models_cli(key_prefix, "promote", str(corrupt))
    assert refused.returncode == 2 and "sha256" in refused.stderr  # the CLI checks first
    service = service_factory(assign_all_partitions=True, registry_poll_ms=100, **topics)
    service.wait_ready()
    registry.promote(str(corrupt))  # an operator who skipped the check: the service must refuse it
    wait_for(lambda: metric_value(service.get("/metrics")[1], "seqcast_model_load_failures_total") == 1,
             what="the load failure metric")
    events = stream(users=5, per_user=4)
    replay(events, producer, topics["input_topic"])
    records = read_until(consumer_factory(topics["output_topic"]), covers({e.event_id for e in events}))
    version = load_bundle(bundle_dir).manifest.version
    assert {json.loads(r.value)["model"]["version"] for r in records} == {version}
    assert any("bundle refused" in line.get("msg", "") for line in service.logs())
    assert service.proc.poll() is None


def test_rollback_returns_to_previous_version(broker, topics, producer, consumer_factory, service_factory,
                                              registry, key_prefix, bundle_dir, bundle_dir_v2):
    v1, v2 = (load_bundle(d).manifest.version for d in (bundle_dir, bundle_dir_v2))
    service = service_factory(assign_all_partitions=True, registry_poll_ms=100, **topics)
    service.wait_ready()
    registry.promote(str(bundle_dir_v2))
    wait_for(lambda: serving(service, v2), what="v2 to serve")
    rolled = models_cli(key_prefix, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    wait_for(lambda: serving(service, v1) and not serving(service, v2), what="v1 to serve again")
    events = stream(users=5, per_user=3)
    replay(events, producer, topics["input_topic"])
    records = read_until(consumer_factory(topics["output_topic"]), covers({e.event_id for e in events}))
    assert {json.loads(r.value)["model"]["version"] for r in records} == {v1}
    listing = models_cli(key_prefix, "list")
    assert listing.returncode == 0 and "active" in listing.stdout and v1 in listing.stdout


def offline_live_accuracy(bundle, events: list[Event]) -> dict[str, float]:
    """HR@K and MAE of each prediction judged by the same user's next event, computed offline."""
    expected = offline_predictions(bundle, events, bundle.manifest.top_k)
    previous: dict[str, Event] = {}
    hits = scored = 0
    abs_error = 0.0
    for event in events:
        before = previous.get(event.user_id)
        if before is not None:
            prediction = expected[before.event_id]
            scored += 1
            hits += event.item_id in prediction["items"]
            abs_error += abs(event.value - prediction["forecast"][0])
        previous[event.user_id] = event
    return {"scored": scored, "hits": hits, "abs_error": abs_error}


def test_live_accuracy_equals_offline(broker, topics, producer, consumer_factory, service_factory,
                                      key_prefix, redis_client, bundle_dir):
    bundle = load_bundle(bundle_dir)
    events = stream(users=12, per_user=15, seed=4)
    replay(events, producer, topics["input_topic"])
    service = service_factory(assign_all_partitions=True, max_poll_records=37, **topics)
    read_until(consumer_factory(topics["output_topic"]), covers({e.event_id for e in events}))
    want = offline_live_accuracy(bundle, events)
    version = bundle.manifest.version
    wait_for(lambda: metric_value(service.get("/metrics")[1], "seqcast_live_scored_total", model_version=version,
                                  arm="primary", head="items") == want["scored"], what="live scoring")
    totals = read_totals(redis_client, key_prefix, version)["primary"]
    assert totals["items_scored"] == totals["forecast_scored"] == want["scored"] == len(events) - 12
    assert totals["hits"] == want["hits"]
    assert totals["abs_error"] == pytest.approx(want["abs_error"], rel=1e-6)
    wait_for(lambda: metric_value(service.get("/metrics")[1], "seqcast_live_hits_total", model_version=version,
                                  arm="primary") == want["hits"], what="metrics to catch up")
    text = service.get("/metrics")[1]
    assert metric_value(text, "seqcast_live_abs_error_total", model_version=version,
                        arm="primary") == pytest.approx(want["abs_error"], rel=1e-6)


def table_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows of `seqcast models list`, keyed by their first cell (a ref or an instance id)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


def tamper(bundle_dir: Path, to: Path) -> Path:
    shutil.copytree(bundle_dir, to)
    with open(to / "model.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00tampered\x00")
    return to


def test_models_list_shows_a_refused_bundle_as_not_served(topics, service_factory, registry, redis_client,
                                                          key_prefix, bundle_dir, models_dir):
    service = service_factory(assign_all_partitions=True, registry_poll_ms=100, **topics)
    service.wait_ready()
    old_ref, version = registry.read().active, load_bundle(bundle_dir).manifest.version
    (instance,) = [line["instance"] for line in service.logs() if line.get("msg") == "model registry watcher started"]
    bad_ref = "tampered/v1"  # the CLI turns a path inside models_dir into its ref
    assert models_cli(key_prefix, "promote", "--no-verify", str(tamper(bundle_dir, models_dir / bad_ref))).returncode == 0
    wait_for(lambda: metric_value(service.get("/metrics")[1], "seqcast_model_load_failures_total") == 1,
             what="the refusal")
    wait_for(lambda: any(e.refused for e in read_served(redis_client, key_prefix)[0]), what="the refusal's heartbeat")
    listing = models_cli(key_prefix, "list")
    assert listing.returncode == 0, listing.stderr
    rows = table_rows(listing.stdout)
    assert rows[bad_ref][1].startswith("active (registry) — NOT served by 1/1 live instances: refused by 1: ")
    assert "sha256" in rows[bad_ref][1] and "model.onnx" in rows[bad_ref][1]
    assert rows[old_ref][1] == "served as primary by 1/1 (not its registry role)"
    _, serves, applied, refused, age = rows[instance]
    assert serves == f"primary {old_ref} ({version})" and applied == "1" and age.endswith("s ago")
    assert refused.startswith(f"epoch 2 {bad_ref}: ") and "sha256" in refused
    assert "live instances: 1 (registry epoch 2)" in listing.stdout

    assert models_cli(key_prefix, "rollback").returncode == 0  # back to what never stopped serving
    wait_for(lambda: not any(e.refused for e in read_served(redis_client, key_prefix)[0]), what="the refusal to clear")
    rows = table_rows(models_cli(key_prefix, "list").stdout)
    assert rows[old_ref][1] == "active (served by 1/1)" and rows[instance][3] == "-"

    service.signal(signal.SIGTERM)
    assert service.wait() == 0
    assert redis_client.hgetall(served_key(key_prefix)) == {}  # a cleanly stopped service serves nothing
    listing = models_cli(key_prefix, "list").stdout
    assert table_rows(listing)[old_ref][1] == "active (registry; no live instance reports)"
    assert "live instances: none report" in listing


def entry(instance: str, age_s: float, interval_s: float = 1.0) -> str:
    return json.dumps({"instance": instance, "host": "h", "pid": 1, "updated_at": time.time() - age_s,
                       "interval_s": interval_s, "epoch": 3, "arms": {"primary": {"ref": "m/v1", "version": "v1"}},
                       "canary_percent": 0.0, "refused": None})


def test_stale_heartbeats_are_ignored_and_old_ones_pruned(redis_client, key_prefix):
    beat = Heartbeat(redis_client, key_prefix, interval_s=1.0, instance="fresh")
    assert beat.beat(3, {"primary": {"ref": "m/v1", "version": "v1"}}, 0.0, None)
    redis_client.hset(served_key(key_prefix), mapping={
        "stale": entry("stale", 60),  # past 15 s: ignored, kept a while for the listing
        "slow": entry("slow", 60, interval_s=30),  # a 30 s heartbeat is live for 90 s
        "dead": entry("dead", 3600),  # long gone (SIGKILL): pruned
        "junk": "not json"})
    live, stale = read_served(redis_client, key_prefix)
    assert sorted(e.instance for e in live) == ["fresh", "slow"] and [e.instance for e in stale] == ["stale"]
    assert sorted(redis_client.hkeys(served_key(key_prefix))) == [b"fresh", b"slow", b"stale"]
    assert beat.clear() and sorted(redis_client.hkeys(served_key(key_prefix))) == [b"slow", b"stale"]


def test_heartbeat_survives_redis_down_and_warns_once(caplog):
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    beat = Heartbeat(down, "x", interval_s=1.0)
    with caplog.at_level(logging.WARNING, logger="streamer.served"):
        assert not beat.beat(1, {}, 0.0, None) and not beat.beat(1, {}, 0.0, None) and not beat.clear()
    assert [r.getMessage() for r in caplog.records] == ["served heartbeat failed; retrying quietly"]
    assert beat.due()  # nothing written: the next poll tries again
