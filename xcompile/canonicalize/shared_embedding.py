"""Every use of the explained token ids' embedding table read from the one explained embedding E.

Encoder–decoder classifiers (BART, T5, mBART) read the shared table twice: the encoder at the ids, the decoder at
ids shifted right behind a start token (`shift_tokens_right`). Explaining E alone would credit only the encoder's
use. Here each other look-up `Gather(table, h(ids))`, where h only moves positions and inserts constants, is
replaced by what it equals: `Where(is_constant, table[constant], Gather(E, source_position, axis=1))`, so that the
backward of every method carries the decoder's relevance back to the id positions it came from (and per-token
relevance sums both uses). h is measured, not pattern-matched: its subgraph is evaluated on position-coded ids at two
offsets (a position's code moves with the offset, a constant does not).

Where the rearrangement depends on the ids' values (mBART's decoder starts with the last non-pad id, so it moves
with the padding), no fixed map exists; then a copy of h runs in the explainer on position codes that keep the
special ids h compares against (padding) as they are, and its result is decoded at run time:
`Where(moved, GatherElements(E, source_position, axis=1), table[constant])`. Either form is accepted only when it
reproduces h on seeded rows with special ids at random places and padded tails; anything else is left as it is,
with one warning line."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import warn_once
from ..graph import attr
from ..sessions import session

_BASES = (1_000_000, 2_000_000)


def share_embedding_uses(m: onnx.ModelProto, ids: str, gather: onnx.NodeProto, sample_len: int, shapes: dict,
                         dtypes: dict, where: str, specials: tuple = ()) -> int:
    """Rewrite the other look-ups of `gather`'s table (see the module docstring) in place; `shapes` / `dtypes` (the
    probe's) get the new tensors. Returns how many were rewritten."""
    graph = m.graph
    inits = {t.name: t for t in graph.initializer}
    table = gather.input[0]
    producer = {o: n for n in graph.node for o in n.output}
    order = {id(n): k for k, n in enumerate(graph.node)}
    done = 0
    for node in list(graph.node):
        if node is gather or node.op_type != "Gather" or len(node.input) != 2 or not _same_table(inits, table, node.input[0]):
            continue
        if attr(node, "axis", 0) != 0 or order[id(node)] < order[id(gather)]:
            continue
        index = node.input[1]
        h = _h_model(m, producer, inits, ids, index, sample_len)
        vocab = int(inits[table].dims[0])
        mapping = None if h is None else _position_map(h[0], index, ids, sample_len, vocab, specials)
        if mapping is not None:
            _rewrite(m, node, gather.output[0], inits[table], mapping, shapes, dtypes)
        else:
            kept = None if h is None else _runtime_map(h[0], index, ids, sample_len, vocab,
                                                         _with_compared_ids(specials, h[1], inits, vocab))
            if kept is None:
                warn_once(f"shared:{where}:{node.name}", f"{where}: {node.name or node.output[0]!r} reads the "
                          f"embedding table {table!r} at ids computed from {ids!r} in a way that is not a "
                          "rearrangement of them; its use is not part of the token relevance")
                continue
            _rewrite_runtime(m, node, gather.output[0], inits[table], h[1], ids, kept, shapes, dtypes)
        done += 1
    return done


def _same_table(inits: dict, a: str, b: str) -> bool:
    if a == b:
        return True
    if a not in inits or b not in inits or list(inits[a].dims) != list(inits[b].dims):
        return False
    return bool(np.array_equal(numpy_helper.to_array(inits[a]), numpy_helper.to_array(inits[b])))


