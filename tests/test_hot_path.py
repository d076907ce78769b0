"""The serving hot path's fast implementations agree with their slow references.

- `parse_event` (orjson, falling back) and `parse_event_stdlib` (the standard library) give the
  same Event, bit for bit (a -0.0 timestamp stays -0.0), or the same DLQ reason.
- `encode_windows` (vectorised) equals encoding each window on its own with `log_dt`.
- onnxruntime's TopK (`select_top`) picks the items and scores numpy's `top_items` picks.
"""
from __future__ import annotations

import base64
import json
import math
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from streamer.events import InvalidEvent, parse_event, parse_event_stdlib
from streamer import topk
from streamer.features import encode_windows, log_dt
from streamer.predict import select_top, top_items


def outcome(parse, raw: bytes):
    try:
        event = parse(raw)
    except InvalidEvent as err:
        return ("invalid", err.reason)
    bits = lambda x: None if x is None else struct.pack("<d", x)
    return (event.event_id, event.user_id, bits(event.ts), event.item_id, bits(event.value), event.type)


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.integers(-2**70, 2**70),
    st.sampled_from([0, -0.0, 0.0, 2**53 + 1, 2**64 - 1, 2**64, -2**63 - 1, 10**400, 1e308, 5e-324]),
)
texts = st.one_of(st.text(max_size=5), st.sampled_from(["", "x" * 129, "\ud800", "a\udfffb", "2026-01-01T00:00:00Z",
                                                         "not a time", "9999-12-31T23:59:59+00:00"]))
values = st.one_of(numbers, texts, st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
fields = st.dictionaries(st.sampled_from(["event_id", "user_id", "ts", "item_id", "value", "type", "extra"]),
                         values, max_size=7)


def spell(obj, ensure_ascii: bool) -> bytes:
    """JSON text the way a producer might write it (NaN/Infinity literals included: invalid JSON)."""
    try:
        return json.dumps(obj, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    except (ValueError, OverflowError):
        return b"{}"


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields, st.booleans())
def test_fast_and_reference_parsers_agree_on_generated_events(obj, ensure_ascii):
    base = {"event_id": "e1", "user_id": "u1", "ts": 1.5, "item_id": "i1"}
    raw = spell({**base, **obj}, ensure_ascii)
    assert outcome(parse_event, raw) == outcome(parse_event_stdlib, raw)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 70))
def test_fast_and_reference_parsers_agree_on_mutated_bytes(noise, at):
    raw = b'{"event_id":"e1","user_id":"u1","ts":-0,"value":-0.0,"item_id":"i1"}'
    mutated = raw[:at] + noise + raw[at:]
    assert outcome(parse_event, mutated) == outcome(parse_event_stdlib, mutated)


def test_negative_zero_survives_the_fast_path():
    event = parse_event(b'{"event_id":"e","user_id":"u","ts":-0,"value":-0}')
    assert math.copysign(1, event.ts) == -1 and math.copysign(1, event.value) == -1


def test_vectorised_encoding_equals_encoding_each_window_alone():
    rng = np.random.default_rng(0)
    for trial in range(300):
        window = int(rng.integers(1, 12))
        windows = []
        for _ in range(int(rng.integers(0, 8))):
            n = int(rng.integers(0, 20))
            ts = np.sort(rng.normal(0, 1e3, n)) if rng.random() < 0.7 else rng.choice([1e308, -1e308, 0.0, 5.0], n)
            windows.append((ts, rng.integers(0, 100, n).astype(np.int32), rng.normal(size=n).astype(np.float32)))
        got = encode_windows(windows, window)
        for row, (ts, items, vals) in enumerate(windows):
            n = min(len(ts), window)
            want = {k: np.zeros(window, got[k].dtype) for k in got}
            if n:
                want["items"][-n:], want["values"][-n:] = items[-n:], vals[-n:]
                want["dts"][-n:], want["mask"][-n:] = log_dt(ts[-n:]), 1.0
            for key in got:
                assert got[key][row].tobytes() == want[key].tobytes(), (trial, row, key)


def test_embedded_topk_graph_is_the_one_build_model_makes():
    assert base64.b64decode(topk.MODEL_B64) == topk.build_model()


def test_onnxruntime_topk_selects_what_numpy_selects():
    rng = np.random.default_rng(1)
    for trial in range(300):
        rows, width, window = int(rng.integers(1, 40)), int(rng.integers(3, 3100)), int(rng.integers(1, 60))
        k = int(rng.integers(0, 30))
        scores = rng.normal(size=(rows, width)).astype(np.float32)
        if trial % 7 == 0:
            scores[:, : width // 2] = -np.inf  # fewer finite scores than k in some rows
        if trial % 11 == 0:
            scores[0, 0] = np.nan  # the numpy path takes over
        items = rng.integers(0, width, (rows, window)).astype(np.int32)
        want_items, want_scores = top_items(scores, items, k)
        got_items, got_scores = select_top(scores, items, k)
        assert got_items.shape == want_items.shape and got_items.dtype == want_items.dtype
        finite = np.isfinite(want_scores)
        assert np.array_equal(np.isfinite(got_scores), finite), trial
        assert np.array_equal(got_scores[finite], want_scores[finite]), trial
        assert np.array_equal(got_items[finite], want_items[finite]), trial
