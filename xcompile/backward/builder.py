"""A small graph builder for the emitted (backward) part of an explainer.

Every emitted node gets a unique, readable name under the current scope (``xc/<method>/<forward node>/...``)
so the explainer reads well in Netron; constants are de-duplicated by value; the few operators whose
signature changed across opsets (Reduce*, Split, Squeeze/Unsqueeze) are emitted for the model's opset.
Shapes are emitted as constants (the batch dimension as -1) so the CUDA EP keeps everything on the GPU.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


class Builder:
    def __init__(self, opset: int, prefix: str = "xc", reserved: Iterable[str] = ()):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken: set[str] = set(reserved)
        self._consts: dict[tuple, str] = {}
        self._values: dict[str, np.ndarray] = {}
        self._scope: list[str] = [prefix]
        self.float32_views: dict[str, str] = {}  # float16 forward tensor -> its Cast to float32 (engine.float32_view)
        # guarded divisions: divisor tensor -> the nodes that keep it away from 0 (stabilize, mark_divisor); every
        # Div reading one joins them in `guarded`, the nodes write/precision.py keeps in float32
        self._guards: dict[str, list[str]] = {}
        self.guarded: list[str] = []

    # ---------------------------------------------------------------- naming
    @contextlib.contextmanager
    def scope(self, *parts: str):
        self._scope.extend(parts)
        try:
            yield
        finally:
            del self._scope[-len(parts):]

    def fresh(self, hint: str) -> str:
        base = "/".join(self._scope + [hint])
        name, k = base, 1
        while name in self._taken:
            name = f"{base}_{k}"
            k += 1
        self._taken.add(name)
        return name

    # ------------------------------------------------------------- constants
    def const(self, value, dtype=np.float32, hint: str = "const") -> str:
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = (arr.dtype.str, arr.shape, hashlib.sha1(arr.tobytes()).hexdigest())
        if key not in self._consts:
            name = self.fresh(hint) if arr.size > 8 else self._const_name(arr)
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
            self._values[name] = arr
        return self._consts[key]

    def value_of(self, name: str):
        """The numpy value of a constant this builder emitted (None for computed tensors)."""
        return self._values.get(name)

    def _const_name(self, arr: np.ndarray) -> str:
        # small constants are shared graph-wide: name them by value, outside any scope
        text = "_".join(f"{v:g}" if arr.dtype.kind == "f" else str(v) for v in arr.ravel())
        base = f"xc/const/{arr.dtype.name}{list(arr.shape)}:{text}".replace(" ", "")
        name, k = base, 1
        while name in self._taken:
            name = f"{base}_{k}"
            k += 1
        self._taken.add(name)
        return name

    def i64(self, values) -> str:
        return self.const(values, np.int64, "shape")

    def f32(self, value) -> str:
        return self.const(value, np.float32)

    def one_hot(self, indices: str, depth: int, hint: str = "onehot") -> str:
        """float32 one-hot rows [N, depth]; depth as a scalar (onnx's reference implementation refuses the [1]
        tensor the operator's definition also allows; docs/deployment.md)."""
        arr = np.array(depth, np.int64)  # 0-d (const() keeps at least one dimension: np.ascontiguousarray)
        key = (arr.dtype.str, arr.shape, hashlib.sha1(arr.tobytes()).hexdigest())
        if key not in self._consts:
            self._consts[key] = name = self._const_name(arr)
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._values[name] = arr
        return self.op("OneHot", [indices, self._consts[key], self.f32([0.0, 1.0])], hint, axis=-1)

    # ----------------------------------------------------------------- nodes
    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, n_out: int = 1,
           **attrs):
        node_name = self.fresh(hint or op_type)
        outs = [node_name if n_out == 1 else f"{node_name}:{i}" for i in range(n_out)]
        for o in outs[1:]:
            self._taken.add(o)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        if op_type == "Div" and len(inputs) > 1 and inputs[1] in self._guards:
            self.guarded += [node_name] + self._guards[inputs[1]]
        return outs[0] if n_out == 1 else outs

    def mark_divisor(self, divisor: str, *guards: str) -> str:
        """Record that `divisor` (and the nodes `guards` that made it: a comparison, a Where) keeps a division away
        from 0: a Div that reads it is a guarded division, kept in float32 by write/precision.py (a float16 epsilon
        would vanish). Returns `divisor`."""
        self._guards[divisor] = [divisor, *guards]
        return divisor

    # elementwise shorthands
    def add(self, a, b, hint=None): return self.op("Add", [a, b], hint)
    def sub(self, a, b, hint=None): return self.op("Sub", [a, b], hint)
    def mul(self, a, b, hint=None): return self.op("Mul", [a, b], hint)
    def div(self, a, b, hint=None): return self.op("Div", [a, b], hint)
    def neg(self, a, hint=None): return self.op("Neg", [a], hint)
    def relu(self, a, hint=None): return self.op("Relu", [a], hint)
    def cast(self, a, to, hint=None): return self.op("Cast", [a], hint, to=to)

    def sum(self, terms: Sequence[str], hint="sum") -> str:
        terms = list(terms)
        return terms[0] if len(terms) == 1 else self.op("Sum", terms, hint)

    def arg_extreme(self, x: str, largest: bool = True, hint=None) -> str:
        """int64 [N]: index of the max (min) along axis 1, lowest index on ties -- as ArgMax/ArgMin, but as
        TopK(K=1), which has CUDA kernels at every opset (ArgMax-13 has none in onnxruntime's CUDA EP)."""
        _, idx = self.op("TopK", [x, self.const(np.array([1], np.int64), dtype=np.int64)], hint or "argmax",
                         n_out=2, axis=1, largest=int(largest), sorted=1)
        return self.op("Squeeze", [idx, self.const(np.array([1], np.int64), dtype=np.int64)], hint or "argmax")

    def where(self, cond, a, b, hint=None): return self.op("Where", [cond, a, b], hint)

    def zeros_like(self, t: str, hint="zeros") -> str:
        # Mul by 0 keeps the (dynamic) batch size without run-time shape arithmetic.
        return self.mul(t, self.f32(0.0), hint)

    def positive(self, a, hint="pos"): return self.relu(a, hint)

    def negative(self, a, hint="neg"):
        return self.op("Min", [a, self.f32(0.0)], hint)

    def stabilize(self, z: str, eps: float, hint="stabilized", *, norm_scale: bool = False, rank: int = 2,
                  dtype=np.float32, after: str | None = None) -> str:
        """THE stabilizer: z + eps * sign(z), with sign(0) = +1 (Zennit's). ``eps == 0`` (LRP-0): zero denominators
        become 1 (0/0 -> 0). ``norm_scale``: eps * sqrt(mean(z^2)) over the non-batch axes (Zennit's Stabilizer
        norm_scale). ``dtype``: of the constants (float64 in the neuralized heads). ``after``: a zero to test the
        sign against instead of the constant 0 (emitters._zero_after: the denominator is computed when the relevance
        reaches it). The result is a guarded divisor (`mark_divisor`)."""
        c = (lambda v: self.const(v, dtype))  # noqa: E731
        if eps == 0.0:
            zero = self.op("Equal", [z, c(0.0)], "is_zero")
            return self.mark_divisor(self.where(zero, c(1.0), z, "safe_z"), zero)
        if norm_scale:
            ms = self.reduce("ReduceMean", self.mul(z, z), list(range(1, rank)), keepdims=1, hint="ms")
            e = self.mul(self.op("Sqrt", [ms], "rms"), c(eps), "eps_scaled")
            less = self.op("Less", [z, c(0.0)])
            sign = self.where(less, c(-1.0), c(1.0), "sign")
            scaled = self.mul(sign, e)
            return self.mark_divisor(self.add(z, scaled, hint), scaled, sign, less)
        less = self.op("Less", [z, c(0.0) if after is None else after])
        sign = self.where(less, c(-eps), c(eps), "eps_signed")
        return self.mark_divisor(self.add(z, sign, hint), sign, less)

    # opset-dependent signatures
    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: int = 1, hint=None) -> str:
        if axes is None:
            return self.op(op_type, [x], hint, keepdims=keepdims)
        axes = [int(a) for a in axes]
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.i64(axes)], hint, keepdims=keepdims)
        return self.op(op_type, [x], hint, axes=axes, keepdims=keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int], hint=None) -> str:
        return self.op("Unsqueeze", [x, self.i64(list(axes))], hint)

    def squeeze(self, x: str, axes: Sequence[int], hint=None) -> str:
        return self.op("Squeeze", [x, self.i64(list(axes))], hint)

    def reshape(self, x: str, shape: Sequence[int], hint=None) -> str:
        return self.op("Reshape", [x, self.i64(list(shape))], hint)

    def split(self, x: str, sizes: Sequence[int], axis: int, hint=None) -> list[str]:
        outs = self.op("Split", [x, self.i64(list(sizes))], hint, n_out=len(sizes), axis=axis)
        return outs if isinstance(outs, list) else [outs]

    def slice(self, x, starts, ends, axes, steps=None, hint=None) -> str:
        ins = [x, self.i64(starts), self.i64(ends), self.i64(axes)]
        if steps is not None:
            ins.append(self.i64(steps))
        return self.op("Slice", ins, hint)

    def pad(self, x: str, pads: Sequence[int], hint=None) -> str:
        if not any(pads):
            return x
        return self.op("Pad", [x, self.i64(list(pads))], hint, mode="constant")

    def transpose(self, x: str, perm: Sequence[int], hint=None) -> str:
        return self.op("Transpose", [x], hint, perm=[int(p) for p in perm])
