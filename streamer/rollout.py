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

The registry is not trusted with paths: a ref that climbs with `..`, or is
an absolute path or a symlink leading out of the models directory, is refused the
same way (`resolve`), and with `trusted_keys` set an unsigned or wrongly
signed bundle is too (`streamer.signing`). The one ref served from outside
the models directory is the fallback's own (`--bundle`), already loaded.

Because a refusal leaves the registry naming a version nobody runs, the same
thread reports what this process actually serves (`streamer.served`): a
heartbeat on every applied or refused change and every `heartbeat_s`, which
`seqcast models list` shows next to the registry's roles.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from streamer.arm_perf import ArmPerf
from streamer.bundle import Bundle, BundleError, load_bundle
from streamer.logs import log_event
from streamer.metrics import Metrics
from streamer.predict import CANARY, PRIMARY, SHADOW, Models
from streamer.registry import Assignment, Registry, ref_problem
from streamer.served import Heartbeat, short_error
from streamer.signing import TrustedKeys

log = logging.getLogger("streamer.rollout")


def resolve(models_dir: str | Path, ref: str) -> Path:
    """A registry ref (`<name>/<version>` under models_dir) -> its bundle directory, symlinks resolved.

    BundleError for a ref that contains `..` or that lies, once symlinks are followed, outside
    models_dir (an absolute path is accepted only inside it): the registry names bundles, it
    does not choose directories.
    """
    problem = ref_problem(ref)
    if problem:
        raise BundleError(f"registry ref {ref!r} refused: {problem}")
    root = Path(models_dir).resolve()
    path = (root / ref).resolve()
    if path == root or not path.is_relative_to(root):
        raise BundleError(f"registry ref {ref!r} refused: outside the models directory {root} "
                          f"(it resolves to {path})")
    return path


def ref_for(models_dir: str | Path, bundle_path: Path) -> str:
    """The registry ref of a bundle directory: relative to models_dir when inside it."""
    try:
        return str(Path(bundle_path).resolve().relative_to(Path(models_dir).resolve()))
    except ValueError:
        return str(Path(bundle_path).resolve())


class RefusedBundle(BundleError):
    """A bundle named by the registry that did not load; `ref` says which one, for the heartbeat."""

    def __init__(self, ref: str, message: str) -> None:
        super().__init__(message)
        self.ref = ref


