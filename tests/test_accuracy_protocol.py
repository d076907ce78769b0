"""The benchmark protocols on small data: ETT split boundaries, train-only scaling, window counts,
full ranking on a hand-computed case, leave-one-out cuts, and the ridge warm start."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.ett import channel_windows, load_ett_data
from bench.recsys import all_item_vocabulary, full_ranking, leave_one_out
from training.data.eventlog import EventLog
from training.data.splits import ett_split


def test_ett_boundaries_match_the_published_code() -> None:
    hourly = ett_split(17_420, 336, 96, "h")
    assert hourly.train == range(0, 8640) and hourly.val == range(8640 - 336, 11520)
    assert hourly.test == range(11520 - 336, 14400)
    minutely = ett_split(69_680, 512, 96, "15min")
    assert minutely.train == range(0, 34560) and minutely.val == range(34560 - 512, 46080)
    assert minutely.test == range(46080 - 512, 57600)


def test_etth_test_window_count_at_h96_l336() -> None:
    assert len(ett_split(14_400, 336, 96).starts("test")) == 2785
    assert len(ett_split(14_400, 336, 720).starts("test")) == 2161


def _hourly_matrix(rows: int = 14_500, channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    ts = 1_467_331_200.0 + 3600.0 * np.arange(rows)
    matrix = np.random.default_rng(0).normal(size=(rows, channels))
    matrix[8640:] += 100.0  # validation/test rows far off: a leaky scaler would show it
    return ts, matrix


def test_scaler_is_fitted_on_train_rows_only() -> None:
    ts, matrix = _hourly_matrix()
    data = load_ett_data(ts, ["a", "OT"], matrix, "toy", 336)
    assert data.freq == "h"
    assert np.all(np.abs(data.scaled[:8640].mean(axis=0)) < 1e-9)
    np.testing.assert_allclose(data.scaled[:8640].std(axis=0), 1.0)
    assert np.all(data.scaled[8640:].mean(axis=0) > 50)  # scaled with train statistics, not refitted
    assert data.scaler.params("OT") == pytest.approx((matrix[:8640, 1].mean(), matrix[:8640, 1].std()))


def test_test_windows_cover_every_target_row_once_per_offset() -> None:
    ts, matrix = _hourly_matrix()
    data = load_ett_data(ts, ["a", "OT"], matrix, "toy", 336)
    test = data.windows("test", 96)
    assert len(test) == 2 * 2785  # every window of both channels, stride 1, none dropped
    first, last = test.value_targets[0], test.value_targets[2784]
    np.testing.assert_allclose(first, data.scaled[11520:11616, 0], rtol=1e-6)  # first target = first test row
    np.testing.assert_allclose(last, data.scaled[14400 - 96:14400, 0], rtol=1e-6)  # last target row = 14399
    np.testing.assert_allclose(test.inputs["values"][0], data.scaled[11520 - 336:11520, 0], rtol=1e-6)
    assert test.inputs["mask"].min() == 1.0
    assert len(data.windows("train", 96, stride=4)) == 2 * len(range(0, 8640 - 336 - 96 + 1, 4))


def test_channel_windows_use_the_serving_encoding() -> None:
    ts = np.arange(40, dtype=np.float64) * 900.0
    split = channel_windows(ts, np.arange(40, dtype=np.float64), np.array([0, 3]), 8, 4)
    np.testing.assert_allclose(split.inputs["values"][1], np.arange(3, 11))
    np.testing.assert_allclose(split.value_targets[1], np.arange(11, 15))
    assert split.inputs["dts"][1, 0] == 0.0 and split.inputs["dts"][1, 1] == pytest.approx(math.log1p(900.0))


def test_full_ranking_on_a_hand_computed_case() -> None:
    # indices 0 and 1 are padding/OOV and never candidates; items 2..6 are real
    scores = np.array([[9.0, 9.0, 0.5, 0.9, 0.1, 0.7, 0.3],    # target 5: only item 3 above -> rank 1
                       [0.0, 0.0, 0.2, 0.8, 0.6, 0.4, 0.9]])   # target 2: 4 items above -> rank 4
    targets = np.array([5, 2])
    report, curve = full_ranking(scores, targets, history=None)
    ndcg = (1 / math.log2(3) + 1 / math.log2(6)) / 2
    assert report["HR@10"] == 1.0 and report["NDCG@10"] == pytest.approx(ndcg)
    assert curve[0] == 0.0 and curve[1] == 0.5 and curve[4] == 1.0
    # excluding history: user 0 has seen item 3 -> rank 0; user 1 items 6 and 3 -> 4 and 5 above: rank 2
    history = np.array([[0, 3], [6, 3]])
    report, curve = full_ranking(scores, targets, history=history)
    assert report["NDCG@10"] == pytest.approx((1.0 + 1 / math.log2(4)) / 2)
    assert list(curve[:3]) == [0.5, 0.5, 1.0]


def test_leave_one_out_keeps_every_user_and_every_item() -> None:
    users = np.repeat(np.array(["u1", "u2"], dtype=object), [6, 5])
    items = np.array(list("abcdef") + list("bcdgh"), dtype=object)  # g, h occur only as val/test targets
    ts = np.concatenate([np.arange(6), np.arange(5)]).astype(np.float64)
    log = EventLog(users, ts, items, None, "toy")
    vocab = all_item_vocabulary(log)
    assert len(vocab) == 2 + 8 and vocab.index("h") != 1
    data = leave_one_out(log, window=4)
    assert len(data.test) == 2 and data.test.item_weights.sum() == 2
    assert [vocab.item_ids[i] for i in data.test.item_targets] == ["f", "h"]
    assert [vocab.item_ids[i] for i in data.val.item_targets] == ["e", "g"]
    assert len(data.train) == (6 - 3) + (5 - 3)  # targets at positions 1..n-3


def test_ridge_warm_start_solves_a_linear_series() -> None:
    from training.dataset import Split
    from training.linear_init import ridge_fit

    rng = np.random.default_rng(1)
    values = rng.normal(size=(400, 6)).astype(np.float32)
    targets = (values[:, -2:] * 2.0 + 1.0).astype(np.float32)  # an exact linear map, no RevIN
    inputs = {"values": values, "mask": np.ones_like(values)}
    split = Split(inputs, np.zeros(400, np.int32), np.zeros(400, np.float32), targets, np.ones(400, np.float32),
                  np.zeros(400, dtype=object))
    kernel, bias, report = ridge_fit(split, split, revin=False, horizon=2)
    np.testing.assert_allclose(kernel[-2:], 2.0 * np.eye(2), atol=1e-3)
    np.testing.assert_allclose(bias, 1.0, atol=1e-3)
    assert report["val_MSE"] < 1e-5


def test_all_position_targets_are_the_leave_one_out_training_targets() -> None:
    from training.sequence_fit import user_sequences

    users = np.repeat(np.array(["u1", "u2"], dtype=object), [9, 5])
    items = np.array(list("abcdefghi") + list("bcdgh"), dtype=object)
    ts = np.concatenate([np.arange(9), np.arange(5)]).astype(np.float64)
    log = EventLog(users, ts, items, None, "toy")
    data = leave_one_out(log, window=4)
    inputs, targets = user_sequences(log, data.vocab, window=4)
    assert sorted(targets[targets > 0].tolist()) == sorted(data.train.item_targets.tolist())
    # u1's last window holds events c..f (positions 2..5) and predicts d..g; its first window a -> b
    ids = lambda row: [data.vocab.item_ids[i] for i in row]
    assert ids(inputs["items"][0]) == list("cdef") and ids(targets[0]) == list("defg")
    assert ids(targets[1][-2:]) == list("bc") and targets[1][0] == 0


@pytest.mark.parametrize("linear_input", ["norm", "raw"])
def test_warm_started_forecast_model_starts_at_the_ridge_forecast(linear_input: str) -> None:
    from bench.run_ett import ridge_predict
    from streamer.features import INPUT_NAMES
    from training.linear_init import LINEAR_LAYERS, warm_start_linear_head
    from training.models import ModelSpec, build_model

    ts, matrix = _hourly_matrix(rows=14_400, channels=1)
    data = load_ett_data(ts, ["OT"], np.cumsum(matrix, axis=0) * 0.01, "toy", 32)
    train, val = data.windows("train", 8, stride=8), data.windows("val", 8, stride=8)
    model = build_model(ModelSpec("transformer", 32, 8, 0, width=8, heads=2, revin=True, patch_len=8,
                                  linear_head=True, linear_input=linear_input))
    warm_start_linear_head(model, train, val, linear_input, 8)
    kernel, bias = model.get_layer(LINEAR_LAYERS[linear_input]).get_weights()
    got = model.predict([val.inputs[k] for k in INPUT_NAMES], verbose=0)["forecast"]
    np.testing.assert_allclose(got, ridge_predict(kernel, bias, val, linear_input == "norm"), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_every_position_encoder_shares_the_serving_models_weights(arch: str) -> None:
    """All-position training scores each prefix with the serving model's own weights: the state at
    the last position, through the item head, gives exactly the serving model's scores."""
    from streamer.features import INPUT_NAMES, ITEM_SCORES
    from training.models import ModelSpec, build_model
    from training.sequence_fit import every_position_encoder

    spec = ModelSpec(arch, 6, 0, 12, width=8, heads=2)
    model = build_model(spec)
    rng = np.random.default_rng(0)
    mask = np.ones((5, 6), np.float32)
    mask[:2, :3] = 0.0  # two left-padded windows
    inputs = {"items": (rng.integers(2, 12, (5, 6)) * mask).astype(np.int32),
              "values": np.zeros((5, 6), np.float32), "dts": np.zeros((5, 6), np.float32), "mask": mask}
    batch = [inputs[k] for k in INPUT_NAMES]
    states = np.asarray(every_position_encoder(model, spec)(batch, training=False))
    assert states.shape == (5, 6, 8)
    scores = np.asarray(model.get_layer(ITEM_SCORES)(states[:, -1, :]))
    np.testing.assert_allclose(scores, model.predict(batch, verbose=0)[ITEM_SCORES], rtol=1e-5, atol=1e-5)


def test_keep_margin_grows_with_the_horizon_and_shrinks_with_more_validation() -> None:
    """Fine-tuning must beat the selection noise: few independent validation forecasts, larger margin."""
    from bench.run_ett import keep_margin

    etth = [keep_margin(2_880, h) for h in (96, 192, 336, 720)]
    assert etth == sorted(etth) and etth[0] == pytest.approx(0.1 / np.sqrt(30))
    assert keep_margin(4 * 2_880, 96) == pytest.approx(etth[0] / 2)
    assert keep_margin(100, 720) == pytest.approx(0.1)  # never more than one forecast's noise
