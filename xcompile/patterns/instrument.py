"""The instrumented forward graph: per linear layer, in-graph reductions of y = W x (bias-free), the gate and the
input patches (im2col as a depthwise Conv) to float64 sums; or, raw, the patches / outputs / gates themselves."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph import attr as _attr
from ..graph import attrs as attrs_of
from ..sessions import session
from .layers import LinearLayer


def _identity_kernel(cin: int, kernel: tuple) -> np.ndarray:
    K = int(np.prod(kernel))
    E = np.zeros((cin * K, 1) + tuple(kernel), np.float32)
    flat = E.reshape(cin, K, K)
    flat[:, np.arange(K), np.arange(K)] = 1.0
    return E


def instrument(g, layers: list[LinearLayer], raw: bool = False) -> tuple[onnx.ModelProto, list[dict]]:
    """The canonical forward graph plus, per layer, the in-graph reductions (or, with raw=True, the
    patches [g, S, Dg], pre-bias outputs [g, Cg, S] and gates [g, Cg, S] themselves)."""
    from ..backward.builder import Builder
    from ..write.writer import dequantized_view_part
    src = g.model.graph
    reserved = ({t.name for t in src.initializer} | {i.name for i in src.input} |
                {o for n in src.node for o in n.output} | {n.name for n in src.node})
    b = Builder(g.opset, prefix="xc/fit", reserved=reserved)
    outs = []
    DOUBLE = TensorProto.DOUBLE
    for i, L in enumerate(layers):
        node = g.producer[L.key]
        C = L.channels
        G = L.groups
        Cg, Dg = C // G, L.w2d.shape[1]
        with b.scope(f"L{i}"):
            m_src = b.cast(b.op("Greater", [L.gate, b.f32(0.0)], "active"), TensorProto.FLOAT, "gate")
            if L.op == "Conv":
                attrs = attrs_of(node)
                kernel = tuple(L.weight_shape[2:])
                attrs["kernel_shape"] = list(kernel)
                y = b.op("Conv", [L.input, L.weight_name], "y_prebias", **attrs)
                cin = g.shape(L.input)[1]
                pads = attrs.get("pads", [0] * (2 * len(kernel)))
                trivial = (all(k == 1 for k in kernel) and all(s == 1 for s in attrs.get("strides", [1] * len(kernel)))
                           and not any(pads) and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", "NOTSET", "VALID"))
                if trivial:
                    P = L.input
                else:
                    pattrs = dict(attrs, group=int(cin))
                    P = b.op("Conv", [L.input, b.const(_identity_kernel(int(cin), kernel), hint="im2col_kernel")],
                             "patches", **pattrs)
                Lpos = L.positions
                P4 = b.reshape(P, [-1, G, Dg, Lpos], "patches_grouped")
                Pt = b.reshape(b.transpose(P4, [1, 0, 3, 2]), [G, -1, Dg], "patches_rows")  # [g, S, Dg]
                y4 = b.reshape(y, [-1, G, Cg, Lpos], "y_grouped")
                m4 = b.reshape(m_src, [-1, G, Cg, Lpos], "gate_grouped")
                cat_axis = 2
                to_rows = lambda t, k, h: b.reshape(b.transpose(t, [1, 2, 0, 3]), [G, k * Cg, -1], h)  # noqa: E731
            else:
                X = L.input
                xs = g.shape(X)
                if L.op == "Gemm":
                    if int(_attr(node, "transA", 0)):
                        X = b.transpose(X, [1, 0], "x_rows")
                    y = b.op("Gemm", [X, L.weight_name], "y_prebias", alpha=float(_attr(node, "alpha", 1.0)),
                             transB=int(_attr(node, "transB", 0)))
                else:
                    if len(xs) > 2:
                        X = b.reshape(X, [-1, xs[-1]], "x_rows")
                    y = b.op("MatMul", [X, L.weight_name], "y_prebias")
                Pt = b.unsqueeze(X, [0], "patches_rows")          # [1, S, D]
                y4 = y                                            # [S, C]
                m4 = b.reshape(m_src, [-1, C], "gate_rows")
                cat_axis = 1
                to_rows = lambda t, k, h: b.unsqueeze(b.transpose(t, [1, 0]), [0], h)  # noqa: E731  [1, kC, S]
            if raw:
                outs.append({"patches": Pt, "y": to_rows(y4, 1, "y_rows"), "gate": to_rows(m4, 1, "gate_rows_t")})
                continue
            ym = b.mul(y4, m4, "y_active")
            yy = b.mul(y4, y4, "y_sq")
            yym = b.mul(yy, m4, "y_sq_active")
            Y5 = b.op("Concat", [y4, ym, m4, yy, yym], "moments", axis=cat_axis)
            Y5r = b.cast(to_rows(Y5, 5, "moments_rows"), DOUBLE, "moments_f64")      # [g, 5Cg, S]
            Ptd = b.cast(Pt, DOUBLE, "patches_f64")                                   # [g, S, Dg]
            V = b.reduce("ReduceSum", Y5r, [2], keepdims=0, hint="sum_moments")        # [g, 5Cg]
            Y3 = b.slice(Y5r, [0], [3 * Cg], [1], hint="xy_weights")
            XY = b.op("MatMul", [Y3, Ptd], "sum_xy")                                   # [g, 3Cg, Dg]
            SX = b.reduce("ReduceSum", Ptd, [1], keepdims=0, hint="sum_x")             # [g, Dg]
            outs.append({"xy": XY, "v": V, "sx": SX})
    names = [t for o in outs for t in o.values()]
    dtype = TensorProto.FLOAT if raw else DOUBLE
    view_nodes, view_consts = dequantized_view_part(g, b.nodes)  # quantized models: the layers' float view
    graph = helper.make_graph(list(src.node) + view_nodes + b.nodes, "xcompile_fit", list(src.input),
                              [helper.make_tensor_value_info(n, dtype, None) for n in names],
                              initializer=list(src.initializer) + view_consts + b.initializers)
    model = helper.make_model(graph, opset_imports=list(g.model.opset_import), ir_version=g.model.ir_version,
                              producer_name="xcompile-fit")
    return model, outs


def _session(model: onnx.ModelProto, threads: Optional[int] = None):
    return session(model, threads=threads)


class RawActivations:
    """Per layer: patches [g, S, Dg], y [g, Cg, S], gate [g, Cg, S] for the rows of a batch (for the
    signal-quality evaluation and tests). One session, reused for every batch."""

    def __init__(self, g, layers, threads: Optional[int] = None):
        m, outs = instrument(g, layers, raw=True)
        self.session = _session(m, threads)
        self.input_name = g.data_input
        self.names = [n for o in outs for n in (o["patches"], o["y"], o["gate"])]
        self.n_layers = len(layers)

    def __call__(self, x: np.ndarray) -> list[dict]:
        res = self.session.run(self.names, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return [{"patches": res[3 * i], "y": res[3 * i + 1], "gate": res[3 * i + 2]} for i in range(self.n_layers)]
