"""The dequantized view of a quantized model: what the backward walks (docs/deployment.md, "Quantized models").

The explainer's forward stays the model's own, node for node (QOperator ops of onnxruntime's ``com.microsoft``
domain included), so its scores are exactly the quantized model's. The backward instead walks an equivalent float
view of each quantized op, built here from ONE table (``quantized_ops.QOPS``: which inputs are (value, scale, zero point) triples,
which float op it is, where its output is requantized):

    QLinearConv(x, xs, xz, w, ws, wz, ys, yz, b) = QuantizeLinear(Conv(DQ(x), DQ(w), DQ(b)), ys, yz)

so every method reuses the float op's backward (LRP's rules see the dequantized weights) and the requantization is
a QuantizeLinear whose backward is the clipped straight-through estimator (Jacob et al. 2018; PyTorch's
fake_quantize). The dynamic form ``DynamicQuantizeLinear -> ConvInteger / MatMulInteger -> Cast -> Mul(scale)``
becomes ``Conv / MatMul(DQ(x), DQ(w))``; a DequantizeLinear of constants is a constant (the dequantized weight,
computed here). Tensors of the view that the forward lacks (``virtual``: DQ of an activation, the float output
before requantization, and in QDQ models every tensor between the input and the scores, see
``_recompute_data_path``) are emitted by the writer from their view node when the backward reads them."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import XCompileError
from ..graph import attr
from ..graph import attrs as attrs_of
from ..kinds import QUANTIZATION_OPS
from .quantized_ops import DROPPED_ATTRS, INTEGER_OPS, QOPS, VALUE_FREE_OPS, QOp, dequantize

PREFIX = "xc/dequantized"
MS = "com.microsoft"
SMALL = 1024  # dequantized constants up to this size are written as float initializers


class _View:
    def __init__(self, g, where):
        self.g, self.where = g, where
        self.nodes: list = []
        self.virtual: dict = {}   # virtual tensor -> the view node that computes it
        self.consts: dict = {}    # virtual constant -> TensorProto
        self.dq_nodes: dict = {}  # a large one -> the DequantizeLinear of the int8 initializer that makes it

    def const(self, name):
        return self.g.const(name) if name else None

    def dq_const(self, v, s, z, axis, key):
        """The dequantized constant (value, scale, zp) as a virtual initializer."""
        name = f"{PREFIX}/{key}"
        if name not in self.consts:
            arr = dequantize(self.const(v), self.const(s), self.const(z) if z else None, axis)
            self.consts[name] = numpy_helper.from_array(arr, name)
            self.g.shapes[name] = tuple(arr.shape)
            if arr.size > SMALL:
                # the explainer file keeps the int8 weight only: the backward dequantizes it at run time
                self.dq_nodes[name] = helper.make_node("DequantizeLinear", [v, s] + ([z] if z else []), [name],
                                                       name=f"{name}/dequantize", **({"axis": axis} if axis != 1 else {}))
        return name

    def fake_quant_const(self, q, d):
        """DQ(Q(W)) of a constant float W, as onnxruntime computes it (round half to even, saturate)."""
        name = f"{PREFIX}/{d.output[0]}"
        if name not in self.consts:
            qi = list(q.input) + [""]
            w, s, z = self.const(qi[0]), self.const(qi[1]), self.const(qi[2]) if qi[2] else np.zeros((), np.uint8)
            axis = attr(q, "axis", 1)
            shape = [1] * w.ndim
            if np.ndim(s) == 1 and w.ndim > 1:
                shape[axis % w.ndim] = -1
            lo, hi = np.iinfo(z.dtype).min, np.iinfo(z.dtype).max
            qv = np.clip(np.round(w / np.reshape(s, shape if np.ndim(s) == 1 else ())) +
                         np.reshape(z, shape if np.ndim(z) == 1 else ()).astype(np.float32), lo, hi).astype(z.dtype)
            arr = dequantize(qv, s, z, axis)
            self.consts[name] = numpy_helper.from_array(arr, name)
            self.g.shapes[name] = tuple(arr.shape)
        return name

    def dq(self, v, s, z, axis, key, node_name):
        """The float value of the quantized tensor v: a constant, or a virtual DequantizeLinear output."""
        if self.g.is_const(v) and self.g.is_const(s) and (not z or self.g.is_const(z)):
            return self.dq_const(v, s, z, axis, v)
        name = f"{PREFIX}/{key}"
        if name not in self.virtual:
            n = helper.make_node("DequantizeLinear", [v, s] + ([z] if z else []), [name], name=f"{key}/dequantize",
                                 **({"axis": axis} if axis != 1 else {}))
            self.add(n, {name: self.g.shapes.get(v)})
        return name

    def add(self, node, virtual: dict):
        self.nodes.append(node)
        for name, shape in virtual.items():
            self.virtual[name] = node
            self.g.shapes[name] = shape
            self.g.dtypes[name] = np.dtype(np.float32)

    # ------------------------------------------------------------------ the three forms
    def qop(self, n, spec: QOp):
        name = n.name or n.output[0]
        ins = list(n.input) + [""] * 10
        attrs = attrs_of(n)
        if attrs.get("channels_last", 0):
            raise XCompileError(f"{self.where}: node {name!r} ({n.op_type}): channels_last=1 is not supported")
        for k in DROPPED_ATTRS:
            attrs.pop(k, None)
        triples = list(spec.triples)
        if spec.variadic is not None:
            triples = [(k, k + 1, k + 2) for k in range(spec.variadic, len(n.input), 3)]
        floats = []
        for j, (v, s, z) in enumerate(triples):
            # a per-channel weight scale runs along the output channels: axis 0 of a Conv weight, the last of a
            # MatMul / Gemm weight (Gemm's transB: axis 0)
            axis = 1
            if j == 1 and spec.float_op == "Conv":
                axis = 0
            elif j == 1 and spec.float_op in ("MatMul", "Gemm"):
                axis = 0 if attrs.get("transB", 0) else -1
            floats.append(self.dq(ins[v], ins[s], ins[z], axis, f"{name}/in{j}", name))
        if spec.bias is not None and ins[spec.bias[0]]:
            bslot, (sa, sb) = spec.bias
            b = self.const(ins[bslot])
            sa_, sb_ = self.const(ins[sa]), self.const(ins[sb])
            if b is None or sa_ is None or sb_ is None:
                raise XCompileError(f"{self.where}: node {name!r} ({n.op_type}): a bias or scale computed at run time "
                                    "is not supported")
            bname = f"{PREFIX}/{name}/bias"
            arr = (b.astype(np.float32) * (np.float32(sa_) * np.asarray(sb_, np.float32))).astype(np.float32)
            if b.dtype == np.float32:  # a float bias (QGemm allows one) is added as it is
                arr = b
            self.consts[bname] = numpy_helper.from_array(np.ascontiguousarray(arr), bname)
            self.g.shapes[bname] = tuple(arr.shape)
            floats.append(bname)
        quantized_out = spec.out is not None and ins[spec.out[0]]
        y = f"{PREFIX}/{name}/y" if quantized_out else n.output[0]
        fnode = helper.make_node(spec.float_op, floats, [y], name=name, **attrs)
        self.add(fnode, {y: self.g.shapes.get(n.output[0])} if quantized_out else {})
        if quantized_out:
            s, z = ins[spec.out[0]], ins[spec.out[1]]
            self.nodes.append(helper.make_node("QuantizeLinear", [y, s] + ([z] if z else []), [n.output[0]],
                                               name=f"{name}/requantize"))

    def wrap(self, n, s, z):
        """A float op on a quantized tensor as QuantizeLinear(op(DQ(x)), s, z); its other outputs (MaxPool's
        indices) become the view's own."""
        name = n.name or n.output[0]
        x = self.dq(n.input[0], s, z, 1, f"{name}/in0", name)
        y = f"{PREFIX}/{name}/y"
        outs = [y] + [f"{PREFIX}/{o}" if o else "" for o in n.output[1:]]
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.input[0] = x
        c.output[:] = outs
        _with_indices(c, self.g)
        outs = list(c.output)
        self.add(c, {o: self.g.shapes.get(orig) for o, orig in zip(outs, n.output) if o})
        for o in outs[len(n.output):]:  # the Indices output _with_indices added
            self.virtual[o] = c
        for o, orig in zip(outs[1:], n.output[1:]):
            if o and orig in self.g.dtypes:
                self.g.dtypes[o] = self.g.dtypes[orig]
        self.nodes.append(helper.make_node("QuantizeLinear", [y, s] + ([z] if z else []), [n.output[0]],
                                           name=f"{name}/requantize"))

    def integer(self, n, producer, consumers):
        """ConvInteger / MatMulInteger -> Cast(float) -> Mul(scale) as Conv / MatMul of the dequantized inputs."""
        name = n.name or n.output[0]
        fail = XCompileError(f"{self.where}: node {name!r} ({n.op_type}): only the rescaling onnxruntime.quantization "
                             "writes (Cast to float, then Mul by input scale x weight scale) is supported")
        cast = consumers.get(n.output[0], [])
        if len(cast) != 1 or cast[0].op_type != "Cast":
            raise fail
        mul = consumers.get(cast[0].output[0], [])
        if len(mul) != 1 or mul[0].op_type != "Mul":
            raise fail
        mul = mul[0]
        scale = mul.input[1] if mul.input[0] == cast[0].output[0] else mul.input[0]
        sp = producer.get(scale)
        ins = list(n.input) + [""] * 4
        scales = []
        for v in (ins[0], ins[1]):
            d = producer.get(v)
            scales.append(d.output[1] if d is not None and d.op_type == "DynamicQuantizeLinear" else None)
        if sp is None or sp.op_type != "Mul":
            raise fail
        pair = list(sp.input)
        for k in (0, 1):  # the constant scale of a constant input: the other factor of the scale product
            if scales[k] is None:
                other = scales[1 - k]
                rest = [p for p in pair if p != other]
                if len(rest) != 1 or not self.g.is_const(rest[0]):
                    raise fail
                scales[k] = rest[0]
        if sorted(pair) != sorted(scales):
            raise fail
        op = INTEGER_OPS[n.op_type]
        floats = []
        for j, (v, s, z) in enumerate(((ins[0], scales[0], ins[2]), (ins[1], scales[1], ins[3]))):
            axis = (0 if op == "Conv" else -1) if j == 1 else 1
            floats.append(self.dq(v, s, z, axis, f"{name}/in{j}", name))
        attrs = attrs_of(n)
        out, done = mul.output[0], {id(cast[0]), id(mul)}
        add = consumers.get(out, [])
        if op == "Conv" and len(add) == 1 and add[0].op_type == "Add":
            # the float Conv's bias, added after the rescaling: part of the layer (LRP's rules see it there)
            other = [i for i in add[0].input if i != out]
            b = self.const(other[0]) if len(other) == 1 else None
            cout = self.g.shapes.get(out, (None, None))[1]
            if b is not None and tuple(b.shape) in ((cout,), (cout, 1, 1), (1, cout, 1, 1)):
                bname = f"{PREFIX}/{name}/bias"
                self.consts[bname] = numpy_helper.from_array(np.ascontiguousarray(b.reshape(-1), np.float32), bname)
                self.g.shapes[bname] = (int(cout),)
                floats.append(bname)
                out = add[0].output[0]
                done.add(id(add[0]))
        self.nodes.append(helper.make_node(op, floats, [out], name=name, **attrs))
        return done


