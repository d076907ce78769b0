"""The client examples (examples/python, examples/node) run the way a user runs them: as
subprocesses against the real broker and a real service.

- Round trips (Python, then Node): the example producer refuses an invalid event and sends the
  valid ones, the service predicts them, and the example consumer prints each event_id once
  even though the predictions topic holds a real duplicate (a byte-for-byte copy of one
  prediction at a later offset, as a service re-emission looks), commits what it handled
  (the group's committed offset), resumes from it in a second run and stops on Ctrl-C.
- The two producers put a user's events on the same partition (murmur2 on both sides).
- ajv (Node) and jsonschema (Python) give the same verdicts on one corpus of events.
- The Node tests need `node` and `npm` (Node.js >= 20): without them they fail, saying so; the
  session runs `npm ci` in examples/node when node_modules is missing.
"""
from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from jsonschema import Draft202012Validator
from stream_helpers import read_until

from streamer.transport import DEFAULT_CLIENT

ROOT = Path(__file__).resolve().parents[1]
PY_DIR, NODE_DIR = ROOT / "examples" / "python", ROOT / "examples" / "node"
SCHEMA = json.loads((ROOT / "schemas" / "v1" / "event.schema.json").read_text())
SESSION_MS = "6000"  # on Tansu a group join takes about half the session timeout (6000: Kafka's minimum)
INVALID = {"event_id": "bad-1", "ts": 1_700_000_000, "item_id": "i1"}  # no user_id


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not on PATH: the Node examples need Node.js >= 20 and npm "
                    "(CI: install them, then `npm ci` in examples/node)")
    return found


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, after `npm ci` in examples/node if its node_modules is missing."""
    node_bin, npm = _tool("node"), _tool("npm")
    if not (NODE_DIR / "node_modules" / ".package-lock.json").is_file():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=False, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"npm ci in examples/node failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return node_bin


def run(argv: list[str], stdin: str | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, check=False, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def events(prefix: str, n: int) -> list[dict]:
    return [{"event_id": f"{prefix}-{i}", "user_id": f"user-{i % 2}", "ts": 1_700_000_000 + 60 * i,
             "item_id": f"i{i % 5}", "value": 1.0 + i} for i in range(n)]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def committed(broker: str, group: str, topic: str) -> int:
    consumer = KafkaConsumer({"bootstrap.servers": broker, "group.id": group})
    try:
        return consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        consumer.close()


def read_lines(proc: subprocess.Popen, n: int, timeout_s: float) -> list[str]:
    """The first n stdout lines of a running process, failing after timeout_s."""
    data, deadline = b"", time.monotonic() + timeout_s
    while (have := data.count(b"\n")) < n:
        left = deadline - time.monotonic()
        assert left > 0 and proc.poll() is None, f"{have}/{n} lines after {timeout_s}s, exit code {proc.poll()}"
        if select.select([proc.stdout], [], [], left)[0]:
            data += os.read(proc.stdout.fileno(), 65536)
    return data.decode().splitlines()


def expected_line(p: dict) -> str:
    """What the consumers print without --json (forecast0 compared as a number: see below)."""
    top3 = ",".join(r["item_id"] for r in p.get("recommendations", [])[:3]) or "-"
    return f"{p['event_id']}\t{p['user_id']}\ttop3={top3}\tforecast0="


def check_printed(lines: list[str], predictions: dict[str, dict], as_json: bool) -> list[str]:
    """Each printed line shows its prediction faithfully; returns the printed event_ids in order."""
    ids = []
    for text in lines:
        if as_json:
            shown = json.loads(text)
            assert shown == predictions[shown["event_id"]]
            ids.append(shown["event_id"])
        else:
            eid = text.split("\t")[0]
            head, _, forecast0 = text.rpartition("=")
            assert head + "=" == expected_line(predictions[eid])
            assert float(forecast0) == predictions[eid]["forecast"][0]  # shortest round-trip form in both languages
            ids.append(eid)
    return ids


def round_trip(lang: str, produce: list[str], consume: list[str], as_json: bool, invalid_message: str,
               broker, topics, service_factory, producer, consumer_factory, tmp_path) -> None:
    service_factory(assign_all_partitions=True, **topics)
    first, second, third = events(f"{lang}-a", 3), events(f"{lang}-b", 3), events(f"{lang}-c", 2)
    (tmp_path / "first.jsonl").write_text(jsonl(first[:2] + [INVALID] + first[2:]))
    (tmp_path / "second.jsonl").write_text(jsonl(second))
    sent = run(produce + ["--topic", topics["input_topic"], str(tmp_path / "first.jsonl")])
    assert sent.returncode == 1, sent.stderr  # 1: something was refused
    assert f"line 3: refused: {invalid_message}" in sent.stderr and "sent 3, refused 1, failed 0" in sent.stderr

    output = consumer_factory(topics["output_topic"])
    records = read_until(output, lambda recs: len(recs) >= 3)
    # a real duplicate, later in the topic: the first prediction again, key and value unchanged
    producer.send(topics["output_topic"], records[0].value, records[0].key)
    producer.flush()
    sent = run(produce + ["--topic", topics["input_topic"], "--demo", "2", str(tmp_path / "second.jsonl")])
    assert sent.returncode == 0 and "sent 5, refused 0, failed 0" in sent.stderr, sent.stderr
    records += read_until(output, lambda recs: len(recs) >= 6)
    sent_ids = [json.loads(r.value)["event_id"] for r in read_until(consumer_factory(topics["input_topic"]),
                                                                      lambda recs: len(recs) >= 8)]
    assert len(sent_ids) == 8 and INVALID["event_id"] not in sent_ids  # the refused one never left
    predictions = {json.loads(r.value)["event_id"]: json.loads(r.value) for r in records}
    assert len(records) == 9 and len(predictions) == 8 and INVALID["event_id"] not in predictions

    group = f"examples-{uuid.uuid4().hex[:8]}"
    consume = consume + ["--topic", topics["output_topic"], "--group", group, "--session-timeout-ms", SESSION_MS]
    got = run(consume + ["--limit", "8"] + (["--json"] if as_json else []))
    assert got.returncode == 0, got.stderr
    ids = check_printed(got.stdout.splitlines(), predictions, as_json)
    # 8 distinct: the duplicate (offset 3) was dropped, so the 8th is the last prediction (offset 8)
    assert sorted(ids) == sorted(predictions) and len(ids) == 8
    assert sum(eid.startswith("demo-") for eid in ids) == 2
    assert committed(broker, group, topics["output_topic"]) == 9  # all it handled, the duplicate included

    (tmp_path / "third.jsonl").write_text(jsonl(third))
    assert run(produce + ["--topic", topics["input_topic"], str(tmp_path / "third.jsonl")]).returncode == 0
    proc = subprocess.Popen(consume, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = read_lines(proc, 2, 60)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert rest == b"" and [line.split("\t")[0] for line in lines] == [e["event_id"] for e in third]  # resumed
    assert committed(broker, group, topics["output_topic"]) == 11
    assert "2 predictions" in err.decode()


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_python_examples_round_trip(broker, topics, service_factory, producer, consumer_factory, tmp_path):
    py = [sys.executable]
    round_trip("py", py + [str(PY_DIR / "producer.py"), "--bootstrap", broker],
               py + [str(PY_DIR / "consumer.py"), "--bootstrap", broker], False,
               "'user_id' is a required property", broker, topics, service_factory, producer, consumer_factory,
               tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_node_examples_round_trip(node, broker, topics, service_factory, producer, consumer_factory, tmp_path):
    # --no-idempotence: Tansu refuses kafkajs's InitProducerId (see the next test)
    round_trip("node", [node, str(NODE_DIR / "producer.js"), "--bootstrap", broker, "--no-idempotence"],
               [node, str(NODE_DIR / "consumer.js"), "--bootstrap", broker], True,
               "data must have required property 'user_id'",
               broker, topics, service_factory, producer, consumer_factory, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_node_idempotent_producer_on_tansu_fails_fast_and_says_why(node, broker, topic_factory, consumer_factory):
    """kafkajs sends InitProducerId v1 (no producer id/epoch fields), which Tansu 0.6 answers with
    UNKNOWN_SERVER_ERROR; the example must exit 2 with the way out, not hang, and send nothing."""
    topic = topic_factory()
    env = {**os.environ, "KAFKA_BOOTSTRAP": broker}  # the env default, this time
    done = subprocess.run([node, str(NODE_DIR / "producer.js"), "--topic", topic, "--demo", "1"], env=env,
                          check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "cannot start the producer" in done.stderr and "--no-idempotence" in done.stderr
    assert consumer_factory(topic).poll(1000) == []


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_both_producers_put_a_user_on_the_same_partition(node, broker, topic_factory, consumer_factory):
    topic = topic_factory(partitions=6)
    rows = [{"event_id": f"e-{i}", "user_id": f"user-{i}", "ts": 1, "value": 1.0} for i in range(16)]
    assert run([sys.executable, str(PY_DIR / "producer.py"), "--bootstrap", broker, "--topic", topic],
               jsonl(rows)).returncode == 0
    assert run([node, str(NODE_DIR / "producer.js"), "--bootstrap", broker, "--topic", topic, "--no-idempotence"],
               jsonl(rows)).returncode == 0
    records = read_until(consumer_factory(topic), lambda recs: len(recs) >= 32)
    partitions: dict[str, set[int]] = {}
    for record in records:
        partitions.setdefault(record.key.decode(), set()).add(record.partition)
    assert len(partitions) == 16 and all(len(p) == 1 for p in partitions.values()), partitions
    assert len(set().union(*partitions.values())) > 1  # the keys did spread: the check means something


def _corpus() -> list[str]:
    ok = {"event_id": "e", "user_id": "u", "ts": 1_700_000_000, "value": 1.5}
    no_user = {k: v for k, v in ok.items() if k != "user_id"}
    rows = [*SCHEMA["examples"], no_user, {**ok, "ts": "2023-02-29"}, {**ok, "value": "3"},
            {"event_id": "e", "user_id": "u", "ts": 1}, {**ok, "ts": "2024-02-29"}, {**ok, "ts": "2000-02-29"},
            {**ok, "ts": "1900-02-29"}, {**ok, "ts": "2024-01-01T24:00:00Z"}, {**ok, "ts": "2024-01-01 10:00"},
            {**ok, "ts": "2024-01-01T10:00:00.123+05:30"}, {**ok, "ts": "2024-1-1"}, {**ok, "ts": True},
            {**ok, "item_id": None}, {"event_id": "e", "user_id": "u", "ts": 1, "item_id": None},
            {**ok, "event_id": ""}, {**ok, "event_id": "e" * 128}, {**ok, "event_id": "e" * 129},
            {**ok, "user_id": "\U0001F600" * 128}, {**ok, "user_id": "\U0001F600" * 129},  # code points, not UTF-16
            {**ok, "type": 5}, {**ok, "extra": {"any": "thing"}}, {**ok, "value": -1.7976931348623157e308}, [1]]
    lines = [json.dumps(row) for row in rows]
    return lines + [lines[0].replace("1704067200", "1e999"), '{"event_id": "e", "user_id": "u", "ts": 1, "value": NaN}',
                    "{not json"]


def _verdicts(output: str) -> dict[str, str]:
    return {line.split("\t")[0]: line.split("\t")[1] for line in output.splitlines()}


def _schema_verdict(line: str) -> str:
    try:
        event = json.loads(line, parse_constant=lambda name: 1 / 0)
    except (ValueError, ZeroDivisionError):
        return "reject"
    return "accept" if Draft202012Validator(SCHEMA).is_valid(event) else "reject"


def test_ajv_and_jsonschema_agree_on_the_event_schema(node):
    lines = _corpus()
    expected = {str(n): _schema_verdict(line) for n, line in enumerate(lines, 1)}
    assert {"accept", "reject"} <= set(expected.values()) and expected["3"] == "reject"
    for argv in ([node, str(NODE_DIR / "producer.js")], [sys.executable, str(PY_DIR / "producer.py")]):
        checked = run(argv + ["--check"], "\n".join(lines) + "\n")
        assert checked.returncode == 1, checked.stderr  # some were rejected
        assert _verdicts(checked.stdout) == expected, argv[1]


# Python's re `$` also matches before a final newline, ECMA-262's does not: the schema's `not: {pattern: "\n"}`
# on ts strings makes jsonschema refuse what ajv refuses.
def test_ajv_and_jsonschema_agree_on_a_trailing_newline_in_ts(node):
    line = json.dumps({"event_id": "e", "user_id": "u", "ts": "2024-01-01\n", "value": 1})
    checked = run([node, str(NODE_DIR / "producer.js"), "--check"], line + "\n")
    assert _verdicts(checked.stdout) == {"1": _schema_verdict(line)}
    assert _schema_verdict(line) == "reject"


@pytest.mark.parametrize("script", ["python/producer.py", "python/consumer.py", "node/producer.js",
                                    "node/consumer.js"])
def test_examples_print_usage(script, request):
    interpreter = sys.executable if script.endswith(".py") else request.getfixturevalue("node")
    argv = [interpreter, str(ROOT / "examples" / script), "--help"]
    shown = run(argv)
    assert shown.returncode == 0 and "usage" in shown.stdout and "--bootstrap" in shown.stdout, shown.stderr
    refused = run(argv[:2] + ["--no-such-flag"])
    assert refused.returncode != 0 and "usage" in refused.stderr


def test_the_python_dedup_window_is_bounded_and_forgets_the_least_recently_seen():
    spec = importlib.util.spec_from_file_location("example_consumer", PY_DIR / "consumer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen = module.SeenIds(2)
    # "a" seen again moves to the back, so "c" pushes out "b" (a FIFO would forget "a" instead)
    assert [seen.first_time(eid) for eid in "abaca"] == [True, True, False, True, False]
    assert seen.first_time("b") and len(seen.ids) == 2
