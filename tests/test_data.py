"""Loaders on the real shared datasets, their errors, the synthetic generator, and the split protocols."""
from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datapaths import SHARED_DATA
from streamer.features import encode_sequence
from training.data import (DataError, EventLog, chronological_split, detect_format, ett_split, fit_zscore,
                           leave_last_out, load_any, load_ett, load_ett_matrix, load_movielens, load_sequences,
                           load_stock, load_table, synthetic_log)

ML1M = SHARED_DATA / "movielens" / "ml-1m-users-1-2999.ratings.dat.gz"
ML100K = SHARED_DATA / "movielens" / "ml-100k.u.data"
ETTH1 = SHARED_DATA / "ett" / "ETTh1.csv.gz"
ETTM1 = SHARED_DATA / "ett" / "ETTm1.csv.gz"
GOOG = SHARED_DATA / "stocks" / "GOOG.csv"
BEAUTY = SHARED_DATA / "amazon" / "Beauty.txt"


def head(src: Path, dst: Path, lines: int) -> Path:
    """The first `lines` lines of a shared file, (re)compressed by dst's suffix."""
    with (gzip.open(src, "rt") if src.suffix == ".gz" else open(src)) as handle:
        text = "".join(line for _, line in zip(range(lines), handle))
    if dst.suffix == ".gz":
        dst.write_bytes(gzip.compress(text.encode()))
    else:
        dst.write_text(text)
    return dst


def assert_sorted(log: EventLog) -> None:
    assert log.fingerprint() == log.sorted().fingerprint()
    assert all(isinstance(u, str) for u in log.users[:100])


# ---- loaders on real data ------------------------------------------------------------------------

