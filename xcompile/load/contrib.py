"""The unfused view of onnxruntime's ``com.microsoft`` fused ops: what the backward walks (docs/deployment.md,
"onnxruntime-optimized transformers").

The explainer's forward stays the optimized model's own, node for node (its fused kernels are why users optimize), so
its scores are exactly the model's. The backward instead walks each fused node's expansion into the ai.onnx ops it
fuses (load/contrib_ops.py, written from onnxruntime's documented maths), computed in float32 from the fused node's
inputs: every method reuses the ai.onnx ops' backward and every LRP rule set classifies the expansion as it classifies
the unfused graph an exporter writes. As in the dequantized view of quantized models (load/quantized.py), the
expansion's tensors are ``virtual``: the writer emits the nodes that make the ones the backward reads; the fused
node's own outputs are read from the forward (float16 ones through a Cast).

EmbedLayerNormalization's word look-up (``Gather(word_embedding, input_ids)``) becomes the token model's embedding
output E (``embedding_relevance``)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

from ..backward.builder import Builder
from ..errors import XCompileError
from ..graph import attr
from .contrib_ops import EXPANSIONS
from .loader import embedding_output
from .quantized_ops import QOPS

MS = "com.microsoft"
PREFIX = "xc/contrib"
# contrib ops in the default domain (onnxruntime registers SimplifiedLayerNormalization there)
DEFAULT_DOMAIN = {"SimplifiedLayerNormalization"}
SUPPORTED = sorted(EXPANSIONS)
ADVICE = ("re-export the model without onnxruntime's transformer optimizer (or with that fusion turned off in "
          "FusionOptions), or file an issue naming the op")


def is_contrib(n: onnx.NodeProto) -> bool:
    return (n.domain == MS and n.op_type in EXPANSIONS) or (n.domain in ("", "ai.onnx") and n.op_type in DEFAULT_DOMAIN)


def word_embedding_name(node: onnx.NodeProto) -> str:
    """The tensor E = word_embedding[input_ids] that the view of EmbedLayerNormalization `node` computes."""
    return embedding_output(node)


class _Refused(Exception):
    pass


class _ViewBuilder(Builder):
    """The method Builder's naming and opset-aware ops; constants named under the view's prefix (a method's own
    builder shares small constants graph-wide under xc/const/)."""

    def _const_name(self, arr):
        return self.fresh("const")


class _Expansion:
    """What an expansion (load/contrib_ops.py) sees of the fused node: its inputs in float32, shapes, attributes."""

    def __init__(self, view, node):
        self.view, self.node, self.g, self.b = view, node, view.g, view.b
        self.start = len(self.b.nodes)
        self.f32_cache: dict = {}
        self.renamed: dict = {}

    def raw(self, k: int) -> str:
        return self.node.input[k] if k < len(self.node.input) else ""

    def x(self, k: int) -> str:
        return self.f32(self.raw(k)) if self.raw(k) else ""

    def f32(self, name: str) -> str:
        """`name` as float32: float16 tensors through one Cast (the expansion computes in float32)."""
        if self.view.dtype(name, self) != np.float16:
            return name
        if name not in self.f32_cache:
            if self.g.is_const(name):  # a constant stays one (LRP's rules see a linear layer's weight)
                self.f32_cache[name] = self.b.const(self.g.const(name).astype(np.float32), hint="float32")
            else:
                self.f32_cache[name] = self.b.cast(name, TensorProto.FLOAT, "float32")
        return self.f32_cache[name]

    def attr(self, name, default=None):
        return attr(self.node, name, default)

    def shape(self, k: int) -> tuple:
        return self.shape_of(self.raw(k))

    def shape_of(self, name: str) -> tuple:
        return self.view.shape(name, self)

    def refuse(self, why: str):
        raise _Refused(why)

    def word(self, e: str) -> str:
        """The word look-up's output, renamed to the token model's embedding E."""
        name = word_embedding_name(self.node)
        self.renamed[e] = name
        return e

    def forward_output(self, k: int, t: str) -> None:
        """`t` recomputes the fused node's non-float output k (used by copies of the forward on repeated rows)."""
        self.renamed[t] = self.node.output[k]


