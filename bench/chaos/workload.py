"""What the chaos scenarios put on the events topic: valid traffic with the awkward parts of real
streams, and poison.

Valid traffic (`valid_events`) is the synthetic log in arrival order, with
- late events: some arrive after events of the same user with later timestamps;
- timestamp ties: some share their predecessor's ts with an id that sorts before it;
- duplicates: some events are sent again a few records later (a producer retry), same event_id and
  content. (An event re-sent after more than window_slack newer events of its user gets whatever of
  its window is still stored, and a crash while that copy is handled may re-emit it with less: see
  docs/contracts.md. That is not a property the checker can hold a run to, so the workload's
  duplicates are retries, as producers make them.)
- extreme values: a few finite values near the float64 limit (1.5e308), which must be predicted and
  must not corrupt live accuracy.

Poison (`poison_corpus`) is a seeded corpus of labelled mutations (each with the DLQ reason the
contract gives it: 400-digit integers, lone surrogates, sizes around every limit, ...) plus
messages drawn from `hypothesis` strategies (arbitrary JSON, event-shaped objects with
every field type wrong, raw bytes), whose verdict the checker takes from the contract.
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from streamer.events import Event
from streamer.transport import Producer

HUGE = 1.5e308
RETRY_DISTANCE = 50  # a duplicate is re-sent at most this many records after the original


@dataclass(frozen=True)
class Message:
    """One message to produce; `reason` is the expected DLQ reason (None: valid, or decided by the contract)."""

    value: bytes | None
    key: bytes | None = None
    reason: str | None = None
    labelled: bool = False  # True: `reason` is the corpus's own label, checked against the DLQ


def valid_events(users: int, per_user: int, seed: int, late: float = 0.05, ties: float = 0.03,
                 duplicates: float = 0.01, extremes: int = 4) -> list[Event]:
    """The synthetic log in arrival order, with late events, ties, duplicates and a few extreme values."""
    from training.data.synthetic import synthetic_log

    rng = random.Random(seed)
    base = list(synthetic_log(users=users, items=50, events_per_user=per_user, seed=seed).events())
    last_ts: dict[str, float] = {}
    out: list[Event] = []
    for e in base:
        roll = rng.random()
        if roll < late and e.user_id in last_ts:  # arrives now, but happened a while before the previous one
            e = Event(e.event_id, e.user_id, last_ts[e.user_id] - rng.uniform(1, 20000), e.item_id, e.value)
        elif roll < late + ties and e.user_id in last_ts:  # same ts as the previous, an id that sorts first
            e = Event("a-" + e.event_id, e.user_id, last_ts[e.user_id], e.item_id, e.value)
        last_ts[e.user_id] = max(last_ts.get(e.user_id, e.ts), e.ts)
        out.append(e)
    for position in rng.sample(range(len(out)), k=min(extremes, len(out))):
        e = out[position]
        out[position] = Event(e.event_id, e.user_id, e.ts, e.item_id, HUGE if position % 2 else -HUGE)
    for _ in range(int(len(out) * duplicates)):
        source = rng.randrange(len(out))
        out.insert(min(len(out), source + rng.randint(1, RETRY_DISTANCE)), out[source])
    return out


def event_messages(events: Iterable[Event]) -> list[Message]:
    return [Message(e.to_json_bytes(), e.user_id.encode()) for e in events]


def _event(n: int, **fields) -> dict:
    base = {"event_id": f"p-{n}", "user_id": f"pu{n % 97}", "ts": 1_704_067_200 + n, "item_id": f"i{n % 50}",
            "value": 1.0 + n % 7}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _json(obj, pad_to: int = 0) -> bytes:
    """JSON bytes of `obj`; with pad_to, exactly that many bytes (padding in a field the contract ignores)."""
    raw = json.dumps(obj).encode()
    if pad_to > len(raw):
        padded = dict(obj, pad="")
        raw = json.dumps(dict(padded, pad="x" * (pad_to - len(json.dumps(padded).encode())))).encode()
        assert len(raw) == pad_to, (len(raw), pad_to)
    return raw


def labelled_poison(dlq_limit: int, big: bool) -> list[Message]:
    """One message per class the contract names, including every size limit from both sides."""
    n = iter(range(10**6))
    lab = lambda value, reason, key=b"p": Message(value, key, reason, labelled=True)
    digits = "9" * 400
    cases = [
        lab(_json(_event(next(n))).replace(b'"ts": 17', b'"ts": ' + digits.encode() + b'17'), "not_finite"),
        lab(('{"event_id": "p-v", "user_id": "u", "ts": 1, "value": ' + digits + "}").encode(), "not_finite"),
        lab(('{"event_id": "p-v2", "user_id": "u", "ts": 1, "value": -' + "9" * 5000 + "}").encode(), "not_finite"),
        lab(b'{"event_id": "p-s1", "user_id": "u\\ud800", "ts": 1, "value": 1}', "not_utf8"),
        lab(b'{"event_id": "p-s2\\udfff", "user_id": "u", "ts": 1, "value": 1}', "not_utf8"),
        lab(b'{"event_id": "p-s3", "user_id": "u", "ts": 1, "item_id": "\\ud83d"}', "not_utf8"),
        lab(b'{"event_id": "p-s4", "user_id": "u", "ts": 1, "value": 1, "type": "\\udc00x"}', "not_utf8"),
        lab(b'{"event_id": "p-t1", "user_id": "u", "ts": "9999-12-31T23:59:59-23:59", "value": 1}', None),
        lab(b'{"event_id": "p-t2", "user_id": "u", "ts": "0001-01-01T00:00:00+23:59", "value": 1}', None),
        lab(b'{"event_id": "p-t3", "user_id": "u", "ts": "2026-02-30T00:00:00", "value": 1}', "bad_ts"),
        lab(b'{"event_id": "p-n", "user_id": "u", "ts": 1, "value": NaN}', "not_finite"),
        lab(b'{"event_id": "p-i", "user_id": "u", "ts": -Infinity, "value": 1}', "not_finite"),
        lab(b"[" * 100_000 + b"]" * 100_000, "too_large"),
        lab(b"[" * 20_000 + b"]" * 20_000, "not_json"),  # deep nesting under the size limit
        lab(None, "not_json"), lab(b"", "not_json"), lab(b"\xc3\x28", "not_utf8"),
        lab(_json(_event(next(n), ts=True)), "wrong_type"),
        lab(_json(_event(next(n), event_id="")), "bad_id"),
        lab(_json(_event(next(n), user_id="u" * 129)), "bad_id"),
        lab(_json(_event(next(n), item_id=_DROP, value=_DROP)), "no_payload"),
        lab(_json(_event(next(n), user_id=_DROP)), "missing_field"),
        # sizes: the 64 KiB message limit, the DLQ's limit for whole records, the producer's request limit
        lab(_json(_event(next(n)), pad_to=64 * 1024), None),
        lab(_json(_event(next(n)), pad_to=64 * 1024 + 1), "too_large"),
        lab(_json(_event(next(n)), pad_to=dlq_limit - 600), "too_large"),
        lab(_json(_event(next(n)), pad_to=dlq_limit - 512 - 1), "too_large"),
        lab(_json(_event(next(n)), pad_to=dlq_limit + 1), "too_large"),
        lab(_json(_event(next(n)), pad_to=3 * 1024 * 1024), "too_large"),
        lab(_json(_event(next(n))), None, key=b"k" * (3 * 1024 * 1024)),  # valid event, 3 MiB key
        lab(_json(_event(next(n), value=HUGE)), None), lab(_json(_event(next(n), value=-HUGE)), None),
        lab(_json(_event(next(n), value=5e-324)), None), lab(_json(_event(next(n), ts=1e300)), None),
        lab(_json(_event(next(n), ts=-1e300)), None),
    ]
    if big:
        cases.append(lab(_json(_event(next(n)), pad_to=16 * 1024 * 1024), "too_large"))
    return cases


def generated_poison(count: int, seed: int) -> list[Message]:
    """`count` messages drawn from hypothesis strategies (the verdict comes from the contract)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from bench.chaos import strategies
    from streamer import dlq, events, window_store

    drawn: list[bytes | None] = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])
    @given(strategies.poison_messages())
    def collect(message) -> None:
        drawn.append(message)

    with strategies.constants_of(events, dlq, window_store, strategies):
        collect()
    while len(drawn) < count:  # hypothesis may stop early once it has explored enough; repeat, deterministic
        drawn += drawn[: count - len(drawn)]
    return [Message(value, b"gen") for value in drawn[:count]]


