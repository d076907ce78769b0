"""What the demo serves and what it replays: synthetic events (the default), or the user's own file.

`--data FILE` (any format `seqcast train` reads) is cut at one moment T, chosen so that the last --holdout
share of its events (20 % by default) happen at or after T. Unless --bundle is given, the demo trains its
model on the events before T only (vocabulary and scaler included) and replays the events from T on, in
event-time order: the online accuracy is then out of sample, as it would be the day after training in
production. Cutting at one moment, not per user, is what keeps every replayed event in the model's future.

`--bundle DIR` serves that bundle as it is. With --data, the demo compares the bundle's training-data
fingerprint (manifest `training_data.fingerprint`) with the file's, and says when the bundle was trained on
the whole file, i.e. when the replayed events were in its training data and the online accuracy is in sample.

The work is split in two so that a bad file fails in a second and a bad broker setting fails before training:
`replay_source` reads and cuts the file (before the broker starts), `ensure_bundle` trains or reuses a model
(after the broker and Redis answered).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.bundle import FORMAT_VERSION

if TYPE_CHECKING:
    from streamer.events import Event
    from training.data.eventlog import EventLog

SYNTHETIC_NAME = "demo"
WINDOW, HORIZON, WIDTH, TRAIN_EVENTS_PER_USER = 20, 3, 32, 40
# Bumped whenever the demo's training recipe changes, so that a cached bundle of an older recipe is
# retrained rather than reused (2: linear head from repeat-last, two-head selection, forecast guard).
DEMO_RECIPE = 2


class DemoDataError(ValueError):
    """The demo cannot replay this file or serve this bundle; the message says why and what to pass."""


@dataclass
class ReplaySource:
    """The events to replay and, when the demo trains, the log to train on (None with --bundle)."""

    events: list[Event]
    train_log: EventLog | None
    name: str  # the bundle name the demo trains into: "demo" or "demo-<file source>"
    whole_fingerprint: str | None = None  # the whole file's, to tell an in-sample --bundle


def replay_source(args: argparse.Namespace) -> ReplaySource:
    """The replay (and training log) for these arguments; DataError / DemoDataError name a bad input."""
    if args.data is None:
        from training.demo_feed import replay_events
        from training.data.synthetic import synthetic_log

        log = None if args.bundle else synthetic_log(args.users, args.items, TRAIN_EVENTS_PER_USER, args.seed)
        return ReplaySource(limited(replay_events(args), args.limit), log, SYNTHETIC_NAME)
    from training.data_args import load_data

    log = load_data(args)
    train_rows, replay_order, cut_ts = holdout_cut(log, args.holdout)
    events = limited(list(log.events(replay_order)), args.limit)
    print(f"data         {args.data}: {len(log):,} events, {len(set(log.users)):,} users"
          + (f", {len(set(log.items)):,} items" if log.items is not None else "")
          + f" ({when(log.ts.min())} .. {when(log.ts.max())})", flush=True)
    if args.bundle:
        print(f"replay       {len(events):,} of the {len(replay_order):,} events from {when(cut_ts)} on "
              f"(--holdout {args.holdout:g})", flush=True)
        return ReplaySource(events, None, "", whole_fingerprint=log.fingerprint())
    if len(train_rows) == 0:
        raise DemoDataError(f"{args.data}: every event falls in the replayed {args.holdout:g} share, so there is "
                            "nothing to train on: lower --holdout or pass --bundle DIR")
    print(f"split        train on the {len(train_rows):,} events before {when(cut_ts)}; replay {len(events):,} "
          f"of the {len(replay_order):,} from then on, in event-time order (--holdout {args.holdout:g})", flush=True)
    return ReplaySource(events, log.take(train_rows), f"{SYNTHETIC_NAME}-{log.source}")


def holdout_cut(log: EventLog, holdout: float):
    """(training rows in the log's (user, ts) order, replay rows in event-time order, the cut time T).

    T is the time of the first event of the last `holdout` share in time order; every event at T or later is
    replayed (ties at T all go the same way), every earlier one may be trained on."""
    import numpy as np

    if not 0.0 < holdout <= 1.0:
        raise DemoDataError(f"--holdout must be in (0, 1], got {holdout:g}")
    order = np.argsort(log.ts, kind="stable")
    first = min(int(len(log) * (1.0 - holdout)), len(log) - 1)
    cut_ts = float(log.ts[order[first]])
    train_rows = np.nonzero(log.ts < cut_ts)[0]  # ascending rows keep the (user, ts) order training needs
    return train_rows, order[log.ts[order] >= cut_ts], cut_ts


def limited(events: list, limit: int | None) -> list:
    return events if limit is None else events[:limit]


def when(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return f"{ts:g} s"


def ensure_bundle(args: argparse.Namespace, source: ReplaySource) -> Path:
    """--bundle as given (checked: the service would refuse a broken one); else the newest demo bundle trained
    on exactly this training log by this DEMO_RECIPE; else a freshly trained one."""
    if args.bundle:
        return given_bundle(Path(args.bundle), source.whole_fingerprint)
    log = source.train_log
    found = None if args.retrain else find_bundle(args.models_dir, source.name, log.fingerprint())
    if found is not None:
        print(f"model        {found} (reused; --retrain to train a new one)", flush=True)
        return found
    return train(args, log, source.name)


def given_bundle(path: Path, whole_fingerprint: str | None) -> Path:
    from streamer.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(path, threads=1)
    except BundleError as err:
        raise DemoDataError(f"--bundle {path}: {err}") from None
    manifest = bundle.manifest
    print(f"model        {path} ({manifest.arch}, window {manifest.window}, horizon {manifest.horizon}, "
          f"top-K {manifest.top_k})", flush=True)
    if whole_fingerprint is not None and manifest.training_data.get("fingerprint") == whole_fingerprint:
        print("note         this bundle was trained on the whole file, replayed events included: its online "
              "accuracy below is in sample. Without --bundle the demo trains on the events before the "
              "replay only.", flush=True)
    return path


def find_bundle(models_dir: Path, name: str, fingerprint: str) -> Path | None:
    """The newest models_dir/<name>/<version> trained on the log with this fingerprint by this DEMO_RECIPE."""
    root = models_dir / name
    for version in sorted(root.iterdir(), reverse=True) if root.is_dir() else []:
        try:
            manifest = json.loads((version / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("format_version") != FORMAT_VERSION:
            continue  # written by an older seqcast: the service would refuse it, so train afresh
        if manifest.get("hyperparameters", {}).get("demo_recipe") != DEMO_RECIPE:
            continue  # an older recipe (e.g. one whose model lost to repeat-last-value): train afresh
        if manifest.get("training_data", {}).get("fingerprint") == fingerprint:
            return version
    return None


def train(args: argparse.Namespace, log: EventLog, name: str) -> Path:
    """The demo's recipe (a small LSTM; a forecast head when the log has values) on `log`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    what = "synthetic events" if name == SYNTHETIC_NAME else "events"
    print(f"training     LSTM on {len(log):,} {what} ({len(set(log.users)):,} users"
          + (f", {len(set(log.items)):,} items" if log.items is not None else "") + ")", flush=True)
    from training.models import ModelSpec
    from training.pipeline import train_and_export
    from training.train import FitConfig

    horizon = HORIZON if log.values is not None else 0
    spec = ModelSpec(arch="lstm", window=WINDOW, horizon=horizon, width=WIDTH)
    config = FitConfig(epochs=args.epochs, batch_size=256, learning_rate=5e-3, patience=3,
                       max_minutes=args.train_minutes, seed=args.seed)
    outcome = train_and_export(log, args.models_dir, name, spec, config, top_k=10, progress=True,
                               recipe={"demo_recipe": DEMO_RECIPE})
    print(f"model        {outcome.bundle} in {outcome.seconds:.0f} s; test {offline_scores(outcome.metrics)}",
          flush=True)
    return outcome.bundle


def offline_scores(metrics: dict) -> str:
    """The offline test scores next to their baselines, for the heads the model has."""
    parts = []
    if "items" in metrics:
        items = metrics["items"]
        parts.append(f"HR@10 {items['model']['HR@10']:.3f} (most-popular {items['most_popular']['HR@10']:.3f})")
    if "forecast" in metrics:
        values = metrics["forecast"]["original_units"]
        parts.append(f"MAE {values['model']['MAE']:.2f} (repeat-last-value {values['repeat_last_value']['MAE']:.2f}); "
                     f"forecast head serves {metrics.get('selection', {}).get('served', 'the model')}")
    return ", ".join(parts)
