"""Structured logs: one JSON object per line on stderr, so a log shipper needs no parsing rules.

`log_event(logger, "batch", events=500, dlq=2)` writes
{"ts": ..., "level": "INFO", "logger": ..., "msg": "batch", "events": 500, "dlq": 2}.
"""
from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, msg, extra={"fields": fields})


class Stats:
    """Counts between periodic summaries (the loop logs one line every `interval_s`)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.reset(time.monotonic())

    def reset(self, now: float) -> None:
        self.started = now
        self.events = self.invalid = self.predictions = self.batches = 0

    def due(self, now: float) -> bool:
        return self.interval_s > 0 and now - self.started >= self.interval_s

    def summary(self, now: float) -> dict:
        elapsed = max(now - self.started, 1e-9)
        return {"events": self.events, "invalid": self.invalid, "predictions": self.predictions,
                "batches": self.batches, "events_per_s": round(self.events / elapsed, 1)}
