"""The chaos suite at its short CI size: every scenario of `python -m bench.chaos`, same code, smaller numbers.

Each scenario starts its own Tansu broker, a Redis 7 with AOF on and real `seqcast serve`
processes, injects its faults (SIGKILLs, membership changes, Redis and broker outages, poison),
then checks that nothing was lost, no duplicate differs, no member crashed, and that windows
and live-accuracy totals equal an uninterrupted reference run (bench/chaos/checker.py). The full
run (`python -m bench.chaos --full --report docs/reliability.md`) writes docs/reliability.md.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos.bundles import ensure_bundle
from bench.chaos.scenarios import SCENARIOS, Context

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def context(request, bundle_dir, tmp_path_factory) -> Context:
    bundles = Path(request.config.cache.mkdir("seqcast-chaos-bundles"))
    return Context(bundle=bundle_dir, soak_bundle=ensure_bundle(bundles, window=50),
                   work_dir=tmp_path_factory.mktemp("chaos"), say=print)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_chaos_scenario_loses_nothing(context, scenario):
    row = SCENARIOS[scenario](context, "ci")
    print(f"\n{scenario}: {row.faults}; events {row.events}, invalid {row.invalid}, lost {row.lost}, duplicates "
          f"{row.duplicates}, differing {row.differing_duplicates}, crashes {row.crashes}, windows {row.windows}, "
          f"live {row.live}, {row.seconds:.0f}s")
    for note in row.notes:
        print(f"  {note}")
    assert row.ok, "\n".join(row.problems + row.notes)
    assert row.lost == 0 and row.differing_duplicates == 0 and row.crashes == 0
    if scenario != "soak":  # the soak checks delivery and memory, not state against a reference
        same, compared = row.windows.split()[0].split("/")
        assert same == compared and row.live == "equal"


def test_the_checker_orders_arrival_numbers_as_numbers():
    """Stored arrival numbers are little-endian doubles: their bytes do not sort like the numbers (1 < 256 < 257,
    but b"\\x00\\x01..." sorts first). A replay that bumps the counter must not reorder the comparison."""
    import struct

    from bench.chaos.checker import _normalised

    payload = lambda arrival: struct.pack("<ddd", 1.0, 2.0, arrival) + b"item"
    first = _normalised({"a": payload(1), "b": payload(256), "c": payload(257)})
    shifted = _normalised({"a": payload(2), "b": payload(257), "c": payload(258)})
    assert first == shifted
    assert [first[i][1] for i in "abc"] == [0, 1, 2]


def test_the_checker_flags_predictions_and_dead_letters_off_the_published_schemas():
    import json

    from bench.chaos.checker import off_schema
    from streamer.transport import Record

    good = {"event_id": "e", "user_id": "u", "ts": 1.0, "window": 1, "latency_ms": 0.5,
            "model": {"name": "m", "version": "v", "arch": "lstm", "arm": "primary"}}
    bad = dict(good, model=dict(good["model"], arm="shadow"))  # a shadow's prediction must never be emitted
    predictions = [Record("predictions", 0, n, b"u", json.dumps(body).encode(), 0) for n, body in
                   enumerate([good, bad])]
    letter = lambda reason: Record("events.dlq", 0, 7, b"u", b"x", 0, (
        ("reason", reason), ("detail", b"d"), ("source_topic", b"events"), ("source_partition", b"0"),
        ("source_offset", b"3")))
    found = off_schema(predictions, [letter(b"not_json"), letter(b"no_such_reason")])
    assert len(found) == 2 and found[0].startswith("predictions[0]@1: model/arm") and "events.dlq[0]@7: reason" in found[1]
