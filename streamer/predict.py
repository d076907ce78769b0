"""Windows -> model inputs -> prediction dicts, for one batch, one model call per arm.

`Models` holds the bundles serving traffic and decides which arm serves each
event (`route`); the service swaps the whole `Models` object between batches
(hot reload, `streamer.rollout`) and never looks inside. Arms: "primary"
serves everyone not on the canary; "canary" serves a stable share of users
(crc32 of user_id, `streamer.registry.on_canary`); "shadow" predicts for
every event on the same windows, is scored, and is never emitted.
`predict_batch` groups rows by arm and calls each bundle once per batch.

Encoding is `streamer.features.encode_batch` (= `encode_windows` on windows laid end to
end), the function training's `encode_sequence` is tested against: items through the bundle's vocabulary
(unknown -> OOV), values z-scored with the user's scaler (missing -> 0).
Outputs are turned back into the contract's units: forecast un-scaled, top-K
items that are not in the window and are not [PAD]/[OOV].
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from streamer.bundle import Bundle
from streamer.events import Event
from streamer.features import FORECAST, ITEM_SCORES, OOV_INDEX, PAD_INDEX, encode_batch, scale_values
from streamer.registry import on_canary
from streamer.topk import TopK
from streamer.window_store import Window

log = logging.getLogger("streamer.predict")
PRIMARY = "primary"
CANARY = "canary"
SHADOW = "shadow"


@dataclass(frozen=True)
class Models:
    """The bundles serving traffic, by arm; immutable, replaced whole between batches."""

    arms: dict[str, Bundle]
    top_k: int = 0  # 0 = each bundle's manifest default
    emitting: frozenset[str] = field(default=frozenset({PRIMARY, CANARY}))  # arms whose predictions are produced
    canary_percent: float = 0.0

    @classmethod
    def single(cls, bundle: Bundle, top_k: int = 0) -> "Models":
        return cls({PRIMARY: bundle}, top_k)

    @property
    def window_len(self) -> int:
        """Events the window store must return: the longest L of any arm."""
        return max(b.manifest.window for b in self.arms.values())

    def route(self, event: Event) -> str:
        """The arm that answers `event`: the canary for a stable share of users, else primary."""
        if CANARY in self.arms and on_canary(event.user_id, self.canary_percent):
            return CANARY
        return PRIMARY


@dataclass(frozen=True)
class Scored:
    """One prediction before serialisation; `body` misses only latency_ms."""

    event: Event
    arm: str
    version: str
    body: dict
    scale: float = 1.0  # std of the user's value scaler in this bundle (live accuracy's yardstick)


def encode(bundle: Bundle, events: Sequence[Event], windows: Sequence[Window],
           params: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The bundle's model inputs for each event's window (item mapping and scaling done batch-wide);
    `params` = `_params(bundle, events)` when the caller has it already."""
    lookup, oov = bundle.vocab.lookup, OOV_INDEX
    lengths = np.fromiter((len(w.items) for w in windows), np.int64, len(windows))
    items = np.fromiter((lookup(i, oov) if i is not None else PAD_INDEX for w in windows for i in w.items),
                        np.int32, int(lengths.sum()))
    params = _params(bundle, events) if params is None else params
    ts = np.concatenate([w.ts for w in windows]) if windows else np.zeros(0)
    raw = np.concatenate([w.values for w in windows]) if windows else np.zeros(0)
    scaled = scale_values(raw, np.repeat(params[:, 0], lengths), np.repeat(params[:, 1], lengths))
    return encode_batch(ts, items, scaled, lengths, bundle.manifest.window)