def test_movielens_1m_partial_file_loads_fast() -> None:
    started = time.perf_counter()
    log = load_movielens(ML1M)
    assert time.perf_counter() - started < 10  # ~1 s here; a full 1M-row file stays within seconds
    assert (len(log), len(set(log.users)), len(set(log.items))) == (487_650, 2_999, 3_615)
    assert set(np.unique(log.values)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert log.source == "ml-1m-users-1-2999"
    assert_sorted(log)


def test_movielens_100k_and_detection_by_content(tmp_path: Path) -> None:
    log = load_any(str(ML100K))
    assert (len(log), len(set(log.users)), len(set(log.items))) == (100_000, 943, 1_682)
    renamed = head(ML1M, tmp_path / "whatever.gz", 300)  # no 'ratings.dat' in the name
    assert detect_format(renamed) == "movielens"
    sample = load_any(str(renamed))
    assert len(sample) == 300 and sample.items[0] is not None


def test_ett_matrix_and_events() -> None:
    ts, channels, matrix = load_ett_matrix(ETTH1)
    assert channels == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert matrix.shape == (17_420, 7) and matrix.dtype == np.float64
    assert ts[0] == pd.Timestamp("2016-07-01", tz="UTC").timestamp()
    assert np.all(np.diff(ts) == 3600)
    assert matrix[0, -1] == pytest.approx(30.5310001373291)
    log = load_ett(ETTH1)
    assert len(log) == 7 * 17_420 and log.items is None
    ot = log.values[log.users == "OT"]
    np.testing.assert_array_equal(ot, matrix[:, -1])


def test_ett_15_minute_sample(tmp_path: Path) -> None:
    ts, _, matrix = load_ett_matrix(head(ETTM1, tmp_path / "ETTm1.csv.gz", 501))
    assert matrix.shape == (500, 7) and np.all(np.diff(ts) == 900)
    assert load_any(str(tmp_path / "ETTm1.csv.gz")).source == "ETTm1"


def test_stock_without_final_newline() -> None:
    assert not GOOG.read_bytes().endswith(b"\n")
    log = load_stock(GOOG)
    last = GOOG.read_text().rsplit("\n", 1)[-1].split(",")
    assert len(log) == 4_109 and set(log.users) == {"GOOG"}
    assert log.values[-1] == float(last[5]) and log.ts[-1] == pd.Timestamp(last[0], tz="UTC").timestamp()
    assert set(load_stock(GOOG, ticker="ALPHABET").users) == {"ALPHABET"}
    assert detect_format(GOOG) == "stock"


def test_beauty_sequences_get_position_timestamps() -> None:
    log = load_any(str(BEAUTY))
    assert (len(log), len(set(log.users)), len(set(log.items))) == (198_502, 22_363, 12_101)
    first = log.users == "1"
    assert list(log.items[first]) == ["1", "2", "3", "4", "5"]
    assert list(log.ts[first]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert log.values is None


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz", "events.jsonl", "events.parquet"])
def test_generic_table_formats(tmp_path: Path, name: str) -> None:
    frame = pd.DataFrame({"who": ["b", "a", "a"], "when": ["2024-01-01T00:00:02Z", "2024-01-01T00:00:01",
                                                           "2024-01-01T00:00:00+00:00"],
                          "what": ["x", "y", "z"], "amount": [1.5, 2.0, 3.0]})
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    elif name.endswith(".jsonl"):
        path.write_text("\n".join(frame.to_json(orient="records", lines=True).splitlines()) + "\n\n")
    else:
        frame.to_csv(path, index=False)
    log = load_table(path, user="who", ts="when", item="what", value="amount", ts_unit="iso", source="t")
    assert list(log.users) == ["a", "a", "b"] and list(log.items) == ["z", "y", "x"]
    assert list(log.ts - 1_704_067_200) == [0.0, 1.0, 2.0] and list(log.values) == [3.0, 2.0, 1.5]
    assert detect_format(path) == "table"  # no known dataset: load_any would ask for a column mapping


def test_load_any_synthetic_and_unknown_tables(tmp_path: Path) -> None:
    log = load_any("synthetic:users=7,items=9,events=5,seed=2")
    assert len(log) == 35 and log.fingerprint() == synthetic_log(7, 9, 5, seed=2).fingerprint()
    assert len(load_any("synthetic")) == 200 * 40
    with pytest.raises(DataError, match="bad synthetic option"):
        load_any("synthetic:users=7,colour=3")
    table = tmp_path / "clicks.csv"
    table.write_text("account,time,product\nu1,5,p1\n")
    with pytest.raises(DataError, match="--user COL --ts COL") as err:
        load_any(str(table))
    assert "account,time,product" in str(err.value)
    assert len(load_any(str(table), user="account", ts="time", item="product")) == 1


# ---- bad files: file, line and column in the message ---------------------------------------------

CSV_HEADER = "user,ts,value\n"
BAD_FILES = [  # (file name, content, expected line, expected column, phrase)
    ("e.csv", CSV_HEADER + "a,1,2\na,2,abc\n", 3, "value", "'abc' is not a number"),
    ("e.csv", CSV_HEADER + "a,1,2\n\na,2,NaN\n", 4, "value", "not a finite number"),
    ("e.csv", CSV_HEADER + "a,1,inf\n", 2, "value", "not a finite number"),
    ("e.csv", CSV_HEADER + "a,1,2\na,,3\n", 3, "ts", "missing"),
    ("e.csv", CSV_HEADER + "a,1,2\n,2,3\n", 3, "user", "missing value"),
    ("e.csv", CSV_HEADER + "a,1,2\na,2,3,4\n", 3, None, "expected 3 fields, found 4"),
    ("e.csv", "user,ts\na,1\n", 1, "value", "no such column"),
    ("e.csv.gz", CSV_HEADER + "a,1,2\nb,2,3\nc,x,4\n", 4, "ts", "not a number"),
    ("ratings.dat", "1::10::5::978300760\n1::11::4::978300761\n1::12::3\n", 3, None, "expected 4 fields"),
    ("u.data", "1\t10\t5\t874965478\n2\t11\tfive\t874965479\n", 2, "rating", "'five' is not a number"),
    ("u.data", "1\t10\t5\t874965478\n2\t11\t4\t874965479\t9\n", 2, None, "expected 4 fields, found 5"),
    ("ETTx.csv", "date,HUFL,OT\n2016-07-01 00:00:00,1,2\n2016-07-01 01:00:00,1,\n", 3, "OT", "missing"),
    ("ETTx.csv", "date,HUFL\n2016-07-01 01:00:00,1\n2016-07-01 00:00:00,1\n", 3, "date", "does not increase"),
    ("ETTx.csv", "date,HUFL\n2016-07-01 01:00:00,1\n2016-13-45 00:00:00,1\n", 3, "date", "cannot parse time"),
    ("GOOG.csv", "Date,Close,Adj Close\n2020-01-02,1,1\n2020-01-03,null,null\n", 3, "Adj Close", "'null'"),
    ("Beauty.txt", "1 1 2 3\n2 4 5\n3\n", 3, "item", "found 1 field"),
    ("Beauty.txt", "1 1 2 3\n2 4 5\n1 6\n", 3, "user", "already appeared on line 1"),
    ("e.jsonl", '{"user":"a","ts":1,"value":1}\n\n{"user":"a","ts":2,"value":\n', 3, None, "not JSON"),
    ("e.jsonl", '{"user":"a","ts":1,"value":1}\n\n{"user":"a","value":2}\n', 3, "ts", "missing"),
]


@pytest.mark.parametrize("name,content,line,column,phrase", BAD_FILES)
def test_bad_files_name_file_line_and_column(tmp_path: Path, name: str, content: str, line: int,
                                             column: str | None, phrase: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(content.encode()) if name.endswith(".gz") else content.encode())
    loader = {"e.csv": lambda p: load_table(p, user="user", ts="ts", value="value"),
              "e.jsonl": lambda p: load_table(p, user="user", ts="ts", value="value")}.get(name.removesuffix(".gz"))
    with pytest.raises(DataError) as err:
        (loader or (lambda p: load_any(str(p))))(path)
    message = str(err.value)
    assert str(path) in message and f"line {line}" in message and phrase in message, message
    if column is not None:
        assert f"column {column!r}" in message, message


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_movielens(tmp_path / "absent.dat")
    loaders = [lambda p: load_table(p, "u", "t", value="v"), lambda p: load_any(str(p))]
    for name in ("empty.csv", "empty.csv.gz", "empty.dat", "empty.txt.gz"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"\n")
        for loader in loaders:
            with pytest.raises(DataError, match="empty") as err:
                loader(path)
            assert str(path) in str(err.value)
    header_only = tmp_path / "header.csv"
    header_only.write_text(CSV_HEADER)
    with pytest.raises(DataError, match="no data rows"):
        load_table(header_only, "user", "ts", value="value")


# ---- synthetic generator -------------------------------------------------------------------------

def test_synthetic_is_deterministic_sorted_and_fast() -> None:
    assert synthetic_log(seed=5).fingerprint() == synthetic_log(seed=5).fingerprint()
    assert synthetic_log(seed=5).fingerprint() != synthetic_log(seed=6).fingerprint()
    started = time.perf_counter()
    big = synthetic_log(users=10_000, items=500, events_per_user=20, seed=1)
    assert time.perf_counter() - started < 1.0
    assert len(big) == 200_000 and np.isfinite(big.values).all()
    small = synthetic_log(users=50, items=30, events_per_user=10)
    assert_sorted(small)
    runs = small.user_runs()
    assert len(runs) == 50 and all(np.all(np.diff(small.ts[a:b]) > 0) for _, a, b in runs)


def test_synthetic_is_learnable_beyond_the_baselines() -> None:
    """Cheap stand-ins for a model: reading the window beats most-popular, repeat-last item and value."""
    users, items, events = 400, 100, 40
    log = synthetic_log(users, items, events, seed=0)
    idx = np.array([int(i[1:]) for i in log.items]).reshape(users, events)
    last, prev, target = idx[:, -2], idx[:, -3], idx[:, -1]
    direction = np.where((last - prev + items // 2) % items - items // 2 >= 0, 1, -1)
    walk = (last[:, None] + direction[:, None] * np.arange(1, 11)) % items
    popular = np.bincount(idx[:, :-1].ravel(), minlength=items).argsort()[::-1][:10]
    hit_walk = (walk == target[:, None]).any(axis=1).mean()
    assert hit_walk > 0.6 > 0.3 > max(np.isin(target, popular).mean(), (last == target).mean())
    values = log.values.reshape(users, events)
    k = 12  # a global linear model on the last k values (relative to the last one)
    rel = lambda w: np.c_[w - w[:, -1:], np.ones(len(w))]
    x = np.concatenate([rel(values[:, t - k:t]) for t in range(k, events - 1)])
    y = np.concatenate([values[:, t] - values[:, t - 1] for t in range(k, events - 1)])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    window = values[:, -1 - k:-1]
    linear_mae = np.abs(window[:, -1] + rel(window) @ coef - values[:, -1]).mean()
    assert linear_mae < 0.7 * np.abs(window[:, -1] - values[:, -1]).mean()


# ---- splits --------------------------------------------------------------------------------------

def hand_log() -> EventLog:
    users = np.array(["a"] * 6 + ["b"] * 2 + ["c"] * 5, dtype=object)
    ts = np.array([1, 2, 3, 4, 5, 6, 1, 2, 10, 20, 20, 30, 40], dtype=np.float64)
    items = np.array([f"i{k}" for k in range(13)], dtype=object)
    return EventLog(users, ts, items, None, "hand").sorted()


def test_leave_last_out_on_a_hand_made_log() -> None:
    split = leave_last_out(hand_log(), min_events=5)
    assert list(split.users) == ["a", "c"]  # b has 2 events
    assert list(split.train.rows) == [1, 2, 3, 9, 10] and list(split.train.ends) == [1, 2, 3, 1, 2]
    assert list(split.val.rows) == [4, 11] and list(split.test.rows) == [5, 12]
    assert list(split.test.ends) == [5, 4] and list(split.test.run_start) == [0, 8]
    runs = [(a, b, list(e)) for a, b, e in split.val.by_run()]
    assert runs == [(0, 6, [4]), (8, 13, [3])]


def test_targets_feed_encode_sequence() -> None:
    log = hand_log()
    split = leave_last_out(log, min_events=5)
    codes = np.arange(len(log), dtype=np.int32) + 2
    for start, stop, ends in split.test.by_run():
        window = encode_sequence(log.ts[start:stop], codes[start:stop], np.zeros(stop - start), ends, 8)
        assert list(window["items"][0][window["mask"][0] > 0]) == list(codes[start:stop - 1])


@pytest.mark.parametrize("log", [synthetic_log(60, 40, 12, seed=9), load_sequences(BEAUTY)],
                         ids=["synthetic", "beauty"])
def test_leave_last_out_has_no_leakage(log: EventLog) -> None:
    split = leave_last_out(log)
    for name in ("val", "test"):
        assert len(getattr(split, name)) == len(split.users)
    val_by_start = dict(zip(split.val.run_start, split.val.rows))
    val_rows = np.array([val_by_start[s] for s in split.train.run_start])
    assert np.all(split.train.rows < val_rows) and np.all(log.ts[split.train.rows] <= log.ts[val_rows])
    assert np.all(split.val.rows < split.test.rows) and np.all(split.val.rows + 1 == split.test.rows)
    assert np.all(split.train.rows > split.train.run_start)  # every target has history
    assert np.all(split.test.rows == split.test.run_stop - 1)


def test_chronological_split_cuts_each_entity_by_time() -> None:
    log = synthetic_log(5, 10, 20, seed=1)
    split = chronological_split(log, val_frac=0.2, test_frac=0.2, horizon=3)
    for start, stop, ends in split.train.by_run():
        assert ends.min() == 1 and ends.max() + 3 <= 12  # horizon stays inside train (first 12 of 20)
    assert all(list(e) == [12, 13] for _, _, e in split.val.by_run())
    assert all(list(e) == [16, 17] for _, _, e in split.test.by_run())
    with pytest.raises(ValueError, match="sorted"):
        chronological_split(log.take(np.arange(len(log))[::-1]), 0.1, 0.1)


def test_ett_boundaries_and_window_counts() -> None:
    hourly = ett_split(17_420, lookback=336, horizon=96)
    assert (hourly.train, hourly.val, hourly.test) == (range(0, 8640), range(8304, 11520), range(11184, 14400))
    assert len(hourly.starts("test")) == 2_785 == 14_400 - (11_520 - 336) - 336 - 96 + 1
    assert len(hourly.starts("train")) == 8_209 and len(hourly.starts("val")) == 2_785
    last = hourly.starts("test")[-1]
    assert last + 336 + 96 == 14_400
    quarter = ett_split(69_680, lookback=96, horizon=24, freq="15min")
    assert (quarter.train, quarter.val, quarter.test) == (range(0, 34560), range(34464, 46080),
                                                          range(45984, 57600))
    with pytest.raises(ValueError, match="needs 14400 rows"):
        ett_split(10_000, 96, 96)


def test_zscore_is_fitted_on_train_rows_only() -> None:
    _, _, matrix = load_ett_matrix(ETTH1)
    split = ett_split(len(matrix), 336, 96)
    scaler = fit_zscore(matrix, split.train)
    np.testing.assert_allclose(scaler.mean, matrix[:8640].mean(axis=0))
    changed = matrix.copy()
    changed[8640:] = 1e6
    again = fit_zscore(changed, split.train)
    np.testing.assert_array_equal(scaler.mean, again.mean)
    np.testing.assert_array_equal(scaler.std, again.std)
    np.testing.assert_allclose(scaler.inverse(scaler.transform(matrix)), matrix, atol=1e-9)
    assert np.all(fit_zscore(np.ones((4, 2)), range(4)).std == 1.0)
