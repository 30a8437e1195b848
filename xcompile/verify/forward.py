"""The self-check's probe rows and the model's own forward at perturbed points (docs/selfcheck.md).

The forward session is opened once per compile on the forward graph itself, changed in place for the session's
creation only (as load/probe.py does: a copy would copy the weights): the explained scores become an output, and for
token ids the embedding output E gets `E = Gather(...) + delta` with `delta` a new input, so that the finite
differences move E itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import XCompileError
from ..load.probe import feed_values
from ..sessions import session

DELTA = "xc/verify/delta"
MAX_ROWS = 4  # probe=FILE.npy: rows used (the explainer runs once on them)


def probe_feeds(g, path, where: str) -> tuple[dict, int]:
    """{input: value} at the probe rows: the data input from `path` (probe=FILE.npy) or drawn as load/probe.py draws
    it, every other input by its feed rule. Returns (feeds, rows)."""
    plan = g.feed_plan or None
    if plan is None:
        raise XCompileError(f"{where}: internal error: the forward graph has no feed plan")
    rng = np.random.default_rng(0)
    if path is None:
        return feed_values(plan, 1, rng), 1
    shape, dtype = plan[g.graph_input][0], plan[g.graph_input][1]
    try:
        rows = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise XCompileError(f"option probe={path}: cannot read a .npy array: {str(e).splitlines()[0]}") from None
    if rows.shape == tuple(shape):
        rows = rows[None]
    if rows.shape[1:] != tuple(shape) or not len(rows):
        raise XCompileError(f"option probe={path}: shape {list(rows.shape)}; expected [rows, "
                            f"{', '.join(map(str, shape))}] for input {g.graph_input!r}")
    if np.dtype(dtype).kind in "iu":
        if rows.dtype.kind not in "iu" or rows.min() < 0 or rows.max() >= g.token.vocab:
            raise XCompileError(f"option probe={path}: token ids must be integers in [0, {g.token.vocab})")
    elif rows.dtype.kind not in "fiu" or not np.isfinite(rows).all():
        raise XCompileError(f"option probe={path}: expected finite numbers for input {g.graph_input!r}")
    n = min(len(rows), 1 if g.fixed_batch else MAX_ROWS)
    feeds = feed_values(plan, n, rng)
    feeds[g.graph_input] = rows[:n].astype(dtype)
    return feeds, n


def _open(g, where: str):
    """The forward session (made once per graph): outputs the explained scores and the explained point (x or E). For a
    float input it is the probe's own (load/forward.py keeps it: the same forward, nothing to add)."""
    sess = g.derived.get("verify_session")
    if sess is not None:
        return sess
    graph = g.model.graph
    n_out, n_in, n_node = len(graph.output), len(graph.input), len(graph.node)
    have = {o.name for o in graph.output}
    wanted = [g.explained] + ([g.data_input] if g.token is not None else [])
    graph.output.extend([onnx.ValueInfoProto(name=t) for t in wanted if t not in have])
    gather = None
    if g.token is not None:
        e = g.token.embedding
        gather = next(n for n in graph.node if e in n.output)
        k = list(gather.output).index(e)
        gather.output[k] = e + "/xc_verify_raw"
        graph.node.append(helper.make_node("Add", [gather.output[k], DELTA], [e], name="xc/verify/perturb"))
        dims = ["N"] + [int(d) for d in g.shape(e)[1:]]
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(g.dtypes.get(e, np.float32)))
        graph.input.append(helper.make_tensor_value_info(DELTA, elem, dims))
    try:
        sess = session(g.model, optimization="disable")
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{where}: self-check: onnxruntime cannot load the forward: {str(e).splitlines()[0]}") from None
    finally:
        del graph.output[n_out:]
        del graph.input[n_in:]
        del graph.node[n_node:]
        if gather is not None:
            gather.output[k] = g.token.embedding
    g.derived["verify_session"] = sess
    return sess


def forward_rows(g, base: dict, deltas, where: str) -> dict:
    """The forward at one probe row (`base`: every input at 1 row) moved by each of `deltas` [k, *sample] (None: not
    moved). Returns {"explained": [k, classes], "point": [k, *sample]} (float64 copies)."""
    sess = _open(g, where)
    k = 1 if deltas is None else len(deltas)
    feeds = {name: np.repeat(v, k, axis=0) for name, v in base.items()}
    shape = tuple(int(d) for d in g.shape(g.data_input)[1:])
    move = np.zeros((k, *shape)) if deltas is None else np.asarray(deltas)
    if g.token is not None:
        feeds[DELTA] = move.astype(g.dtypes.get(g.data_input, np.float32))
    else:
        x = feeds[g.data_input]
        feeds[g.data_input] = (x.astype(np.float64) + move).astype(x.dtype)
    outs = [g.explained] + ([g.data_input] if g.token is not None else [])
    if (g.fixed_batch or g.token is None) and k > 1:
        # one row at a time: a model whose batch is fixed, and the probe's session (float inputs, load/probe.py),
        # which returns every tensor: its memory stays that of one row
        runs = [sess.run(outs, {n: v[i:i + 1] for n, v in feeds.items()}) for i in range(k)]
        vals = [np.concatenate([r[j] for r in runs]) for j in range(len(outs))]
    else:
        vals = sess.run(outs, feeds)
    point = vals[1] if g.token is not None else feeds[g.data_input]
    return {"explained": np.asarray(vals[0], np.float64), "point": np.asarray(point, np.float64)}


def close(g) -> None:
    g.derived.pop("verify_session", None)
