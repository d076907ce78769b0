"""The shared contracts: event validation and the window encoding both halves use."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamer.events import MAX_MESSAGE_BYTES, REASONS, InvalidEvent, parse_event
from streamer.features import (OOV_INDEX, PAD_INDEX, ValueScaler, Vocabulary, encode_sequence,
                               encode_windows, log_dt)


def _reason(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as err:
        parse_event(raw)
    return err.value.reason


def test_valid_event_with_iso_ts_and_optional_fields() -> None:
    event = parse_event(b'{"event_id":"e1","user_id":"u","ts":"2026-01-01T00:00:00Z","item_id":"i","value":2}')
    assert event.ts == 1767225600.0 and event.item_id == "i" and event.value == 2.0
    assert parse_event(event.to_json_bytes()) == event


@pytest.mark.parametrize("raw, reason", [
    (b"x" * (MAX_MESSAGE_BYTES + 1), "too_large"),
    (b"\xff\xfe{}", "not_utf8"),
    (b"{not json", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'{"user_id":"u","ts":1,"value":1}', "missing_field"),
    (b'{"event_id":"e","user_id":"u","value":1}', "missing_field"),
    (b'{"event_id":5,"user_id":"u","ts":1,"value":1}', "wrong_type"),
    (b'{"event_id":"e","user_id":"u","ts":1,"value":"3"}', "wrong_type"),
    (b'{"event_id":"e","user_id":"u","ts":true,"value":1}', "wrong_type"),
    (b'{"event_id":"","user_id":"u","ts":1,"value":1}', "bad_id"),
    (json.dumps({"event_id": "e" * 129, "user_id": "u", "ts": 1, "value": 1}).encode(), "bad_id"),
    (b'{"event_id":"e","user_id":"u","ts":1,"value":NaN}', "not_finite"),
    (b'{"event_id":"e","user_id":"u","ts":Infinity,"value":1}', "not_finite"),
    (b'{"event_id":"e","user_id":"u","ts":1e999,"value":1}', "not_finite"),
    (b'{"event_id":"e","user_id":"u","ts":"yesterday","value":1}', "bad_ts"),
    (b'{"event_id":"e","user_id":"u","ts":1}', "no_payload"),
    # issue 10: each of these escaped parsing as an exception and stopped the partition
    (b'{"event_id":"e","user_id":"u","ts":' + b"9" * 400 + b',"value":1}', "not_finite"),
    (b'{"event_id":"e","user_id":"u","ts":1,"value":-' + b"9" * 400 + b'}', "not_finite"),
    (b'{"event_id":"e","user_id":"u","ts":1,"value":' + b"9" * 5000 + b'}', "not_finite"),
    (b'{"event_id":"e","user_id":"u\\ud800","ts":1,"value":1}', "not_utf8"),
    (b'{"event_id":"e\\udfff","user_id":"u","ts":1,"value":1}', "not_utf8"),
    (b'{"event_id":"e","user_id":"u","ts":1,"item_id":"\\ud83d"}', "not_utf8"),
    (b'{"event_id":"e","user_id":"u","ts":1,"value":1,"type":"\\udc00"}', "not_utf8"),
    (b'{"event_id":"e","user_id":"u","ts":"2026-02-30T00:00:00","value":1}', "bad_ts"),
    (b"[" * 20_000 + b"]" * 20_000, "not_json"),
])
def test_invalid_events_name_their_reason(raw: bytes, reason: str) -> None:
    assert reason in REASONS
    assert _reason(raw) == reason


def test_a_valid_surrogate_pair_and_extreme_finite_numbers_are_valid() -> None:
    event = parse_event(b'{"event_id":"e","user_id":"\\ud83d\\ude00","ts":1e300,"value":1.5e308}')
    assert event.user_id == "\U0001F600" and event.ts == 1e300 and event.value == 1.5e308
    assert parse_event(b'{"event_id":"e","user_id":"u","ts":"9999-12-31T23:59:59-23:59","value":5e-324}').value > 0


def test_loaders_passing_python_ints_get_not_finite_not_an_overflow() -> None:
    from streamer.events import event_from_dict

    with pytest.raises(InvalidEvent) as err:
        event_from_dict({"event_id": "e", "user_id": "u", "ts": 10**400, "value": 1})
    assert err.value.reason == "not_finite"


def test_vocabulary_reserves_pad_and_oov(tmp_path) -> None:
    vocab = Vocabulary(["b", "a"])
    assert vocab.index("b") == 2 and vocab.index("zzz") == OOV_INDEX and vocab.index(None) == PAD_INDEX
    vocab.save(tmp_path / "items.txt")
    assert Vocabulary.load(tmp_path / "items.txt").item_ids == vocab.item_ids
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="first lines"):
        Vocabulary.load(tmp_path / "bad.txt")


def test_scaler_round_trip_and_per_entity() -> None:
    scaler = ValueScaler(1.0, 2.0, {"OT": (5.0, 0.5)})
    again = ValueScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert again == scaler and again.params("OT") == (5.0, 0.5) and again.params("x") == (1.0, 2.0)


def test_sequence_and_window_encodings_agree() -> None:
    """Training (encode_sequence) and serving (encode_windows) must build identical inputs."""
    rng = np.random.default_rng(7)
    n, L = 37, 10
    ts = np.cumsum(rng.exponential(100.0, n))
    items = rng.integers(0, 30, n).astype(np.int32)
    values = rng.normal(size=n).astype(np.float32)
    ends = np.arange(0, n + 1)
    batch = encode_sequence(ts, items, values, ends, L)
    windows = [(ts[max(0, e - L):e], items[max(0, e - L):e], values[max(0, e - L):e]) for e in ends]
    served = encode_windows(windows, L)
    for name in batch:
        np.testing.assert_array_equal(batch[name], served[name], err_msg=name)
    # spot checks of the definition itself
    assert batch["mask"][3].tolist() == [0.0] * 7 + [1.0] * 3
    assert batch["dts"][3][7] == 0.0 and math.isclose(batch["dts"][3][8], np.log1p(ts[1] - ts[0]), rel_tol=1e-6)
    assert batch["items"][n][-1] == items[-1]


def test_scaled_values_are_clipped_and_gaps_never_overflow() -> None:
    """A finite 1.5e308 must not become inf in float32 (NaN model outputs, invalid JSON downstream)."""
    from streamer.features import MAX_SCALED, scale_values

    out = scale_values(np.array([1.5e308, -1.5e308, np.nan, 3.0]), 1.0, 0.5)
    assert out.dtype == np.float32 and out.tolist() == [MAX_SCALED, -MAX_SCALED, 0.0, 4.0]
    assert np.isfinite(log_dt(np.array([-1.5e308, 1.5e308]))).all()


def test_log_dt_clips_negative_gaps() -> None:
    assert log_dt(np.array([10.0, 5.0, 7.0])).tolist() == [0.0, 0.0, pytest.approx(np.log1p(2.0))]
