"""The Grafana dashboard and the alert rules, run by a real Prometheus scraping a real `seqcast serve`.

tests/test_deploy.py parses the PromQL; this file evaluates it. A query that parses but returns
nothing shows "No data" on the dashboard, and an alert whose expression is empty when it should not
be never fires: only a real Prometheus over real scrapes shows either.

1. `promtool` accepts alerts.yml, the compose prometheus.yml (syntax; its rule path only exists in the
   container), a config derived from it that scrapes a local target with the real rule file, and
   unit tests of alert rules that parsing cannot check (an alert that must fire on absent series).
2. A live run: the test's own Redis (so it can be stopped), the session's Tansu broker, one `seqcast
   serve` in a consumer group, a Prometheus scraping it every second and evaluating a copy of
   alerts.yml whose `for:` durations alone are shortened. The scenario makes every panel have data:
   valid events in waves (rate() needs a counter to move between scrapes), malformed ones (dead
   letters), a rollout started after start-up and run by the service's own controller (a model
   swap, a canary arm, the rollout row's phase and evidence), a
   value far out of range (a live-accuracy skip) and a Redis outage (pause, outage counter).
   Then every panel query returns at least one finite series, every alert expression evaluates, the
   rule manager reports every rule healthy, and the dead-letter alert (and the Redis pause alert,
   during the outage) fire.
No allow-list: every panel query has data in this scenario.
"""
from __future__ import annotations

import json
import math
import time
import uuid

import pytest
import yaml

from bench.chaos.infra import ChaosRedis
from deploy_checks import ALERTS, DASHBOARD, PROMETHEUS, alert_expressions, assert_dashboard_matches_scrape, _panels
from prometheus_server import (PrometheusServer, dashboard_variables, grafana_expr, live_config, promtool, require,
                               rules_without_for, shortened_for)
from stream_helpers import metric_value
from streamer.events import Event
from streamer.registry import Registry
from streamer.rollout_policy import Policy
from streamer.rollout_state import RolloutStore, new_state
from streamer.replay import replay
from streamer.transport import DEFAULT_CLIENT, Producer

USERS = 12
MALFORMED = [b"not json", b'{"event_id": "x", "user_id": 7, "ts": 1.0, "item_id": "i1"}']  # not_json, wrong_type
# Alerts that must stay quiet in this scenario: each would mean a bug (in the streamer or in the rule).
MUST_NOT_FIRE = {"SeqcastStreamerDown", "SeqcastNoStreamerUp", "SeqcastModelLoadFailed", "SeqcastInternalErrors", "SeqcastDeliveryFailing",
                 "SeqcastNoPredictions"}


# === promtool =====================================================================================
def test_promtool_accepts_rules_and_configs(tmp_path) -> None:
    rules = promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0 and "SUCCESS" in rules.stdout, rules.stdout + rules.stderr
    syntax = promtool("check", "config", "--syntax-only", str(PROMETHEUS))
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr

    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(live_config(PROMETHEUS, ["127.0.0.1:9108"], [ALERTS])))
    checked = promtool("check", "config", str(config))  # also loads and checks the real rule file
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr

    original = ALERTS.read_text()
    short = shortened_for(original)
    assert short != original and rules_without_for(short) == rules_without_for(original)

    broken = tmp_path / "broken.yml"  # the check has teeth
    broken.write_text(original.replace("sum(rate(seqcast_events_invalid_total[5m]))", "sum(rate(seqcast_events_invalid_total))"))
    assert promtool("check", "rules", str(broken)).returncode != 0


def _summary(alert: str) -> str:
    rule = next(r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if r.get("alert") == alert)
    return rule["annotations"]["summary"]


