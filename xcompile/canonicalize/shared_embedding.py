"""Every use of the explained token ids' embedding table read from the one explained embedding E.

Encoder–decoder classifiers (BART, T5, mBART) read the shared table twice: the encoder at the ids, the decoder at
ids shifted right behind a start token (`shift_tokens_right`). Explaining E alone would credit only the encoder's
use. Here each other look-up `Gather(table, h(ids))`, where h only moves positions and inserts constants, is
replaced by what it equals: `Where(is_constant, table[constant], Gather(E, source_position, axis=1))`, so that the
backward of every method carries the decoder's relevance back to the id positions it came from (and per-token
relevance sums both uses). h is measured, not pattern-matched: its subgraph is evaluated on position-coded ids at two
offsets (a position's code moves with the offset, a constant does not); anything else is left as it is, with one
warning line."""
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
        mapping = _position_map(m, producer, inits, ids, index, sample_len, int(inits[table].dims[0]), specials)
        if mapping is None:
            warn_once(f"shared:{where}:{node.name}", f"{where}: {node.name or node.output[0]!r} reads the embedding table "
                      f"{table!r} at ids computed from {ids!r} in a way that is not a fixed rearrangement; its use is "
                      "not part of the token relevance")
            continue
        _rewrite(m, node, gather.output[0], inits[table], mapping, shapes, dtypes)
        done += 1
    return done


def _same_table(inits: dict, a: str, b: str) -> bool:
    if a == b:
        return True
    if a not in inits or b not in inits or list(inits[a].dims) != list(inits[b].dims):
        return False
    return bool(np.array_equal(numpy_helper.to_array(inits[a]), numpy_helper.to_array(inits[b])))


def _position_map(m, producer, inits, ids, index, sample_len, vocab, specials):
    """[L2] source position (>= 0) or -(constant id) - 1 per decoder position, or None where h is not a fixed
    rearrangement of the ids (it reads another input, a value is neither a moved id nor a constant, or real ids with
    the special ids at random places, e.g. padding, are not rearranged that way: mBART's start token, the last
    non-pad id, moves with the padding)."""
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
    model = helper.make_model(sub, opset_imports=list(m.opset_import), ir_version=m.ir_version)
    rng = np.random.default_rng(0)
    real = rng.integers(0, vocab, (4, sample_len))
    for k, sp in enumerate(specials):
        real[k % 4, rng.integers(0, sample_len, max(1, sample_len // 4))] = sp
        real[(k + 1) % 4, -max(1, sample_len // 4):] = sp  # a padded tail
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
