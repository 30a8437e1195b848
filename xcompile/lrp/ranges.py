"""Value-range analysis: an interval [lo, hi] for every tensor of a forward graph, by interval arithmetic over its
nodes in order (Cousot & Cousot 1977, "Abstract interpretation"; here the interval domain only).

What LRP needs from it are sign facts: a tensor with lo >= 0 (after a ReLU, ReLU6, Sigmoid, Softmax, Abs, Exp, a
pool or a reshuffle of such) has x- = min(x, 0) identically 0, so the z+ / alpha-beta / gamma terms on x- vanish,
and x+ = x needs no Relu. The facts are sound for float arithmetic, not only for reals: rounding is monotone and
maps 0 to 0, so sums and products of non-negative numbers stay non-negative and every bound computed here from the
endpoints holds for the rounded results too. Unknown ops, non-constant inputs and NaN give (-inf, inf)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np

from ..graph import attr

INF = math.inf


@dataclass(frozen=True)
class Range:
    lo: float = -INF
    hi: float = INF

    @property
    def nonneg(self) -> bool:
        return self.lo >= 0

    @property
    def nonpos(self) -> bool:
        return self.hi <= 0

    def hull(self, *others: "Range") -> "Range":
        return Range(min([self.lo] + [o.lo for o in others]), max([self.hi] + [o.hi for o in others]))


ANY = Range()
UNIT = Range(0.0, 1.0)


def _mul(a: Range, b: Range) -> Range:
    if a == Range(0.0, 0.0) or b == Range(0.0, 0.0):
        return Range(0.0, 0.0)
    ps = [x * y for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    if any(math.isnan(p) for p in ps):  # 0 * inf: the product of an unbounded and a zero-touching range
        ps = [p for p in ps if not math.isnan(p)] + [0.0]
    return Range(min(ps), max(ps))


def _add(a: Range, b: Range) -> Range:
    return Range(a.lo + b.lo, a.hi + b.hi)


def _neg(a: Range) -> Range:
    return Range(-a.hi, -a.lo)


def _div(a: Range, b: Range) -> Range:
    if b.lo > 0 or b.hi < 0:
        inv = Range(1.0 / b.hi, 1.0 / b.lo)
        return _mul(a, inv)
    if (a.nonneg and b.lo >= 0) or (a.nonpos and b.hi <= 0):  # x / y with y >= 0: sign of x (or NaN at 0 / 0)
        return Range(0.0, INF)
    return ANY


def _clip(a: Range, lo: Optional[float], hi: Optional[float]) -> Range:
    lo = -INF if lo is None else lo
    hi = INF if hi is None else hi
    return Range(min(max(a.lo, lo), hi), max(min(a.hi, hi), lo))


def _monotone(f):
    return lambda a: Range(f(a.lo), f(a.hi))


def _safe(f, default):
    def g(v):
        try:
            return f(v)
        except (OverflowError, ValueError):
            return default
    return g


_exp = _safe(math.exp, INF)
UNARY: dict[str, Callable[[Range], Range]] = {
    "Relu": lambda a: Range(max(a.lo, 0.0), max(a.hi, 0.0)),
    "Sigmoid": lambda a: UNIT, "HardSigmoid": lambda a: UNIT, "Softmax": lambda a: UNIT,
    "Tanh": lambda a: Range(-1.0, 1.0), "Erf": lambda a: Range(-1.0, 1.0), "Softsign": lambda a: Range(-1.0, 1.0),
    "Abs": lambda a: Range(0.0 if a.lo <= 0 <= a.hi else min(abs(a.lo), abs(a.hi)), max(abs(a.lo), abs(a.hi))),
    "Exp": lambda a: Range(_exp(a.lo) if a.lo > -INF else 0.0, _exp(a.hi)),
    "Softplus": lambda a: Range(0.0, INF),
    "Sqrt": lambda a: Range(math.sqrt(max(a.lo, 0.0)), math.sqrt(a.hi) if a.hi >= 0 else 0.0),
    "Neg": _neg,
    "Identity": lambda a: a, "Cast": lambda a: a, "Dropout": lambda a: a,
    "Floor": _monotone(lambda v: math.floor(v) if math.isfinite(v) else v),
    "Ceil": _monotone(lambda v: math.ceil(v) if math.isfinite(v) else v),
}
# ops whose output values are a selection / rearrangement / order statistic / mean of input 0's values
SAME = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Tile", "Slice", "Gather",
                  "GatherElements", "GatherND", "Split", "DepthToSpace", "SpaceToDepth", "MaxPool", "GlobalMaxPool",
                  "GlobalAveragePool", "ReduceMax", "ReduceMin", "ReduceMean", "Resize", "Upsample", "TopK"})
# sign-preserving sums of input 0's values (bounds unknown, signs kept)
SIGNED = frozenset({"ReduceSum", "CumSum", "LpPool", "GlobalLpPool"})


def _const_range(v: np.ndarray) -> Range:
    if v.size == 0 or v.dtype.kind not in "fiub":
        return ANY
    v = v.astype(np.float64)
    if np.isnan(v).any():
        return ANY
    return Range(float(v.min()), float(v.max()))


def _scalar(const, name) -> Optional[float]:
    v = const(name) if name else None
    return None if v is None or v.size != 1 else float(np.asarray(v).ravel()[0])


def _node(n, r, const) -> Range:
    op = n.op_type
    ins = [r(i) for i in n.input]
    if op in UNARY:
        return UNARY[op](ins[0])
    if op in SAME:
        return ins[0]
    if op in SIGNED:
        a = ins[0]
        return Range(0.0, INF) if a.nonneg else Range(-INF, 0.0) if a.nonpos else ANY
    if op == "AveragePool":  # zero padding may enter the mean
        return ins[0].hull(Range(0.0, 0.0)) if any(attr(n, "pads", []) or []) or attr(n, "auto_pad", "NOTSET") \
            not in ("NOTSET", "VALID") else ins[0]
    if op == "Clip":
        if len(n.input) > 1 or attr(n, "min") is None:  # opset >= 11: bounds as inputs
            lo = _scalar(const, n.input[1]) if len(n.input) > 1 else None
            hi = _scalar(const, n.input[2]) if len(n.input) > 2 else None
            if (len(n.input) > 1 and n.input[1] and lo is None) or (len(n.input) > 2 and n.input[2] and hi is None):
                return ANY  # a computed bound
        else:
            lo, hi = attr(n, "min"), attr(n, "max")
        return _clip(ins[0], lo, hi)
    if op == "LeakyRelu":
        al = attr(n, "alpha", 0.01)
        return ins[0] if ins[0].nonneg else _mul(ins[0], Range(al, 1.0)) if 0 <= al <= 1 else ANY
    if op == "Pad":
        mode = attr(n, "mode", "constant") or "constant"
        if mode != "constant":
            return ins[0]
        v = _scalar(const, n.input[2]) if len(n.input) > 2 and n.input[2] else 0.0
        return ANY if v is None else ins[0].hull(Range(v, v))
    if op == "Concat" or op == "Max" or op == "Min" or op == "Where":
        xs = ins[1:] if op == "Where" else ins
        if op == "Max":
            return Range(max(x.lo for x in xs), max(x.hi for x in xs))
        if op == "Min":
            return Range(min(x.lo for x in xs), min(x.hi for x in xs))
        return xs[0].hull(*xs[1:])
    if op in ("Add", "Sum"):
        out = ins[0]
        for x in ins[1:]:
            out = _add(out, x)
        return out
    if op == "Mean":
        s = ins[0]
        for x in ins[1:]:
            s = _add(s, x)
        return _mul(s, Range(1.0 / len(ins), 1.0 / len(ins)))
    if op == "Sub":
        return _add(ins[0], _neg(ins[1]))
    if op == "Mul":
        return _mul(ins[0], ins[1])
    if op == "Div":
        return _div(ins[0], ins[1])
    if op in ("Conv", "Gemm", "MatMul"):  # non-negative weights (and bias) on a non-negative input
        if op == "MatMul" and const(n.input[1]) is None:
            xk, w, b = 1, const(n.input[0]), None
        else:
            xk, w = 0, const(n.input[1])
            b = const(n.input[2]) if op != "MatMul" and len(n.input) > 2 and n.input[2] else None
            if b is None and op != "MatMul" and len(n.input) > 2 and n.input[2]:
                return ANY  # a computed bias
        if w is None or not ins[xk].nonneg or attr(n, "alpha", 1.0) < 0 or attr(n, "beta", 1.0) < 0:
            return ANY
        if np.all(w >= 0) and (b is None or np.all(b >= 0)):
            return Range(0.0, INF)
        return ANY
    return ANY


def analyze(nodes: Iterable, const: Callable[[str], Optional[np.ndarray]],
            inputs: Optional[dict] = None) -> dict:
    """Interval of every tensor produced by `nodes` (in topological order). `const(name)`: numpy value of an
    initializer or None; `inputs`: known ranges of graph inputs (default unbounded). Missing names: (-inf, inf)."""
    known: dict = dict(inputs or {})

    def r(name):
        if not name:
            return ANY
        if name not in known:
            v = const(name)
            known[name] = ANY if v is None else _const_range(np.asarray(v))
        return known[name]

    for n in nodes:
        out = _node(n, r, const)
        for k, o in enumerate(n.output):
            if o:
                known[o] = out if k == 0 or n.op_type == "Split" else ANY
    return known


def of(g) -> dict:
    """The ranges of a ForwardGraph's tensors, computed once per graph (the data input unbounded) and kept in the
    graph's declared `derived` cache."""
    if "value_ranges" not in g.derived:
        g.derived["value_ranges"] = analyze(g.nodes, g.const)
    return g.derived["value_ranges"]


