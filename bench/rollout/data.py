"""The replayed dataset: MovieLens ratings split by time into what the models learn and what streams live.

Only numpy and the trainer's loaders (no TensorFlow): the benchmark process reads the same split the
training subprocess trains on, so the two can never disagree about where the cut is.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.stream.common import ROOT

DATA_DIR = ROOT.parent / "shared" / "data"
DEFAULT_DATA = DATA_DIR / "movielens" / "ml-1m-users-1-2999.ratings.dat.gz"


@dataclass
class Split:
    """The log cut at a time: train = events strictly before `cut_ts`, live = the rest."""

    train: object  # training.data.eventlog.EventLog
    live: object
    cut_ts: float
    fraction: float
    source: Path

    def describe(self) -> dict:
        day = lambda ts: time.strftime("%Y-%m-%d", time.gmtime(float(ts)))  # noqa: E731
        return {"file": str(self.source), "train_fraction": self.fraction, "cut": day(self.cut_ts),
                "train_events": len(self.train), "train_users": int(len(np.unique(self.train.users))),
                "train_from": day(self.train.ts.min()), "live_events": len(self.live),
                "live_users": int(len(np.unique(self.live.users))),
                "live_users_also_in_train": int(len(np.intersect1d(np.unique(self.live.users),
                                                                   np.unique(self.train.users)))),
                "live_to": day(self.live.ts.max()),
                "items": int(len(np.unique(np.concatenate([self.train.items, self.live.items]).astype(str))))}


def load_split(path: Path, fraction: float) -> Split:
    """Cut `path` (MovieLens: item = movie, value = rating) at the `fraction` quantile of event time.

    Chronological, not per user: the live part is what a service deployed at the cut would have seen
    next, new users included, which is what a rollout is judged on.
    """
    from training.data.loaders import load_any

    log = load_any(str(path))
    cut = float(np.quantile(log.ts, fraction))
    before = log.ts < cut
    return Split(log.take(np.nonzero(before)[0]), log.take(np.nonzero(~before)[0]), cut, fraction, Path(path))


def shuffled_items(log, seed: int = 1):
    """The same events with their items permuted across events (values and times kept): what the
    BAD model learns from, like tests/conftest.py's bad_bundle_dir."""
    from training.data.eventlog import EventLog

    return EventLog(log.users, log.ts, np.random.default_rng(seed).permutation(log.items), log.values,
                    log.source + "-shuffled")


def live_events(split: Split, limit: int | None = None) -> list:
    """The live part as `Event`s in event-time order (ties: file order), at most `limit` of them."""
    events = split.live.events()
    out = []
    for event in events:
        if limit is not None and len(out) >= limit:
            break
        out.append(event)
    return out