def _recompute_data_path(g, v: _View) -> None:
    """QDQ models: the backward reads no tensor of the forward between its input and its scores. Every tensor on
    the data path becomes the view's own, recomputed in the backward part (a float copy of the QDQ graph whose
    QuantizeLinear roots read copies of their scales, so that onnxruntime's common-subexpression elimination does
    not merge the copy back into the forward): any extra reader of a DQ -> op -> Q group's tensors stops
    onnxruntime from fusing it into its integer kernel, and the scores would no longer be the quantized model's own.
    The copy computes what the unfused graph computes (onnxruntime at ORT_DISABLE_ALL)."""
    keep = {o.name for o in g.model.graph.output} | {g.explained, g.data_input}
    qdq = any(n.op_type == "QuantizeLinear" and n.input[0] not in g.initializers for n in v.nodes)
    # a quantized word embedding (Gather -> DequantizeLinear: quantize_dynamic's default) too: onnxruntime fuses
    # the float ops after it (Add + LayerNormalization, GELU) only where no backward reads their inner tensors
    producer = g.producer.get(g.data_input)
    if not qdq and not (producer is not None and producer.op_type == "DequantizeLinear"):
        return
    island: set = {g.data_input}
    rename: dict = {}
    for n in v.nodes:
        if any(o in keep for o in n.output) or any(o in v.virtual for o in n.output):
            continue
        if not any(i in island for i in n.input):
            continue
        island.update(o for o in n.output if o)
        for o in n.output:
            if o:
                rename[o] = f"{PREFIX}/{o}"
    for j, n in enumerate(v.nodes):
        if not any(i in rename for i in n.input) and not any(o in rename for o in n.output):
            continue
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.input[:] = [rename.get(i, i) for i in n.input]
        c.output[:] = [rename.get(o, o) for o in n.output]
        if g.data_input in n.input and any(o in rename for o in n.output):  # a root: its own constants
            for k, i in enumerate(c.input):
                t = g.initializers.get(i)
                if t is not None and i not in v.consts and int(np.prod(t.dims)) <= SMALL:
                    own = f"{PREFIX}/root/{i}"
                    v.consts[own] = onnx.TensorProto()
                    v.consts[own].CopyFrom(t)
                    v.consts[own].name = own
                    c.input[k] = own
        v.nodes[j] = c
        _virtual_copy(g, v, n, c)
        if _with_indices(c, g):
            v.virtual[c.output[1]] = c
    _recomputed_scores(g, v)


