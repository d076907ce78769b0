"""`seqcast demo --data FILE` and `--bundle DIR`: the demo on one's own data, out of sample.

The cut is checked on a small log (every trained event precedes every replayed one); the whole run on
MovieLens 100K, as a newcomer types it (with a small --limit and one epoch, to keep CI short); a bad file
or bundle fails at once, naming it, before any process starts.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datapaths import SHARED_DATA
from test_demo import assert_no_survivors, demo_env, summary_numbers
from training.data.eventlog import EventLog
from training.demo_data import DemoDataError, holdout_cut

ML100K = SHARED_DATA / "movielens" / "ml-100k.u.data"
LIMIT = 1500


def small_log() -> EventLog:
    rng = np.random.default_rng(3)
    users = np.array([f"u{k % 7}" for k in range(200)], dtype=object)
    ts = rng.integers(0, 50, 200).astype(np.float64)  # many ties: the cut must not split a moment
    items = np.array([f"i{k}" for k in rng.integers(0, 30, 200)], dtype=object)
    return EventLog(users, ts, items, None, "small").sorted()


def test_the_cut_trains_only_on_events_before_the_first_replayed_one():
    log = small_log()
    train_rows, replay_rows, cut = holdout_cut(log, 0.2)
    assert len(train_rows) + len(replay_rows) == len(log)
    assert set(train_rows.tolist()).isdisjoint(replay_rows.tolist())
    assert log.ts[train_rows].max() < cut <= log.ts[replay_rows].min()
    assert np.all(np.diff(log.ts[replay_rows]) >= 0), "the replay is in event-time order"
    assert np.all(np.diff(train_rows) > 0), "training rows keep the log's (user, ts) order"
    assert 0.15 <= len(replay_rows) / len(log) <= 0.35  # ties at the cut all go to the replay


@pytest.mark.parametrize("holdout", [0.0, -0.1, 1.5])
def test_a_holdout_outside_zero_to_one_is_refused(holdout):
    with pytest.raises(DemoDataError, match="--holdout"):
        holdout_cut(small_log(), holdout)


def demo(tmp_path: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "seqcast_cli", "demo", "--metrics-port", "0", "--pid-file", str(tmp_path / "pids"),
            "--log-dir", str(tmp_path / "logs"), *extra]
    return subprocess.run(argv, cwd=tmp_path, env=demo_env(), capture_output=True, text=True, timeout=timeout)


def test_a_missing_data_file_fails_at_once_naming_it(tmp_path):
    done = demo(tmp_path, "--data", str(tmp_path / "nope.csv"), timeout=60)
    assert done.returncode == 2 and "nope.csv" in done.stderr, done.stderr
    assert not (tmp_path / "pids").exists(), "nothing may start for a bad file"


def test_a_broken_bundle_fails_at_once_naming_it(tmp_path):
    broken = tmp_path / "bundle"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    done = demo(tmp_path, "--bundle", str(broken), timeout=60)
    assert done.returncode == 2 and "--bundle" in done.stderr and str(broken) in done.stderr, done.stderr
    assert not (tmp_path / "pids").exists()


@pytest.mark.slow
def test_demo_on_movielens_100k_trains_on_the_past_and_replays_the_future(tmp_path):
    models = tmp_path / "models"
    done = demo(tmp_path, "--data", str(ML100K), "--limit", str(LIMIT), "--epochs", "1", "--models-dir", str(models),
                "--redis", "embedded")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    print(done.stdout)
    split = re.search(r"split\s+train on the ([\d,]+) events before .*?; replay ([\d,]+) of the ([\d,]+)", done.stdout)
    assert split, done.stdout
    trained, replayed, held_out = (int(g.replace(",", "")) for g in split.groups())
    assert replayed == LIMIT and trained + held_out == 100_000 and 0.15 < held_out / 100_000 < 0.25
    numbers = summary_numbers(done.stdout)
    assert numbers["valid"] == LIMIT == numbers["predictions"] and numbers["dlq"] == numbers["malformed"] == 5
    replay_users = replay_user_count(ML100K, LIMIT)
    assert numbers["hr_scored"] == numbers["mae_scored"] == LIMIT - replay_users  # each user's last is unscored
    assert 0.0 <= numbers["popular_hr"] <= 1.0 and 0.0 < numbers["hr"] <= 1.0
    assert 0.0 < numbers["mae"] < 4.0 and 0.0 < numbers["baseline_mae"] < 4.0  # ratings are 1..5
    assert_no_survivors(tmp_path / "pids")

    bundle = next((models / "demo-ml-100k").iterdir())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["training_data"]["events"] == trained, "the bundle saw only the events before the cut"

    again = demo(tmp_path, "--data", str(ML100K), "--limit", "300", "--bundle", str(bundle))
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"model        {bundle} (lstm" in again.stdout and "in sample" not in again.stdout
    assert summary_numbers(again.stdout)["predictions"] == 300


def replay_user_count(path: Path, limit: int) -> int:
    """Distinct users among the first `limit` replayed events, computed from the file by hand."""
    rows = np.loadtxt(path, dtype=np.int64)  # user item rating ts
    order = np.argsort(rows[:, 3], kind="stable")
    cut = rows[order[int(len(rows) * 0.8)], 3]
    replay = rows[order][rows[order][:, 3] >= cut][:limit]
    return len(set(replay[:, 0].tolist()))
