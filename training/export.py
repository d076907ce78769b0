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
    """Write `model` as ONNX with a dynamic batch dimension and named inputs/outputs.

    What is written is `training.models.serving_model(model)`: the same function with no work
    that no output reads (a causal Transformer's final block runs for the newest position
    only). `check_parity` then holds the file to `model` itself."""
    import tensorflow as tf
    import tf2onnx

    from training.models import serving_model

    model = serving_model(model)
    dtypes = {"items": tf.int32, "values": tf.float32, "dts": tf.float32, "mask": tf.float32}
    signature = [tf.TensorSpec([None, window], dtypes[name], name=name) for name in INPUT_NAMES]

    @tf.function(input_signature=signature)
    def serve(items, values, dts, mask):
        return model([items, values, dts, mask], training=False)

    import onnx

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    fuse_layer_norms(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def fuse_layer_norms(proto) -> int:
    """Replace tf2onnx's decomposition of Keras LayerNormalization with ONNX's own op; returns the count.

    tf2onnx writes LN over the last axis of a [B, T, C] tensor as 13 nodes
    (GlobalAveragePool for the mean and variance, Sub, Mul, Add, Sqrt, Reciprocal, Neg, ...),
    each a full pass over the tensor; onnxruntime does not fuse that form, and in the
    Transformer those passes cost more than the attention's matrix products. The
    LayerNormalization op (opset 17) computes the same function in one pass; its rounding
    differs in the last bits, which the parity check bounds like any other export difference.
    Only the exact pattern is rewritten (constant [1, 1, C] gamma and beta, constant epsilon,
    no other reader of an intermediate); anything else is left as tf2onnx wrote it.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):  # a node reading a tensor twice (x * x) is one reader
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    def only_reader(name: str, op: str):
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op and name not in graph_outputs else None

    def other(node, name: str) -> str:
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else ""

    def const(name: str, shape_ok) -> "np.ndarray | None":
        if name not in inits:
            return None
        value = numpy_helper.to_array(inits[name])
        return value if shape_ok(value.shape) else None

    fused, dead, added = 0, set(), []
    for mean in [n for n in graph.node if n.op_type == "GlobalAveragePool"]:
        x, m = mean.input[0], mean.output[0]
        users = readers.get(m, [])
        neg = next((u for u in users if u.op_type == "Neg"), None)
        sub = next((u for u in users if u.op_type == "Sub" and list(u.input) == [x, m]), None)
        if len(users) != 2 or neg is None or sub is None or m in graph_outputs:
            continue
        sq = only_reader(sub.output[0], "Mul")
        if sq is None or list(sq.input) != [sub.output[0]] * 2:
            continue
        var = only_reader(sq.output[0], "GlobalAveragePool")
        add_eps = var and only_reader(var.output[0], "Add")
        eps = add_eps and const(other(add_eps, var.output[0]), lambda s: s in ((), (1,)))
        sqrt = eps is not None and add_eps and only_reader(add_eps.output[0], "Sqrt")
        recip = sqrt and only_reader(sqrt.output[0], "Reciprocal")
        scale = recip and only_reader(recip.output[0], "Mul")
        gamma = scale and const(other(scale, recip.output[0]), lambda s: len(s) == 3 and s[:2] == (1, 1))
        if gamma is None or not scale:
            continue
        g_users = readers.get(scale.output[0], [])
        times_x = next((u for u in g_users if u.op_type == "Mul" and set(u.input) == {x, scale.output[0]}), None)
        times_neg = next((u for u in g_users if u.op_type == "Mul" and set(u.input) == {neg.output[0], scale.output[0]}), None)
        if len(g_users) != 2 or times_x is None or times_neg is None or len(readers.get(neg.output[0], [])) != 1:
            continue
        add_beta = only_reader(times_neg.output[0], "Add")
        beta = add_beta and const(other(add_beta, times_neg.output[0]), lambda s: s == gamma.shape)
        final = beta is not None and only_reader(add_beta.output[0], "Add")
        if not final or set(final.input) != {times_x.output[0], add_beta.output[0]} \
                or len(readers.get(times_x.output[0], [])) != 1:
            continue
        base = mean.name.rsplit("/moments", 1)[0]
        g_name, b_name = f"{base}/ln_gamma", f"{base}/ln_beta"
        graph.initializer.extend([numpy_helper.from_array(gamma.reshape(-1).astype(np.float32), g_name),
                                  numpy_helper.from_array(beta.reshape(-1).astype(np.float32), b_name)])
        added.append((final, helper.make_node("LayerNormalization", [x, g_name, b_name], [final.output[0]],
                                              name=f"{base}/LayerNormalization", axis=-1,
                                              epsilon=float(np.asarray(eps).reshape(())))))
        dead.update(id(n) for n in (mean, neg, sub, sq, var, add_eps, sqrt, recip, scale, times_x, times_neg,
                                    add_beta, final))
        fused += 1
    if fused:
        replacement = {id(old): new for old, new in added}
        nodes = [replacement.get(id(n), n) for n in graph.node if id(n) not in dead or id(n) in replacement]
        del graph.node[:]
        graph.node.extend(nodes)
        used = _names_read(graph)
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return fused


def _names_read(graph) -> set[str]:
    """Every tensor name a node of `graph` reads, subgraphs (Loop, If, Scan bodies) included."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for sub in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                names |= _names_read(sub)
    return names


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
