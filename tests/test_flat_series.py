"""Series with long constant stretches (a stuck sensor): RevIN's std floor, the ridge fitted in the
model's own output units, scalers on constant columns, and the two-head ("both") linear start."""
from __future__ import annotations

import numpy as np
import pytest

from bench.ett import load_ett_data

JUMP = 5.0  # scaled units: a stuck reading that resumes 5 global stds away


def _stuck_series(rows: int = 14_400, flat: int = 400, seed: int = 0) -> np.ndarray:
    """Daily + weekly cycles, noise and a drifting level, stuck on one reading for `flat` steps
    every 1,300 steps (in train, validation and test alike)."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    x = np.sin(2 * np.pi * t / 24) + 0.5 * np.sin(2 * np.pi * t / 168) + 0.3 * rng.normal(size=rows)
    x += np.cumsum(rng.normal(scale=0.05, size=rows))
    for start in range(700, rows, 1300):
        x[start:start + flat] = x[start]
    return x


def _ett(series: np.ndarray, window: int):
    ts = 1_467_331_200.0 + 3600.0 * np.arange(len(series))
    return load_ett_data(ts, ["OT"], series[:, None], "stuck", window)


def _windows(window: int = 32, horizon: int = 8):
    """A flat window whose target jumps, a left-padded flat one, and two ordinary ones."""
    from training.dataset import Split

    series = np.r_[np.full(400, 0.3), 0.3 + JUMP + np.linspace(0, 1, 100)]
    ends = np.array([400, 400, 450, 480])
    values = np.stack([series[e - window:e] for e in ends]).astype(np.float32)
    mask = np.ones_like(values)
    mask[1, :20], values[1, :20] = 0.0, 0.0
    targets = np.stack([series[e:e + horizon] for e in ends]).astype(np.float32)
    inputs = {"items": np.zeros(values.shape, np.int32), "values": values,
              "dts": np.zeros_like(values), "mask": mask}
    n = len(ends)
    return Split(inputs, np.zeros(n, np.int32), np.zeros(n, np.float32), targets, np.ones(n, np.float32),
                 np.zeros(n, dtype=object))


def test_revin_of_a_flat_window_stays_bounded_and_matches_the_ridge_normaliser() -> None:
    from training.linear_init import _normalise
    from training.models import REVIN_STD_FLOOR, InstanceNorm

    split = _windows()
    x, y, mean, std = _normalise(split, revin=True)
    assert std[0, 0] == pytest.approx(REVIN_STD_FLOOR) and std[1, 0] == pytest.approx(REVIN_STD_FLOOR)
    departure = np.abs(split.value_targets[:2] - 0.3).max()  # the jump and a little trend
    assert np.abs(y[:2]).max() <= departure / REVIN_STD_FLOOR * (1 + 1e-6)  # was ~JUMP / sqrt(1e-5) = 1,600
    assert np.abs(y).max() < 1e3 and np.abs(x).max() < 1e3
    norm, k_mean, k_std = (np.asarray(t) for t in InstanceNorm()(split.inputs["values"], split.inputs["mask"]))
    np.testing.assert_allclose(norm, x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(k_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k_std, std, rtol=1e-5)
    assert float(std[2, 0]) > REVIN_STD_FLOOR  # an ordinary window keeps its own std


def test_ridge_on_flat_windows_fits_in_scaled_units() -> None:
    """Stuck stretches hold whole lookbacks; in normalised units their next-step jumps are huge and,
    unweighted, they set the ridge. Weighted by std^2 (scaled units) the RevIN ridge is as good on
    validation as the raw ridge, which flat windows cannot disturb (1.00x here; unweighted with the
    floor 1.15x, the old 1e-5 epsilon unweighted 9.6x)."""
    from training.linear_init import ridge_fit

    data = _ett(_stuck_series(), 336)
    train, val = data.windows("train", 96, 2), data.windows("val", 96, 2)
    assert (train.inputs["values"].std(axis=1) < 1e-6).mean() > 0.03  # many flat windows
    _, _, norm = ridge_fit(train, val, True, 96)
    _, _, raw = ridge_fit(train, val, False, 96)
    last = val.inputs["values"][:, -1:]
    repeat_last = float(np.mean((val.value_targets - last) ** 2))
    assert norm["val_MSE"] < 1.05 * raw["val_MSE"] and norm["val_MSE"] < 0.5 * repeat_last


def test_scalers_treat_a_constant_column_with_rounding_noise_as_constant() -> None:
    from training.data.eventlog import EventLog
    from training.data.splits import fit_zscore
    from training.dataset import fit_scaler

    rng = np.random.default_rng(0)
    n = 1000
    matrix = np.stack([np.full(n, 0.1), 1234.5 + rng.normal(scale=1e-9, size=n), rng.normal(size=n)], axis=1)
    assert 0 < matrix[:, 0].std() < 1e-15  # 0.1 is not exact in binary: the std is rounding noise
    zscore = fit_zscore(matrix, range(0, 800))
    assert zscore.std[0] == 1.0 and zscore.std[1] == 1.0 and zscore.std[2] == pytest.approx(matrix[:800, 2].std())
    assert np.abs(zscore.transform(matrix)[:, :2]).max() < 1e-6  # shifted to 0, the noise not blown up

    users = np.repeat(np.array(["stuck", "noisy", "live"], dtype=object), n)
    values = np.concatenate([matrix[:, 1], np.full(n, 0.1), matrix[:, 2]])
    log = EventLog(users, np.tile(np.arange(n, dtype=np.float64), 3), None, values, "toy")
    scaler = fit_scaler(log, np.arange(3 * n), per_entity=True)
    assert scaler.params("stuck") == pytest.approx((1234.5, 1.0))
    assert scaler.params("noisy") == pytest.approx((0.1, 1.0))
    assert scaler.params("live")[1] == pytest.approx(matrix[:, 2].std())


def test_choice_prefers_the_level_invariant_ridge_within_the_noise() -> None:
    from bench.run_ett import choose_blend

    assert choose_blend({"norm": 1.0, "raw": 0.985, "average": 0.99}, margin=0.02) == "norm"
    assert choose_blend({"norm": 1.0, "raw": 0.97, "average": 0.95}, margin=0.02) == "average"
    assert choose_blend({"norm": 1.0, "raw": 0.90, "average": 0.95}, margin=0.02) == "raw"


def test_both_heads_start_at_every_blend_and_export_with_parity(tmp_path) -> None:
    from bench.run_ett import RIDGE_BLENDS, fit_ridge, ridge_heads, ridge_start_predict
    from streamer.features import INPUT_NAMES
    from training.export import check_parity, export_onnx
    from training.linear_init import LINEAR_LAYERS, set_linear_heads
    from training.models import ModelSpec, build_model

    data = _ett(_stuck_series(), 32)
    ridge = fit_ridge(data, 8, stride=8)
    assert ridge["choice"] in RIDGE_BLENDS and {"val_MSE_norm", "val_MSE_raw", "val_MSE_average"} <= set(ridge)
    model = build_model(ModelSpec("transformer", 32, 8, 0, width=8, heads=2, revin=True, patch_len=16,
                                  linear_head=True, linear_input="both"))
    val = data.windows("val", 8, stride=4)
    batch = [val.inputs[k] for k in INPUT_NAMES]
    for blend, (w_norm, w_raw) in RIDGE_BLENDS.items():
        chosen = {**ridge, "choice": blend, "weight_norm": w_norm, "weight_raw": w_raw}
        set_linear_heads(model, **ridge_heads(chosen))
        got = model.predict(batch, verbose=0)["forecast"]
        np.testing.assert_allclose(got, ridge_start_predict(chosen, val), rtol=1e-4, atol=1e-4, err_msg=blend)
        if blend == "norm":  # the unused head is zero
            assert not np.any(model.get_layer(LINEAR_LAYERS["raw"]).get_weights()[0])
    parity = {k: v[:256] for k, v in val.inputs.items()}
    assert (parity["values"].std(axis=1) < 1e-6).any()  # flat windows: ONNX must floor the std too
    path = export_onnx(model, 32, tmp_path / "both.onnx")
    report = check_parity(model, path, parity)
    assert report["max_abs_diff"] < 1e-3


def test_both_needs_revin() -> None:
    from training.models import ModelSpec

    with pytest.raises(ValueError, match="revin"):
        ModelSpec("lstm", 32, 8, 0, linear_head=True, linear_input="both").validate()