def _recomputed_scores(g, v: _View) -> None:
    """The explained scores too: the backward (the predicted class's TopK, the seed, conservation) reads a
    recomputed copy (``g.virtual_alias``, applied by the writer), since a second reader of the last group's
    DequantizeLinear also stops onnxruntime from fusing DQ -> Gemm -> Q into QGemm."""
    node = next((n for n in v.nodes if g.explained in n.output), None)
    if node is None or not any(i in v.virtual for i in node.input):
        return  # (inputs read from the forward: a copy would be merged back by common-subexpression elimination)
    c = onnx.NodeProto()
    c.CopyFrom(node)
    c.name = f"{PREFIX}/{node.name or g.explained}/scores"
    c.output[:] = [f"{PREFIX}/{o}/scores" if o else "" for o in node.output]
    _virtual_copy(g, v, node, c)
    g.virtual_alias = {g.explained: c.output[list(node.output).index(g.explained)]}


def _virtual_copy(g, v: _View, node, c) -> None:
    """``c``, a recomputing copy of ``node``: its renamed outputs are virtual tensors with the shapes and dtypes of
    the outputs they copy."""
    for o, new in zip(node.output, c.output):
        if o and new != o:
            v.virtual[new] = c
            g.shapes[new] = g.shapes.get(o)
            if o in g.dtypes:
                g.dtypes[new] = g.dtypes[o]


