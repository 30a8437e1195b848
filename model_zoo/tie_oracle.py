"""A tie-aware float64 PyTorch oracle: exact on every machine, whatever kernels onnxruntime picks.

Why: for a piecewise-linear network the gradient is fixed by the activation pattern (which side of each kink a
unit is on: ReLU at 0, ReLU6/Clip at its bounds, HardSwish/HardSigmoid at +-3, the winner of each MaxPool
window). A unit whose pre-activation lies within float32 rounding of a kink can land on either side depending on
the CPU's kernels and onnxruntime's fusions; its gradient then differs by a whole term (8e-2 of max on vgg11_bn
at 224 px between onnxruntime's optimization levels). Comparing a float32 explainer with float64 autograd at such
a unit measures float32 rounding, not the explainer.

How: a test copy of the explainer also outputs every kink input (and every MaxPool's indices). For each call of a
kinked function in the float64 PyTorch model, the rows of its input are matched by value to rows of those ONNX
tensors; where the float32 run took another branch than float64, the float64 backward takes the explainer's branch
("a forced unit"), provided the unit is a genuine near-tie:

    |z64 - kink| <= TIE_TOL * max|z64 of that row|        (TIE_TOL = 2**-14, about 6e-5)

and for MaxPool |z64[winner32] - z64[winner64]| <= TIE_TOL * max|z64 of that row|. A differing unit beyond that
bound is a real disagreement and fails the check (``TieAware.check()``). Everything else (values, the linear maps,
the smooth nonlinearities) is PyTorch's own float64 computation, so the oracle stays independent of xcompile:
only the branch choice at near-ties is read from the run it checks. Every check reports how many units it forced.

Use:
    probed = ProbedExplainer(explainer_proto, where="forward")       # or "clones" (integrated gradients ...)
    out, decisions = probed.explain(x, target, optimization="basic", threads=1)
    with TieAware(decisions, relu="gradient") as tie:                   # or "guided" / "deconv"
        reference = autograd_or_captum(model64, x)
    tie.check()      # raises if a differing unit is no near-tie; tie.forced: units forced per op
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

TIE_TOL = 2.0 ** -14
MATCH_TOL = 1e-3  # a torch row and its ONNX row agree to float32 forward accuracy (far below this)
KINKED_ONNX = ("Relu", "LeakyRelu", "Clip", "HardSwish", "HardSigmoid", "MaxPool")


@dataclass
class Probe:
    node: str
    op_type: str
    x: str                      # the kink input as output name
    indices: str | None = None  # MaxPool's Indices output
    alpha: float = 0.0          # LeakyRelu slope, HardSigmoid alpha
    beta: float = 0.0           # HardSigmoid beta
    low: float | None = None    # Clip bounds
    high: float | None = None


def _const_value(model: onnx.ModelProto, name: str):
    if not name:
        return None
    for t in model.graph.initializer:
        if t.name == name:
            return float(onnx.numpy_helper.to_array(t).reshape(-1)[0])
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return float(onnx.numpy_helper.to_array(n.attribute[0].t).reshape(-1)[0])
    return None


def probe_model(model: onnx.ModelProto, where: str = "forward") -> tuple[onnx.ModelProto, list[Probe]]:
    """A copy of the explainer that also outputs the kink inputs of the forward ("forward": the model's own
    nodes) or of the forward copies that path methods run ("clones": nodes emitted by xcompile)."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    g = probed.graph
    outputs = {o.name for o in g.output}
    probes: list[Probe] = []
    for n in g.node:
        emitted = n.name.startswith("xc/")
        if n.op_type not in KINKED_ONNX or emitted != (where == "clones"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        p = Probe(n.name, n.op_type, n.input[0])
        if n.op_type == "MaxPool":
            if len(n.output) < 2 or not n.output[1]:
                continue  # no switches exposed: the explainer cannot route by this MaxPool (not a kink it uses)
            p.indices = n.output[1]
        elif n.op_type == "LeakyRelu":
            p.alpha = float(attrs.get("alpha", 0.01))
        elif n.op_type == "HardSigmoid":
            p.alpha, p.beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        elif n.op_type == "Clip":
            p.low = _const_value(probed, n.input[1]) if len(n.input) > 1 else None
            p.high = _const_value(probed, n.input[2]) if len(n.input) > 2 else None
        for name, dtype in ((p.x, TensorProto.FLOAT), (p.indices, TensorProto.INT64)):
            if name and name not in outputs:
                g.output.append(helper.make_tensor_value_info(name, dtype, None))
                outputs.add(name)
        probes.append(p)
    return probed, probes


# ------------------------------------------------------------------------------------------------ decisions
@dataclass
class Decisions:
    """The kink inputs of one onnxruntime run, indexed by (op kind, per-row shape) for matching by value."""
    probes: list[Probe]
    values: dict
    _index: dict = field(default_factory=dict)

    def signature(self) -> str:
        """Equal signatures = the same branch at every kink = the same tie-aware reference."""
        import hashlib

        h = hashlib.sha256()
        for p in self.probes:
            v = self.values.get(p.x)
            if v is None:
                continue
            if p.op_type == "MaxPool":
                h.update(np.ascontiguousarray(self.values[p.indices]).tobytes())
            elif p.op_type == "Clip":
                lo = -np.inf if p.low is None else p.low
                hi = np.inf if p.high is None else p.high
                h.update(np.packbits((v > lo) & (v < hi)).tobytes())
            elif p.op_type in ("HardSwish", "HardSigmoid"):
                h.update(np.where(v < -3, 0, np.where(v <= 3, 1, 2)).astype(np.int8).tobytes())
                t = v * np.float32(p.alpha) + np.float32(p.beta)
                h.update(np.packbits((t > 0) & (t < 1)).tobytes())
            else:
                h.update(np.packbits(v > 0).tobytes())
        return h.hexdigest()

    def candidates(self, kinds: tuple[str, ...], row_shape: tuple[int, ...]):
        key = (kinds, row_shape)
        if key not in self._index:
            rows, refs = [], []
            for p in self.probes:
                v = self.values.get(p.x)
                if p.op_type not in kinds or v is None or tuple(v.shape[1:]) != row_shape:
                    continue
                for j in range(v.shape[0]):
                    rows.append(v[j].reshape(-1))
                    refs.append((p, j))
            if not rows:
                self._index[key] = None
            else:
                stack = np.stack(rows).astype(np.float64)
                proj = np.random.default_rng(0).standard_normal((stack.shape[1], 8))
                self._index[key] = (stack, stack @ proj, proj, refs)
        return self._index[key]

    def match(self, kinds, row64: np.ndarray):
        """The ONNX row (probe, row index, float32 values) that this float64 row is, by value."""
        found = self.candidates(kinds, tuple(row64.shape))
        if found is None:
            raise AssertionError(f"tie-aware oracle: no ONNX {'/'.join(kinds)} input of shape {list(row64.shape)}")
        stack, proj_all, proj, refs = found
        flat = row64.reshape(-1)
        k = int(np.argmin(np.linalg.norm(proj_all - flat @ proj, axis=1)))
        scale = max(float(np.abs(flat).max()), 1e-30)
        diff = float(np.abs(stack[k] - flat).max()) / scale
        if diff > MATCH_TOL:
            raise AssertionError(f"tie-aware oracle: the nearest ONNX {'/'.join(kinds)} input to a torch row of shape "
                                 f"{list(row64.shape)} is {diff:.1e} of max away (node {refs[k][0].node})")
        p, j = refs[k]
        return p, j, stack[k].reshape(row64.shape)


# ------------------------------------------------------------------------------------------------ torch side
def _torch():
    import torch

    return torch


class TieLedger:
    """What a tie-aware oracle forced: units per op, the farthest forced unit from its kink, and the violations
    (a unit beyond the near-tie bound TIE_TOL). Shared by the PyTorch and the TensorFlow oracles."""

    def __init__(self):
        self.forced: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.worst = 0.0
        self.violations: list[str] = []

    def _record(self, op: str, differ: np.ndarray, dist: np.ndarray, scale: float):
        self.calls[op] = self.calls.get(op, 0) + 1
        n = int(differ.sum())
        if not n:
            return
        self.forced[op] = self.forced.get(op, 0) + n
        rel = float(dist[differ].max()) / scale
        self.worst = max(self.worst, rel)
        if rel > TIE_TOL:
            self.violations.append(f"{op}: {n} unit(s) on another branch than float64, up to {rel:.1e} of the row's "
                                   f"max from the kink (near-tie bound {TIE_TOL:.1e})")

    def check(self):
        assert not self.violations, "; ".join(self.violations[:3])
        return self


class TieAware(TieLedger):
    """Context manager: inside it, the kinked functions of PyTorch take the explainer's branch at near-ties.

    relu: "gradient" (the derivative), "guided" (guided backprop: 1[x>0] * max(g, 0)) or "deconv" (max(g, 0)).
    After the block: ``forced`` (op -> units forced), ``calls`` (op -> calls seen), ``worst`` (largest
    |z64 - kink| / row scale among forced units), ``violations`` (differing units beyond TIE_TOL)."""

    def __init__(self, decisions: Decisions, relu: str = "gradient"):
        super().__init__()
        self.decisions, self.relu_mode = decisions, relu
        self._mode = None


    @property
    def n_forced(self) -> int:
        return sum(self.forced.values())

    def summary(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.forced.items())) or "none"
        return f"forced units: {ops} (worst {self.worst:.1e} of row max from the kink)"

    # elementwise kinks -------------------------------------------------------------------------------------
    def _elementwise(self, op: str, kinds, z, region_fn, deriv_fn, kinks, value):
        """value: f(z) in float64 (PyTorch's own); region_fn(z, probe) -> int region per unit (the ONNX
        emitter's comparisons); deriv_fn(z64, region) -> derivative in that region."""
        torch = _torch()
        z64 = z.detach().cpu().double().numpy()
        regions = np.empty(z64.shape, np.int8)
        for b in range(z64.shape[0]):
            p, _, z32 = self.decisions.match(kinds, z64[b])
            r32, r64 = region_fn(z32.astype(np.float32), p), region_fn(z64[b], p)
            differ = r32 != r64
            dist = np.min([np.abs(z64[b] - k) for k in kinks(p)], axis=0)
            self._record(op, differ, dist, max(float(np.abs(z64[b]).max()), 1e-30))
            regions[b] = r32
        d = torch.from_numpy(deriv_fn(z64, regions)).to(z.dtype)
        relu_mode = self.relu_mode if op == "relu" else "gradient"
        if op == "relu":  # the forward value follows the branch too (0 where the explainer's unit is off): LRP's
            value = value * torch.from_numpy(regions).to(value.dtype)  # numerators read it; a gradient does not
        return _Kinked.apply(z, value.detach(), d, relu_mode)

    def _maxpool(self, func, args, kwargs):
        torch = _torch()
        z = args[0]
        kw = dict(kwargs)
        want_idx = kw.pop("return_indices", False)
        with torch.no_grad():
            out64, idx64 = func(z.detach(), *args[1:], return_indices=True, **kw)
        z64 = z.detach().double().numpy()
        spatial = int(np.prod(z64.shape[2:]))
        chosen = idx64.clone().numpy()
        for b in range(z64.shape[0]):
            p, j, _ = self.decisions.match(("MaxPool",), z64[b])
            flat = self.decisions.values[p.indices][j]
            c = z64.shape[1]
            idx32 = flat - (j * c + np.arange(c).reshape([c] + [1] * (flat.ndim - 1))) * spatial
            assert idx32.shape == chosen[b].shape and idx32.min() >= 0 and idx32.max() < spatial, \
                f"tie-aware oracle: MaxPool indices of {p.node} do not fit the torch call"
            plane = z64[b].reshape(c, -1)
            v32 = np.take_along_axis(plane, idx32.reshape(c, -1), 1)
            v64 = np.take_along_axis(plane, chosen[b].reshape(c, -1), 1)
            differ = (idx32 != chosen[b]).reshape(c, -1)
            self._record("max_pool", differ, np.abs(v32 - v64), max(float(np.abs(plane).max()), 1e-30))
            chosen[b] = idx32
        idx = torch.from_numpy(chosen)
        out = _PoolAt.apply(z, idx, tuple(out64.shape))
        return (out, idx) if want_idx else out

    # dispatch ------------------------------------------------------------------------------------------------
    def handle(self, func, args, kwargs):
        import torch.nn.functional as F

        torch = _torch()
        name = getattr(func, "__name__", "")
        if args and isinstance(args[0], torch.Tensor) and not args[0].requires_grad and torch.is_grad_enabled():
            # a kink on a tensor that does not depend on the explained input (timm's relative-position MLPs on
            # constant coordinate tables): no gradient passes it, and the exporters fold it to a constant
            return NotImplemented
        if func in (F.max_pool1d, F.max_pool2d, F.max_pool3d) or name in ("max_pool1d", "max_pool2d", "max_pool3d",
                                                                             "max_pool1d_with_indices",
                                                                             "max_pool2d_with_indices",
                                                                             "max_pool3d_with_indices"):
            return self._maxpool(func, args, kwargs)
        z = args[0] if args else None
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.dim() < 2:
            return NotImplemented
        if True:  # values of detached inputs: no graph; the graph is _Kinked's
            if name in ("relu", "relu_"):
                v = torch.relu(z.detach())
                return self._elementwise("relu", ("Relu",), z, lambda x, p: (x > 0).astype(np.int8),
                                         lambda x, r: r.astype(np.float64), lambda p: [0.0], v)
            if name in ("leaky_relu", "leaky_relu_"):
                slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
                v = F.leaky_relu(z.detach(), slope)
                return self._elementwise("leaky_relu", ("LeakyRelu",), z, lambda x, p: (x > 0).astype(np.int8),
                                         lambda x, r: np.where(r == 1, 1.0, slope), lambda p: [0.0], v)
            if name in ("relu6", "hardtanh", "hardtanh_"):
                lo, hi = (0.0, 6.0) if name == "relu6" else (kwargs.get("min_val", args[1] if len(args) > 1 else -1.0),
                                                            kwargs.get("max_val", args[2] if len(args) > 2 else 1.0))
                v = z.detach().clamp(lo, hi)
                return self._elementwise("clip", ("Clip",), z,
                                         lambda x, p: ((x > lo) & (x < hi)).astype(np.int8),
                                         lambda x, r: r.astype(np.float64), lambda p: [lo, hi], v)
            if name == "hardswish":
                v = F.hardswish(z.detach())
                # the writer lowers HardSwish to x * HardSigmoid(x): its input is then a HardSigmoid's
                return self._elementwise("hardswish", ("HardSwish", "HardSigmoid"), z,
                                         lambda x, p: np.where(x < -3, 0, np.where(x <= 3, 1, 2)).astype(np.int8),
                                         lambda x, r: np.where(r == 0, 0.0, np.where(r == 1, x / 3 + 0.5, 1.0)),
                                         lambda p: [-3.0, 3.0], v)
            if name == "hardsigmoid":
                v = F.hardsigmoid(z.detach())

                def region(x, p):
                    t = x * x.dtype.type(p.alpha) + x.dtype.type(p.beta)  # the emitter's comparison, in x's precision
                    return ((t > 0) & (t < 1)).astype(np.int8)
                return self._elementwise("hardsigmoid", ("HardSigmoid",), z, region,
                                         lambda x, r: r * (1.0 / 6.0), lambda p: [-3.0, 3.0], v)
        return NotImplemented

    def __enter__(self):
        from torch.overrides import TorchFunctionMode

        owner = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = owner.handle(func, args, kwargs)
                if out is NotImplemented:
                    return func(*args, **kwargs)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False


