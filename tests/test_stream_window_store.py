"""The window store's Lua script against the real Redis: idempotence, ordering, trim, TTL, as-of reads."""
from __future__ import annotations

import random

import numpy as np
import pytest

from streamer.events import Event
from streamer.window_store import WindowStore, payload

# The per-event script this store used before the batch script (commit 46de50e): the reference the batch
# script must agree with, event by event.
PER_EVENT_SCRIPT = """
local zkey, hkey, id, payload = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local keep, window, ttl = {keep}, {window}, {ttl}
local ts = string.format('%.17g', struct.unpack('<d', payload))
local stored, arrival
if redis.call('ZADD', zkey, 'NX', ts, id) == 1 then
  arrival = redis.call('HINCRBY', hkey, '', 1)
  stored = string.sub(payload, 1, 16) .. struct.pack('<d', arrival) .. string.sub(payload, 17)
  redis.call('HSET', hkey, id, stored)
  local excess = redis.call('ZCARD', zkey) - keep
  while excess > 0 do
    local n = math.min(excess, 1000)
    local old = redis.call('ZRANGE', zkey, 0, n - 1)
    redis.call('ZREMRANGEBYRANK', zkey, 0, n - 1)
    redis.call('HDEL', hkey, unpack(old))
    excess = excess - n
  end
else
  stored = redis.call('HGET', hkey, id)
  if stored then arrival = struct.unpack('<d', stored, 17) end
end
if ttl > 0 then
  redis.call('EXPIRE', zkey, ttl)
  redis.call('EXPIRE', hkey, ttl)
end
local rank = redis.call('ZRANK', zkey, id)
local newest_first = {{}}
if rank and arrival then
  local hi = rank
  while #newest_first < window and hi >= 0 do
    local lo = math.max(0, hi - (window - #newest_first) + 1)
    local found = redis.call('HMGET', hkey, unpack(redis.call('ZRANGE', zkey, lo, hi)))
    for i = #found, 1, -1 do
      local p = found[i]
      if p and struct.unpack('<d', p, 17) <= arrival then newest_first[#newest_first + 1] = p end
    end
    hi = lo - 1
  end
else
  newest_first[1] = stored or (string.sub(payload, 1, 16) .. struct.pack('<d', 0) .. string.sub(payload, 17))
end
local times, values, items = {{}}, {{}}, {{}}
for i = #newest_first, 1, -1 do
  local p = newest_first[i]
  times[#times + 1] = string.sub(p, 1, 8)
  values[#values + 1] = string.sub(p, 9, 16)
  items[#items + 1] = string.sub(p, 25)
end
return #times .. ':' .. table.concat(times) .. table.concat(values) .. table.concat(items, '\\n')
"""


def per_event_reference(client, store: WindowStore, event: Event) -> tuple[list, list, list]:
    script = PER_EVENT_SCRIPT.format(keep=store.keep, window=store.window_len, ttl=int(store.ttl_seconds))
    blob = client.eval(script, 2, *store.keys(event.user_id), event.event_id, payload(event))
    n, rest = blob.split(b":", 1)
    n = int(n)
    ts, values = np.frombuffer(rest, "<f8", n), np.frombuffer(rest, "<f8", n, 8 * n)
    items = [i or None for i in rest[16 * n:].decode().split("\n")]
    return items, ts.tolist(), values.tolist()


def ev(i: int, ts: float, user: str = "u1", item: str | None = None, value: float | None = 1.0) -> Event:
    return Event(f"e{i:04d}", user, ts, item if item is not None else f"i{i}", value)


@pytest.fixture
def store(redis_client, key_prefix) -> WindowStore:
    return WindowStore(redis_client, key_prefix, window_len=4, ttl_seconds=60)


def test_window_is_as_of_the_event_oldest_first(store):
    windows = store.append_and_read([ev(i, 100.0 + i) for i in range(6)])
    assert [len(w.ts) for w in windows] == [1, 2, 3, 4, 4, 4]
    assert windows[5].items == ["i2", "i3", "i4", "i5"]
    assert windows[5].ts.tolist() == [102.0, 103.0, 104.0, 105.0]


def test_replayed_event_id_changes_nothing(store):
    events = [ev(i, 100.0 + i) for i in range(3)]
    first = store.append_and_read(events)
    again = store.append_and_read(events + [Event("e0000", "u1", 999.0, "other", 5.0)])
    assert [w.items for w in again[:3]] == [w.items for w in first]
    assert again[3].items == ["i0"]  # the stored e0000 wins; its original ts decides the as-of window
    assert store.event_ids("u1") == ["e0000", "e0001", "e0002"]


