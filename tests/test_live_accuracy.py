"""Live accuracy against the real Redis: exactly-once totals under a crash mid-write, compare-and-set between
two writers, and numbers that cannot corrupt the totals (issue 10 #3 and #4)."""
from __future__ import annotations

import math

import pytest
import redis
from prometheus_client import CollectorRegistry

from bench.chaos.proxy import TcpProxy
from streamer.embedded import free_port
from streamer.events import Event
from streamer.live_accuracy import LiveScorer, read_totals
from streamer.metrics import Metrics
from streamer.predict import Scored

V = "v1"


def scored(user: str, n: int, value: float | None = 10.0, forecast0: float | None = 10.0, item: str = "i1",
           recs: tuple[str, ...] = ("i1", "i2"), scale: float = 1.0) -> Scored:
    event = Event(f"{user}-e{n}", user, 1000.0 + n, item, value)
    body = {"forecast": None if forecast0 is None else [forecast0, 0.0],
            "recommendations": [{"item_id": r, "score": 1.0} for r in recs]}
    return Scored(event, "primary", V, body, scale)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create(CollectorRegistry())


def counter(metrics: Metrics, reason: str) -> float:
    return metrics.live_skipped.labels(reason)._value.get()


def test_replaying_a_batch_judges_nothing_twice(redis_client, key_prefix, metrics):
    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    first = [scored(f"u{k}", 0) for k in range(5)]
    second = [scored(f"u{k}", 1, value=12.0) for k in range(5)]
    live.score(first)
    live.score(second)
    live.score(first + second)  # a crash after both were written, then the whole range is read again
    totals = read_totals(redis_client, key_prefix, V)["primary"]
    assert (totals["items_scored"], totals["hits"], totals["forecast_scored"]) == (5, 5, 5)
    assert totals["MAE"] == pytest.approx(2.0)


def test_extreme_values_are_skipped_and_counted_never_stored(redis_client, key_prefix, metrics):
    """Issue 10 #3: value 1.5e308 twice made the absolute error infinite and HINCRBYFLOAT raised."""
    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    live.score([scored("u", 0, value=1.0, forecast0=1.0)])
    live.score([scored("u", 1, value=1.5e308, forecast0=-1.5e308)])  # error 1.5e308: beyond 1e6 stds
    live.score([scored("u", 2, value=1.5e308, forecast0=1.0)])  # error |1.5e308 + 1.5e308| = inf
    live.score([scored("u", 3, value=4.0)])  # error |4 - 1| = 3: counted
    totals = read_totals(redis_client, key_prefix, V)["primary"]
    assert totals["forecast_scored"] == 1 and totals["abs_error"] == 3.0 and totals["forecast_skipped"] == 2
    assert counter(metrics, "out_of_range") == 1 and counter(metrics, "not_finite") == 1
    assert all(math.isfinite(float(v)) for v in redis_client.hgetall(live.totals_key(V)).values())


def test_a_total_that_would_overflow_is_left_alone(redis_client, key_prefix, metrics):
    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    redis_client.hset(live.totals_key(V), "primary:abs_error", "1.7e308")
    live.score([scored("u", 0, value=0.0, forecast0=0.0, scale=1e303)])
    live.score([scored("u", 1, value=1e308, scale=1e303)])  # within 1e6 stds of a huge scale, but the sum overflows
    assert float(redis_client.hget(live.totals_key(V), "primary:abs_error")) == 1.7e308
    assert counter(metrics, "overflow") == 2  # abs_error and sq_error (1e308 squared) both left alone


def test_a_second_writer_with_a_stale_read_cannot_count_again(redis_client, key_prefix, metrics):
    """Two members briefly on one user (a rebalance): compare-and-set lets one of them count."""
    a, b = (LiveScorer(redis_client, key_prefix, 60, metrics) for _ in range(2))
    a.score([scored("u", 0)])
    stale = b.read_marks(["u"])
    a.score([scored("u", 1)])
    assert b.score([scored("u", 1)], stale) == {}  # b read before a wrote
    assert read_totals(redis_client, key_prefix, V)["primary"]["items_scored"] == 1


def test_the_write_script_is_reloaded_after_a_flush(redis_client, key_prefix, metrics):
    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    live.score([scored("u", 0)])
    redis_client.script_flush()
    live.score([scored("u", 1)])
    assert read_totals(redis_client, key_prefix, V)["primary"]["items_scored"] == 1