def range_of(g, name: str) -> Range:
    r = of(g).get(name)
    if r is None:
        v = g.const(name)
        r = ANY if v is None else _const_range(np.asarray(v))
    return r


def push_box(g, live, n, lo, hi):
    """Element-wise bounds [lo, hi] of the data input carried through the Sub/Add/Mul/Div-by-constant nodes between
    it and node n (z^B's bounds at the layer's input, e.g. through a Normalization); where the path is not such a
    chain the bounds are taken as given at the layer input."""
    chain, t = [], next(i for i in n.input if i in live)
    while t != g.data_input and t in g.producer:
        p = g.producer[t]
        live_in = [i for i in p.input if i in live]
        if len(live_in) != 1:
            return lo, hi
        chain.append(p)
        t = live_in[0]
    for p in reversed(chain):
        op = p.op_type
        if op in ("Identity", "Cast", "Dropout"):
            continue
        if op not in ("Sub", "Add", "Mul", "Div") or len(p.input) != 2:
            return lo, hi
        k = 0 if p.input[0] in live else 1
        c = g.const(p.input[1 - k])
        if c is None:
            return lo, hi
        c = np.asarray(c, np.float64)
        if op == "Add":
            lo, hi = lo + c, hi + c
        elif op == "Sub":
            lo, hi = (lo - c, hi - c) if k == 0 else (c - hi, c - lo)
        elif op == "Mul":
            a, b = lo * c, hi * c
            lo, hi = np.minimum(a, b), np.maximum(a, b)
        else:
            a, b = (lo / c, hi / c) if k == 0 else (c / lo, c / hi)
            lo, hi = np.minimum(a, b), np.maximum(a, b)
    return lo, hi
