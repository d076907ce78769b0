"""Structured logs: one JSON object per line on stderr, so a log shipper needs no parsing rules.

`log_event(logger, "batch", events=500, dlq=2)` writes
{"ts": ..., "level": "INFO", "logger": ..., "msg": "batch", "events": 500, "dlq": 2}.

Secrets: settings hold passwords as `Secret` objects that print masked, but a client library
may still log its own configuration (kafka-python's admin client does, at DEBUG). So every
secret value registered with `redact()` is replaced by ******** in every line written, whoever
wrote it: the last line of defence, not the only one.
"""
from __future__ import annotations

import json
import logging
import sys
import time


MASK = "********"
_secrets: set[str] = set()


def redact(*values: str) -> None:
    """Never write these values (passwords) to a log line; empty values are ignored."""
    for value in filter(None, values):
        _secrets.update({value, json.dumps(value)[1:-1]})  # as written, and as escaped inside a JSON line


def _masked(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = json.dumps(out, default=str)
        return _masked(line) if _secrets else line


class RepeatFilter(logging.Filter):
    """Let one record per (logger, message shape) of the Kafka client through every `every_s` seconds.

    A Kafka client whose broker is down logs every reconnect attempt (several per second per
    connection); the service logs the outage itself, once, so the client's repeats are noise.
    The "shape" is the message with digits removed, so ports and node ids do not defeat it.
    """

    def __init__(self, every_s: float = 30.0, prefix: str = "kafka") -> None:
        super().__init__()
        self.every_s, self.prefix = every_s, prefix
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        shape = (record.name, "".join(c for c in str(record.msg)[:80] if not c.isdigit()))
        now = record.created
        if now - self._last.get(shape, -1e18) < self.every_s:
            self._dropped[shape] = self._dropped.get(shape, 0) + 1
            return False
        self._last[shape] = now
        dropped = self._dropped.pop(shape, 0)
        if dropped:
            record.fields = {**getattr(record, "fields", {}), "repeats_suppressed": dropped}
        return True


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    client_logs = logging.getLogger("kafka")
    client_logs.setLevel(max(logging.WARNING, root.level))
    if not any(isinstance(f, RepeatFilter) for f in handler.filters):
        handler.addFilter(RepeatFilter())


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
