"""The trainer end to end on synthetic data: fit, beat baselines, export, parity, bundle checks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from streamer.bundle import MANIFEST, MODEL_FILE, BundleError, load_bundle  # noqa: E402
from streamer.features import FORECAST, INPUT_NAMES, ITEM_SCORES  # noqa: E402
from training.data.synthetic import synthetic_log  # noqa: E402
from training.models import ModelSpec  # noqa: E402
from training.pipeline import train_and_export  # noqa: E402
from training.train import FitConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["lstm", "transformer"])
def outcome(request, tmp_path_factory):
    log = synthetic_log(users=400, items=120, events_per_user=40, seed=3)
    spec = ModelSpec(request.param, window=20, horizon=3, width=32, depth=1, heads=2, dropout=0.0)
    config = FitConfig(epochs=12, batch_size=128, learning_rate=3e-3, patience=4, seed=0)
    return train_and_export(log, tmp_path_factory.mktemp("models"), "synthetic", spec, config, progress=False)


def test_bundle_records_parity_within_tolerance(outcome) -> None:
    manifest = json.loads((outcome.bundle / MANIFEST).read_text())
    assert manifest["parity"]["windows"] >= 256
    assert manifest["parity"]["relative_diff"] <= 1e-4
    assert manifest["arch"] == outcome.spec.arch and manifest["window"] == 20 and manifest["horizon"] == 3
    assert manifest["training_data"]["fingerprint"] == synthetic_log(users=400, items=120, events_per_user=40,
                                                                      seed=3).fingerprint()


def test_onnx_bundle_reproduces_keras_on_test_windows(outcome) -> None:
    bundle = load_bundle(outcome.bundle)
    inputs = outcome.data.test.inputs
    onnx_out = bundle.predict(inputs)
    keras_out = outcome.fit.model.predict([inputs[k] for k in INPUT_NAMES], verbose=0)
    for name in (ITEM_SCORES, FORECAST):
        np.testing.assert_allclose(onnx_out[name], keras_out[name], atol=1e-4)


def test_trained_model_beats_baselines_on_synthetic_data(outcome) -> None:
    items = outcome.metrics["items"]
    assert items["model"]["NDCG@10"] > items["most_popular"]["NDCG@10"]
    full = outcome.metrics["items_incl_history"]
    assert full["model"]["HR@10"] > max(full["most_popular"]["HR@10"], full["repeat_last_item"]["HR@10"])
    scaled = outcome.metrics["forecast"]["scaled"]
    assert scaled["model"]["MSE"] < min(v["MSE"] for k, v in scaled.items() if k != "model")


def test_tampered_bundle_is_refused(outcome, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(outcome.bundle, copy)
    with open(copy / MODEL_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)
    (copy / MANIFEST).write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)


def test_cli_train_then_evaluate(tmp_path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    models = tmp_path / "models"
    train = subprocess.run(
        [sys.executable, "-m", "seqcast_cli", "train", "--data", "synthetic:users=150,items=60,events=30,seed=1",
         "--arch", "both", "--window", "10", "--horizon", "2", "--width", "16", "--epochs", "2",
         "--models-dir", str(models), "--name", "tiny", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "most_popular" in train.stdout and "repeat_last_value" in train.stdout
    bundles = sorted((models / "tiny").iterdir())
    assert len(bundles) == 2
    out = tmp_path / "eval"
    evaluate = subprocess.run(
        [sys.executable, "-m", "seqcast_cli", "evaluate", str(bundles[0]), "--data",
         "synthetic:users=150,items=60,events=30,seed=1", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["items"]["model"]["HR@10"] >= 0 and (out / "hr_at_k.png").stat().st_size > 1000
    assert (out / "forecast.png").stat().st_size > 1000


def test_cli_train_reports_bad_data_file(tmp_path) -> None:
    bad = tmp_path / "events.csv"
    bad.write_text("user,ts,item\n")
    result = subprocess.run(
        [sys.executable, "-m", "seqcast_cli", "train", "--data", str(bad), "--user", "user", "--ts", "ts",
         "--item", "item"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and str(bad) in result.stderr
