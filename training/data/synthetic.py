"""A seeded synthetic event log that a sequence model can learn and the baselines cannot.

Real datasets are large and licensed; tests, the demo and `load_any("synthetic")`
need a log that is small, deterministic (same seed -> identical log) and has
structure a small LSTM finds within a few epochs:

- items: the catalogue is a ring. Each user walks it in one direction at their
  own speed (1-2 items per event, with +-1 jitter), so the next item is near
  the previous one *in the walk's direction*: repeat-last almost never hits, while a model
  that reads the last two items does. 10% of events are instead drawn from a
  Zipf popularity law (clicks on what everyone clicks), which is all that
  most-popular can capture.
- values: per user, level + linear trend + a daily cycle (by the clock, with a
  user phase) + small noise, sampled on a regular per-user cadence (1-6 h, +-5%
  jitter) so the next H values sit at predictable times ("horizon-friendly").
  Repeat-last-value misses the cycle and trend; the window shows both.
- timestamps: real-looking epoch seconds from 2024-01-01 UTC, each user starting
  within the first two weeks, strictly increasing per user.

Everything is drawn as whole [users, events] arrays, so 10k users x 20 events
take milliseconds.
"""
from __future__ import annotations

import numpy as np

from training.data.eventlog import EventLog

START_TS = 1_704_067_200.0  # 2024-01-01T00:00:00Z
DAY_SECONDS = 86_400.0
NOISE_CLICK_PROB = 0.1


def _item_walk(rng: np.random.Generator, users: int, items: int, events: int) -> np.ndarray:
    """[users, events] item indices: a directed walk on the ring, with popularity noise."""
    direction = rng.choice(np.array([-1, 1]), users)
    speed = rng.integers(1, 3, users)
    jitter = rng.choice(np.array([-1, 0, 1]), (users, events), p=[0.15, 0.7, 0.15])
    steps = direction[:, None] * np.maximum(speed[:, None] + jitter, 1)
    steps[:, 0] = 0
    walk = (rng.integers(0, items, users)[:, None] + np.cumsum(steps, axis=1)) % items
    popularity = 1.0 / np.arange(1, items + 1) ** 1.1
    popular = rng.permutation(items)[rng.choice(items, (users, events), p=popularity / popularity.sum())]
    return np.where(rng.random((users, events)) < NOISE_CLICK_PROB, popular, walk)


def _timestamps(rng: np.random.Generator, users: int, events: int) -> np.ndarray:
    """[users, events] epoch seconds on a per-user cadence of 1-6 hours, strictly increasing."""
    cadence = rng.choice(np.array([1, 2, 3, 4, 6]), users) * 3600.0
    gaps = cadence[:, None] * rng.uniform(0.95, 1.05, (users, events))
    gaps[:, 0] = START_TS + rng.uniform(0, 14 * DAY_SECONDS, users)
    return np.round(np.cumsum(gaps, axis=1))


def _values(rng: np.random.Generator, ts: np.ndarray) -> np.ndarray:
    """[users, events] level + trend + daily cycle + noise."""
    users, events = ts.shape
    level = rng.uniform(20.0, 80.0, users)[:, None]
    trend_per_day = rng.normal(0.0, 2.0, users)[:, None]
    amplitude = rng.uniform(5.0, 15.0, users)[:, None]
    phase = rng.uniform(0.0, 2 * np.pi, users)[:, None]
    days = (ts - ts[:, :1]) / DAY_SECONDS
    cycle = amplitude * np.sin(2 * np.pi * ts / DAY_SECONDS + phase)
    return np.round(level + trend_per_day * days + cycle + rng.normal(0.0, 1.0, (users, events)), 3)


def synthetic_log(users: int = 200, items: int = 100, events_per_user: int = 40, seed: int = 0) -> EventLog:
    """A deterministic log of users x events_per_user events with items ('i<k>') and values.

    User ids are zero-padded ('u007') so the log is already in (user, ts) order.
    """
    if users < 1 or items < 2 or events_per_user < 1:
        raise ValueError(f"need users >= 1, items >= 2, events_per_user >= 1; got {users}, {items}, {events_per_user}")
    rng = np.random.default_rng(seed)
    item_idx = _item_walk(rng, users, items, events_per_user)
    ts = _timestamps(rng, users, events_per_user)
    values = _values(rng, ts)
    width = len(str(users - 1))
    user_ids = np.array([f"u{k:0{width}d}" for k in range(users)], dtype=object)
    item_ids = np.array([f"i{k}" for k in range(items)], dtype=object)
    return EventLog(np.repeat(user_ids, events_per_user), ts.ravel(), item_ids[item_idx.ravel()],
                    values.ravel(), source="synthetic")
