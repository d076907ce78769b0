"""Event data for training: the `EventLog` format, dataset loaders, a synthetic generator, splits."""
from training.data.eventlog import DataError, EventLog
from training.data.loaders import (
    detect_format,
    load_any,
    load_ett,
    load_ett_matrix,
    load_movielens,
    load_sequences,
    load_stock,
    load_table,
)
from training.data.splits import (
    EttSplit,
    SequenceSplit,
    Targets,
    ZScore,
    chronological_split,
    ett_split,
    fit_zscore,
    leave_last_out,
)
from training.data.synthetic import synthetic_log

__all__ = [
    "DataError", "EventLog",
    "detect_format", "load_any", "load_ett", "load_ett_matrix", "load_movielens", "load_sequences",
    "load_stock", "load_table",
    "EttSplit", "SequenceSplit", "Targets", "ZScore", "chronological_split", "ett_split", "fit_zscore",
    "leave_last_out",
    "synthetic_log",
]
