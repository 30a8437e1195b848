"""Where a failed gradient self-check goes wrong (docs/selfcheck.md): the explainer's own gradient at intermediate
tensors (the engine's emitted gradients, `Method.grads`) is checked against finite differences there, by bisection
over the tensors in forward order. Runs only after a failure (a few explainer sessions)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..graph import TARGET
from ..sessions import session

DELTA = "xc/verify/locate_delta"
MAX_SESSIONS = 12


def locate(g, m, explainer: onnx.ModelProto, feeds: dict, cls: int, metric) -> str:
    """'first wrong backward: node NAME (Op) ...' or '' when it cannot be located. `metric(grad, dirs, differences)`
    -> (error, tolerance), the check's own comparison."""
    grads = getattr(m, "grads", None) or {}
    order = []
    for node in g.nodes:
        for o in node.output:
            if o in grads and o != g.data_input and np.dtype(g.dtypes.get(o, np.float32)) == np.float32 \
                    and g.shapes.get(o) and g.shapes[o][0] is None and all(d is not None for d in g.shapes[o][1:]):
                order.append(o)
    if not order:
        return ""
    lo, hi, tried = -1, len(order), 0  # order[lo] wrong (lo = -1: the input), order[hi] right (hi = len: the scores)
    while hi - lo > 1 and tried < MAX_SESSIONS:
        mid = (lo + hi) // 2
        tried += 1
        bad = _wrong_at(g, explainer, feeds, cls, order[mid], grads[order[mid]], metric)
        if bad is None:  # cannot be measured there (e.g. onnxruntime refuses the perturbed graph): stop
            break
        lo, hi = (mid, hi) if bad else (lo, mid)
    wrong = order[lo] if lo >= 0 else g.data_input
    right = order[hi] if hi < len(order) else None
    readers = [n for n in g.consumers.get(wrong, []) if n.op_type]
    culprit = next((n for n in readers if right is not None and right in n.output), None)
    if culprit is None and len(readers) == 1:
        culprit = readers[0]
    if culprit is not None:
        return (f"first wrong backward: node {culprit.name or culprit.output[0]!r} ({culprit.op_type}): the gradient "
                f"at its output {culprit.output[0]!r} agrees, at its input {wrong!r} it does not")
    names = ", ".join(f"{n.name or n.output[0]!r} ({n.op_type})" for n in readers[:4])
    return f"first wrong gradient at tensor {wrong!r}, read by {names}" if names else ""


def _wrong_at(g, explainer, feeds, cls, t, grad_t, metric):
    graph = explainer.graph
    producer = next((n for n in graph.node if t in n.output), None)
    if producer is None:
        return None
    n_out, n_in, n_node = len(graph.output), len(graph.input), len(graph.node)
    k = list(producer.output).index(t)
    raw = t + "/xc_locate_raw"
    producer.output[k] = raw
    graph.node.append(helper.make_node("Add", [raw, DELTA], [t], name="xc/verify/locate"))
    shape = [int(d) for d in g.shape(t)[1:]]
    graph.input.append(helper.make_tensor_value_info(DELTA, onnx.TensorProto.FLOAT, ["N"] + shape))
    have = {o.name for o in graph.output}
    graph.output.extend([onnx.ValueInfoProto(name=n) for n in (g.explained, grad_t, raw) if n not in have])
    try:
        sess = session(explainer, optimization="disable")
    except Exception:  # noqa: BLE001
        return None
    finally:
        del graph.output[n_out:]
        del graph.input[n_in:]
        del graph.node[n_node:]
        producer.output[k] = t
    from .fd import DIRECTIONS, STEPS, differences
    rng = np.random.default_rng(1)
    base = {n: v[:1] for n, v in feeds.items()}
    try:
        b0 = sess.run([raw], {**base, DELTA: np.zeros([1] + shape, np.float32), TARGET: np.array([cls], np.int64)})[0]
        point = np.asarray(b0[0], np.float64)
        scale = float(np.sqrt(np.mean(point ** 2))) or 1.0
        dirs = [rng.standard_normal(point.shape) * scale for _ in range(DIRECTIONS)]
        deltas = [np.zeros_like(point)]
        for v in dirs:
            for h in STEPS:
                deltas += [h * v, -h * v]
        k_rows = len(deltas)
        run = {n: np.repeat(v, k_rows, axis=0) for n, v in base.items()}
        run[DELTA] = np.stack(deltas).astype(np.float32)
        run[TARGET] = np.full(k_rows, cls, np.int64)
        f, gr = sess.run([g.explained, grad_t], run)
    except Exception:  # noqa: BLE001
        return None
    f = np.asarray(f, np.float64)[:, cls]
    err, tol = metric(np.asarray(gr[0], np.float64), dirs, differences(f[1:].reshape(DIRECTIONS, len(STEPS), 2), float(f[0])))
    return err > tol
