"""Merge per-architecture result files into one table: `python bench/merge_tables.py runs/accuracy/ettm1-*.json`.

`bench/accuracy.py --arch lstm` and `--arch transformer` can run as two processes
(one per core); this prints the table that one `--arch both` run would print,
each seqcast row with the command that produced it, and the wall times summed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import anchors  # noqa: E402


def merge(paths: list[str]) -> dict:
    results = [json.loads(Path(p).read_text()) for p in paths]
    merged = {**results[0], "runs": [], "wall_seconds": 0.0}
    for result in results:
        for run in result["runs"]:
            merged["runs"].append({**run, "command": run.get("command", result["command"])})
        merged["wall_seconds"] += result["wall_seconds"]
    return merged


if __name__ == "__main__":
    print(anchors.table(merge(sys.argv[1:])))