def _traffic(proxy_port: int, users: int, key_prefix: str, metrics: Metrics) -> None:
    client = redis.Redis(port=proxy_port, socket_timeout=10)
    LiveScorer(client, key_prefix, 60, metrics).score([scored(f"u{k}", 1, value=12.0) for k in range(users)])


@pytest.mark.parametrize("cut_at", [0.5, 0.97])
def test_a_crash_mid_write_loses_and_doubles_no_judgment(redis_client, key_prefix, metrics, cut_at):
    """Issue 10 #4: marks and totals were written by one non-transactional pipeline; a process killed while
    sending it left users marked as judged whose judgments were never counted. Here the connection dies
    after a fraction of the batch's bytes (exactly what Redis sees when the process is SIGKILLed mid-send),
    then the restarted process scores the whole batch again: every user must be counted exactly once."""
    users = 2000
    real, probe = f"{key_prefix}:r", f"{key_prefix}:p"  # same length: the probe's byte count fits the real run
    LiveScorer(redis_client, real, 60, metrics).score([scored(f"u{k}", 0) for k in range(users)])
    port = redis_client.connection_pool.connection_kwargs.get("port", 6379)
    counting = TcpProxy(free_port(), port)
    LiveScorer(redis_client, probe, 60, metrics).score([scored(f"u{k}", 0) for k in range(users)])
    _traffic(counting.port, users, probe, metrics)  # how many bytes one uninterrupted batch sends
    total = counting.forwarded
    counting.close()
    cutting = TcpProxy(free_port(), port, cut_after_bytes=int(total * cut_at))
    with pytest.raises(redis.ConnectionError):
        _traffic(cutting.port, users, real, metrics)
    cutting.close()
    LiveScorer(redis_client, real, 60, metrics).score([scored(f"u{k}", 1, value=12.0) for k in range(users)])
    totals = read_totals(redis_client, real, V)["primary"]
    assert (totals["items_scored"], totals["forecast_scored"]) == (users, users)
    assert totals["abs_error"] == pytest.approx(2.0 * users)


def test_marks_read_by_the_window_call_score_like_a_separate_read(redis_client, key_prefix, metrics):
    from streamer.window_store import WindowStore

    store = WindowStore(redis_client, key_prefix, 4, 60)
    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    assert store.marks_key("u0") == live.key("u0")
    first, second = [scored(f"u{k}", 0) for k in range(3)], [scored(f"u{k}", 1, value=13.0) for k in range(3)]
    for batch in (first, second):
        _, marks = store.append_and_read_marks([s.event for s in batch])
        live.score(batch, marks)
    _, marks = store.append_and_read_marks([s.event for s in second])
    assert live.score(second, marks) == {}  # a replay: its marks say it was judged already
    totals = read_totals(redis_client, key_prefix, V)["primary"]
    assert (totals["items_scored"], totals["hits"], totals["forecast_scored"], totals["MAE"]) == (3, 3, 3, 3.0)


def test_marks_of_the_old_encoding_are_read_and_new_ones_are_old_readable(redis_client, key_prefix, metrics):
    """Rolling upgrade: members before this change wrote json.dumps marks with sorted items and read
    marks with json.loads; both directions must keep working (no new key)."""
    import json

    from streamer.live_accuracy import LastPrediction

    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    old = json.dumps([1000.0, "u-e0", V, "primary", 10.0, ["i1", "i2"], 1.0]).encode()
    redis_client.hset(live.key("u"), "served", old)
    live.score([scored("u", 1, value=12.0)])
    new = redis_client.hget(live.key("u"), "served")
    assert json.loads(new)[:5] == [1001.0, "u-e1", V, "primary", 10.0]
    assert LastPrediction.from_bytes(new).items == frozenset({"i1", "i2"})
    totals = read_totals(redis_client, key_prefix, V)["primary"]
    assert (totals["items_scored"], totals["hits"], totals["abs_error"]) == (1, 1, 2.0)


def test_a_non_finite_forecast_is_stored_and_its_judgment_skipped(redis_client, key_prefix, metrics):
    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    live.score([scored("u", 0, forecast0=float("nan"))])
    live.score([scored("u", 1, value=3.0)])
    assert counter(metrics, "not_finite") == 1
    assert read_totals(redis_client, key_prefix, V)["primary"]["forecast_skipped"] == 1


