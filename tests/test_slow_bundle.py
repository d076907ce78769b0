"""`slow_bundle.slow_copy` on the real tiny bundle: a distinct, sealed version that loads,
predicts exactly what the original predicts, and whose model call is at least 5x slower.

The rollout guard-rail tests (issue 14) rely on all three: a canary that is only slower must be
rolled back for its latency, not for its predictions.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.bundle import MANIFEST, MODEL_FILE, BundleError, load_bundle
from streamer.predict import Models, encode, predict_batch
from slow_bundle import VERSION_SUFFIX, slow_copy
from stream_helpers import store_batch

MIN_RATIO = 5.0
CALLS = 7  # per bundle, interleaved, median taken


@pytest.fixture(scope="module")
def slow_dir(bundle_dir, tmp_path_factory) -> Path:
    return slow_copy(bundle_dir, tmp_path_factory.mktemp("slow") / "slow", matmul_size=1024, repeats=2)




def test_slow_copy_is_a_new_sealed_version(bundle_dir, slow_dir):
    original, slow = load_bundle(bundle_dir), load_bundle(slow_dir)  # load_bundle checks every digest
    assert slow.manifest.version == original.manifest.version + VERSION_SUFFIX
    assert slow.manifest.files[MODEL_FILE] != original.manifest.files[MODEL_FILE]
    before = json.loads((bundle_dir / MANIFEST).read_text())
    after = json.loads((slow_dir / MANIFEST).read_text())
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {"version", "files", "checksums"}
    assert not list(slow_dir.parent.glob(".*.tmp")), "the staging directory was left behind"


def test_slow_copy_refuses_an_existing_destination(bundle_dir, slow_dir):
    with pytest.raises(FileExistsError):
        slow_copy(bundle_dir, slow_dir)


def test_an_edited_slow_manifest_is_refused(slow_dir, tmp_path):
    """The copy is sealed by the loader's own rules, not merely accepted by a lax loader."""
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(slow_dir, edited)
    raw = json.loads((edited / MANIFEST).read_text())
    raw["version"] += "-again"
    (edited / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="'version' does not match its checksum"):
        load_bundle(edited)


def test_slow_copy_predicts_exactly_what_the_original_predicts(bundle_dir, slow_dir):
    original, slow = load_bundle(bundle_dir), load_bundle(slow_dir)
    events, windows = store_batch(original)
    inputs = encode(original, events, windows)
    np.testing.assert_array_equal(encode(slow, events, windows)["values"], inputs["values"])
    want, got = original.predict(inputs), slow.predict(inputs)
    assert set(got) == set(want) and want
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])
        # bit for bit, -0.0 included: the slow branch adds -0.0
        assert got[name].tobytes() == want[name].tobytes(), name
    served, slowed = (predict_batch(Models.single(b), events, windows) for b in (original, slow))
    assert {s.version for s in slowed} == {slow.manifest.version}
    assert [_unversioned(s.body) for s in slowed] == [_unversioned(s.body) for s in served]


def _unversioned(body: dict) -> dict:
    """A prediction body without its model version (the one thing the slow copy must change)."""
    return {**body, "model": {k: v for k, v in body["model"].items() if k != "version"}}


def test_one_model_call_is_at_least_5x_slower(bundle_dir, slow_dir, record_property):
    original, slow = load_bundle(bundle_dir), load_bundle(slow_dir)
    events, windows = store_batch(original)
    inputs = encode(original, events, windows)
    timings: dict[str, list[float]] = {"original": [], "slow": []}
    for _ in range(CALLS + 1):  # interleaved, so CPU contention hits both alike; the first is warm-up
        for name, bundle in (("original", original), ("slow", slow)):
            start = time.perf_counter()
            bundle.predict(inputs)
            timings[name].append(time.perf_counter() - start)
    base, slowed = (statistics.median(timings[k][1:]) for k in ("original", "slow"))
    ratio = slowed / base
    record_property("slow_ratio", round(ratio, 1))
    print(f"\nmodel call: original {base * 1e3:.2f} ms, slow {slowed * 1e3:.2f} ms, ratio {ratio:.1f}x")
    assert ratio >= MIN_RATIO, f"slow copy only {ratio:.1f}x slower ({slowed * 1e3:.2f} ms vs {base * 1e3:.2f} ms)"