@functools.lru_cache(maxsize=None)  # the autograd Function classes are made once, on first use (torch imported late)
def _kinked_function():
    torch = _torch()

    class Kinked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, value, deriv, relu_mode):
            ctx.save_for_backward(deriv)
            ctx.relu_mode = relu_mode
            return value.clone()

        @staticmethod
        def backward(ctx, g):
            deriv, = ctx.saved_tensors
            if ctx.relu_mode == "deconv":
                return g.clamp(min=0), None, None, None
            if ctx.relu_mode == "guided":
                g = g.clamp(min=0)
            return g * deriv, None, None, None

    class PoolAt(torch.autograd.Function):
        """MaxPool that takes the window winners it is given (the explainer's switches)."""

        @staticmethod
        def forward(ctx, z, idx, out_shape):
            ctx.save_for_backward(idx)
            ctx.z_shape = z.shape
            flat = z.reshape(z.shape[0], z.shape[1], -1)
            # a fresh tensor, not a view: models add to the pooled map in place (timm's Xception: x += skip)
            return flat.gather(2, idx.reshape(idx.shape[0], idx.shape[1], -1)).reshape(out_shape).clone()

        @staticmethod
        def backward(ctx, g):
            idx, = ctx.saved_tensors
            s = ctx.z_shape
            gz = g.new_zeros((s[0], s[1], int(np.prod(s[2:]))))
            gz.scatter_add_(2, idx.reshape(idx.shape[0], idx.shape[1], -1), g.reshape(g.shape[0], g.shape[1], -1))
            return gz.reshape(s), None, None

    return Kinked, PoolAt


