"""The benchmark's run: options, data, models, both scenarios per policy configuration, the report."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import time
from pathlib import Path

import bench.rollout
from bench.rollout.data import DEFAULT_DATA, live_events, load_split
from bench.rollout.models import ensure_models
from bench.rollout.report import render, write_doc
from bench.rollout.scenario import run_scenario
from bench.stream.common import ROOT, log
from bench.stream.infra import Context

WORK = Path(tempfile.gettempdir()) / "seqcast-rollout-bench"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.rollout", description=bench.rollout.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0, help="replay rate, events/s (default 1000)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="MovieLens ratings file (default: %(default)s)")
    p.add_argument("--train-fraction", type=float, default=0.6,
                   help="the cut: events before this quantile of event time train the models, the rest is "
                        "replayed (default 0.6)")
    p.add_argument("--limit", type=int, default=None, help="replay at most this many live events (smoke runs)")
    p.add_argument("--epochs", type=int, default=3, help="GOOD's epochs (default 3; BAD always gets 1)")
    p.add_argument("--max-minutes", type=float, default=3.0,
                   help="fitting budget per model, checked after each epoch (default 3)")
    p.add_argument("--models-dir", default=str(WORK / "models"),
                   help="bundle cache: GOOD and BAD are trained once per recipe (default: %(default)s)")
    p.add_argument("--policy", default=None, metavar="FILE",
                   help="JSON policy for `seqcast rollout start --policy` (default: none, the defaults)")
    p.add_argument("--extra-policy", action="append", default=[], metavar="FILE",
                   help="also run both scenarios under this policy, reported as a separate configuration "
                        "(repeatable)")
    p.add_argument("--scenarios", default="rollback,promote", help="which scenarios (default: both)")
    p.add_argument("--warmup-s", type=float, default=5.0,
                   help="seconds of replay before `seqcast rollout start`, so the primary has a record and "
                        "users have windows, as on a running service (default 5)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per scenario after the start (default 900)")
    p.add_argument("--grace-s", type=float, default=20.0,
                   help="after the replay ends, seconds to wait for a last decision (default 20)")
    p.add_argument("--batch", type=int, default=500, help="max_poll_records of the service (default 500)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--out", default=str(WORK / "rollout_bench.json"), help="JSON result (default: %(default)s)")
    p.add_argument("--doc", default=str(ROOT / "docs" / "rollout_bench.md"), help="markdown result document")
    p.add_argument("--no-doc", action="store_true", help="do not write --doc (smoke runs)")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="run nothing: print (and unless --no-doc, write --doc from) a saved --out file")
    return p.parse_args(argv)


def machine() -> dict:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "cpu": model, "loadavg_start": os.getloadavg()}


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        return report(json.loads(Path(args.render).read_text()), args)
    command = "python -m bench.rollout " + " ".join(shlex.quote(a) for a in argv)
    result = {"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine(), "rate": args.rate, "configurations": []}
    models = ensure_models(args, log)
    good, bad = models["bundles"]["good"], models["bundles"]["bad"]
    result["models"] = models
    split = load_split(Path(args.data), args.train_fraction)
    events = live_events(split, args.limit)
    result["split"] = split.describe() | {"replayed_at_most": len(events)}
    log(f"split: {result['split']}")
    log(f"GOOD {good['ref']} offline {good['offline']}; BAD {bad['ref']} offline {bad['offline']}")
    wanted = {"rollback": ("a: primary GOOD, roll out BAD", good, bad, "rolled_back"),
              "promote": ("b: primary BAD, roll out GOOD", bad, good, "promoted")}
    names = [s for s in args.scenarios.split(",") if s]
    work = WORK / "runs" / time.strftime("%Y%m%dT%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    log(f"service and broker logs under {work}")
    ctx = Context(args, work)
    try:
        for n, policy in enumerate([args.policy, *args.extra_policy]):
            config = {"policy_file": policy, "policy_overrides": json.loads(Path(policy).read_text()) if policy else {},
                      "scenarios": []}
            result["configurations"].append(config)
            for name in names:
                label, primary, candidate, expect = wanted[name]
                log(f"=== {label} (policy: {policy or 'defaults'}) ===")
                config["scenarios"].append(run_scenario(ctx, args, label, primary, candidate, expect, events, policy,
                                                           f"{n + 1}{label[0]}"))
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    finally:
        ctx.close()
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    log(f"JSON: {args.out}")
    return report(result, args)


def report(result: dict, args: argparse.Namespace) -> int:
    text = render(result)
    print(text)
    if not args.no_doc:
        write_doc(Path(args.doc), text)
        log(f"written: {args.doc}")
    return 0