def top_items(scores: np.ndarray, window_items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best items per row, excluding the row's window items and 0/1
    (numpy: the reference for `select_top`, and its path for a batch with a NaN score)."""
    scores = scores.astype(np.float32, copy=True)
    scores[:, : OOV_INDEX + 1] = -np.inf
    np.put_along_axis(scores, window_items.astype(np.int64), -np.inf, axis=1)
    k = max(0, min(k, scores.shape[1] - (OOV_INDEX + 1)))
    if k == 0:
        return np.zeros((len(scores), 0), np.int64), np.zeros((len(scores), 0), np.float32)
    negated = np.negative(scores, out=scores)  # in place (our copy): no second [B, V] array
    best = np.argpartition(negated, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(negated, best, axis=1), axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1)
    return best, -np.take_along_axis(negated, best, axis=1)  # negation is exact: the original scores


_TOPK: list[TopK] = []  # one shared onnxruntime TopK session, made on first use


def select_top(scores: np.ndarray, window_items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`top_items`, by onnxruntime's TopK where its result is `top_items`' (no NaN score in the
    batch, k within the catalogue), else by numpy."""
    rows, width = scores.shape
    k = max(0, min(k, width - (OOV_INDEX + 1)))
    if k == 0 or not rows or np.isnan(scores).any():
        return top_items(scores, window_items, k)
    if not _TOPK:
        _TOPK.append(TopK())
    exclude = np.empty((rows, window_items.shape[1] + 2), np.int32)
    exclude[:, :-2] = window_items
    exclude[:, -2:] = (PAD_INDEX, OOV_INDEX)
    return _TOPK[0].select(scores, exclude, k)


def recommendations(best: np.ndarray, best_scores: np.ndarray, item_ids: Sequence[str]) -> list[list[dict]]:
    """Per row, [{"item_id", "score"}] best first; excluded items (score -inf) are dropped, so a
    window that covers almost the whole catalogue yields fewer than K. A non-finite score (a model
    output that overflowed) is dropped too: it has no JSON spelling and ranks nothing."""
    if np.isfinite(best_scores).all():  # the usual case: no per-score check
        return [[{"item_id": item_ids[i], "score": s} for i, s in zip(row, row_scores)]
                for row, row_scores in zip(best.tolist(), best_scores.tolist())]
    return [[{"item_id": item_ids[i], "score": s} for i, s in zip(row, row_scores) if math.isfinite(s)]
            for row, row_scores in zip(best.tolist(), best_scores.tolist())]


def finite_or_none(rows: list[list[float]]) -> list[list[float | None]]:
    """Forecast steps in JSON-safe form: a step that is not finite becomes null (None)."""
    return [row if all(map(math.isfinite, row)) else [v if math.isfinite(v) else None for v in row]
            for row in rows]


def _forecasts(forecast: np.ndarray, params: np.ndarray) -> list[list[float | None]]:
    """Scaled model outputs -> the contract's units, one list per row (None where not finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        unscaled = forecast.astype(np.float64) * params[:, 1:2] + params[:, 0:1]
    rows = unscaled.tolist()
    return rows if np.isfinite(unscaled).all() else finite_or_none(rows)


def _bodies(bundle: Bundle, arm: str, events: Sequence[Event], inputs: dict[str, np.ndarray],
            outputs: dict[str, np.ndarray], top_k: int, params: np.ndarray) -> list[dict]:
    manifest = bundle.manifest
    model = {"name": manifest.name, "version": manifest.version, "arch": manifest.arch, "arm": arm}
    sizes = inputs["mask"].sum(axis=1).astype(int).tolist()
    forecast = outputs.get(FORECAST)
    forecasts = None if forecast is None else _forecasts(forecast, params)
    recs = None
    if ITEM_SCORES in outputs:
        best, best_scores = select_top(outputs[ITEM_SCORES], inputs["items"], top_k or manifest.top_k)
        recs = recommendations(best, best_scores, bundle.vocab.item_ids)
    if forecasts is not None and recs is not None:  # the usual bundle: one comprehension, no branches
        return [{"event_id": e.event_id, "user_id": e.user_id, "ts": e.ts, "model": model, "forecast": f,
                 "recommendations": r, "window": n} for e, f, r, n in zip(events, forecasts, recs, sizes)]
    bodies = []
    for row, event in enumerate(events):
        body = {"event_id": event.event_id, "user_id": event.user_id, "ts": event.ts, "model": model}
        if forecasts is not None:
            body["forecast"] = forecasts[row]
        if recs is not None:
            body["recommendations"] = recs[row]
        body["window"] = sizes[row]
        bodies.append(body)
    return bodies


class ArmFailed(Exception):
    """A served arm's model call raised: the service re-runs the batch event by event and counts the
    events this arm still cannot answer (`ArmObserver.failed`) as they go to the dead-letter topic."""

    def __init__(self, arm: str, version: str, err: BaseException) -> None:
        super().__init__(f"model arm {arm} ({version}) failed: {err!r}")
        self.arm, self.version = arm, version


class ArmObserver(Protocol):
    """What `predict_batch` reports per arm (`streamer.arm_perf.ArmPerf`)."""

    def observe(self, version: str, arm: str, seconds: float, rows: int) -> None: ...

    def failed(self, version: str, arm: str, rows: int, err: BaseException) -> None: ...


def _run_arm(models: Models, arm: str, events: Sequence[Event], windows: Sequence[Window],
             perf: ArmObserver | None = None) -> list[Scored]:
    bundle = models.arms[arm]
    version = bundle.manifest.version
    params = _params(bundle, events)
    inputs = encode(bundle, events, windows, params)
    if perf is None:
        outputs = bundle.predict(inputs)
    else:
        start = time.perf_counter()
        try:
            outputs = bundle.predict(inputs)
        except Exception as err:
            if arm == SHADOW:
                raise  # counted by predict_batch, with the shadow's other failures
            raise ArmFailed(arm, version, err) from err
        perf.observe(version, arm, time.perf_counter() - start, len(events))
    bodies = _bodies(bundle, arm, events, inputs, outputs, models.top_k, params)
    return [Scored(event, arm, version, body, scale) for event, body, scale in zip(events, bodies, params[:, 1].tolist())]


def _params(bundle: Bundle, events: Sequence[Event]) -> np.ndarray:
    """[n, 2] (mean, std) of each event's user in this bundle's value scaler."""
    scaler = bundle.scaler
    if not scaler.per_entity:  # one global scaler: no lookup per event
        return np.tile(np.array([scaler.mean, scaler.std], np.float64), (len(events), 1))
    return np.array([scaler.params(e.user_id) for e in events], np.float64).reshape(-1, 2)


def predict_batch(models: Models, events: Sequence[Event], windows: Sequence[Window],
                  perf: ArmObserver | None = None) -> list[Scored]:
    """Predictions for every event: first the served one of each event, in input order (primary
    or canary, one bundle.predict per arm present), then, with a shadow, the shadow's for every
    event, in input order.

    `perf`, if given, hears each arm's model call time and failures (metrics, rollout guard rails).
    A shadow that fails costs only its own predictions: it is never emitted, so its bug must not
    send the batch to the dead-letter topic (reported to `perf`, or logged without one). A served
    arm's failure raises: the service then finds the event(s) it cannot answer.
    """
    arms = [models.route(e) for e in events]
    out: list[Scored | None] = [None] * len(events)
    for arm in dict.fromkeys(arms):
        rows = [i for i, a in enumerate(arms) if a == arm]
        served = _run_arm(models, arm, [events[i] for i in rows], [windows[i] for i in rows], perf)
        for i, scored in zip(rows, served):
            out[i] = scored
    if SHADOW in models.arms:
        try:
            out.extend(_run_arm(models, SHADOW, events, windows, perf))
        except Exception as err:  # in the model call or around it (encoding, top-K): no retry follows
            if perf is None:
                log.error("shadow model failed; its predictions are skipped: %r", err)
            else:
                perf.failed(models.arms[SHADOW].manifest.version, SHADOW, len(events), err)
    return out  # type: ignore[return-value]
