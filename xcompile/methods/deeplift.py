"""DeepLIFT with the Rescale rule (Shrikumar, Greenside & Kundaje, "Learning Important Features Through
Propagating Activation Differences", ICML 2017).

The explainer runs the forward pass twice in ONE graph call: on the input x (the model's own forward) and on
the reference x' (a copy of every input-dependent node, weights shared, fed with the baseline). The backward
walk is the gradient's (linear ops -- Conv, Gemm, BatchNorm, residual Add, Concat, reshapes -- pass
multipliers exactly as gradients), except:

- every elementwise nonlinearity y = f(x) of the op table (Relu, LeakyRelu, PRelu, Elu, Clip/ReLU6,
  Sigmoid, Tanh, Softplus, HardSigmoid, HardSwish, Erf, Gelu, Exp, Log, Sqrt, Reciprocal, Abs, Pow with a
  constant exponent, Max/Min with one data-dependent operand) uses the multiplier
  (f(x) - f(x')) / (x - x'), and its gradient where |x - x'| < 1e-10 (Captum's ``eps``);
- a product u * v of two data-dependent tensors uses the exact split
  uv - u'v' = (u - u') (v + v')/2 + (v - v') (u + u')/2 (and the same for u / v through 1/v), so a
  decomposed GELU x * Phi(x), SiLU x * sigmoid(x) or HardSwish x * hardsigmoid(x) gets the multiplier
  of the whole activation, (f(x) - f(x')) / (x - x');
- MaxPool is treated as Captum's ``DeepLift`` treats it: with o = pool(x), o' = pool(x'), m = max(o, o'),
  the output difference is split as (m - o') routed to x's switches plus (o - m) routed to x''s switches,
  divided by (x - x') (gradient where |x - x'| < 1e-10). Captum routes with ``max_unpool``, which keeps
  only one of several windows that pick the same input position (overlapping windows, e.g. ResNet's 3x3
  stride-2 pool); we add them (the adjoint of the pool, as the gradient does), which keeps completeness.

Relevance = (x - x') * multipliers; it sums to F_c(x) - F_c(x') up to float32 rounding (the
``completeness_gap`` output reports sum(relevance) - (F_c(x) - F_c(x')) per row). Transformer blocks (products of
two data-dependent tensors, Softmax, LayerNormalization) get the exact splits of methods/deeplift_blocks.py; other
non-elementwise nonlinearities (ReduceMax, ...) pass their gradient at x, so the gap is not 0 for models that have
them (the compile-time self-check refuses a gap over 1% of F_c(x) - F_c(x'), docs/selfcheck.md).

``baseline``: a number, one number per channel (``0.1,0.2,0.3``), or a ``.npy`` file holding one reference
(the sample shape, with or without a leading 1) or B references ``[B, ...]``; with B references the
relevance is the mean of the B DeepLIFT explanations (Captum's ``DeepLiftShap``), ``chunk`` references at
a time (bounds memory)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from ..backward.builder import Builder
from ..backward.engine import float32_view
from ..backward.table import TABLE, Backward
from ..errors import XCompileError
from ..graph import ForwardGraph
from ..options import non_negative_int
from .base import Built, Method, Param, make_seed, register, resolve_target
from .clone import clone_forward
from .deeplift_blocks import bilinear, layernorm, ref, softmax
from .paths import _repeat_rows
from .tokens import baseline_embedding, no_float_baseline

EPS = 1e-10  # Captum's DeepLift eps: below it, the multiplier is the gradient

# elementwise nonlinearities y = f(x) whose derivative the Rescale multiplier replaces (input 0 carries relevance)
RESCALED = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Sigmoid", "Tanh", "Softplus",
            "Softsign", "HardSigmoid", "HardSwish", "Erf", "Gelu", "Exp", "Log", "Sqrt", "Reciprocal", "Abs",
            "Sin", "Cos", "Pow", "Max", "Min", "Mish", "ThresholdedRelu")


def parse_baseline(v):
    """A number, a per-channel list, or the path of a .npy file (kept as the path; loaded at build time)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, (list, tuple)):
        return tuple(float(a) for a in v)
    if isinstance(v, np.ndarray):
        raise ValueError(v)
    s = str(v).strip()
    if s.lower().endswith(".npy"):
        return s
    s = s.strip("[]() ")
    parts = [p for p in s.replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError(v)
    vals = tuple(float(p) for p in parts)
    return vals[0] if len(vals) == 1 else vals


def baseline_array(value, sample: list[int], where: str = "option baseline") -> np.ndarray:
    """The references as float32 [B, *sample-broadcastable]."""
    if isinstance(value, float):
        return np.full([1] + [1] * len(sample), value, np.float32)
    if isinstance(value, tuple):
        if not sample or len(value) != sample[0]:
            raise XCompileError(f"{where}: {len(value)} values given, the input has {sample[0] if sample else 0} channels "
                                f"(shape {sample})")
        return np.asarray(value, np.float32).reshape([1, -1] + [1] * (len(sample) - 1))
    path = Path(value)
    if not path.is_file():
        raise XCompileError(f"{where}: {value}: no such .npy file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise XCompileError(f"{where}: {value}: not a readable .npy array ({e})") from None
    if arr.dtype.kind not in "fiu":
        raise XCompileError(f"{where}: {value}: dtype {arr.dtype} is not numeric")
    arr = arr.astype(np.float32)
    if arr.ndim == len(sample):
        arr = arr[None]
    ok = arr.ndim == len(sample) + 1 and all(a in (1, s) for a, s in zip(arr.shape[1:], sample))
    if not ok:
        raise XCompileError(f"{where}: {value}: shape {list(arr.shape)} does not fit the input sample shape {sample} "
                            f"(expected {sample} or [B, {', '.join(map(str, sample))}])")
    if not np.isfinite(arr).all():
        raise XCompileError(f"{where}: {value}: non-finite values")
    return arr


# ---------------------------------------------------------------------------------------- emitters
_ref = ref  # the tensor in the reference forward pass (methods/deeplift_blocks.py)


def _safe_ratio(ctx, dy, dx, gy, grad, hint="multiplier"):
    """gy * dy/dx, or grad where |dx| < EPS."""
    b = ctx.b
    tiny = b.op("Less", [b.op("Abs", [dx], "abs_delta_in"), b.f32(EPS)], "tiny_delta")
    safe = b.mark_divisor(b.where(tiny, b.f32(1.0), dx, "safe_delta_in"), tiny)
    return b.where(tiny, grad, b.mul(gy, b.div(dy, safe, "rescale")), hint)


# Smooth activations: where |x - x'| < NEAR the float32 difference quotient (f(x) - f(x'))/(x - x') loses
# digits to cancellation (relative error ~1e-7 |f| / |x - x'|), so it is replaced by the derivative at the
# midpoint f'((x + x')/2), which equals the quotient up to f''' (x - x')^2 / 24 (< 1e-5 relative here).
NEAR = 1e-2


def _sigmoid_d(b, ctx, m):
    s = b.op("Sigmoid", [m])
    return b.mul(s, b.sub(b.f32(1.0), s))


def _tanh_d(b, ctx, m):
    t = b.op("Tanh", [m])
    return b.sub(b.f32(1.0), b.mul(t, t))


def _erf_d(b, ctx, m):
    return b.mul(b.op("Exp", [b.neg(b.mul(m, m))]), b.f32(2.0 / np.sqrt(np.pi)))


def _gelu_d(b, ctx, m):
    approx = ctx.attr("approximate", b"none")
    if (approx.decode() if isinstance(approx, bytes) else approx) != "none":
        return None
    cdf = b.mul(b.add(b.op("Erf", [b.mul(m, b.f32(1.0 / np.sqrt(2.0)))]), b.f32(1.0)), b.f32(0.5))
    pdf = b.mul(b.op("Exp", [b.mul(b.mul(m, m), b.f32(-0.5))]), b.f32(1.0 / np.sqrt(2.0 * np.pi)))
    return b.add(cdf, b.mul(m, pdf))


def _elu_d(b, ctx, m):
    alpha = ctx.attr("alpha", 1.0)
    return b.where(b.op("Greater", [m, b.f32(0.0)]), b.f32(1.0), b.mul(b.op("Exp", [m]), b.f32(alpha)))


SMOOTH = {
    "Sigmoid": _sigmoid_d, "Tanh": _tanh_d, "Erf": _erf_d, "Gelu": _gelu_d, "Elu": _elu_d,
    "Softplus": lambda b, ctx, m: b.op("Sigmoid", [m]),
    "Exp": lambda b, ctx, m: b.op("Exp", [m]),
}


def rescale(ctx, gy):
    """Rescale rule on input `k` of an elementwise op y = f(x_k) (other inputs constant)."""
    b = ctx.b
    grads = TABLE[ctx.op_type].fn(ctx, gy)  # the gradient: fallback where x ~ x'
    live = [k for k in range(len(ctx.node.input)) if ctx.needs(k)]
    if len(live) != 1 or ctx.in_shape(live[0]) != ctx.out_shape(0):
        return grads  # several data-dependent operands or broadcasting: not a function of one input, keep the gradient
    k = live[0]
    dx = b.sub(ctx.x(k), _ref(ctx, ctx.node.input[k]), "delta_in")
    dy = b.sub(ctx.y(0), _ref(ctx, ctx.node.output[0]), "delta_out")
    out = list(grads)
    out[k] = _safe_ratio(ctx, dy, dx, gy[0], grads[k])
    deriv = SMOOTH.get(ctx.op_type)
    d_mid = deriv(b, ctx, b.mul(b.add(ctx.x(k), _ref(ctx, ctx.node.input[k])), b.f32(0.5), "midpoint")) if deriv else None
    if d_mid is not None:
        near = b.op("Less", [b.op("Abs", [dx]), b.f32(NEAR)], "near")
        out[k] = b.where(near, b.mul(gy[0], d_mid, "midpoint_slope"), out[k], "multiplier_smooth")
    return out


def _to(ctx, k, g):
    return ctx.unbroadcast(g, ctx.out_shape(0), ctx.in_shape(k))


def product(ctx, gy):
    """u * v with both operands data-dependent: uv - u'v' = du (v + v')/2 + dv (u + u')/2 (exact)."""
    if not (ctx.needs(0) and ctx.needs(1)):
        return TABLE["Mul"].fn(ctx, gy)
    b = ctx.b
    u, v = ctx.x(0), ctx.x(1)
    ur, vr = _ref(ctx, ctx.node.input[0]), _ref(ctx, ctx.node.input[1])
    half = b.f32(0.5)
    mv = b.mul(b.add(v, vr), half, "mean_v")
    mu = b.mul(b.add(u, ur), half, "mean_u")
    return [_to(ctx, 0, b.mul(gy[0], mv)), _to(ctx, 1, b.mul(gy[0], mu))]


def quotient(ctx, gy):
    """u / v with a data-dependent v: u/v - u'/v' = du (1/v + 1/v')/2 + (1/v - 1/v') (u + u')/2, and
    1/v - 1/v' = -(v - v') / (v v') (exact)."""
    if not ctx.needs(1):
        return TABLE["Div"].fn(ctx, gy)
    b = ctx.b
    u, v = ctx.x(0), ctx.x(1)
    ur, vr = _ref(ctx, ctx.node.input[0]), _ref(ctx, ctx.node.input[1])
    half = b.f32(0.5)
    out = [None, None]
    if ctx.needs(0):
        mean_inv = b.mul(b.add(b.op("Reciprocal", [v]), b.op("Reciprocal", [vr])), half, "mean_inverse")
        out[0] = _to(ctx, 0, b.mul(gy[0], mean_inv))
    mean_u = b.mul(b.add(u, ur), half, "mean_u") if ctx.needs(0) else u
    d_inv = b.neg(b.op("Reciprocal", [b.mul(v, vr)]), "inverse_slope")
    out[1] = _to(ctx, 1, b.mul(gy[0], b.mul(mean_u, d_inv)))
    return out


def maxpool(ctx, gy):
    """Captum's DeepLift MaxPool: split o - o' through the cross maximum, route to both sets of switches."""
    from ..backward.ops.pooling import maxpool as grad_maxpool
    from ..backward.ops.pooling import scatter_to_switches
    b = ctx.b
    grad = grad_maxpool(ctx, gy)[0]
    o, o_ref = ctx.y(0), _ref(ctx, ctx.node.output[0])
    idx, idx_ref = ctx.y(1), _ref(ctx, ctx.node.output[1])
    m = b.op("Max", [o, o_ref], "cross_max")
    part = scatter_to_switches(ctx, b.mul(gy[0], b.sub(m, o_ref)), idx, ctx.in_shape(0))
    part_ref = scatter_to_switches(ctx, b.mul(gy[0], b.sub(o, m)), idx_ref, ctx.in_shape(0))
    num = b.add(part, part_ref, "routed_delta_out")
    dx = b.sub(ctx.x(0), _ref(ctx, ctx.node.input[0]), "delta_in")
    tiny = b.op("Less", [b.op("Abs", [dx]), b.f32(EPS)], "tiny_delta")
    safe = b.mark_divisor(b.where(tiny, b.f32(1.0), dx, "safe_delta_in"), tiny)
    return [b.where(tiny, grad, b.div(num, safe), "multiplier")]


def _overrides() -> dict:
    out = {op: Backward(rescale, TABLE[op].inputs) for op in RESCALED if op in TABLE}
    out["Mul"] = Backward(product, TABLE["Mul"].inputs)
    out["Div"] = Backward(quotient, TABLE["Div"].inputs)
    out["MaxPool"] = Backward(maxpool, TABLE["MaxPool"].inputs)
    # transformer blocks (methods/deeplift_blocks.py): exact splits, so that completeness holds there too
    for op in ("MatMul", "Gemm", "Einsum"):
        out[op] = Backward(bilinear, TABLE[op].inputs)
    out["Softmax"] = Backward(softmax, TABLE["Softmax"].inputs)
    out["LayerNormalization"] = Backward(layernorm, TABLE["LayerNormalization"].inputs)
    return out


# ------------------------------------------------------------------------------------------ method
@register
class DeepLift(Method):
    name = "deeplift"
    summary = "(x - x') * multipliers, Rescale rule: (f(x) - f(x'))/(x - x') at every elementwise nonlinearity"
    params = {
        "baseline": Param(0.0, "reference x': a number, one number per channel (e.g. 0.1,0.2,0.3), or a .npy file",
                          parse_baseline),
        "chunk": Param(0, "references evaluated at once when the .npy holds several (0: all) -- bounds memory", non_negative_int),
    }

    def __init__(self, **given):
        super().__init__(**given)
        self._rename_ref = None

    @property
    def overrides(self):
        return _overrides()

    def reference(self, name: str) -> str:
        return self._rename_ref(name)

    def build(self, g: ForwardGraph, b: Builder, where: str) -> Built:
        sample = [int(d) for d in g.shape(g.data_input)[1:]]
        if g.token is not None:  # token ids: the reference is the baseline embedding at every position
            no_float_baseline(self, g, where)
            refs = np.broadcast_to(baseline_embedding(g), [1] + sample).astype(np.float32)
        else:
            refs = baseline_array(self.values["baseline"], sample, f"{where}: option baseline")
        n_refs = refs.shape[0]
        chunk = self.values["chunk"] or n_refs
        if chunk <= 0:
            raise XCompileError(f"{where}: option chunk={self.values['chunk']}: must be a positive integer (0: all)")
        x = float32_view(b, g, g.data_input)
        low = x != g.data_input  # a float16 input: the forward copies read float16, the backward float32

        def model_dtype(t, hint):
            return b.cast(t, TensorProto.FLOAT16, hint) if low else t

        n_classes = g.shape(g.explained)[1]
        target = resolve_target(b, g, g.explained)
        rel_parts, gap_parts = [], []
        for c, start in enumerate(range(0, n_refs, chunk)):
            k = min(chunk, n_refs - start)
            with b.scope(f"chunk{c}" if n_refs > 1 else "reference"):
                if n_refs == 1:  # the model's own forward at x, one copy at x'
                    xs, t, rename_x = x, target, None
                    ref_in = b.add(b.zeros_like(x), b.const(refs, hint="baseline"), "baseline_batch")
                else:  # rows repeated k times, each paired with one reference
                    xs = b.reshape(_repeat_rows(b, x, k, len(sample) + 1), [-1] + sample, "inputs")
                    block = b.const(refs[start:start + k][None], hint="baselines")  # [1, k, ...]
                    ref_in = b.reshape(b.add(b.zeros_like(_repeat_rows(b, x, k, len(sample) + 1)), block),
                                       [-1] + sample, "baseline_batch")
                    t = b.reshape(_repeat_rows(b, target, k, 1), [-1], "targets")
                    rename_x = clone_forward(g, b, model_dtype(xs, "inputs_float16"), b.fresh("fwd"), repeat=k)
                self._rename_ref = clone_forward(g, b, model_dtype(ref_in, "baseline_float16"), b.fresh("ref"),
                                                  repeat=1 if n_refs == 1 else k)
                fx = float32_view(b, g, g.explained, (rename_x or (lambda n: n))(g.explained))
                seed = make_seed(b, n_classes, fx, t, "one")
                grads = self.engine(g, b, rename=rename_x).run(seed, where)
                mult = grads.get(g.data_input) or b.zeros_like(xs)
                delta = b.sub(xs, ref_in, "x_minus_baseline")
                rel = b.mul(delta, mult, "contributions")
                with b.scope("completeness"):
                    f_x = b.reduce("ReduceSum", b.mul(seed, fx), [1], keepdims=0, hint="score")
                    f_ref_scores = float32_view(b, g, g.explained, self._rename_ref(g.explained))
                    f_ref = b.reduce("ReduceSum", b.mul(seed, f_ref_scores), [1], keepdims=0, hint="reference_score")
                    total = b.reduce("ReduceSum", rel, list(range(1, len(sample) + 1)), keepdims=0, hint="sum_relevance")
                    gap = b.sub(total, b.sub(f_x, f_ref), "gap")
                if n_refs > 1:
                    rel = b.reduce("ReduceSum", b.reshape(rel, [-1, k] + sample), [1], keepdims=0, hint="chunk_sum")
                    gap = b.reduce("ReduceSum", b.reshape(gap, [-1, k]), [1], keepdims=0, hint="chunk_gap")
                rel_parts.append(rel)
                gap_parts.append(gap)
        self._rename_ref = None
        rel = b.sum(rel_parts, "sum_over_chunks")
        gap = b.sum(gap_parts, "gap_over_chunks")
        if n_refs > 1:
            rel = b.mul(rel, b.f32(1.0 / n_refs), "mean_over_references")
            gap = b.mul(gap, b.f32(1.0 / n_refs), "mean_gap")
        rel = b.op("Identity", [rel], "deeplift")
        vi = helper.make_tensor_value_info("completeness_gap", TensorProto.FLOAT, ["N"])
        return Built(rel, [(gap, vi)])
