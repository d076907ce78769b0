"""Hot reload: keep the served `Models` in step with the registry, off the hot path.

A background thread polls the registry's epoch (one GET per `poll_s`). When
it moves, the thread reads the assignment, loads every bundle it does not
hold yet (checksums verified, session warmed up: `load_bundle`), builds a new
immutable `Models` and publishes it by a single attribute assignment. The
consumer loop reads `manager.current` once per batch, so a swap lands exactly
between two batches: no event is dropped and none is predicted twice.

A bundle that fails to load refuses the whole change: the previous `Models`
keeps serving, `seqcast_model_load_failures_total` goes up and the error is
logged. The same epoch is not retried; the operator fixes the bundle and
promotes again (which moves the epoch).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from streamer.bundle import Bundle, BundleError, load_bundle
from streamer.logs import log_event
from streamer.metrics import Metrics
from streamer.predict import CANARY, PRIMARY, SHADOW, Models
from streamer.registry import Assignment, Registry

log = logging.getLogger("streamer.rollout")


def resolve(models_dir: str | Path, ref: str) -> Path:
    """A registry ref (`<name>/<version>` under models_dir, or an absolute path) -> bundle directory."""
    path = Path(ref)
    return path if path.is_absolute() else Path(models_dir) / ref


def ref_for(models_dir: str | Path, bundle_path: Path) -> str:
    """The registry ref of a bundle directory: relative to models_dir when inside it."""
    try:
        return str(Path(bundle_path).resolve().relative_to(Path(models_dir).resolve()))
    except ValueError:
        return str(Path(bundle_path).resolve())


class ModelManager:
    """Owns the registry view and the loaded bundles; `current` is what serves now."""

    def __init__(self, registry: Registry, models_dir: str | Path, fallback: Models | None,
                 metrics: Metrics, top_k: int = 0, threads: int = 1, poll_s: float = 1.0) -> None:
        self.registry = registry
        self.models_dir = models_dir
        self.metrics = metrics
        self.top_k, self.threads, self.poll_s = top_k, threads, poll_s
        self.fallback = fallback
        self.current: Models | None = fallback
        self.assignment = Assignment()
        self._bundles: dict[str, Bundle] = {}
        self._epoch = -1
        self._epoch_applied = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Apply the registry if its epoch moved; True when `current` changed."""
        epoch = self.registry.epoch()
        if epoch == self._epoch:
            return False
        self._epoch = epoch
        wanted = self.registry.read()
        if wanted == self.assignment and self.current is not None:
            return False
        try:
            models = self._build(wanted)
        except BundleError as err:
            self.metrics.model_load_failures.inc()
            log_event(log, "bundle refused; previous models keep serving", logging.ERROR, error=str(err),
                      epoch=epoch)
            return False
        self._publish(wanted, models)
        return True

    def _load(self, ref: str) -> Bundle:
        if ref not in self._bundles:
            self._bundles[ref] = load_bundle(resolve(self.models_dir, ref), self.threads)
        return self._bundles[ref]

    def _build(self, wanted: Assignment) -> Models:
        if wanted.active is None:
            if self.fallback is None:
                raise BundleError("the registry names no active bundle and no --bundle was given")
            arms = dict(self.fallback.arms)
        else:
            arms = {PRIMARY: self._load(wanted.active)}
        if wanted.canary:
            arms[CANARY] = self._load(wanted.canary)
        if wanted.shadow:
            arms[SHADOW] = self._load(wanted.shadow)
        return Models(arms, self.top_k, canary_percent=wanted.canary_percent)

    def _publish(self, wanted: Assignment, models: Models) -> None:
        before = self.assignment
        for role in ("active", "canary", "shadow"):
            if self._epoch_applied and getattr(before, role) != getattr(wanted, role):
                self.metrics.model_swaps.labels(role).inc()  # the start-up load is not a swap
        self._epoch_applied = True
        self.metrics.model_info.clear()
        for arm, bundle in models.arms.items():
            m = bundle.manifest
            self.metrics.model_info.labels(m.name, m.version, m.arch, arm).set(1)
        self._bundles = {ref: b for ref, b in self._bundles.items() if ref in wanted.refs()}
        self.assignment = wanted
        self.current = models  # the one assignment the consumer loop sees
        log_event(log, "models swapped", active=wanted.active, canary=wanted.canary,
                  canary_percent=wanted.canary_percent, shadow=wanted.shadow)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="model-registry", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception as err:  # Redis hiccups must not kill the watcher
                log_event(log, "registry poll failed", logging.WARNING, error=repr(err))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