class _View:
    def __init__(self, g, where):
        self.g, self.where = g, where
        self.b = _ViewBuilder(g.opset, prefix=PREFIX, reserved=_names(g))
        self.shapes: dict = {}
        self.dtypes: dict = {}

    def dtype(self, name, exp=None):
        if exp is not None and name not in self.dtypes and any(name in n.output for n in self.b.nodes[exp.start:]):
            self.infer(exp)
        if name in self.dtypes:
            return self.dtypes[name]
        if self.g.is_const(name):
            return np.dtype(helper.tensor_dtype_to_np_dtype(self.g.initializers[name].data_type))
        if name in self.g.dtypes:
            return np.dtype(self.g.dtypes[name])
        for vi in self.g.model.graph.input:
            if vi.name == name:
                return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        return np.dtype(np.float32)

    def shape(self, name, exp=None):
        if name in self.shapes:
            return self.shapes[name]
        try:
            return self.g.shape(name)
        except KeyError:
            pass
        if exp is not None:
            self.infer(exp)
        if name not in self.shapes:
            raise XCompileError(f"{self.where}: internal error: no shape for {name!r}")
        return self.shapes[name]

    def infer(self, exp):
        """Shapes and dtypes of the expansion's tensors so far: onnx shape inference on the expansion alone, its
        outside inputs declared with their measured shapes (batch 'N')."""
        nodes = self.b.nodes[exp.start:]
        made = {o for n in nodes for o in n.output}
        consts = {t.name: t for t in self.b.initializers}
        outside = [i for n in nodes for i in n.input if i and i not in made and i not in consts]
        inputs = []
        for i in dict.fromkeys(outside):
            shape = self.shape(i)
            dims = ["N" if d is None else int(d) for d in shape]
            inputs.append(helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(self.dtype(i)), dims))
        graph = helper.make_graph(nodes, "expansion", inputs, [], initializer=list(consts.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.g.opset)])
        try:
            model = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception as e:  # noqa: BLE001
            raise XCompileError(f"{self.where}: node {exp.node.name!r} ({exp.node.op_type}): internal error expanding "
                                f"the fused op: {str(e).splitlines()[0]}") from None
        for vi in model.graph.value_info:
            t = vi.type.tensor_type
            self.shapes[vi.name] = tuple(None if d.dim_param or not d.HasField("dim_value") else d.dim_value
                                         for d in t.shape.dim)
            self.dtypes[vi.name] = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))

    def expand(self, n):
        name = n.name or n.output[0]
        exp = _Expansion(self, n)
        with self.b.scope(name):
            outs = EXPANSIONS[n.op_type](exp, n)
            finals = {}
            for k, t in enumerate(outs):
                if t is None or k >= len(n.output) or not n.output[k]:
                    continue
                if self.dtype(n.output[k]) == np.float16:
                    t = self.b.cast(t, TensorProto.FLOAT16, "float16")
                finals[t] = n.output[k]
        self.infer(exp)
        rename = {**finals, **exp.renamed}
        nodes = self.b.nodes[exp.start:]
        for node in nodes:
            node.input[:] = [rename.get(i, i) for i in node.input]
            node.output[:] = [rename.get(o, o) for o in node.output]
        for old, new in rename.items():
            if old in self.shapes:
                self.shapes[new], self.dtypes[new] = self.shapes[old], self.dtypes[old]
        return nodes, set(finals.values()) | {v for v in exp.renamed.values() if v in n.output}


def _names(g) -> set:
    m = g.model.graph
    return {t.name for t in m.initializer} | {i.name for i in m.input} | {o for n in m.node for o in n.output} | \
        {n.name for n in m.node}


def refuse_unknown(model: onnx.ModelProto, data_input: str, where: str) -> None:
    """com.microsoft ops with no expansion on the data path: one line naming them all and what to do."""
    reach, found = {data_input}, []
    for n in model.graph.node:
        if any(i in reach for i in n.input):
            reach.update(o for o in n.output if o)
            if n.domain == MS and n.op_type not in EXPANSIONS and n.op_type not in QOPS \
                    and n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                found.append(f"{n.name or n.output[0]!r} ({n.op_type})")
    if found:
        raise XCompileError(f"{where}: onnxruntime contrib op node(s) {', '.join(found)} have no backward (supported "
                            f"contrib ops: {', '.join(SUPPORTED)}): {ADVICE}")


def unfused_view(g, where: str = "model") -> None:
    """Replace the fused contrib nodes in `g`'s node list (what the backward walks) by their ai.onnx expansions; record
    the expansion's tensors as virtual (writer: emitted when the backward reads them), with shapes and dtypes."""
    if not any(is_contrib(n) for n in g.nodes):
        return
    v = _View(g, where)
    nodes, refused = [], []
    for n in g.nodes:
        if not is_contrib(n):
            nodes.append(n)
            continue
        try:
            made, kept = v.expand(n)
        except _Refused as e:
            refused.append(f"{n.name or n.output[0]!r} ({n.op_type}: {e})")
            continue
        lost = [o for k, o in enumerate(n.output) if o and o not in kept and (g.consumers.get(o) or o == g.explained)
                and np.dtype(v.dtype(o)).kind == "f"]
        if lost:
            refused.append(f"{n.name or n.output[0]!r} ({n.op_type}: its output {lost[0]!r} is read downstream)")
            continue
        nodes.extend(made)
        for node in made:
            for o in node.output:
                if o and o not in kept:
                    g.virtual[o] = node
                    g.shapes[o], g.dtypes[o] = v.shapes.get(o), v.dtypes.get(o, np.dtype(np.float32))
    if refused:
        raise XCompileError(f"{where}: fused onnxruntime op(s) in a mode the explainer does not expand: "
                            f"{', '.join(refused)}; {ADVICE}")
    consts = {t.name: t for t in v.b.initializers}
    g.virtual_consts.update(consts)
    g.walk(nodes, consts)