def _h_model(m, producer, inits, ids, index, sample_len):
    """h as a model of its own (ids -> index) with its nodes, or None where it reads another graph input."""
    needed, stack, seen = [], [index], set()
    while stack:
        t = stack.pop()
        if t in seen or t == ids or t in inits or not t:
            continue
        seen.add(t)
        n = producer.get(t)
        if n is None:  # another graph input: h depends on more than the ids
            return None
        needed.append(n)
        stack.extend(n.input)
    keep = {id(n) for n in needed}
    nodes = [n for n in m.graph.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    sub = helper.make_graph(nodes, "h", [helper.make_tensor_value_info(ids, onnx.TensorProto.INT64, ["N", sample_len])],
                            [onnx.ValueInfoProto(name=index)], initializer=[inits[k] for k in used if k in inits])
    return helper.make_model(sub, opset_imports=list(m.opset_import), ir_version=m.ir_version), nodes


def _seeded_rows(sample_len, vocab, specials):
    """Four rows of random ids with each special id at random places and as a padded tail."""
    rng = np.random.default_rng(0)
    real = rng.integers(0, vocab, (4, sample_len))
    for k, sp in enumerate(specials):
        real[k % 4, rng.integers(0, sample_len, max(1, sample_len // 4))] = sp
        real[(k + 1) % 4, -max(1, sample_len // 4):] = sp  # a padded tail
    return real


def _position_map(model, index, ids, sample_len, vocab, specials):
    """[L2] source position (>= 0) or -(constant id) - 1 per decoder position, or None where h is not a fixed
    rearrangement of the ids (a value is neither a moved id nor a constant, or real ids with the special ids at
    random places, e.g. padding, are not rearranged that way)."""
    real = _seeded_rows(sample_len, vocab, specials)
    try:
        sess = session(model, optimization="disable")
        outs = [sess.run([index], {ids: np.full((2, sample_len), base, np.int64) + np.arange(sample_len)})[0]
                for base in _BASES]
        on_real = np.asarray(sess.run([index], {ids: real})[0], np.int64)
    except Exception:  # noqa: BLE001
        return None
    a, b = (np.asarray(o, np.int64) for o in outs)
    if a.ndim != 2 or len(a) != 2 or (a[0] != a[1]).any():
        return None
    a = a[0]
    moved = (b[0] - a) == (_BASES[1] - _BASES[0])
    src = a - _BASES[0]
    const = b[0] == a
    if not (moved | const).all() or (moved & ((src < 0) | (src >= sample_len))).any() or (const & (a < 0)).any():
        return None
    mapping = np.where(moved, src, -a - 1)
    expected = np.where(mapping >= 0, real[:, np.clip(mapping, 0, None)], -mapping - 1)
    return mapping if on_real.shape == expected.shape and (on_real == expected).all() else None


def _rewrite(m, node, emb, table_t, mapping, shapes, dtypes):
    graph = m.graph
    out = node.output[0]
    name = node.name or out
    table = numpy_helper.to_array(table_t)
    src = np.where(mapping >= 0, mapping, 0).astype(np.int64)
    new_inits = [numpy_helper.from_array(src, f"{name}/xc_shared/positions")]
    moved = f"{name}/xc_shared/moved"
    new_nodes = [helper.make_node("Gather", [emb, new_inits[0].name], [moved], name=f"{name}/xc_shared/gather", axis=1)]
    if (mapping < 0).any():
        consts = np.where((mapping < 0)[:, None], table[np.clip(-mapping - 1, 0, len(table) - 1)], 0).astype(table.dtype)
        new_inits += [numpy_helper.from_array((mapping < 0)[None, :, None], f"{name}/xc_shared/is_constant"),
                      numpy_helper.from_array(consts[None], f"{name}/xc_shared/constant_rows")]
        new_nodes.append(helper.make_node("Where", [new_inits[1].name, new_inits[2].name, moved], [out],
                                          name=f"{name}/xc_shared/where"))
    else:
        new_nodes[0].output[0] = out
    nodes = list(graph.node)
    at = next(k for k, n in enumerate(nodes) if n is node)
    nodes[at:at + 1] = new_nodes
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    shapes[moved] = shapes[out]
    dtypes[moved] = dtypes.get(out)


def _with_compared_ids(specials, h_nodes, inits, vocab):
    """The special ids plus every id h itself compares against (mBART's padding id), at most four."""
    found = list(specials)
    for n in h_nodes:
        if n.op_type == "Equal":
            for t in n.input:
                if t in inits and inits[t].data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
                    v = numpy_helper.to_array(inits[t])
                    if v.size == 1 and 0 <= int(v.ravel()[0]) < vocab:
                        found.append(int(v.ravel()[0]))
    return tuple(dict.fromkeys(found))[:4]


def _coded(real, base, kept):
    """Each id replaced by base + its position, except the kept special ids."""
    codes = np.broadcast_to(base + np.arange(real.shape[1]), real.shape)
    return np.where(np.isin(real, list(kept)), real, codes)


def _runtime_map(model, index, ids, sample_len, vocab, specials):
    """The special ids to keep uncoded (the fewest that work) when h, run on position codes, reproduces itself on
    seeded rows: each value either moves with the code base (a position, decoded to that position's id) or stays (a
    constant id); None where no such choice exists."""
    real = _seeded_rows(sample_len, vocab, specials)
    try:
        sess = session(model, optimization="disable")
        want = np.asarray(sess.run([index], {ids: real})[0], np.int64)
        for kept in sorted((tuple(s for k, s in enumerate(specials) if mask >> k & 1)
                            for mask in range(1 << len(specials))), key=len):
            a, b = (np.asarray(sess.run([index], {ids: _coded(real, base, kept)})[0], np.int64) for base in _BASES)
            moved, src = (b - a) == (_BASES[1] - _BASES[0]), a - _BASES[0]
            if a.shape != want.shape or a.ndim != 2 or not (moved | (a == b)).all():
                continue
            if (moved & ((src < 0) | (src >= sample_len))).any() or (~moved & ((a < 0) | (a >= vocab))).any():
                continue
            rows = np.arange(len(real))[:, None]
            if (np.where(moved, real[rows, np.clip(src, 0, sample_len - 1)], a) == want).all():
                return kept
    except Exception:  # noqa: BLE001
        return None
    return None


def _rewrite_runtime(m, node, emb, table_t, h_nodes, ids, kept, shapes, dtypes):
    """`node`'s output computed from E by a copy of h run on position codes (see the module docstring)."""
    graph, out = m.graph, node.output[0]
    p = f"{node.name or out}/xc_shared"
    h_out = {o for n in h_nodes for o in n.output}
    i64, opset = onnx.TensorProto.INT64, next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    inits = [numpy_helper.from_array(np.array(v, np.int64), f"{p}/{k}") for k, v in
             (("zero", 0), ("one", 1), ("base", _BASES[0]), ("axis1", [1]), ("from2", [2]), ("end", [2 ** 62]),
              ("last", [-1]))]
    inits.append(numpy_helper.from_array(np.array(list(kept) or [-1], np.int64).reshape(-1, 1, 1), f"{p}/kept"))

    def unsqueeze(x, y):
        if opset >= 13:
            return helper.make_node("Unsqueeze", [x, f"{p}/last"], [y], name=y)
        return helper.make_node("Unsqueeze", [x], [y], name=y, axes=[-1])
    nodes = [
        helper.make_node("Cast", [ids], [f"{p}/ids"], name=f"{p}/ids", to=i64),
        helper.make_node("Shape", [f"{p}/ids"], [f"{p}/shape"], name=f"{p}/shape"),
        helper.make_node("Gather", [f"{p}/shape", f"{p}/one"], [f"{p}/length"], name=f"{p}/length", axis=0),
        helper.make_node("Range", [f"{p}/zero", f"{p}/length", f"{p}/one"], [f"{p}/pos"], name=f"{p}/pos"),
        helper.make_node("Add", [f"{p}/pos", f"{p}/base"], [f"{p}/codes"], name=f"{p}/codes"),
        helper.make_node("Equal", [f"{p}/ids", f"{p}/kept"], [f"{p}/is_kept_each"], name=f"{p}/is_kept_each"),
        helper.make_node("Cast", [f"{p}/is_kept_each"], [f"{p}/is_kept_i"], name=f"{p}/is_kept_i", to=i64),
        helper.make_node("ReduceMax", [f"{p}/is_kept_i"], [f"{p}/is_kept_n"], name=f"{p}/is_kept_n", axes=[0],
                         keepdims=0) if opset < 18 else
        helper.make_node("ReduceMax", [f"{p}/is_kept_i", f"{p}/zero_axis"], [f"{p}/is_kept_n"], name=f"{p}/is_kept_n",
                         keepdims=0),
        helper.make_node("Cast", [f"{p}/is_kept_n"], [f"{p}/is_kept"], name=f"{p}/is_kept", to=onnx.TensorProto.BOOL),
        helper.make_node("Where", [f"{p}/is_kept", f"{p}/ids", f"{p}/codes"], [f"{p}/coded64"], name=f"{p}/coded64"),
    ]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([0], np.int64), f"{p}/zero_axis"))
    ids_type = next(v.type.tensor_type.elem_type for v in graph.input if v.name == ids)
    nodes.append(helper.make_node("Cast", [f"{p}/coded64"], [f"{p}/coded"], name=f"{p}/coded", to=ids_type))
    rename = {t: f"{p}/h/{t}" for t in h_out}
    rename[ids] = f"{p}/coded"
    for n in h_nodes:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.name = f"{p}/h/{n.name}"
        c.input[:] = [rename.get(t, t) for t in n.input]
        c.output[:] = [rename.get(t, t) for t in n.output]
        nodes.append(c)
    r = rename[node.input[1]]
    nodes += [
        helper.make_node("Cast", [r], [f"{p}/r"], name=f"{p}/r", to=i64),
        helper.make_node("Less", [f"{p}/r", f"{p}/base"], [f"{p}/is_constant"], name=f"{p}/is_constant"),
        helper.make_node("Sub", [f"{p}/r", f"{p}/base"], [f"{p}/offset"], name=f"{p}/offset"),
        helper.make_node("Where", [f"{p}/is_constant", f"{p}/zero", f"{p}/offset"], [f"{p}/source"],
                         name=f"{p}/source"),
        helper.make_node("Where", [f"{p}/is_constant", f"{p}/r", f"{p}/zero"], [f"{p}/constant_id"],
                         name=f"{p}/constant_id"),
        unsqueeze(f"{p}/source", f"{p}/source3"),
        helper.make_node("Shape", [f"{p}/source"], [f"{p}/source_shape"], name=f"{p}/source_shape"),
        helper.make_node("Shape", [emb], [f"{p}/emb_shape"], name=f"{p}/emb_shape"),
        helper.make_node("Slice", [f"{p}/emb_shape", f"{p}/from2", f"{p}/end"], [f"{p}/width"], name=f"{p}/width"),
        helper.make_node("Concat", [f"{p}/source_shape", f"{p}/width"], [f"{p}/index_shape"], name=f"{p}/index_shape",
                         axis=0),
        helper.make_node("Expand", [f"{p}/source3", f"{p}/index_shape"], [f"{p}/index"], name=f"{p}/index"),
        helper.make_node("GatherElements", [emb, f"{p}/index"], [f"{p}/moved"], name=f"{p}/moved", axis=1),
        helper.make_node("Gather", [table_t.name, f"{p}/constant_id"], [f"{p}/constant_rows"],
                         name=f"{p}/constant_rows", axis=0),
        unsqueeze(f"{p}/is_constant", f"{p}/is_constant3"),
        helper.make_node("Where", [f"{p}/is_constant3", f"{p}/constant_rows", f"{p}/moved"], [out], name=f"{p}/where"),
    ]
    at = next(k for k, n in enumerate(graph.node) if n is node)
    order = list(graph.node)
    order[at:at + 1] = nodes
    del graph.node[:]
    graph.node.extend(order)
    graph.initializer.extend(inits)
    for t in (f"{p}/moved", f"{p}/constant_rows"):
        shapes[t], dtypes[t] = shapes[out], dtypes.get(out)
