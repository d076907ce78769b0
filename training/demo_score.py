"""Online accuracy of the demo's predictions, and the summary it prints.

The demo knows every event it replays, so each prediction is scored as soon as
it arrives, by the same user's next event in stream order (the event the model
was trying to foresee): HR@10 = the next item is among the top-10
recommendations; MAE = |next value - forecast[0]|, next to repeat-last-value
(|next value - this value|), and HR@10 next to most-popular (the ten most
frequent training items, the vocabulary's order, that are not in the user's
window: the service excludes those too). A user's last replayed event has no
next event and is not scored. The service computes the same two numbers itself
(`seqcast_live_*` on /metrics); `service_live` reads them so both can be shown.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from streamer.events import Event

TOP_K = 10


def next_events(events: Sequence[Event]) -> dict[str, tuple[Event, Event | None]]:
    """event_id -> (the event, the same user's next event in `events` order, or None)."""
    out: dict[str, tuple[Event, Event | None]] = {}
    previous: dict[str, Event] = {}
    for event in events:
        if event.user_id in previous:
            earlier = previous[event.user_id]
            out[earlier.event_id] = (earlier, event)
        out[event.event_id] = (event, None)
        previous[event.user_id] = event
    return out


def window_items(events: Sequence[Event], window: int) -> dict[str, frozenset[str]]:
    """event_id -> the items of the user's last `window` events up to and including it (what the
    service's window holds when it predicts for that event)."""
    recent: dict[str, deque] = {}
    out: dict[str, frozenset[str]] = {}
    for event in events:
        items = recent.setdefault(event.user_id, deque(maxlen=window))
        if event.item_id is not None:
            items.append(event.item_id)
        out[event.event_id] = frozenset(items)
    return out


def popular_items(bundle: Path) -> list[str]:
    """The bundle's items, most frequent in training first (the trainer writes the vocabulary in that order)."""
    from streamer.bundle import VOCAB_FILE
    from streamer.features import RESERVED, Vocabulary

    return Vocabulary.load(bundle / VOCAB_FILE).item_ids[len(RESERVED):]


@dataclass
class OnlineScore:
    """Running totals over the predictions seen so far. `popular`: item ids, most frequent first (a
    bundle's vocabulary order), for the most-popular baseline; `windows`: `window_items`."""

    popular: Sequence[str] = ()
    windows: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    scored_items: int = 0
    hits: int = 0
    popular_hits: int = 0
    scored_values: int = 0
    abs_error: float = 0.0
    baseline_abs_error: float = 0.0  # repeat-last-value
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, prediction: dict, event: Event, following: Event | None) -> bool | None:
        """Score one prediction; returns hit/miss for the item head (None when not scored)."""
        if "latency_ms" in prediction:
            self.latencies_ms.append(float(prediction["latency_ms"]))
        if following is None:
            return None
        forecast = prediction.get("forecast")
        if forecast and following.value is not None:
            self.scored_values += 1
            self.abs_error += abs(following.value - forecast[0])
            if event.value is not None:
                self.baseline_abs_error += abs(following.value - event.value)
        recs = prediction.get("recommendations")
        if recs is None or following.item_id is None:
            return None
        self.scored_items += 1
        hit = following.item_id in {r["item_id"] for r in recs[:TOP_K]}
        self.hits += hit
        self.popular_hits += following.item_id in self.most_popular(self.windows.get(event.event_id, frozenset()))
        return hit

    def most_popular(self, exclude: frozenset[str]) -> list[str]:
        """The top-10 most-popular items outside the user's window."""
        top: list[str] = []
        for item in self.popular:
            if item not in exclude:
                top.append(item)
                if len(top) == TOP_K:
                    break
        return top

    @property
    def popular_hr(self) -> float:
        return self.popular_hits / self.scored_items if self.scored_items else float("nan")

    @property
    def hr(self) -> float:
        return self.hits / self.scored_items if self.scored_items else float("nan")

    @property
    def mae(self) -> float:
        return self.abs_error / self.scored_values if self.scored_values else float("nan")

    @property
    def baseline_mae(self) -> float:
        return self.baseline_abs_error / self.scored_values if self.scored_values else float("nan")

    def latency_ms(self, q: float) -> float:
        import numpy as np  # lazily: `seqcast --help` imports this module

        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def metric_samples(metrics_text: str) -> dict[str, list[tuple[dict, float]]]:
    """Prometheus text -> {sample name: [(labels, value)]}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def service_live(samples: dict[str, list[tuple[dict, float]]]) -> dict | None:
    """The service's own online HR@10 and MAE from seqcast_live_*, summed over versions and arms; None if absent."""
    scored = samples.get("seqcast_live_scored_total")
    if not scored:
        return None
    per_head = Counter()
    for labels, value in scored:
        per_head[labels.get("head", "")] += value
    hits = sum(v for _, v in samples.get("seqcast_live_hits_total", []))
    abs_error = sum(v for _, v in samples.get("seqcast_live_abs_error_total", []))
    items, values = per_head["items"], per_head["forecast"]
    return {"scored_items": int(items), "hr": hits / items if items else float("nan"),
            "scored_values": int(values), "mae": abs_error / values if values else float("nan")}


@dataclass
class Run:
    """What happened, for the summary."""

    valid_sent: int
    malformed_sent: int
    predictions: int
    stream_seconds: float  # first event sent -> last prediction received
    dlq_reasons: Counter
    dlq_topic: str
    score: OnlineScore
    live: dict | None


def format_summary(run: Run) -> str:
    s = run.score
    rate = run.predictions / run.stream_seconds if run.stream_seconds > 0 else float("nan")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(run.dlq_reasons.items())) or "none"
    lines = [
        "== seqcast demo summary ==",
        f"events        {run.valid_sent} valid + {run.malformed_sent} malformed sent; {run.predictions} predictions "
        f"in {run.stream_seconds:.1f} s -> {rate:.0f} events/s",
        f"latency       p50 {s.latency_ms(50):.1f} ms, p99 {s.latency_ms(99):.1f} ms "
        f"(event consumed -> prediction produced)",
        f"DLQ           {sum(run.dlq_reasons.values())} messages on {run.dlq_topic} ({reasons})",
        (f"online HR@10  {s.hr:.3f} over {s.scored_items} predictions scored by the user's next event"
         + (f" (most-popular: {s.popular_hr:.3f})" if s.popular else "")) if s.scored_items else
        "online HR@10  none scored (no item head, or no next event with an item)",
        f"online MAE    {s.mae:.3f} over {s.scored_values} (repeat-last-value: {s.baseline_mae:.3f})"
        if s.scored_values else "online MAE    none scored (no forecast head, or no next event with a value)",
    ]
    if run.live is not None:
        live = run.live
        lines.append(f"service live  HR@10 {live['hr']:.3f} over {live['scored_items']}, "
                     f"MAE {live['mae']:.3f} over {live['scored_values']} (its own seqcast_live_* metrics)")
    return "\n".join(lines)
