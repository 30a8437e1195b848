"""ONNX LSTM / GRU / RNN unrolled over the sequence length fixed at compile time into primitive ops (Split, Squeeze,
Concat, Gemm with a constant weight, Sigmoid / Tanh / Relu, Mul, Add, Sub), so that the generic backward engine
needs nothing new and every method sees an ordinary graph.

The unrolled cell is written so that LRP through it follows Arras et al. 2017, "Explaining Recurrent Neural Network
Predictions in Sentiment Analysis": each step's linear map is ONE Gemm over [x_t, h_{t-1}] with the summed biases
(the rule set's dense rule treats input and recurrent weights as one layer, the bias absorbing its share); every
gate is a Sigmoid output multiplied with its signal (the gate is a constant weight there, see methods/lrp.py);
GRU's (1 - z) is Sub(1, Sigmoid); c_t = f * c_{t-1} + i * g is one Add (split in proportion to its terms).
Initial states (given or zero) enter as batch-sized tensors that carry no relevance: what reaches them is absorbed.
Equations: the ONNX operator specification (LSTM-14, GRU-14, RNN-14)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import XCompileError
from ..graph import attrs
from ..protobuf_limit import too_large
from .constants import remove_unused_initializers
from .rewrite import GraphIndex, MatchResult, RewriteRule, apply_rules

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# activation functions of the ONNX spec's list that are parameter-free ONNX ops (others are refused)
ACTS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


def _dims_of(gi: GraphIndex, name: str) -> Optional[list]:
    """The dims of tensor `name` (ints, or None where symbolic) from the declared and inferred shapes (inferred once)."""
    if not hasattr(gi, "_recurrent_dims"):
        g = gi.graph
        vis = list(g.value_info) + list(g.input) + list(g.output)
        if not too_large(gi.model):
            try:
                vis = list(onnx.shape_inference.infer_shapes(gi.model).graph.value_info) + vis
            except Exception:  # noqa: BLE001 - a model shape inference cannot follow: declared shapes only
                pass
        gi._recurrent_dims = {}
        for vi in vis:
            if vi.name not in gi._recurrent_dims and vi.type.tensor_type.HasField("shape"):
                gi._recurrent_dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                               for d in vi.type.tensor_type.shape.dim]
        for t in gi.graph.initializer:
            gi._recurrent_dims.setdefault(t.name, list(t.dims))
    return gi._recurrent_dims.get(name)


def _input(node, k) -> str:
    return node.input[k] if k < len(node.input) else ""


class UnrollRecurrent(RewriteRule):
    name = "unroll_recurrent"
    ops = RECURRENT_OPS

    def check(self, node, gi: GraphIndex) -> MatchResult:
        op, a = node.op_type, attrs(node)
        where = f"node {node.name or node.output[0]!r} ({op})"

        def refuse(why):
            raise XCompileError(f"{where}: {why}")

        if a.get("clip") is not None:
            refuse("cell clipping (attribute clip) is not supported; export the model without it")
        if op == "LSTM" and a.get("input_forget", 0):
            refuse("coupled input and forget gates (input_forget=1) are not supported")
        direction = a.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            refuse(f"direction {direction!r} is not one of forward, reverse, bidirectional")
        n_dir = 2 if direction == "bidirectional" else 1
        acts = a.get("activations") or DEFAULT_ACTS[op] * n_dir
        if len(acts) != len(DEFAULT_ACTS[op]) * n_dir:
            refuse(f"activations {acts} do not give {len(DEFAULT_ACTS[op])} functions per direction")
        if a.get("activation_alpha") or a.get("activation_beta") or any(f.lower() not in ACTS for f in acts):
            refuse(f"activations {acts} are not supported (supported: {', '.join(ACTS.values())}, without alpha/beta)")
        W, R = gi.const(_input(node, 1)), gi.const(_input(node, 2))
        B = gi.const(_input(node, 3)) if _input(node, 3) else None
        P = gi.const(_input(node, 7)) if op == "LSTM" and _input(node, 7) else None
        if W is None or R is None or (_input(node, 3) and B is None) or (op == "LSTM" and _input(node, 7) and P is None):
            refuse("its weights W, R (and B, P where given) must be constants (initializers)")
        hidden = a.get("hidden_size", R.shape[-1])
        layout = a.get("layout", 0)
        if layout not in (0, 1):
            refuse(f"layout {layout} is not 0 or 1")
        dims = _dims_of(gi, node.input[0])
        t_axis = 1 if layout else 0
        if dims is None or len(dims) != 3 or dims[t_axis] is None:
            refuse(f"the sequence length of its input {node.input[0]!r} is not fixed (shape {dims}); recurrent "
                   "operators are unrolled over a length fixed at compile time: declare it in the model's input "
                   "shape (or with --set input_shape=)")
        T = int(dims[t_axis])
        lens = _input(node, 4)
        if lens:
            v = gi.const(lens)
            if v is None:
                refuse(f"sequence_lens {lens!r} is computed at run time, but the sequence length is frozen at "
                       f"compile time ({T}); export the model without sequence_lens (every row of full length)")
            if np.any(np.asarray(v) != T):
                refuse(f"sequence_lens {np.asarray(v).tolist()} is not the full length {T} of every row; the length is "
                       "frozen at compile time: pad or cut the rows to one length and export without sequence_lens")
        return MatchResult(data={"W": W, "R": R, "B": B, "P": P, "H": int(hidden), "T": T, "layout": layout,
                                 "direction": direction, "acts": [ACTS[f.lower()] for f in acts],
                                 "lbr": a.get("linear_before_reset", 0)})

    def rewrite(self, node, gi: GraphIndex, m: MatchResult) -> None:
        e = _Emitter(gi, node)
        _Unroll(e, node, gi, m.data).run()
        gi.insert_before(node, e.nodes)


def unroll_recurrent(model, decisions: Optional[list] = None) -> int:
    """LSTM / GRU / RNN unrolled over the compiled sequence length into primitive ops (Arras et al. 2017 form)."""
    gi = GraphIndex.of(model)
    if not any(n.op_type in RECURRENT_OPS for n in gi.nodes):
        return 0
    n = apply_rules(gi, [UnrollRecurrent()], decisions)
    if n:
        remove_unused_initializers(gi)
    return n


class _Emitter:
    """New nodes (kept in order) and initializers, with readable names under the recurrent node's name."""

    def __init__(self, gi: GraphIndex, node):
        self.gi, self.nodes = gi, []
        self.prefix = (node.name or node.output[0]) + "/unrolled"
        self.taken = {o for n in gi.nodes for o in n.output} | set(gi.inits) | {i.name for i in gi.graph.input}
        self.dtype = onnx.helper.tensor_dtype_to_np_dtype(gi.inits[node.input[1]].data_type)

    def fresh(self, hint: str) -> str:
        name, k = f"{self.prefix}/{hint}", 1
        while name in self.taken:
            name, k = f"{self.prefix}/{hint}_{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, arr, hint: str, dtype=None) -> str:
        name = self.fresh(hint)
        self.gi.add_initializer(numpy_helper.from_array(np.asarray(arr, dtype or self.dtype), name))
        return name

    def op(self, op: str, inputs, hint: str, outputs=None, n_out: int = 1, **kw):
        outs = outputs or [self.fresh(f"{hint}" if n_out == 1 else f"{hint}{k}") for k in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), list(outs), name=self.fresh(f"{hint}/{op}"),
                                           **{k: v for k, v in kw.items() if v is not None}))
        return outs[0] if n_out == 1 else outs


