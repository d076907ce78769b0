"""Dataset files -> `EventLog`: one loader per format, and `load_any` for the CLI.

Each loader reads a whole file with vectorised pandas, validates the columns it
needs (see `tables.py`: a bad cell raises `DataError` naming file, line, column)
and returns a log sorted by (user, ts), the order windows and splits rely on.
`load_any` picks the loader from the file's first line, because dataset files
are routinely renamed and compressed; only a generic table needs to be told
which columns mean what.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from training.data.eventlog import DataError, EventLog
from training.data.synthetic import synthetic_log
from training.data.tables import existing_file, first_line, read_csv, read_fields, read_table, read_text

MAPPING_HINT = "pass a column mapping: --user COL --ts COL and --item COL and/or --value COL (--ts-unit s|ms|iso)"
_SYNTHETIC_KEYS = {"users": "users", "items": "items", "events": "events_per_user", "seed": "seed"}


def source_name(path: Path) -> str:
    """'ml-100k.u.data' -> 'ml-100k', 'ETTh1.csv.gz' -> 'ETTh1': short, stable, used in event ids."""
    return path.name.split(".")[0] or path.name


def load_table(path: str | Path, user: str, ts: str, item: str | None = None, value: str | None = None,
               ts_unit: str = "s", source: str | None = None) -> EventLog:
    """A generic CSV/TSV, Parquet or JSON-lines table (by extension, .gz ok) with named columns.

    `ts_unit` is 's' or 'ms' (epoch numbers) or 'iso' (ISO-8601 text, naive = UTC).
    Every mapped column must be filled on every row: an empty cell is an error,
    not "no value", so a broken export cannot pass silently.
    """
    if item is None and value is None:
        raise ValueError("load_table needs an item column, a value column, or both")
    path = existing_file(path)
    table = read_table(path, [c for c in (user, item) if c is not None])
    log = EventLog(
        users=table.ids(user),
        ts=table.times(ts, ts_unit),
        items=None if item is None else table.ids(item),
        values=None if value is None else table.numbers(value),
        source=source or source_name(path),
    )
    return log.sorted()


def load_movielens(path: str | Path, source: str | None = None) -> EventLog:
    """MovieLens ratings: ML-1M `user::item::rating::ts` or ML-100K `u.data` (tabs), told apart by content.

    item = movie id, value = the rating. Many ratings share one second (a user
    rates a batch at once); ties keep file order, which is the only order there is.
    """
    path = existing_file(path)
    line_no, line = first_line(path)
    text = read_text(path)
    if "::" in line:
        text = text.replace("::", "\t")  # one-character separator keeps pandas on its fast C parser
    elif "\t" not in line:
        raise DataError(path, "not a MovieLens ratings file (expected 'user::item::rating::timestamp' "
                        "or tab-separated 'user item rating timestamp')", line=line_no)
    names = ["user", "item", "rating", "timestamp"]
    table = read_fields(path, text, "\t", names, text_columns=["user", "item"])
    log = EventLog(table.ids("user"), table.times("timestamp", "s"), table.ids("item"),
                   table.numbers("rating"), source or source_name(path))
    return log.sorted()


def load_ett_matrix(path: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """An ETT-style wide CSV (`date,<channel>,...`) as (epoch seconds, channel names, float64 [rows, channels]).

    The ETT benchmark protocol works on this matrix by row index, so times must
    strictly increase: a duplicated or out-of-order row would shift every split.
    """
    path = existing_file(path)
    table = read_csv(path, text_columns=["date"])
    columns = list(table.frame.columns)
    if not columns or columns[0].lower() != "date" or len(columns) < 2:
        raise DataError(path, f"expected a header 'date,<channel>,...', got {','.join(columns)[:80]!r}", line=1)
    ts = table.times(columns[0], "iso")
    back = np.nonzero(np.diff(ts) <= 0)[0]
    if len(back):
        raise table.fail(int(back[0]) + 1, columns[0], "time does not increase from the previous row")
    channels = columns[1:]
    matrix = np.column_stack([table.numbers(c) for c in channels])
    return ts, channels, matrix


def load_ett(path: str | Path, source: str | None = None) -> EventLog:
    """ETT as events: each channel is an entity (user_id = column name) with a value series."""
    ts, channels, matrix = load_ett_matrix(path)
    rows = len(ts)
    log = EventLog(np.repeat(np.asarray(channels, dtype=object), rows), np.tile(ts, len(channels)),
                   None, matrix.T.ravel().copy(), source or source_name(Path(path)))
    return log.sorted()


def load_stock(path: str | Path, ticker: str | None = None, source: str | None = None) -> EventLog:
    """Daily OHLCV (`Date,Open,High,Low,Close,Adj Close,Volume`): entity = ticker (default: file stem),
    value = Adj Close (Close when the file has no Adj Close), ts = the date at 00:00 UTC."""
    path = existing_file(path)
    table = read_csv(path, text_columns=["Date"])
    price = "Adj Close" if "Adj Close" in table.frame.columns else "Close"
    values = table.numbers(price)
    ts = table.times("Date", "iso")
    name = ticker or source_name(path)
    return EventLog(np.full(len(ts), name, dtype=object), ts, None, values, source or name).sorted()


def load_sequences(path: str | Path, source: str | None = None) -> EventLog:
    """S3Rec-style sequences (Amazon Beauty): one line per user, `user item item ...`, oldest first.

    The file has no timestamps, only order, so ts is synthesised as the position
    in the user's sequence: 0, 1, 2, ... seconds. Time deltas are therefore all 1 s;
    only the order is real.
    """
    path = existing_file(path)
    users: list[str] = []
    items: list[str] = []
    lengths: list[int] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise DataError(path, "expected 'user item [item ...]', found 1 field", line=number, column="item")
        if tokens[0] in seen:
            raise DataError(path, f"user {tokens[0]!r} already appeared on line {seen[tokens[0]]}",
                            line=number, column="user")
        seen[tokens[0]] = number
        users.append(tokens[0])
        items.extend(tokens[1:])
        lengths.append(len(tokens) - 1)
    counts = np.asarray(lengths, dtype=np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    ts = (np.arange(int(counts.sum()), dtype=np.int64) - offsets).astype(np.float64)
    log = EventLog(np.repeat(np.asarray(users, dtype=object), counts), ts,
                   np.asarray(items, dtype=object), None, source or source_name(path))
    return log.sorted()


def detect_format(path: str | Path) -> str:
    """'movielens', 'ett', 'stock', 'sequences' or 'table' (a generic table: needs a column mapping)."""
    path = existing_file(path)
    kind = next((s.lower() for s in reversed(path.suffixes) if s != ".gz"), "")
    if kind in (".parquet", ".pq", ".jsonl", ".ndjson", ".json"):
        return "table"
    line = first_line(path)[1].strip()
    if re.fullmatch(r"[^:\t,]+(::[^:]+){3}", line) or re.fullmatch(r"\d+\t\d+\t[\d.]+\t\d+", line):
        return "movielens"
    header = [field.strip() for field in line.split(",")]
    if header[0] == "Date" and ("Adj Close" in header or "Close" in header):
        return "stock"
    if header[0].lower() == "date" and len(header) > 1:
        return "ett"
    if re.fullmatch(r"\d+( +\d+)+", line):  # S3Rec files are numeric ids; others: call load_sequences
        return "sequences"
    return "table"


def _synthetic(spec: str) -> EventLog:
    options: dict[str, int] = {}
    _, _, rest = spec.partition(":")
    for part in filter(None, rest.split(",")):
        key, _, raw = part.partition("=")
        if key.strip() not in _SYNTHETIC_KEYS or not raw.strip().isdigit():
            raise DataError(spec, f"bad synthetic option {part!r}; use synthetic:users=N,items=N,events=N,seed=N")
        options[_SYNTHETIC_KEYS[key.strip()]] = int(raw)
    return synthetic_log(**options)


def load_any(spec: str, user: str | None = None, ts: str | None = None, item: str | None = None,
             value: str | None = None, ts_unit: str = "s") -> EventLog:
    """The CLI's data argument: `synthetic[:users=..,items=..,events=..,seed=..]` or a file path.

    A column mapping (`user`, `ts`, and `item` and/or `value`) forces the generic
    table loader; without one, the format is recognised from the file's content.
    """
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _synthetic(spec)
    path = existing_file(spec)
    if user is not None or ts is not None:
        if user is None or ts is None or (item is None and value is None):
            raise DataError(path, f"incomplete column mapping; {MAPPING_HINT}")
        return load_table(path, user, ts, item, value, ts_unit)
    kind = detect_format(path)
    loaders = {"movielens": load_movielens, "ett": load_ett, "stock": load_stock, "sequences": load_sequences}
    if kind in loaders:
        return loaders[kind](path)
    raise DataError(path, f"not a known dataset format (MovieLens, ETT, stock OHLCV, sequences){_columns(path)}; "
                    f"for a generic table, {MAPPING_HINT}")


def _columns(path: Path) -> str:
    """', columns are: ...' for the error above, when they are cheap to read."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return f", columns are: {', '.join(pq.read_schema(path).names)}"
        return f", first line is {first_line(path)[1][:120]!r}"
    except Exception:  # only decorates an error message
        return ""