class ModelManager:
    """Owns the registry view and the loaded bundles; `current` is what serves now."""

    def __init__(self, registry: Registry, models_dir: str | Path, fallback: Models | None,
                 metrics: Metrics, top_k: int = 0, threads: int = 1, poll_s: float = 1.0,
                 heartbeat_s: float = 5.0, instance: str | None = None,
                 trusted: TrustedKeys | None = None) -> None:
        self.registry = registry
        self.models_dir = models_dir
        self.metrics = metrics
        self.top_k, self.threads, self.poll_s = top_k, threads, poll_s
        self.fallback = fallback
        self.trusted = trusted  # None: signatures not required
        self.current: Models | None = fallback
        self.assignment = Assignment()
        self._bundles: dict[str, Bundle] = {}
        self._epoch = -1
        self._epoch_applied = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_failures = 0
        # what `current` is, for the heartbeat: refs by arm, the registry epoch it applies
        # (None: the --bundle fallback) and the change refused since (None: nothing pending)
        fallback_arms = fallback.arms if fallback else {}
        self._fallback_refs = {arm: ref_for(models_dir, b.path) for arm, b in fallback_arms.items()}
        self.arm_refs: dict[str, str] = dict(self._fallback_refs)
        # the fallback's bundles by ref: loaded and verified at start, served by that ref even from
        # outside models_dir (start_models seeds an empty registry with it)
        self._fallback_bundles = {self._fallback_refs[arm]: b for arm, b in fallback_arms.items()}
        self.served_epoch: int | None = None
        self.refused: dict | None = None
        self.heartbeat = Heartbeat(registry.redis, registry.prefix, max(poll_s, heartbeat_s), instance)
        self._report_now = True
        self.perf = ArmPerf(metrics)  # the service adds each arm's call times; flushed to Redis every poll

    def refresh(self) -> bool:
        """Apply the registry if its epoch moved; True when `current` changed."""
        epoch = self.registry.epoch()
        if epoch == self._epoch:
            return False
        self._epoch = epoch
        wanted = self.registry.read()
        if wanted == self.assignment and self.current is not None:
            self._settled(epoch)  # e.g. a rollback to what never stopped serving
            return False
        try:
            models, refs = self._build(wanted)
        except BundleError as err:
            self._refuse(epoch, wanted, err)
            return False
        self._publish(wanted, models, refs)
        self._settled(epoch)
        return True

    def _settled(self, epoch: int) -> None:
        self.served_epoch, self.refused, self._report_now = epoch, None, True

    def _refuse(self, epoch: int, wanted: Assignment, err: BundleError) -> None:
        self.metrics.model_load_failures.inc()
        log_event(log, "bundle refused; previous models keep serving", logging.ERROR, error=str(err),
                  epoch=epoch, instance=self.heartbeat.instance)
        ref = err.ref if isinstance(err, RefusedBundle) else wanted.active
        self.refused = {"epoch": epoch, "ref": ref, "error": short_error(str(err))}
        self._report_now = True

    def _load(self, ref: str) -> Bundle:
        if ref in self._fallback_bundles:
            return self._fallback_bundles[ref]
        if ref not in self._bundles:
            try:
                self._bundles[ref] = load_bundle(resolve(self.models_dir, ref), self.threads, self.trusted)
            except BundleError as err:
                raise RefusedBundle(ref, str(err)) from err
        return self._bundles[ref]

    def _build(self, wanted: Assignment) -> tuple[Models, dict[str, str]]:
        """The Models for `wanted` and the registry ref of each arm; BundleError if any bundle fails."""
        if wanted.active is None:
            if self.fallback is None:
                raise BundleError("the registry names no active bundle and no --bundle was given")
            arms, refs = dict(self.fallback.arms), dict(self._fallback_refs)
        else:
            arms, refs = {PRIMARY: self._load(wanted.active)}, {PRIMARY: wanted.active}
        for arm, ref in ((CANARY, wanted.canary), (SHADOW, wanted.shadow)):
            if ref:
                arms[arm], refs[arm] = self._load(ref), ref
        return Models(arms, self.top_k, canary_percent=wanted.canary_percent), refs

    def _publish(self, wanted: Assignment, models: Models, refs: dict[str, str]) -> None:
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
        self.arm_refs = refs
        self.current = models  # the one assignment the consumer loop sees
        log_event(log, "models swapped", active=wanted.active, canary=wanted.canary,
                  canary_percent=wanted.canary_percent, shadow=wanted.shadow)

    def report(self) -> bool:
        """Write the served heartbeat now; False when Redis did not take it (never raises on Redis errors)."""
        models = self.current
        arms = {arm: {"ref": self.arm_refs.get(arm, str(b.path)), "version": b.manifest.version}
                for arm, b in (models.arms if models else {}).items()}
        written = self.heartbeat.beat(self.served_epoch, arms, models.canary_percent if models else 0.0,
                                      self.refused)
        self._report_now = self._report_now and not written
        return written

    def start(self) -> None:
        log_event(log, "model registry watcher started", instance=self.heartbeat.instance,
                  poll_s=self.poll_s, heartbeat_s=self.heartbeat.interval_s)
        self._thread = threading.Thread(target=self._loop, name="model-registry", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self._tick(poll=False)
        while not self._stop.wait(self.poll_s):
            self._tick()

    def _tick(self, poll: bool = True) -> None:
        """One poll and, on a change or when due, one heartbeat; neither may kill the watcher."""
        try:
            if poll:
                self.refresh()
            if self._poll_failures:
                log_event(log, "registry poll works again", failures=self._poll_failures)
                self._poll_failures = 0
        except Exception as err:  # Redis hiccups must not kill the watcher; one line per outage, not per poll
            if self._poll_failures == 0:
                log_event(log, "registry poll failed; retrying quietly", logging.WARNING, error=repr(err))
            self._poll_failures += 1
        try:
            if self._report_now or self.heartbeat.due():
                self.report()
        except Exception as err:  # a reporting bug must not stop the swaps either
            log_event(log, "served report failed", logging.WARNING, error=repr(err))
        try:
            self.perf.flush(self.registry.redis, self.registry.prefix)
        except Exception:  # kept for the next poll; the registry poll above already reports an outage
            pass

    def stop(self) -> None:
        """Stop polling, send the last call times, and remove this instance's heartbeat: a stopped
        service serves nothing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            try:
                self.perf.flush(self.registry.redis, self.registry.prefix)
            except Exception:
                pass
            self.heartbeat.clear()
