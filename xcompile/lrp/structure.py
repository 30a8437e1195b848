"""Graph facts for rule choice, asked in one place (`Structure`), so that block labels and rule binding agree."""
from __future__ import annotations

import numpy as np

from ..errors import XCompileError
from ..kinds import GATE_OPS, LINEAR_OPS, ROUTE_OPS, SCALE_OPS, SELF_GATE_OPS, linear_view
from . import ranges

REDUCE_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare", "ReduceL1"})
# elementwise maps between a reduction and the divisor of a normalisation: var + eps, sqrt, 1/x, powers, clamps
STAT_OPS = frozenset({"Sqrt", "Reciprocal", "Pow", "Add", "Sub", "Mul", "Div", "Max", "Clip", "Abs", "Expand"}) | ROUTE_OPS


class Structure:
    """THE structure queries of rule choice over the relevance path (`live`): gates, activations x * f(x),
    statistics of normalisations, layer biases, sign facts (from `ranges.py`), gate shares and z^B bounds. Block
    labels (`blocks.py`) and rule binding (`rules.py`, `treatments.py`) ask it; nothing else re-derives them."""

    def __init__(self, g, live):
        self.g, self.live = g, live

    def live_in(self, n):
        return [k for k, i in enumerate(n.input) if i in self.live]

    def chain(self, t, ops, limit=16):
        """t and its ancestors along single-live-input nodes of the given op types."""
        out = [t]
        while t in self.g.producer and len(out) < limit:
            p = self.g.producer[t]
            live = list(dict.fromkeys(i for i in p.input if i in self.live))
            if p.op_type not in ops or len(live) != 1:
                break
            t = live[0]
            out.append(t)
        return out

    def source_op(self, t, through=ROUTE_OPS):
        """The op type of the first producer of t that is not in `through` (None at a graph input)."""
        top = self.chain(t, through)[-1]
        p = self.g.producer.get(top)
        return None if p is None else p.op_type

    def gate_op(self, t, limit=16):
        """The squashing op (Sigmoid, HardSigmoid, Softmax) that makes t, through routing ops and 1 - gate (GRU's
        update share), else None: THE gate test. Softmax is a normalised gate: rule choice holds it constant in a
        product like the others; block labels call its products attention (`blocks.label`)."""
        for _ in range(limit):
            top = self.chain(t, ROUTE_OPS)[-1]
            p = self.g.producer.get(top)
            if p is None:
                return None
            if p.op_type in GATE_OPS:
                return p.op_type
            live = [i for i in p.input[1:] if i in self.live]
            if p.op_type == "Where" and len(live) == 1:  # sdpa exports guard softmax as Where(IsNaN(s), 0, s)
                t = live[0]
                continue
            one = self.g.const(p.input[0]) if p.op_type == "Sub" and len(p.input) == 2 else None
            if one is None or not np.all(one == 1):
                return None
            t = p.input[1]
        return None

    def is_gate(self, t, softmax: bool = True) -> bool:
        op = self.gate_op(t)
        return op is not None and (softmax or op != "Softmax")

    def is_softmax(self, t):
        # through Where too: PyTorch's sdpa export guards the probabilities as Where(IsNaN(s), 0, s)
        if self.source_op(t, ROUTE_OPS | {"Where"}) == "Softmax":
            return True
        top = self.chain(t, ROUTE_OPS)[-1]
        p = self.g.producer.get(top)
        return p is not None and p.op_type == "Div" and self._is_softmax_div(p)

    def _is_softmax_div(self, n):
        """exp(x) / sum(exp(x)) written out."""
        if len(n.input) != 2:
            return False
        num = self.chain(n.input[0], ROUTE_OPS)[-1]
        den = self.chain(n.input[1], ROUTE_OPS)[-1]
        pn, pd = self.g.producer.get(num), self.g.producer.get(den)
        return (pn is not None and pn.op_type == "Exp" and pd is not None and pd.op_type == "ReduceSum"
                and pd.input[0] == num)

    def self_gate(self, gate, sig, limit=32):
        """Is `gate` an elementwise function f of the (scaled) signal `sig` alone, so that gate * sig is an activation
        x * f(x) (SiLU, HardSwish, Mish, GELU as x * 0.5 (1 + erf(x / sqrt 2)) or in its tanh form
        x * 0.5 (1 + tanh(c (x + 0.044715 x^3))))? Every live path up from `gate` runs through elementwise ops (with
        constants as their other operands) and ends at `sig` or a constant multiple of it."""
        roots = set(self.chain(sig, SCALE_OPS))
        if gate in roots:
            return False  # x * x is a product of two activations, not an activation
        todo, seen = [gate], set()
        while todo:
            t = todo.pop()
            if t in roots or t in seen:
                continue
            seen.add(t)
            p = self.g.producer.get(t)
            if p is None or p.op_type not in SELF_GATE_OPS or len(seen) > limit:
                return False
            live = [i for i in p.input if i in self.live]
            if p.op_type == "Pow" and live != [p.input[0]]:
                return False  # x ** c only: a live exponent is not an elementwise map of x
            todo.extend(live)
        return True

    def statistic(self, t, depth=0):
        """Is t a statistic of an activation (std, rms, norm, mean of squares) computed by a reduction through
        elementwise maps only: the divisor of a written-out normalisation?"""
        p = self.g.producer.get(t)
        if p is None or depth > 12:
            return False
        if p.op_type in REDUCE_OPS:
            return True
        if p.op_type not in STAT_OPS:
            return False
        return any(self.statistic(i, depth + 1) for i in dict.fromkeys(p.input) if i in self.live)

    def is_mean_of(self, t, x):
        """Is t = ReduceMean(x) (through routing ops)?"""
        p = self.g.producer.get(self.chain(t, ROUTE_OPS)[-1])
        return p is not None and p.op_type == "ReduceMean" and self.chain(p.input[0], ROUTE_OPS)[-1] == \
            self.chain(x, ROUTE_OPS)[-1]

    def is_pool_of(self, t, x):
        p = self.g.producer.get(self.chain(t, ROUTE_OPS)[-1])
        return p is not None and p.op_type in ("AveragePool", "GlobalAveragePool") and \
            self.chain(p.input[0], ROUTE_OPS)[-1] == self.chain(x, ROUTE_OPS)[-1]

    def layer_bias(self, n):
        """Is n (Add / Sub of an activation and a constant) the bias of the linear layer or normalisation before it,
        written as a separate node (MatMul + Add of 3-D linear layers, the affine of an unfolded GroupNorm)?"""
        live = self.live_in(n)
        if n.op_type not in ("Add", "Sub") or len(live) != 1 or (n.op_type == "Sub" and live[0] != 0):
            return False
        top = self.chain(n.input[live[0]], ROUTE_OPS | {"Mul"})[-1]  # through reshapes and the scale of an affine
        p = self.g.producer.get(top)
        if p is None:
            return False
        if p.op_type in ("LayerNormalization", "InstanceNormalization"):
            return True
        view = linear_view(self.g, p, self.live) if p.op_type in LINEAR_OPS else None
        return view is not None and view.bias is None and not (len(p.input) > 2 and p.input[2])

    def nonneg(self, t) -> bool:
        """Is t provably >= 0 (value ranges, `ranges.py`: the one source of sign facts)?"""
        return ranges.range_of(self.g, t).nonneg

    # ------------------------------------------------------------------------------- products
    def gates_a_state(self, n, k, gate_option) -> bool:
        """Mul(gate, s) where s carries no relevance and is computed, not a weight: a recurrent cell's initial state
        (Arras et al. 2017: the gate takes no relevance, so what reaches the state is absorbed there)."""
        if n.op_type != "Mul" or gate_option != "signal" or len(n.input) != 2:
            return False
        other = n.input[1 - k]
        return self.is_gate(n.input[k]) and other not in self.live and self.g.const(other) is None

    def product_weights(self, n, live_in, mode) -> list:
        """Which operand of a product of two activations is the gate (a constant weight: it gets no relevance):
        x * f(x) is an activation (all to x); `mode` signal: the gated signal takes all, split: equal shares."""
        w = [0.0] * len(n.input)
        if n.op_type == "Mul" and len(live_in) == 2:
            a, c = (n.input[k] for k in live_in)
            for sig, gate in ((live_in[0], c), (live_in[1], a)):
                if self.self_gate(gate, n.input[sig]):
                    w[sig] = 1.0
                    return w
        if mode == "signal":
            if n.op_type == "Div" and len(live_in) == 2:
                w[0] = 1.0  # the divisor (a norm, a std) is the gate
                return w
            gates = [k for k in live_in if self.is_gate(n.input[k])]
            if len(gates) == 1 and len(live_in) == 2:
                w[next(k for k in live_in if k not in gates)] = 1.0
                return w
        for k in live_in:
            w[k] = 1.0 / len(live_in)
        return w

    # --------------------------------------------------------------------------- z^B bounds
    def box_bounds(self, n, low, high, mean, std, where) -> dict:
        """low/high for the z^B layer `n`: bounds of the data input (optionally mapped through mean/std), pushed
        through the constant arithmetic between the data input and the layer (`ranges.push_box`)."""
        if low is None or high is None:
            raise XCompileError(f"{where}: node {n.name or n.output[0]!r} uses z^B, which needs the input bounds: "
                                "--set low=... --set high=... (numbers or per-channel lists)")
        g = self.g
        rank = len(g.shape(g.data_input))
        lo, hi = (self._shape_bounds(v, rank, "low") for v in (low, high))
        if mean is not None:
            m = self._shape_bounds(mean, rank, "mean")
            lo, hi = lo - m, hi - m
        if std is not None:
            s = self._shape_bounds(std, rank, "std")
            if not np.all(s > 0):
                raise XCompileError("option std: every std must be > 0 (it divides the z^B bounds)")
            lo, hi = lo / s, hi / s
        lo, hi = ranges.push_box(g, self.live, n, lo, hi)
        return {"low": lo.astype(np.float32), "high": hi.astype(np.float32)}

    def _shape_bounds(self, v, rank, what):
        v = np.asarray(v, np.float64)
        if v.ndim == 0 or rank < 2:
            return v.reshape([1] * max(rank, 1)) if v.ndim == 0 else v
        c = self.g.shape(self.g.data_input)[1]
        if v.size != c:
            raise XCompileError(f"option {what}: {v.size} values for {c} input channels")
        return v.reshape([1, c] + [1] * (rank - 2))
