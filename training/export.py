"""Keras -> ONNX with tf2onnx, and the parity check that guards it.

An exported graph is only trusted after onnxruntime reproduces Keras on real
windows: `check_parity` runs both on the same inputs and fails the export when
the largest absolute difference, relative to the output's scale, exceeds the
tolerance. The figure goes into the manifest so every bundle carries its proof.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from streamer.bundle import make_session
from streamer.features import INPUT_NAMES

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The model could not be exported faithfully."""


def export_onnx(model, window: int, path: Path) -> Path:
    """Write `model` as ONNX with a dynamic batch dimension and named inputs/outputs."""
    import tensorflow as tf
    import tf2onnx

    dtypes = {"items": tf.int32, "values": tf.float32, "dts": tf.float32, "mask": tf.float32}
    signature = [tf.TensorSpec([None, window], dtypes[name], name=name) for name in INPUT_NAMES]

    @tf.function(input_signature=signature)
    def serve(items, values, dts, mask):
        return model([items, values, dts, mask], training=False)

    tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET, output_path=str(path))
    return path


def keras_predict(model, inputs: dict[str, np.ndarray], batch_size: int = 512) -> dict[str, np.ndarray]:
    """Keras outputs as a dict of numpy arrays."""
    outputs = model.predict([inputs[name] for name in INPUT_NAMES], batch_size=batch_size, verbose=0)
    return {name: np.asarray(value) for name, value in outputs.items()}


def check_parity(model, onnx_path: Path, inputs: dict[str, np.ndarray],
                 tolerance: float = PARITY_TOLERANCE) -> dict:
    """Compare Keras and onnxruntime on the same windows; raise ExportError past `tolerance`.

    Returns {"windows", "max_abs_diff", "relative_diff", "per_output"} for the manifest.
    The relative figure divides by max(1, max |keras output|): scores and scaled
    forecasts are O(1), so for them this is simply the absolute difference.
    """
    expected = keras_predict(model, inputs)
    session = make_session(onnx_path, threads=2)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {k: inputs[k] for k in INPUT_NAMES})))
    if set(got) != set(expected):
        raise ExportError(f"{onnx_path}: ONNX outputs {sorted(got)} != Keras outputs {sorted(expected)}")
    per_output = {}
    for name, want in expected.items():
        diff = float(np.max(np.abs(got[name] - want))) if want.size else 0.0
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        per_output[name] = {"max_abs_diff": diff, "relative_diff": diff / scale}
    worst = max(per_output.values(), key=lambda d: d["relative_diff"])
    report = {"windows": int(len(inputs["items"])), "tolerance": tolerance,
              "max_abs_diff": max(d["max_abs_diff"] for d in per_output.values()),
              "relative_diff": worst["relative_diff"], "per_output": per_output}
    if worst["relative_diff"] > tolerance:
        raise ExportError(f"{onnx_path}: Keras vs onnxruntime differ by {worst['relative_diff']:.3g} "
                          f"(> {tolerance}) on {report['windows']} windows: {per_output}")
    return report
