"""The chaos suite: break a running seqcast on purpose and check that nothing was lost, doubled or corrupted.

    python -m bench.chaos                      # every scenario, CI size (a few minutes)
    python -m bench.chaos --full               # the full run; writes docs/reliability.md
    python -m bench.chaos --only killer,poison --full

Each scenario runs against a fresh Tansu broker, a Redis of its own (AOF on) and real
`seqcast serve` processes, then the consistency checker compares what the topics and Redis hold
with the contract and with an uninterrupted reference run of the same input
(bench/chaos/checker.py). Exit status 0 when every scenario passed. JSON results go to --out;
with --report, the markdown table too (docs/reliability.md for the full run).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.chaos.bundles import ensure_bundle  # noqa: E402
from bench.chaos.harness import Row  # noqa: E402
from bench.chaos.report import write_report  # noqa: E402
from bench.chaos.scenarios import SCENARIOS, Context  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--full", action="store_true", help="full sizes (25 kills, 30 changes, 2-minute Redis "
                        "outage, 10k generated poison messages, 1M-event soak); default: the short CI sizes")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios (default: all of {', '.join(SCENARIOS)})")
    parser.add_argument("--bundle", type=Path, help="bundle for the delivery scenarios (default: train a small one)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "chaos", help="logs, Redis files, bundles")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: WORK_DIR/results-<size>.json)")
    parser.add_argument("--report", type=Path, default=None,
                        help="write the markdown table here (e.g. docs/reliability.md)")
    parser.add_argument("--keep-rows", type=Path, default=None, metavar="RESULTS.json",
                        help="with --report: also report the rows of an earlier results file for the scenarios "
                        "not run now (the report names both commands)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = "full" if args.full else "ci"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    say = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
    bundle = args.bundle or ensure_bundle(args.work_dir / "bundles", window=20, say=say)
    soak_bundle = ensure_bundle(args.work_dir / "bundles", window=50, say=say) if "soak" in args.only else bundle
    ctx = Context(bundle, soak_bundle, args.work_dir, say)
    rows = []
    for name in args.only:
        say(f"{name}: starting ({size})")
        row = SCENARIOS[name](ctx, size)
        rows.append(row)
        say(f"{name}: {'PASS' if row.ok else 'FAIL'} in {row.seconds:.0f}s; events {row.events}, invalid "
            f"{row.invalid}, lost {row.lost}, differing duplicates {row.differing_duplicates}, crashes {row.crashes}, "
            f"windows {row.windows}, live {row.live}")
        for line in row.notes + row.problems:
            say(f"  {line}")
    command = "python -m bench.chaos " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = args.out or args.work_dir / f"results-{size}.json"
    out.write_text(json.dumps({"size": size, "command": command, "rows": [asdict(r) for r in rows]}, indent=2,
                              default=str))
    if args.report:
        commands = [command]
        if args.keep_rows:
            earlier = json.loads(args.keep_rows.read_text())
            kept = [Row(**r) for r in earlier["rows"] if r["scenario"] not in args.only]
            rows = sorted(kept + rows, key=lambda r: list(SCENARIOS).index(r.scenario))
            commands = [earlier["command"] + f"  # {', '.join(r.scenario for r in kept)}", command]
        write_report(args.report, rows, size, commands)
        say(f"wrote {args.report}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
