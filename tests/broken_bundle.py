"""A "broken" copy of a bundle: loads, warms up, then fails at run time (issue 14's error-rate guard rail).

A rollout must roll back a canary whose model call raises, and a shadow that raises must cost only
its own predictions. To test both with a real bundle, `broken_copy` writes a new version of it
whose ONNX graph raises unless the batch dimension is exactly `fail_unless_batch`:

    r = Reshape(mask, [fail_unless_batch, L])      fails (onnxruntime raises) for any other batch
    s = Tanh(ReduceSum(r)) ...                     `slow_bundle`'s branch, at size 1 (no extra cost)
    output = original_output + (-0.0)              x + -0.0 == x bit for bit, -0.0 included

`streamer.bundle.warm_up` runs a batch of 8, so with the default `fail_unless_batch=8` the bundle
passes `load_bundle` (a registry change is applied) and then fails in service on every other
batch size, the single-event retries included: a realistic model bug. When it does run, its
predictions equal the original's.

The copy, the -0.0 wiring into every output (non-float outputs included) and the sealing are
`slow_bundle.slow_copy`'s, reused rather than repeated: it writes a "-slow" copy with a 1x1 branch
into a hidden staging directory, this module puts the Reshape in front of that branch, gives the
copy its own version (original + "-broken") and model digest, reseals it with
`streamer.bundle.write_manifest` and renames it into place.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from slow_bundle import _PREFIX as SLOW_PREFIX
from slow_bundle import JUNK_INPUT, edited_copy, slow_graph

VERSION_SUFFIX = "-broken"
_PREFIX = "seqcast_broken__"  # names of the nodes this module adds


def broken_copy(src: Path, dst: Path, fail_unless_batch: int = 8) -> Path:
    """Copy the bundle at `src` to `dst` (which must not exist) with a model that raises unless its
    batch has exactly `fail_unless_batch` rows; return `dst`. The manifest version is src's + "-broken".

    Built like `slow_bundle.slow_copy` (`edited_copy`): a sealed copy, renamed into place when complete.
    """
    if fail_unless_batch < 1:
        raise ValueError(f"fail_unless_batch must be positive, got {fail_unless_batch}")
    src, dst = Path(src), Path(dst)

    def edit(model: onnx.ModelProto, manifest) -> None:  # the -0.0 branch on every output, made to break
        slow_graph(model, 1, 1)
        break_graph(model, fail_unless_batch, manifest.window)

    return edited_copy(src, dst, VERSION_SUFFIX, edit)


def break_graph(model: onnx.ModelProto, batch: int, window: int) -> None:
    """Make the slow branch of `model` (see `slow_bundle.slow_graph`) read JUNK_INPUT through a
    Reshape to [batch, window], in place: a batch of any other size makes the model call raise."""
    graph = model.graph
    readers = [n for n in graph.node if n.name.startswith(SLOW_PREFIX) and JUNK_INPUT in n.input]
    if len(readers) != 1:
        raise ValueError(f"expected one slow-branch node reading {JUNK_INPUT!r}, found {len(readers)}")
    shape, reshaped = _PREFIX + "shape", _PREFIX + "reshaped"
    readers[0].input[list(readers[0].input).index(JUNK_INPUT)] = reshaped
    nodes = [
        helper.make_node("Constant", [], [shape], value=numpy_helper.from_array(np.array([batch, window], np.int64),
                                                                                 shape), name=shape),
        helper.make_node("Reshape", [JUNK_INPUT, shape], [reshaped], name=reshaped),
        *graph.node,  # the Reshape reads only a graph input and its constant: it can go first
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
