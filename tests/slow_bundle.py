"""A "slowed" copy of a bundle: same predictions, a much slower model call (issue 14's guard rails).

A rollout must roll back a canary whose predictions are fine but whose latency breaks the guard.
To test that with a real bundle, `slow_copy` writes a new version of it whose ONNX graph does a
heavy computation on every call and adds its result, times zero, to every output:

    s = Tanh(ReduceSum(mask))                      input-dependent: onnxruntime cannot fold it
    X = (s * A) @ B @ B ...                        A, B: constant [N, N] of 1/N; `repeats` MatMuls
    z = Abs(ReduceSum(X)) * -0.0                   always -0.0 (X is finite, |entries| <= 1/N)
    output = original_output + z                   x + -0.0 == x bit for bit, -0.0 included

`mask` (0/1) rather than `values` feeds the junk so it stays finite whatever the inputs hold; a NaN
or an infinity there would turn 0 * junk into NaN and change the predictions. Adding -0.0 instead
of +0.0 keeps even a -0.0 output bit-identical. The constants are `ConstantOfShape` nodes, so the
model file grows by a few hundred bytes, not by 2 * 4 * N^2.

The copy gets a new manifest version (original + "-slow") so the registry sees a distinct model
version, a fresh model.onnx digest, and is sealed by `streamer.bundle.write_manifest`, as every
manifest edit must be; `load_bundle` accepts it. A signature.json is not copied: it would not
verify against the new manifest.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streamer.bundle import MODEL_FILE, Manifest, sha256_file, verify_integrity, write_manifest

VERSION_SUFFIX = "-slow"
JUNK_INPUT = "mask"  # float 0/1, never NaN: the slow branch's input dependency
_PREFIX = "seqcast_slow__"  # names of every node and value the slow branch adds


def slow_copy(src: Path, dst: Path, matmul_size: int = 1024, repeats: int = 1) -> Path:
    """Copy the bundle at `src` to `dst` (which must not exist) with a slowed model; return `dst`.

    Each model call then costs about `repeats` * 2 * matmul_size^3 extra flops. `dst`'s name is the
    caller's; the manifest version is src's + "-slow".
    """
    if matmul_size < 1 or repeats < 1:
        raise ValueError(f"matmul_size and repeats must be positive, got {matmul_size}, {repeats}")
    return edited_copy(src, dst, VERSION_SUFFIX, lambda model, _manifest: slow_graph(model, matmul_size, repeats))


def edited_copy(src: Path, dst: Path, suffix: str, edit: Callable[[onnx.ModelProto, Manifest], None]) -> Path:
    """Copy the bundle at `src` to `dst` (which must not exist) with its ONNX model changed in place by
    `edit(model, manifest)`, its checksum and a version of src's + `suffix` sealed into the manifest.

    Only the files the manifest lists are copied (no signature.json: it would not match). Built in a
    hidden sibling directory and renamed into place, so a registry watcher never sees a half-written copy.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst}: already exists")
    manifest = verify_integrity(src)  # only a bundle that loads is worth editing
    staging = dst.parent / f".{dst.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name in manifest.files:
            if name != MODEL_FILE:
                shutil.copyfile(src / name, staging / name)
        model = onnx.load(str(src / MODEL_FILE))
        edit(model, manifest)
        onnx.save(model, str(staging / MODEL_FILE))
        files = {**manifest.files, MODEL_FILE: sha256_file(staging / MODEL_FILE)}
        write_manifest(staging, replace(manifest, version=manifest.version + suffix, files=files))
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dst


def slow_graph(model: onnx.ModelProto, matmul_size: int, repeats: int) -> None:
    """Add the slow branch to `model` in place and add its -0.0 to every graph output."""
    graph = model.graph
    if JUNK_INPUT not in {i.name for i in graph.input}:
        raise ValueError(f"the model has no {JUNK_INPUT!r} input to make the slow branch depend on")
    zero, junk_nodes = _junk(matmul_size, repeats)
    nodes = list(junk_nodes)  # first: they read only the graph input and their own constants
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output}
    adds: dict[int, list[onnx.NodeProto]] = {}
    for output in graph.output:
        if output.name not in produced_by:
            raise ValueError(f"graph output {output.name!r} is not produced by a node")
        index = produced_by[output.name]
        producer = graph.node[index]
        inner = f"{_PREFIX}{output.name}_pre"
        producer.output[list(producer.output).index(output.name)] = inner
        addend = zero
        elem_type = output.type.tensor_type.elem_type
        extra = []
        if elem_type != TensorProto.FLOAT:
            addend = f"{_PREFIX}{output.name}_zero"
            extra.append(helper.make_node("Cast", [zero], [addend], to=elem_type, name=addend))
        # the graph output keeps its name, so any other node reading it sees the same (unchanged) value
        extra.append(helper.make_node("Add", [inner, addend], [output.name], name=f"{_PREFIX}{output.name}_add"))
        adds.setdefault(index, []).extend(extra)
    for index, node in enumerate(graph.node):
        nodes.append(node)
        nodes.extend(adds.get(index, ()))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)


def _junk(n: int, repeats: int) -> tuple[str, list[onnx.NodeProto]]:
    """Nodes computing -0.0 (float scalar) from JUNK_INPUT through `repeats` [n, n] MatMuls."""
    p = _PREFIX

    def const(name: str, array: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [p + name], value=numpy_helper.from_array(array, p + name),
                                name=p + name)

    fill = numpy_helper.from_array(np.array([1.0 / n], np.float32), p + "fill")
    nodes = [
        helper.make_node("ReduceSum", [JUNK_INPUT], [p + "sum"], keepdims=0, name=p + "sum"),
        helper.make_node("Tanh", [p + "sum"], [p + "scale"], name=p + "scale"),  # in [-1, 1]
        const("shape", np.array([n, n], np.int64)),
        helper.make_node("ConstantOfShape", [p + "shape"], [p + "ones"], value=fill, name=p + "ones"),
        helper.make_node("Mul", [p + "scale", p + "ones"], [p + "x0"], name=p + "x0"),
    ]
    for step in range(repeats):  # (s/n * J) @ (J/n) = s/n * J: bounded however many repeats
        nodes.append(helper.make_node("MatMul", [f"{p}x{step}", p + "ones"], [f"{p}x{step + 1}"],
                                      name=f"{p}x{step + 1}"))
    nodes += [
        helper.make_node("ReduceSum", [f"{p}x{repeats}"], [p + "total"], keepdims=0, name=p + "total"),
        helper.make_node("Abs", [p + "total"], [p + "abs"], name=p + "abs"),
        const("negzero", np.array(-0.0, np.float32)),
        helper.make_node("Mul", [p + "abs", p + "negzero"], [p + "zero"], name=p + "zero"),  # -0.0
    ]
    return p + "zero", nodes
