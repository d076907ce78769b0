"""Reading raw tables and checking their columns, with errors that point at the file line.

The loaders in `loaders.py` know the datasets; this module knows files. Every
check is vectorised (pandas/numpy over whole columns) and only the first bad row
is turned into a `DataError`, so a million-row file costs a few column passes,
and a bad one names its file, 1-based line and column. Rows keep their file
line numbers (`Table.lines`) through blank-line removal, which is why blank lines
are read as empty rows and dropped here rather than skipped by pandas.
"""
from __future__ import annotations

import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from streamer.events import MAX_ID_CHARS
from training.data.eventlog import DataError

_FIELDS_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_NA = {"keep_default_na": False, "na_values": [""]}  # only an empty field is missing; "NaN" stays text


def existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file" if not path.exists() else "not a regular file")
    return path


def read_text(path: Path) -> str:
    """The whole file as text (gzip by suffix); an empty file is an error."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                text = handle.read()
        else:
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text (byte offset {err.start})") from None
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(path, f"cannot read: {err}") from None
    if not text.strip():
        raise DataError(path, "file is empty")
    return text


def first_line(path: Path) -> tuple[int, str]:
    """(1-based line number, text) of the first non-blank line, reading only the file's start."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    return number, line.rstrip("\r\n")
    except (OSError, EOFError) as err:
        raise DataError(path, f"cannot read: {err}") from None
    raise DataError(path, "file is empty")