def interleave(valid: list[Message], poison: list[Message], seed: int) -> list[Message]:
    """Poison spread at random positions through the valid traffic (valid order kept)."""
    rng = random.Random(seed)
    slots = sorted(rng.randrange(len(valid) + 1) for _ in poison)
    out, start = [], 0
    shuffled = rng.sample(poison, len(poison))
    for slot, message in zip(slots, shuffled):
        out += valid[start:slot]
        out.append(message)
        start = slot
    return out + valid[start:]


class Feeder(threading.Thread):
    """Produces `messages` to `topic` at `rate` per second; waits while `paused()` (an outage the
    scenario caused), and re-sends a chunk the broker did not acknowledge (a producer retry:
    duplicates are part of the contract)."""

    def __init__(self, bootstrap: str, topic: str, messages: list[Message], rate: float,
                 paused: Callable[[], bool] = lambda: False, chunk: int = 50) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self.bootstrap, self.topic, self.messages, self.rate = bootstrap, topic, messages, rate
        self.paused, self.chunk = paused, chunk
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        producer = Producer(self.bootstrap, linger_ms=5, max_request_bytes=32 * 1024 * 1024)
        started = time.monotonic()
        try:
            for start in range(0, len(self.messages), self.chunk):
                part = self.messages[start:start + self.chunk]
                self._send(producer, part)
                self.sent += len(part)
                if self.rate > 0:
                    ahead = self.sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except BaseException as err:  # reported by the scenario
            self.error = err
        finally:
            producer.close()

    def _send(self, producer: Producer, part: list[Message]) -> None:
        for attempt in range(100):
            while self.paused():
                time.sleep(0.2)
            try:
                for m in part:
                    producer.send(self.topic, m.value, m.key)
                producer.flush(30)
                return
            except Exception:  # noqa: BLE001 - an outage mid-chunk: send the chunk again
                time.sleep(min(5.0, 0.2 * (attempt + 1)))
        raise RuntimeError("the feeder could not deliver a chunk after 100 attempts")