def test_out_of_order_events_are_stored_in_event_time_order(store):
    events = [ev(i, 100.0 + i) for i in range(4)]
    windows = store.append_and_read([events[2], events[0], events[3], events[1]])
    assert windows[0].items == ["i2"]
    assert windows[1].items == ["i0"]  # as of e0: nothing earlier had arrived
    assert windows[3].items == ["i0", "i1"]  # as of e1: e0 and e1, not the later e2, e3
    assert store.read("u1").items == ["i0", "i1", "i2", "i3"]


def test_equal_timestamps_order_by_event_id(store):
    store.append_and_read([ev(3, 50.0), ev(1, 50.0), ev(2, 50.0)])
    assert store.event_ids("u1") == ["e0001", "e0002", "e0003"]


def test_trim_keeps_the_newest_and_deletes_payloads(store, redis_client):
    store.append_and_read([ev(i, 100.0 + i) for i in range(10)])
    assert store.event_ids("u1") == ["e0006", "e0007", "e0008", "e0009"]
    assert sorted(store.stored("u1")) == ["e0006", "e0007", "e0008", "e0009"]


def test_a_very_late_event_gets_a_window_of_itself(store):
    store.append_and_read([ev(i, 100.0 + i) for i in range(10)])
    (late,) = store.append_and_read([ev(99, 1.0, item="old")])
    assert late.items == ["old"] and late.ts.tolist() == [1.0]
    assert "e0099" not in store.event_ids("u1")


def test_final_state_does_not_depend_on_arrival_order(redis_client, key_prefix):
    events = [ev(i, 100.0 + (i * 7919) % 50) for i in range(50)]
    states = []
    for run in range(3):
        store = WindowStore(redis_client, f"{key_prefix}:{run}", window_len=8, ttl_seconds=60, slack=4)
        shuffled = random.Random(run).sample(events, len(events))
        for start in range(0, 50, 7):
            store.append_and_read(shuffled[start:start + 7] + shuffled[:3])  # with duplicates
        states.append(store.event_ids("u1"))
    assert states[0] == states[1] == states[2]
    assert len(states[0]) == 12 and len(set(states[0])) == 12


def test_slack_makes_a_reprocessed_event_see_its_original_window(redis_client, key_prefix):
    store = WindowStore(redis_client, key_prefix, window_len=3, ttl_seconds=60, slack=2)
    events = [ev(i, 100.0 + i) for i in range(6)]
    first = store.append_and_read(events)
    replay = store.append_and_read(events[3:])  # a crash after e5 was stored, before e3's offset was committed
    assert [w.items for w in replay] == [w.items for w in first[3:]]


@pytest.mark.parametrize("late", [ev(9, 150.0, item="late"), Event("a0", "u1", 200.0, "tie", 1.0)])
def test_a_reprocessed_event_does_not_see_what_arrived_after_it(store, late):
    """Issue 10 #5: a1 (ts 100), a2 (ts 200), then x (ts 150, or a tie at ts 200 with a smaller id) arrives;
    re-reading a2 after a crash must give a2's first window, not one that includes x."""
    a1, a2 = Event("a1", "u1", 100.0, "i1", 1.0), Event("a2", "u1", 200.0, "i2", 2.0)
    first = store.append_and_read([a1, a2])
    store.append_and_read([late])
    again = store.append_and_read([a2])
    assert again[0].items == first[1].items == ["i1", "i2"]
    assert again[0].ts.tolist() == first[1].ts.tolist()
    assert store.read("u1").items.count(late.item_id) == 1  # x is stored and in later windows


def test_the_arrival_rule_reaches_past_later_arrivals_to_fill_the_window(redis_client, key_prefix):
    store = WindowStore(redis_client, key_prefix, window_len=3, ttl_seconds=60, slack=5)
    early = [ev(i, 100.0 + 10 * i) for i in range(4)]  # ts 100..130
    anchor = ev(50, 200.0, item="anchor")
    first = store.append_and_read(early + [anchor])[-1]
    store.append_and_read([ev(60, 150.0, item="x1"), ev(61, 160.0, item="x2")])  # later, but sort before it
    (again,) = store.append_and_read([anchor])
    assert first.items == again.items == ["i2", "i3", "anchor"]
    assert store.append_and_read([ev(70, 300.0, item="new")])[0].items == ["x2", "anchor", "new"]


def test_ttl_is_refreshed_on_both_keys(store, redis_client):
    store.append_and_read([ev(0, 1.0)])
    for key in store.keys("u1"):
        assert 0 < redis_client.ttl(key) <= 60
    redis_client.expire(store.keys("u1")[0], 5)
    store.append_and_read([ev(1, 2.0)])
    assert redis_client.ttl(store.keys("u1")[0]) > 5