@dataclass
class Table:
    """A parsed table plus the file line of each row (None: a binary format, rows are counted)."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray | None
    header_line: int | None = None  # where column names came from, for 'missing column' errors

    def fail(self, row: int, column: str | None, problem: str) -> DataError:
        if self.lines is None:
            return DataError(self.path, f"row {row + 1}: {problem}", column=column)
        return DataError(self.path, problem, line=int(self.lines[row]), column=column)

    def column(self, name: str) -> pd.Series:
        if name not in self.frame.columns:
            known = ", ".join(map(str, self.frame.columns))
            raise DataError(self.path, f"no such column; columns are: {known}", self.header_line, name)
        return self.frame[name]

    def ids(self, name: str) -> np.ndarray:
        """A string id column as an object array; ids must be present and 1..128 characters."""
        col = self.column(name)
        if col.isna().any():
            raise self.fail(int(np.argmax(col.isna().to_numpy())), name, "missing value")
        if pd.api.types.is_float_dtype(col) and (col == col.round()).all():
            col = col.astype(np.int64)  # 7.0 -> "7": integer ids stored as floats (JSON, Parquet)
        text = col.astype(str)
        too_long = (text.str.len() > MAX_ID_CHARS).to_numpy()
        if too_long.any():
            raise self.fail(int(np.argmax(too_long)), name, f"id longer than {MAX_ID_CHARS} characters")
        return text.to_numpy(dtype=object)

    def numbers(self, name: str) -> np.ndarray:
        """A numeric column as finite float64; the first missing, non-numeric or NaN/inf cell fails."""
        col = self.column(name)
        values = col if pd.api.types.is_numeric_dtype(col) else pd.to_numeric(col, errors="coerce")
        values = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise self.fail(row, name, _describe_bad_number(col.iloc[row]))
        return values

    def times(self, name: str, unit: str) -> np.ndarray:
        """Epoch seconds from numbers ('s', 'ms') or ISO-8601 text ('iso'; naive means UTC)."""
        if unit in ("s", "ms"):
            return self.numbers(name) / (1000.0 if unit == "ms" else 1.0)
        if unit != "iso":
            raise ValueError(f"ts_unit must be 's', 'ms' or 'iso', got {unit!r}")
        col = self.column(name)
        text = col.astype(str).where(col.notna())
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raw = col.iloc[row]
            problem = "missing value" if pd.isna(raw) else f"cannot parse time {str(raw)[:40]!r} (expected ISO-8601)"
            raise self.fail(row, name, problem)
        return ((parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)


def _describe_bad_number(raw: object) -> str:
    if raw is None or (isinstance(raw, float) and np.isnan(raw)) or raw is pd.NA:
        return "missing or NaN value"
    try:
        float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{str(raw)[:40]!r} is not a number"
    return f"{str(raw)[:40]!r} is not a finite number"


def _drop_blank_rows(path: Path, frame: pd.DataFrame, first_line_no: int, header_line: int | None) -> Table:
    lines = np.arange(len(frame), dtype=np.int64) + first_line_no
    keep = ~frame.isna().all(axis=1).to_numpy()
    if not keep.all():
        frame, lines = frame.loc[keep].reset_index(drop=True), lines[keep]
    if frame.empty:
        raise DataError(path, "no data rows")
    return Table(path, frame, lines, header_line)


def _parse_csv(path: Path, source: object, **options: object) -> pd.DataFrame:
    try:
        return pd.read_csv(source, skip_blank_lines=False, **_NA, **options)
    except pd.errors.EmptyDataError:
        raise DataError(path, "file is empty") from None
    except pd.errors.ParserError as err:
        found = _FIELDS_ERROR.search(str(err))
        if found:
            expected, line, saw = found.groups()
            raise DataError(path, f"expected {expected} fields, found {saw}", line=int(line)) from None
        raise DataError(path, f"cannot parse: {err}") from None
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text (byte offset {err.start})") from None
    except (OSError, EOFError) as err:
        raise DataError(path, f"cannot read: {err}") from None


def read_csv(path: Path, text_columns: list[str], sep: str = ",") -> Table:
    """A CSV with a header row (line 1); `text_columns` stay strings (ids), the rest are inferred."""
    frame = _parse_csv(path, path, sep=sep, dtype={c: str for c in text_columns}, skipinitialspace=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    return _drop_blank_rows(path, frame, first_line_no=2, header_line=1)


def read_fields(path: Path, text: str, sep: str, names: list[str], text_columns: list[str]) -> Table:
    """Headerless delimited text with exactly len(names) fields per line (MovieLens)."""
    dtype = {names.index(c): str for c in text_columns}
    frame = _parse_csv(path, io.StringIO(text), sep=sep, header=None, dtype=dtype)
    table = _drop_blank_rows(path, frame, first_line_no=1, header_line=None)
    present = table.frame.notna().to_numpy()
    wanted = len(names)
    wrong = (present[:, :wanted].sum(axis=1) != wanted) | present[:, wanted:].any(axis=1)
    if wrong.any():
        row = int(np.argmax(wrong))
        found = int(present[row].sum())
        raise table.fail(row, None, f"expected {wanted} fields ({', '.join(names)}), found {found}")
    table.frame.columns = names
    return table


def read_json_lines(path: Path) -> Table:
    """JSON-lines: one object per line; line numbers survive blank lines."""
    all_lines = read_text(path).split("\n")
    numbers = [i + 1 for i, line in enumerate(all_lines) if line.strip()]
    try:
        frame = pd.read_json(io.StringIO("\n".join(all_lines[i - 1] for i in numbers)), lines=True, dtype=False)
    except ValueError:
        for number in numbers:
            try:
                obj = json.loads(all_lines[number - 1])
            except ValueError as err:
                raise DataError(path, f"not JSON: {err}", line=number) from None
            if not isinstance(obj, dict):
                raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", line=number) from None
        raise
    return Table(path, frame, np.asarray(numbers, dtype=np.int64))


def read_parquet(path: Path) -> Table:
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(path, f"cannot read Parquet: {err}") from None
    if frame.empty:
        raise DataError(path, "no data rows")
    return Table(path, frame, None)


def read_table(path: Path, text_columns: list[str]) -> Table:
    """Dispatch by extension (a trailing .gz is ignored): Parquet, JSON-lines, else CSV/TSV."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1].lower() if suffixes else ""
    if kind in (".parquet", ".pq"):
        return read_parquet(path)
    if kind in (".jsonl", ".ndjson", ".json"):
        return read_json_lines(path)
    return read_csv(path, text_columns, sep="\t" if kind == ".tsv" else ",")