def served_and_shadow(user: str, n: int, value: float, item: str, served: tuple[float, tuple[str, ...]],
                      shadow: tuple[float, tuple[str, ...]]) -> list[Scored]:
    """One event's two predictions as predict_batch orders them: the served one, then the shadow's
    (same Event object)."""
    event = Event(f"{user}-e{n}", user, 1000.0 + n, item, value)

    def body(forecast0: float, recs: tuple[str, ...]) -> dict:
        return {"forecast": [forecast0], "recommendations": [{"item_id": r, "score": 1.0} for r in recs]}
    return [Scored(event, "primary", V, body(*served)), Scored(event, "shadow", "v2", body(*shadow))]


def test_a_shadow_is_paired_with_the_served_arm_on_the_same_events(redis_client, key_prefix, metrics):
    from streamer.live_totals import read_paired

    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    # predictions at event 0, judged by event 1 (item i1, value 10): primary hits with error 2,
    # the shadow misses with error 1; user b: both hit, errors 3 and 3
    first = [*served_and_shadow("a", 0, 5.0, "i0", (12.0, ("i1",)), (11.0, ("i9",))),
             *served_and_shadow("b", 0, 5.0, "i0", (7.0, ("i1",)), (13.0, ("i1",)))]
    live.score(first[0::2] + first[1::2])
    second = [*served_and_shadow("a", 1, 10.0, "i1", (0.0, ()), (0.0, ())),
              *served_and_shadow("b", 1, 10.0, "i1", (0.0, ()), (0.0, ()))]
    batch = second[0::2] + second[1::2]
    live.score(batch)
    live.score(batch)  # a replay pairs nothing twice
    pairs = read_paired(redis_client, key_prefix, "v2")[V]
    assert pairs == {"pairs_items": 2, "hit_diff": -1, "hit_diff_sq": 1, "base_hits": 2,
                     "pairs_forecast": 2, "err_diff": 1.0, "err_diff_sq": 1.0, "base_abs_error": 5.0}
    totals = read_totals(redis_client, key_prefix, V)["primary"]
    assert totals["sq_error"] == 4.0 + 9.0 and totals["abs_error"] == 5.0
    assert read_totals(redis_client, key_prefix, "v2")["shadow"]["sq_error"] == 1.0 + 9.0
    # the same sums by user bucket (each user's judgments in one bucket), written once despite the replay
    from streamer.live_totals import bucket_of, read_buckets

    a, b = f"b{bucket_of('a')}", f"b{bucket_of('b')}"
    assert a != b
    assert read_buckets(redis_client, key_prefix, V, "primary") == {a: [1, 1, 1, 2.0], b: [1, 1, 1, 3.0]}
    assert read_buckets(redis_client, key_prefix, "v2", V, paired=True) == {a: [1, -1, 1, 1.0], b: [1, 0, 1, 0.0]}


def test_a_shadow_mark_from_an_older_event_is_not_paired(redis_client, key_prefix, metrics):
    from streamer.live_totals import read_paired

    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    live.score(served_and_shadow("a", 0, 5.0, "i0", (12.0, ("i1",)), (11.0, ("i1",))))
    live.score(served_and_shadow("a", 1, 5.0, "i0", (12.0, ("i1",)), (11.0, ("i1",)))[:1])  # shadow off
    live.score(served_and_shadow("a", 2, 10.0, "i1", (0.0, ()), (0.0, ())))  # back: its mark is event 0's
    assert read_paired(redis_client, key_prefix, "v2") == {}
    assert read_totals(redis_client, key_prefix, "v2")["shadow"]["items_scored"] == 1  # still judged alone


def test_bucket_totals_are_kept_only_when_asked(redis_client, key_prefix, metrics):
    """The service asks for them only while a canary or shadow serves (they cost throughput)."""
    from streamer.live_totals import read_buckets

    live = LiveScorer(redis_client, key_prefix, 60, metrics)
    live.score([scored("u", 0)], buckets=False)
    live.score([scored("u", 1)], buckets=False)
    assert read_totals(redis_client, key_prefix, V)["primary"]["items_scored"] == 1
    assert read_buckets(redis_client, key_prefix, V, "primary") == {}
    live.score([scored("u", 2)])
    assert sum(b[0] for b in read_buckets(redis_client, key_prefix, V, "primary").values()) == 1