def test_missing_fields_odd_ids_and_users_are_separate(store):
    tricky = "a|b\nc\\d"
    windows = store.append_and_read([
        Event("x1", "u{1}", 1.0, tricky, None), Event("x2", "u{1}", 2.0, None, 2.5),
        Event("x1", "u2", 1.0, "z", 7.0),
    ])
    assert windows[1].items == [tricky, None]
    assert np.isnan(windows[1].values[0]) and windows[1].values[1] == 2.5
    assert windows[2].items == ["z"] and windows[2].values.tolist() == [7.0]
    assert store.read("u{1}").items == [tricky, None]


def test_exact_timestamps_survive(store):
    ts = 1_700_000_000.123456789
    (window,) = store.append_and_read([ev(0, ts, value=0.1 + 0.2)])
    assert window.ts[0] == ts and window.values[0] == 0.1 + 0.2


def test_script_is_reloaded_after_a_flush(store, redis_client):
    store.append_and_read([ev(0, 1.0)])
    redis_client.script_flush()
    (window,) = store.append_and_read([ev(1, 2.0)])
    assert window.items == ["i0", "i1"]


def test_refuses_a_decoding_client(key_prefix):
    import redis

    with pytest.raises(ValueError, match="decode_responses"):
        WindowStore(redis.Redis(decode_responses=True), key_prefix, 4, 60)


def test_a_copy_that_arrives_after_more_than_slack_newer_events_sees_what_is_left(redis_client, key_prefix):
    """The documented limit of the arrival rule (docs/contracts.md): the window of an event is rebuilt from
    what is still stored; once more than window_slack newer events of the user arrived, part of it is gone."""
    store = WindowStore(redis_client, key_prefix, window_len=3, ttl_seconds=60, slack=2)
    events = [ev(i, 100.0 + i) for i in range(10)]
    first = store.append_and_read(events)
    (late_copy,) = store.append_and_read([events[4]])  # 5 newer events since: 3 more than the slack
    assert first[4].items == ["i2", "i3", "i4"] and late_copy.items == ["i4"]


def test_one_batch_call_equals_one_call_per_event(redis_client, key_prefix):
    """The batch script must give exactly what the old per-event calls gave: same windows, same state,
    with replays, late events, timestamp ties and several events per user in one call."""
    rng = random.Random(7)
    events = [Event(f"e{rng.randrange(60):03d}", f"u{rng.randrange(4)}", float(rng.randrange(40)),
                    f"i{i}", float(i)) for i in range(200)]
    batched = WindowStore(redis_client, f"{key_prefix}:b", window_len=5, ttl_seconds=60, slack=3)
    single = WindowStore(redis_client, f"{key_prefix}:s", window_len=5, ttl_seconds=60, slack=3)  # old script
    split = WindowStore(redis_client, f"{key_prefix}:c", window_len=5, ttl_seconds=60, slack=3, max_per_call=7)
    for start in range(0, 200, 50):
        chunk = events[start:start + 50]
        got = batched.append_and_read(chunk)
        got_split = split.append_and_read(chunk)
        want = [per_event_reference(redis_client, single, e) for e in chunk]
        for g, s, (items, ts, values) in zip(got, got_split, want):
            assert g.items == s.items == items
            assert g.ts.tolist() == s.ts.tolist() == ts
            assert g.values.tolist() == s.values.tolist() == values
    for user in ("u0", "u1", "u2", "u3"):
        assert batched.event_ids(user) == single.event_ids(user) == split.event_ids(user)
        assert batched.stored(user) == single.stored(user)


def test_marks_come_back_with_the_windows(store, redis_client):
    redis_client.hset(store.marks_key("u1"), mapping={"served": b"[1]", "shadow": b"[2]"})
    windows, marks = store.append_and_read_marks([ev(0, 1.0), ev(1, 2.0, user="u2"), ev(2, 3.0)])
    assert [w.items for w in windows] == [["i0"], ["i1"], ["i0", "i2"]]
    assert marks == {"u1": {"served": b"[1]", "shadow": b"[2]"}, "u2": {}}
    assert store.marks_key("u1").endswith("{u1}:last")


def test_a_new_script_per_configuration_and_resize(store):
    store.append_and_read([ev(i, 100.0 + i) for i in range(6)])
    store.resize(6)
    (window,) = store.append_and_read([ev(6, 106.0)])
    assert window.items == ["i2", "i3", "i4", "i5", "i6"]  # keep was 4 when e0, e1 arrived: trimmed
