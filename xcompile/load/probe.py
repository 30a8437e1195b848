"""Measure every tensor's shape by running the model in onnxruntime at batch 1 and batch 2.

Robust where static shape inference gives up (run-time shape arithmetic, custom exporters): the
dimension that changes with the batch size is the batch dimension (None in the result)."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import XCompileError
from ..sessions import session

_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
       onnx.TensorProto.FLOAT16: np.float16}


def _session(model: onnx.ModelProto):
    return session(model, optimization="disable")


def probe(model: onnx.ModelProto, data_input: str, sample_shape: tuple[int, ...], dtype,
          batches=(1, 2), seed: int = 0, where: str = "model"):
    """Returns (shapes, dtypes, values at the first batch size, fixed_batch, values at the second batch size or
    None): shapes maps tensor -> tuple with None at the batch dim."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    names = []
    for node in m.graph.node:
        for o in node.output:
            if o and o not in known:
                names.append(o)
                known.add(o)
    m.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    try:
        sess = _session(m)
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{where}: onnxruntime cannot load the model: {str(e).splitlines()[0]}") from None
    outs = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    runs = []
    for n in batches:
        x = rng.standard_normal((n, *sample_shape)).astype(dtype)
        try:
            vals = sess.run(outs, {data_input: x})
        except Exception as e:  # noqa: BLE001
            if n == batches[0]:
                raise XCompileError(f"{where}: onnxruntime fails on an input of shape {x.shape}: {str(e).splitlines()[0]}") from None
            runs.append(None)
            break
        runs.append(dict(zip(outs, vals)))
    first = runs[0]
    shapes, dtypes = {}, {}
    for name, v in first.items():
        v = np.asarray(v)
        dtypes[name] = v.dtype
        if len(runs) > 1 and runs[1] is not None:
            w = np.asarray(runs[1][name])
            if w.ndim == v.ndim:
                shapes[name] = tuple(a if a == b else None for a, b in zip(v.shape, w.shape))
                continue
        shapes[name] = tuple(v.shape)
    fixed_batch = len(runs) < 2 or runs[1] is None
    return shapes, dtypes, first, fixed_batch, (None if fixed_batch else runs[1])
