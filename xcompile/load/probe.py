"""Measure every tensor's shape by running the model in onnxruntime at batch 1 and batch 2.

Robust where static shape inference gives up (run-time shape arithmetic, custom exporters): the
dimension that changes with the batch size is the batch dimension (None in the result).

Every input of the model is fed (`feed_plan`), with values that any sensible model accepts:
- the explained input: standard normal (float), or token ids uniform in [0, vocab) of its embedding table; where the
  graph compares the ids with constants (`special_ids`: the EOS id whose position BART / T5 classifiers read, a pad
  id), those ids are drawn nowhere else and the first of them ends every row (one EOS per row, as a tokenizer
  writes it: the rows of a batch then agree in shape);
- other float inputs: ones where the name contains "mask" (nothing masked), else standard normal;
- other integer inputs read by an embedding Gather (token types, segments, positions): zeros, a valid row of any
  table; other integer inputs (attention masks, flags): ones, i.e. "keep every position"; bool inputs: True."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from ..errors import XCompileError
from ..sessions import session

_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
       onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64,
       onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8}


def numpy_dtype(vi: onnx.ValueInfoProto, where: str = "model"):
    t = vi.type.tensor_type.elem_type
    if t not in _NP:
        raise XCompileError(f"{where}: input {vi.name!r} has element type {onnx.TensorProto.DataType.Name(t)}; "
                            f"supported inputs: {', '.join(sorted(np.dtype(d).name for d in _NP.values()))}")
    return _NP[t]


def special_ids(model: onnx.ModelProto, ids: str, vocab: int) -> tuple:
    """The token ids in [0, vocab) that the graph compares the integer input `ids` with (Equal with a constant
    scalar, the input read through Cast / Reshape / Squeeze / Unsqueeze / Flatten / Identity), in graph order."""
    from onnx import numpy_helper
    routes, names = {"Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}, {ids}
    consts = {t.name: t for t in model.graph.initializer}
    found = []
    for n in model.graph.node:
        if n.op_type in routes and n.input and n.input[0] in names:
            names.add(n.output[0])
        elif n.op_type == "Equal" and len(n.input) == 2 and (n.input[0] in names) != (n.input[1] in names):
            other = n.input[1] if n.input[0] in names else n.input[0]
            if other in consts:
                v = numpy_helper.to_array(consts[other])
                if v.size == 1 and v.dtype.kind in "iu" and 0 <= int(v.ravel()[0]) < vocab:
                    found.append(int(v.ravel()[0]))
    return tuple(dict.fromkeys(found))


def feed_plan(inputs: dict, data_input: str, vocab: int | None, gather_fed: set, specials: tuple = ()) -> dict:
    """{name: (sample shape, dtype)} -> {name: (sample shape, dtype, kind, vocab, specials)}, kind one of
    normal/ids/zeros/ones (the rule in this module's docstring)."""
    plan = {}
    for name, (shape, dtype) in inputs.items():
        kind = np.dtype(dtype).kind
        if name == data_input:
            how = "ids" if kind in "iu" else "normal"
        elif kind == "f":
            how = "ones" if "mask" in name.lower() else "normal"
        elif kind in "iu" and name in gather_fed:
            how = "zeros"
        else:
            how = "ones"
        plan[name] = (tuple(shape), dtype, how, vocab, tuple(specials) if how == "ids" else ())
    return plan


def feed_values(plan: dict, n: int, rng) -> dict:
    out = {}
    for name, (shape, dtype, how, vocab, specials) in plan.items():
        full = (n, *shape)
        if how == "normal":
            out[name] = rng.standard_normal(full).astype(dtype)
        elif how == "ids":
            pool = np.setdiff1d(np.arange(vocab), specials) if specials and vocab > len(specials) else np.arange(vocab)
            ids = pool[rng.integers(0, len(pool), full)]
            if specials and full[-1] > 1:
                ids[..., -1] = specials[0]  # one EOS, last (module docstring)
            out[name] = ids.astype(dtype)
        else:
            out[name] = (np.zeros if how == "zeros" else np.ones)(full, dtype)
    return out


def _session(model: onnx.ModelProto):
    return session(model, optimization="disable")


def probe(model: onnx.ModelProto, plan: dict, batches=(1, 2), seed: int = 0, where: str = "model", keep: Optional[dict] = None):
    """`plan`: `feed_plan`'s {input: (sample shape, dtype, kind, vocab)}. Returns (shapes, dtypes, values at the first batch size, fixed_batch, values at the second batch size or
    None): shapes maps tensor -> tuple with None at the batch dim."""
    known = {o.name for o in model.graph.output}
    names = []
    for node in model.graph.node:
        for o in node.output:
            if o and o not in known:
                names.append(o)
                known.add(o)
    # every tensor an output while the session is made, then the model as it was (a copy of the model would copy
    # its weights: 2.5 GB for vit_h_14)
    n_out = len(model.graph.output)
    model.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    try:
        sess = _session(model)
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{where}: onnxruntime cannot load the model: {str(e).splitlines()[0]}") from None
    finally:
        del model.graph.output[n_out:]
    if keep is not None:  # the session, for the caller's later use (the self-check's forward rows, xcompile/verify)
        keep["session"] = sess
    outs = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    runs = []
    for n in batches:
        feeds = feed_values(plan, n, rng)
        try:
            vals = sess.run(outs, feeds)
        except Exception as e:  # noqa: BLE001
            if n == batches[0]:
                shapes = (f"an input of shape {next(iter(feeds.values())).shape}" if len(feeds) == 1 else
                          "inputs " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items()))
                raise XCompileError(f"{where}: onnxruntime fails on {shapes}: {str(e).splitlines()[0]}") from None
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