class _Lazy:
    def __init__(self, k):
        self.k = k

    def apply(self, *a):
        return _kinked_function()[self.k].apply(*a)


_Kinked, _PoolAt = _Lazy(0), _Lazy(1)


# ------------------------------------------------------------------------------------------------ running
class ProbedExplainer:
    """The explainer under test with its kink inputs exposed; ``explain`` returns (Explanation, Decisions)."""

    def __init__(self, explainer: onnx.ModelProto, where: str = "forward"):
        self.model, self.probes = probe_model(explainer, where)
        self._sessions = {}

    def explain(self, x, target, optimization: str = "all", threads: int | None = None, batch_size=None):
        import xcompile

        key = (optimization, threads)
        if key not in self._sessions:  # one session at a time: a large explainer's session holds its weights
            self._sessions.clear()
            self._sessions[key] = xcompile.Explainer(self.model, optimization=optimization, threads=threads)
        out = self._sessions[key].explain(x, target, batch_size=batch_size)
        names = {p.x for p in self.probes} | {p.indices for p in self.probes if p.indices}
        values = {k: v for k, v in out.extras.items() if k in names}
        out.extras = {k: v for k, v in out.extras.items() if k not in names}
        return out, Decisions(self.probes, values)


# the optimization levels x intra-op thread counts that a tie-sensitive check must pass under (kernels differ)
KERNEL_CONFIGS = (("all", 1), ("all", 2), ("basic", 1), ("basic", 2))