def test_promtool_unit_tests_of_alerts_on_absent_series(tmp_path) -> None:
    """SeqcastNoPredictions must fire when no prediction was ever produced: then the labelled
    predictions counter has no series at all (sum() of nothing is nothing, not 0). Likewise
    SeqcastNoStreamerUp when discovery finds no streamer at all (`up` itself has no series)."""
    series = 'seqcast_events_consumed_total{job="seqcast-streamer",instance="s:9108"}'
    emitted = 'seqcast_predictions_emitted_total{job="seqcast-streamer",instance="s:9108",model_version="1",arm="primary"}'
    no_predictions = {"exp_labels": {"severity": "critical"},
                      "exp_annotations": {"summary": _summary("SeqcastNoPredictions")}}
    spec = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": [{"series": series, "values": "0+60x30"}],  # every event dead-lettered
         "alert_rule_test": [{"eval_time": "20m", "alertname": "SeqcastNoPredictions", "exp_alerts": [no_predictions]}]},
        {"interval": "1m", "input_series": [{"series": series, "values": "0+60x30"},
                                            {"series": emitted, "values": "0+60x30"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": "SeqcastNoPredictions", "exp_alerts": []}]},
        {"interval": "1m", "input_series": [{"series": series, "values": "0+60x30"},  # predictions stopped
                                            {"series": emitted, "values": "0+60x10 600x20"}],
         "alert_rule_test": [{"eval_time": "25m", "alertname": "SeqcastNoPredictions", "exp_alerts": [no_predictions]}]},
        # every replica gone: discovery finds no target, `up` has no series, SeqcastStreamerDown is silent
        {"interval": "1m", "input_series": [{"series": 'up{job="seqcast-streamer",instance="s:9108"}',
                                             "values": "1x5 _x20"}],
         "alert_rule_test": [{"eval_time": "4m", "alertname": "SeqcastNoStreamerUp", "exp_alerts": []},
                             {"eval_time": "20m", "alertname": "SeqcastStreamerDown", "exp_alerts": []},
                             {"eval_time": "20m", "alertname": "SeqcastNoStreamerUp", "exp_alerts": [
                                 {"exp_labels": {"severity": "critical"},
                                  "exp_annotations": {"summary": _summary("SeqcastNoStreamerUp")}}]}]},
    ]}
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# === live =========================================================================================
@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own: stopping it must not disturb the shared one."""
    server = ChaosRedis(tmp_path)
    yield server
    server.close()


def _wave(step: int, per_user: int, big_value_for: str | None = None) -> list[Event]:
    """Events of USERS users, strictly increasing ts per user across waves; optionally one user's
    last value far out of range (its previous prediction's live MAE judgment is skipped)."""
    events = []
    for s in range(step, step + per_user):
        for u in range(USERS):
            n = s * USERS + u
            value = float(20 + (u % 5) + s % 7)
            if big_value_for == f"user-{u}" and s == step + per_user - 1:
                value = 1e12
            events.append(Event(f"p-{n}", f"user-{u}", 1_700_000_000.0 + 60 * n, f"i{(u * 7 + s * 3) % 50}", value))
    return events


def _emitted(service) -> float:
    text = service.get("/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("seqcast_predictions_emitted_total{"))


def _wait(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def _send(broker: str, topic: str, events: list[Event], malformed: bool = True) -> None:
    producer = Producer(broker, linger_ms=2)
    try:
        replay(events, producer, topic)
        if malformed:
            for raw in MALFORMED:
                producer.send(topic, raw, b"bad")
            producer.flush()
    finally:
        producer.close()


def _finite(sample: dict) -> bool:
    return math.isfinite(float(sample["value"][1]))


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_every_panel_and_alert_on_a_live_prometheus(broker, topic_factory, own_redis, key_prefix, bundle_dir,
                                                     bundle_dir_v2, service_factory, tmp_path) -> None:
    require("prometheus")
    topics = {"input_topic": topic_factory(2, "events"), "output_topic": topic_factory(1, "predictions"),
              "dlq_topic": topic_factory(1, "dlq")}
    service = service_factory(redis_url=own_redis.url, group_id=f"prom-{uuid.uuid4().hex[:8]}",
                              registry_poll_ms=200, models_dir=str(bundle_dir_v2.parent.parent), **topics)
    service.wait_ready()

    rules = tmp_path / "alerts.yml"  # the real rules, `for:` shortened so alerts fire within the test
    rules.write_text(shortened_for(ALERTS.read_text(), "1s"))
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    target = f"127.0.0.1:{service.metrics_port}"
    prom = PrometheusServer(live_config(PROMETHEUS, [target], [rules]), prom_dir)
    try:
        prom.wait_ready()
        prom.wait_for(lambda: [t["health"] for t in prom.targets()] == ["up"], "the streamer target to be up")
        assert prom.targets()[0]["labels"]["job"] == "seqcast-streamer"

        # a rollout started after start-up, run by the service's own controller: straight to a canary of
        # half the users (a model swap, a canary arm), judged on live accuracy (the rollout row's evidence);
        # its minimums are out of reach and its tolerance wide, so it stays in that step for the test
        registry = Registry(own_redis.client(), key_prefix)
        policy = Policy(shadow_min_scored=0, steps=(50.0,), step_min_scored=10**9, step_max_seconds=3600.0,
                        max_regression=0.9, min_evidence=1)
        candidate = f"{bundle_dir_v2.parent.name}/{bundle_dir_v2.name}"
        rollout = new_state(candidate, bundle_dir_v2.name, registry.read().active, bundle_dir.name, policy.to_dict())
        assert RolloutStore(own_redis.client(), key_prefix).commit("", rollout)
        _wait(lambda: metric_value(service.get("/metrics")[1], "seqcast_model_swaps_total", role="canary") == 1,
              "the canary swap")

        sent, step = 0, 0
        for wave in range(2):  # two waves at least a scrape apart: every counter moves while scraped
            events = _wave(step, 3)
            _send(broker, topics["input_topic"], events)
            sent, step = sent + len(events), step + 3
            _wait(lambda: _emitted(service) == sent, f"wave {wave}'s predictions")
            time.sleep(2.2)

        # a Redis outage: the batch is held, partitions paused, then resumed once Redis is back
        own_redis.stop()
        events = _wave(step, 2)
        _send(broker, topics["input_topic"], events)
        sent, step = sent + len(events), step + 2
        prom.wait_for(lambda: prom.query('seqcast_paused{dependency="redis"} == 1'), "the pause to be scraped")
        prom.wait_for(lambda: "SeqcastPausedForRedis" in prom.firing(), "SeqcastPausedForRedis to fire")
        own_redis.start()
        _wait(lambda: _emitted(service) == sent, "the held batch's predictions after the outage", 60)
        time.sleep(2.2)

        events = _wave(step, 3, big_value_for="user-0")  # user-0's last value is 1e12: out_of_range
        _send(broker, topics["input_topic"], events)
        sent = sent + len(events)
        _wait(lambda: _emitted(service) == sent, "the last wave's predictions")
        _wait(lambda: metric_value(service.get("/metrics")[1], "seqcast_live_skipped_total", reason="out_of_range"),
              "the out-of-range live judgment")
        time.sleep(2.5)  # two more scrapes

        scrape = service.get("/metrics")[1]
        assert_dashboard_matches_scrape(scrape)
        assert prom.query('up{job="seqcast-streamer"}')[0]["value"][1] == "1"

        dashboard = json.loads(DASHBOARD.read_text())
        variables = dashboard_variables(dashboard)
        no_data, not_finite, count = [], [], 0
        for panel in _panels(dashboard):
            for query in panel.get("targets", []):
                expr = grafana_expr(query["expr"], variables)
                result = prom.query(expr)  # raises with Prometheus' error on a bad query
                count += 1
                if not result:
                    no_data.append(f"{panel['title']!r} {query['refId']}: {expr}")
                elif not any(_finite(s) for s in result):
                    not_finite.append(f"{panel['title']!r} {query['refId']}: {expr} -> {result}")
        assert count >= 30
        assert not no_data, "panel queries with no series (the panel shows 'No data'):\n" + "\n".join(no_data)
        assert not not_finite, "panel queries with only NaN/Inf:\n" + "\n".join(not_finite)

        for alert, expr in alert_expressions(rules):
            prom.query(expr)  # evaluates without error (an empty result is a quiet alert)

        prom.wait_for(lambda: "SeqcastDeadLetterRateHigh" in prom.firing(), "SeqcastDeadLetterRateHigh to fire")
        evaluated = prom.rules()
        assert len(evaluated) == len(alert_expressions(ALERTS))
        assert all(r["health"] == "ok" for r in evaluated), [(r["name"], r.get("lastError")) for r in evaluated]
        assert not prom.firing() & MUST_NOT_FIRE, prom.alerts()
        for alert in prom.alerts():  # templates render (an error shows as "<error expanding template ...>")
            assert "<error" not in alert["annotations"]["summary"], alert
        dead = next(a for a in prom.alerts() if a["labels"]["alertname"] == "SeqcastDeadLetterRateHigh")
        assert dead["state"] == "firing" and dead["annotations"]["summary"].split("%")[0].replace(".", "").isdigit(), dead
    except BaseException:
        print("--- prometheus log ---\n" + prom.log_tail())
        print("--- service log ---\n" + service.log_path.read_text(errors="replace")[-3000:])
        raise
    finally:
        prom.stop()
