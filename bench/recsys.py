"""Amazon Beauty and MovieLens 100K under the leave-one-out, full-ranking protocol (S3Rec, eSASRec).

Per user, in interaction order: the last item is the test target, the second
last the validation target, every earlier item a training target (its window
is the events before it, at most L). Every item of the file is a candidate
(full ranking, no sampled negatives), including items that occur only in
validation or test targets, so no user is dropped from the denominator.
Metrics: HR@10, NDCG@10, HR@50, NDCG@50, reported twice: with the items of
the user's window excluded from the candidates (S3Rec's `predict_full` and
what the streamer serves) and with them kept.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from streamer.features import Vocabulary
from training.data.eventlog import EventLog
from training.dataset import Prepared, prepare
from training.metrics import hr_curve, rank_of_targets, ranking_report

KS = (10, 50)


def all_item_vocabulary(log: EventLog) -> Vocabulary:
    """Every item of the log, most frequent in training rows first (leave-one-out: all but the last two)."""
    log = log.sorted()
    train_rows = np.concatenate([np.arange(a, b - 2) for _, a, b in log.user_runs()])
    counts = Counter(log.items[train_rows])
    unseen = sorted(set(log.items) - set(counts))
    return Vocabulary(sorted(counts, key=lambda item: (-counts[item], str(item))) + unseen)


def leave_one_out(log: EventLog, window: int, horizon: int = 0) -> Prepared:
    """Train/validation/test windows of every user (5-core data: each has >= 5 events)."""
    return prepare(log, window, horizon, min_events=3, vocab=all_item_vocabulary(log))


def full_ranking(scores: np.ndarray, targets: np.ndarray, history: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """(HR/NDCG@10,50, HR@1..50 curve) over all candidates; `history` [B, L] items are excluded if given."""
    ranks = rank_of_targets(scores, targets, exclude=history)
    return ranking_report(ranks, KS), hr_curve(ranks, max(KS))