class _Unroll:
    def __init__(self, e: _Emitter, node, gi: GraphIndex, d: dict):
        self.e, self.node, self.gi, self.d = e, node, gi, d
        self.op, self.H, self.T, self.layout = node.op_type, d["H"], d["T"], d["layout"]
        self.n_dir = 2 if d["direction"] == "bidirectional" else 1
        self.last_c: list = []   # LSTM: each direction's final cell state (Y_c)

    def used(self, k: int) -> bool:
        out = _output(self.node, k)
        return bool(out) and (out in self.gi.outputs or bool(self.gi.consumers.get(out)))

    def run(self) -> None:
        e, T, H = self.e, self.T, self.H
        t_axis = 1 if self.layout else 0
        steps = e.op("Split", [self.node.input[0], e.const(np.full(T, 1, np.int64), "split_sizes", np.int64)],
                     "x_steps", n_out=T, axis=t_axis) if T > 1 else [self.node.input[0]]
        axis = e.const(np.array([t_axis], np.int64), "time_axis", np.int64)
        xs = [e.op("Squeeze", [s, axis], f"x_t{t}") for t, s in enumerate(steps)]
        rows = e.op("Slice", [e.op("Shape", [xs[0]], "x_shape"), e.const([0], "zero", np.int64),
                              e.const([1], "one", np.int64)], "batch")
        self.state_shape = e.op("Concat", [rows, e.const([H], "hidden", np.int64)], "state_shape", axis=0)
        hs, finals = [], []
        for d in range(self.n_dir):
            reverse = self.d["direction"] == "reverse" or d == 1
            h_seq, last = self.direction(d, xs, reverse)
            hs.append(h_seq)
            finals.append(last)
        self.outputs(hs, finals)

    # ---------------------------------------------------------------------------------- one direction
    def initial(self, slot: int, d: int, tag: str) -> str:
        """The initial state of direction d as an [N, H] tensor: given (any batch that broadcasts), else zeros."""
        e, given = self.e, _input(self.node, slot)
        if given:
            s = e.op("Gather", [given, e.const(np.array(d, np.int64), f"dir{d}", np.int64)], f"d{d}/{tag}0_given",
                     axis=1 if self.layout else 0)
        else:
            s = e.const(np.zeros((1, self.H)), f"d{d}/{tag}0_zero")
        return e.op("Expand", [s, self.state_shape], f"d{d}/{tag}0")

    def direction(self, d: int, xs, reverse: bool):
        e, H, op, data = self.e, self.H, self.op, self.d
        W, R = data["W"][d].astype(np.float64), data["R"][d].astype(np.float64)
        G = GATES[op]
        B = data["B"][d].astype(np.float64) if data["B"] is not None else np.zeros(2 * G * H)
        Wb, Rb = B[:G * H], B[G * H:]
        acts = data["acts"][d * len(DEFAULT_ACTS[op]):(d + 1) * len(DEFAULT_ACTS[op])]
        h, c = self.initial(5, d, "h"), (self.initial(6, d, "c") if op == "LSTM" else None)
        order = range(self.T - 1, -1, -1) if reverse else range(self.T)
        out = {}
        if op == "GRU":
            zr = slice(0, 2 * H)
            w_zr = e.const(np.concatenate([W[zr], R[zr]], 1).T, f"d{d}/W_zr")
            b_zr = e.const(Wb[zr] + Rb[zr], f"d{d}/b_zr")
            hh = slice(2 * H, 3 * H)
            if data["lbr"]:
                gru_w = (e.const(W[hh].T, f"d{d}/W_h"), e.const(Wb[hh], f"d{d}/Wb_h"),
                         e.const(R[hh].T, f"d{d}/R_h"), e.const(Rb[hh], f"d{d}/Rb_h"))
            else:
                gru_w = (e.const(np.concatenate([W[hh], R[hh]], 1).T, f"d{d}/W_h"), e.const(Wb[hh] + Rb[hh], f"d{d}/b_h"))
        else:
            w_all = e.const(np.concatenate([W, R], 1).T, f"d{d}/W")
            b_all = e.const(Wb + Rb, f"d{d}/b")
        P = data["P"][d].astype(np.float64) if data["P"] is not None else None
        peep = [e.const(P[k * H:(k + 1) * H], f"d{d}/P{k}") for k in range(3)] if P is not None else None
        sizes = e.const(np.full(4 if op == "LSTM" else 2, H, np.int64), f"d{d}/gate_sizes", np.int64) if G > 1 else None
        one = e.const(np.ones(1), f"d{d}/one") if op == "GRU" else None
        for t in order:
            tag = f"d{d}/t{t}"
            x = xs[t]
            xh = e.op("Concat", [x, h], f"{tag}/xh", axis=1)
            if op == "RNN":
                h = e.op(acts[0], [e.op("Gemm", [xh, w_all, b_all], f"{tag}/z")], f"{tag}/h")
            elif op == "LSTM":
                z = e.op("Gemm", [xh, w_all, b_all], f"{tag}/z")
                zi, zo, zf, zc = e.op("Split", [z, sizes],
                                      f"{tag}/z_", n_out=4, axis=1)
                if peep is not None:  # i, f see c_{t-1}; o sees c_t
                    zi = e.op("Add", [zi, e.op("Mul", [c, peep[0]], f"{tag}/peep_i")], f"{tag}/zi_peep")
                    zf = e.op("Add", [zf, e.op("Mul", [c, peep[2]], f"{tag}/peep_f")], f"{tag}/zf_peep")
                gi_, gf = e.op(acts[0], [zi], f"{tag}/i"), e.op(acts[0], [zf], f"{tag}/f")
                g = e.op(acts[1], [zc], f"{tag}/g")
                c = e.op("Add", [e.op("Mul", [gf, c], f"{tag}/f_c"), e.op("Mul", [gi_, g], f"{tag}/i_g")], f"{tag}/c")
                if peep is not None:
                    zo = e.op("Add", [zo, e.op("Mul", [c, peep[1]], f"{tag}/peep_o")], f"{tag}/zo_peep")
                go = e.op(acts[0], [zo], f"{tag}/o")
                h = e.op("Mul", [go, e.op(acts[2], [c], f"{tag}/c_act")], f"{tag}/h")
            else:
                zz, zr_ = e.op("Split", [e.op("Gemm", [xh, w_zr, b_zr], f"{tag}/z_zr"),
                                         sizes],
                               f"{tag}/z_", n_out=2, axis=1)
                gz, gr = e.op(acts[0], [zz], f"{tag}/z"), e.op(acts[0], [zr_], f"{tag}/r")
                if data["lbr"]:
                    xn = e.op("Gemm", [x, gru_w[0], gru_w[1]], f"{tag}/xn")
                    hn = e.op("Gemm", [h, gru_w[2], gru_w[3]], f"{tag}/hn")
                    zn = e.op("Add", [xn, e.op("Mul", [gr, hn], f"{tag}/r_hn")], f"{tag}/zn")
                else:
                    rh = e.op("Mul", [gr, h], f"{tag}/r_h")
                    zn = e.op("Gemm", [e.op("Concat", [x, rh], f"{tag}/x_rh", axis=1)] + list(gru_w), f"{tag}/zn")
                n = e.op(acts[1], [zn], f"{tag}/n")
                keep = e.op("Sub", [one, gz], f"{tag}/1-z")
                h = e.op("Add", [e.op("Mul", [keep, n], f"{tag}/1-z_n"), e.op("Mul", [gz, h], f"{tag}/z_h")], f"{tag}/h")
            out[t] = h
        if op == "LSTM":
            self.last_c.append(c)
        return [out[t] for t in range(self.T)], h

    # ---------------------------------------------------------------------------------- outputs
    def stack(self, parts, axes_each, axis, hint, output=None):
        """Unsqueeze each [N, H] part at `axes_each` and concatenate them along `axis`."""
        e = self.e
        ax = e.const(np.array(axes_each, np.int64), f"{hint}_axes", np.int64)
        if len(parts) == 1:
            return e.op("Unsqueeze", [parts[0], ax], hint, outputs=[output] if output else None)
        ups = [e.op("Unsqueeze", [p, ax], f"{hint}_part") for p in parts]
        return e.op("Concat", ups, hint, outputs=[output] if output else None, axis=axis)

    def outputs(self, hs, finals) -> None:
        e, node = self.e, self.node
        lay = self.layout
        if self.used(0):  # Y: [T, D, N, H] (layout 0) or [N, T, D, H] (layout 1)
            per_t = []
            for t in range(self.T):
                per_t.append(self.stack([hs[d][t] for d in range(self.n_dir)], [1, 2] if lay else [0, 1],
                                        2 if lay else 1, f"Y_t{t}"))
            e.op("Concat", per_t, "Y", outputs=[node.output[0]], axis=1 if lay else 0)
        for k, states in ((1, finals), (2, self.last_c)):
            if self.used(k):  # Y_h / Y_c: [D, N, H] (layout 0) or [N, D, H] (layout 1)
                self.stack(states, [1] if lay else [0], 1 if lay else 0, "Y_h" if k == 1 else "Y_c",
                           output=node.output[k])


def _output(node, k) -> str:
    return node.output[k] if k < len(node.output) else ""