def _with_indices(c, g) -> bool:
    """The view's copy of a MaxPool gets the Indices output the backward reuses (canonicalize/maxpool.py leaves
    the forward's quantized MaxPool as it is)."""
    if c.op_type != "MaxPool" or (len(c.output) > 1 and c.output[1]):
        return False
    name = f"{c.output[0]}/indices"
    if len(c.output) > 1:
        c.output[1] = name
    else:
        c.output.append(name)
    g.shapes[name] = g.shapes.get(c.output[0])
    g.dtypes[name] = np.dtype(np.int64)
    return True


def float_view(g, where: str = "model") -> None:
    """Replace the quantized ops in `g`'s node list (what the backward walks; the forward emitted is `g.model`'s)
    by their float view; record the view's own tensors (`g.virtual`: tensor -> node) and dequantized constants
    (added to `g.initializers`, listed in `g.virtual_consts`)."""
    g.virtual, g.virtual_consts, g.virtual_alias = {}, {}, {}
    ops = {n.op_type for n in g.nodes}
    if not ops & (set(QOPS) | set(INTEGER_OPS) | {"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"}):
        return
    v = _View(g, where)
    producer = {o: n for n in g.nodes for o in n.output if o}
    consumers: dict = {}
    for n in g.nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    skip: set = set()
    qparams: dict = {}  # quantized tensor -> its per-tensor (scale, zero point)
    rename: dict = {}  # a DequantizeLinear of constants: its output read as the dequantized constant
    for n in g.nodes:
        if id(n) in skip:
            continue
        if n.domain in ("", "ai.onnx") and n.op_type == "DequantizeLinear" and all(not i or g.is_const(i) for i in n.input):
            ins = list(n.input) + [""]
            rename[n.output[0]] = v.dq_const(ins[0], ins[1], ins[2], attr(n, "axis", 1), n.output[0])
            continue
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and all(not i or g.is_const(i) for i in q.input) \
                and all(not i or g.is_const(i) for i in n.input[1:]):
            # a float weight fake-quantized in the graph (QAT exports: Q(W) -> DQ): its dequantized value, constant
            rename[n.output[0]] = v.fake_quant_const(q, n)
            continue
        if n.op_type in QOPS and n.domain in ("", "ai.onnx", MS):
            v.qop(n, QOPS[n.op_type])
            out = QOPS[n.op_type].out
            if out is not None and len(n.input) > out[0] and n.input[out[0]]:
                qparams[n.output[0]] = (n.input[out[0]], n.input[out[1]] if len(n.input) > out[1] else "")
        elif n.op_type in INTEGER_OPS and n.domain in ("", "ai.onnx"):
            skip |= v.integer(n, producer, consumers)
        elif n.op_type == "QuantizeLinear" and len(n.input) > 1 and g.is_const(n.input[1]) \
                and g.const(n.input[1]).size == 1:
            qparams[n.output[0]] = (n.input[1], n.input[2] if len(n.input) > 2 else "")
            v.nodes.append(n)
        elif n.input and n.input[0] in qparams and n.domain in ("", "ai.onnx") and n.op_type not in QUANTIZATION_OPS:
            # a float op run on a quantized tensor (QOperator graphs run MaxPool, Reshape, ... on uint8): its
            # output keeps the input's scale; ops whose backward reads values see them dequantized
            qparams[n.output[0]] = qparams[n.input[0]]
            if n.op_type in VALUE_FREE_OPS:
                v.nodes.append(n)
            else:
                v.wrap(n, *qparams[n.input[0]])
        else:
            v.nodes.append(n)
    for j, n in enumerate(v.nodes):
        if any(i in rename for i in n.input):
            # a copy: the forward model's own nodes are never modified
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.input[:] = [rename.get(i, i) for i in n.input]
            v.nodes[j] = c
    _recompute_data_path(g, v)
    g.walk(v.nodes, v.consts)
    g.virtual.update(v.virtual)
    g.virtual.update(v.dq_nodes)
    g.virtual_consts.update(v.consts)


def dequantized_table(g, node, table: str) -> str:
    """The float values of a quantized word embedding (token models: the baseline token's embedding): the integer
    table dequantized by `node` (the DequantizeLinear of the Gather's output; a per-axis scale runs along the
    embedding width, the table's axis 1), or the view's constant of a DequantizeLinear that makes the table."""
    name = f"{PREFIX}/{table}"
    if name in g.initializers:
        return name
    ins = list(node.input) + [""]
    arr = dequantize(g.const(table), g.const(ins[1]), g.const(ins[2]) if ins[2] else None, 1)
    g.initializers[name] = numpy_helper.from_array(arr, name)  # read in numpy only, never written
    return name
