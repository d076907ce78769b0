"""One chaos run from start to verdict: fresh broker, Redis and topics; the scenario's faults; then the
checker against an uninterrupted reference run of the same input.

`ChaosRun` owns everything it starts and stops it all in `close()`. A scenario drives the fleet
(start, kill, stop members), the feeder and the dependencies, then calls `finish()`, which waits
until every input record has its verdict (a prediction or a dead letter), stops the members
gracefully, replays the same events topic through one reference member with nothing injected,
and compares the two (`bench.chaos.checker`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.checker import (InputTruth, TopicReader, Verdict, check_delivery, check_state, predictions_by_id,
                                 wait_covered)
from bench.chaos.infra import Broker, ChaosRedis, Fleet, run_id
from bench.chaos.workload import Feeder, Message
from streamer.transport import create_topics
from streamer.window_store import WindowStore

STALL_S = 120.0  # after the feed ends, a run that produces no verdict for this long has stalled


@dataclass
class Row:
    """One line of docs/reliability.md."""

    scenario: str
    events: int
    invalid: int
    faults: str
    lost: int
    duplicates: int
    differing_duplicates: int
    crashes: int
    windows: str
    live: str
    seconds: float
    ok: bool
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # scenario-specific measurements (the soak's RSS samples)


class ChaosRun:
    """The broker, Redis, topics and fleet of one scenario run."""

    def __init__(self, name: str, bundle: Path, work_dir: Path, partitions: int = 2, proxied: bool = False,
                 **settings) -> None:
        self.name, self.bundle = name, Path(bundle)
        self.id = run_id()
        self.dir = work_dir / f"{name}-{self.id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        manifest = json.loads((self.bundle / "manifest.json").read_text())
        self.version, self.window_len = manifest["version"], int(manifest["window"])
        self.broker = Broker(self.dir, proxied)
        self.redis = ChaosRedis(self.dir)
        self.prefix, self.ref_prefix = f"chaos{self.id}", f"ref{self.id}"
        self.topics = {k: f"{k}-{self.id}" for k in ("events", "predictions", "dlq", "ref-predictions", "ref-dlq")}
        create_topics(self.broker.bootstrap, [self.topics["events"]], partitions)
        create_topics(self.broker.bootstrap, [t for k, t in self.topics.items() if k != "events"], partitions)
        common = {"bootstrap_servers": self.broker.bootstrap, "redis_url": self.redis.url,
                  "bundle": str(self.bundle), "input_topic": self.topics["events"]}
        self.fleet = Fleet(self.dir, **common, key_prefix=self.prefix, output_topic=self.topics["predictions"],
                           dlq_topic=self.topics["dlq"], group_id=f"chaos-{self.id}", **settings)
        self.reference = Fleet(self.dir / "reference", **common, key_prefix=self.ref_prefix,
                               output_topic=self.topics["ref-predictions"], dlq_topic=self.topics["ref-dlq"],
                               group_id=f"ref-{self.id}", assign_all_partitions=True)
        (self.dir / "reference").mkdir(exist_ok=True)
        self.feeder: Feeder | None = None
        self.notes: list[str] = []

    def feed(self, messages: list[Message], rate: float, paused=lambda: False) -> Feeder:
        self.feeder = Feeder(self.broker.bootstrap, self.topics["events"], messages, rate, paused)
        self.feeder.start()
        return self.feeder

    def store(self, prefix: str) -> WindowStore:
        return WindowStore(self.redis.client(), prefix, self.window_len, 7 * 24 * 3600, 32)

    def finish(self, labels: dict[bytes | None, str | None] | None = None, compare_state: bool = True) -> Verdict:
        """Wait for every verdict, stop the fleet, run the reference, compare."""
        if self.feeder is not None:
            self.feeder.join()
            if self.feeder.error is not None:
                raise RuntimeError(f"the feeder failed: {self.feeder.error!r}")
        truth = InputTruth.read(TopicReader(self.broker.bootstrap, self.topics["events"]).drain(), labels or {})
        out, dlq = (TopicReader(self.broker.bootstrap, self.topics[t]) for t in ("predictions", "dlq"))
        if not wait_covered(truth, out, dlq, STALL_S):
            self.notes.append(f"stalled: no new verdict for {STALL_S:.0f}s with records still unanswered")
        self.fleet.stop_all()
        out.drain(idle_s=1.0)
        dlq.drain(idle_s=1.0)
        crashes = self.fleet.crashes()
        reference = None
        if compare_state:
            reference = self._reference(truth)
        verdict = check_delivery(truth, out.records, dlq.records, reference)
        verdict.crashes = crashes
        if compare_state:
            check_state(verdict, truth.users, self.store(self.prefix), self.store(self.ref_prefix), self.version)
        for reader in (out, dlq):
            reader.close()
        (self.dir / "verdict.json").write_text(json.dumps(
            {"problems": verdict.problems(), "examples": verdict.examples, "notes": self.notes}, indent=1))
        return verdict

    def _reference(self, truth: InputTruth) -> dict[str, list[dict]]:
        """The same input through one member with no faults: the predictions and state to match."""
        self.reference.start()
        out, dlq = (TopicReader(self.broker.bootstrap, self.topics[t]) for t in ("ref-predictions", "ref-dlq"))
        if not wait_covered(truth, out, dlq, STALL_S):
            self.notes.append("the reference run did not finish")
        self.reference.stop_all()
        by_id = predictions_by_id(out.drain(idle_s=1.0))
        for reader in (out, dlq):
            reader.close()
        return by_id

    def row(self, verdict: Verdict, faults: str, notes: list[str] = ()) -> Row:
        live = "equal" if verdict.live and not verdict.live_differ else ("n/a" if not verdict.live else "DIFFER")
        windows = (f"{verdict.windows_compared - len(verdict.windows_differ)}/{verdict.windows_compared} equal"
                   if verdict.windows_compared else "n/a")
        return Row(self.name, verdict.valid_records, verdict.invalid, faults, verdict.lost, verdict.duplicates,
                   len(verdict.differing_duplicates), len(verdict.crashes), windows, live,
                   round(time.monotonic() - self.started, 1), verdict.ok and not self.notes,
                   [*self.notes, *notes], verdict.problems())

    def close(self) -> None:
        for fleet in (self.fleet, self.reference):
            fleet.kill_all()
        self.broker.stop()
        self.redis.close()
