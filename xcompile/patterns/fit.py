"""Fit the PatternNet statistics (SPEC §3.3) in ONE streaming pass, computed by onnxruntime.

For every linear layer on the relevance path (Conv of any group/stride/dilation/padding, Gemm, MatMul with
a constant 2-D weight) an *instrumented* copy of the canonical forward graph computes, per batch:

* y  = W * x without the bias (a bias-free copy of the layer that shares its weight initializer),
* m  = 1[post-activation > 0] (the following ReLU/Clip output, else the layer output itself),
* x  = the layer input patches: for Conv an im2col done by onnxruntime as a depthwise Conv with an
  identity kernel (same strides/dilations/pads), for dense layers the input rows,

and reduces them in-graph (float64) to, per output channel c (Cg channels per group, Dg = patch size):

    XY [g, 3Cg, Dg] = [Σ y x ; Σ y m x ; Σ m x]        (one MatMul per layer over all samples of the batch)
    V  [g, 5Cg]     = [Σ y ; Σ y m ; Σ m ; Σ y² ; Σ y² m]
    SX [g, Dg]      = Σ x

Python only adds these per-batch sums in float64 (so memory does not grow with the data, and shards merge
exactly: sums and counts are what the .npz stores, with a fingerprint of the model's linear layers).
Patterns follow from the sums (``PatternStats.patterns``):

    linear: a  = cov[x, y] / wᵀcov[x, y]
    relu:   a₊ = (E₊[x y] − E₊[x] E[y]) / wᵀ(E₊[x y] − E₊[x] E[y])     (E₊ over active samples, E[y] over all)
            a₋ likewise over the inactive samples (used by the signal-quality tool)
A zero denominator is replaced by 1.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import XCompileError

FORMAT = "xcompile-patterns"
VERSION = 1
VEC = ("sy", "sy_pos", "n_pos", "syy", "syy_pos")  # [C] each
MAT = ("sxy", "sxy_pos", "sx_pos")                 # [C, Dg] each
ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Softplus", "Gelu", "HardSwish",
               "Sigmoid", "Tanh")
AFFINE = ("Add", "Sub", "Mul", "Div")


# ---------------------------------------------------------------------------------------------- layers
@dataclass
class LinearLayer:
    key: str             # the layer's output tensor in the canonical graph (unique)
    node: str            # node name (for messages)
    op: str              # Conv | Gemm | MatMul
    input: str           # forward input tensor x
    gate: str            # tensor whose sign defines "active" (post-activation)
    w2d: np.ndarray      # [C, Dg] effective weight (alpha folded in), float64
    groups: int
    layout: str          # conv | rows ([C, D] like Gemm transB=1) | cols ([D, C])
    weight_shape: tuple  # shape of the weight initializer (the pattern is emitted in this shape)
    positions: int       # samples per data row (output positions, or extra MatMul dims)
    weight_name: str

    @property
    def channels(self) -> int:
        return self.w2d.shape[0]

    @property
    def gated(self) -> bool:
        """Is the layer followed by a ReLU-like activation (else its own output's sign is the "gate")?"""
        return self.gate != self.key

    def pattern_kind(self, kind: str) -> str:
        """`relu` = the two-component pattern where an activation gates the layer and the linear pattern
        where none does (logits, linear projection convs: nothing in the forward pass splits them by sign);
        `relu_all` = a₊ on every layer (iNNvestigate 1.0.8); `linear` = a everywhere."""
        if kind == "relu":
            return "relu" if self.gated else "linear"
        return "relu" if kind == "relu_all" else kind

    def to_layout(self, a2d: np.ndarray) -> np.ndarray:
        """[C, Dg] pattern -> the layout of the weight initializer (the weight's scale: alpha stays out)."""
        if self.layout == "conv":
            return a2d.reshape(self.weight_shape)
        return a2d if self.layout == "rows" else a2d.T

    def describe(self) -> dict:
        return {"key": self.key, "node": self.node, "op": self.op, "groups": self.groups,
                "weight_shape": list(self.weight_shape), "positions": self.positions}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _find_gate(g, t: str) -> str:
    """The post-activation tensor of a linear layer: follow single-consumer per-channel affine ops
    (bias Add, BatchNormalization, Mul/Div by constants) to a Relu/Clip; else the layer output itself."""
    seen = 0
    cur = t
    while seen < 8:
        seen += 1
        cons = g.consumers.get(cur, [])
        if len(cons) != 1:
            break
        n = cons[0]
        if n.op_type in ("Relu", "Clip", "LeakyRelu", "PRelu"):
            return n.output[0]
        if n.op_type == "BatchNormalization" or (
                n.op_type in AFFINE and len(n.input) == 2 and n.input[0] == cur and g.is_const(n.input[1])):
            try:
                if g.shape(n.output[0]) != g.shape(cur):
                    break
            except KeyError:
                break
            cur = n.output[0]
            continue
        break
    return t


def linear_layers(g, where: str = "model") -> list[LinearLayer]:
    """Every linear layer with a constant weight on the data-input -> scores path, in graph order."""
    from ..backward.builder import Builder
    from ..backward.engine import Engine
    live, nodes = Engine(g, Builder(g.opset)).paths()
    out = []
    for node in nodes:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        x, wname = node.input[0], node.input[1]
        W = g.const(wname)
        if W is None or x not in live:
            continue
        name = node.name or node.output[0]
        key = node.output[0]
        gate = _find_gate(g, key)
        if node.op_type == "Conv":
            groups = int(_attr(node, "group", 1))
            C = W.shape[0]
            w2d = W.reshape(C, -1).astype(np.float64)
            positions = int(np.prod(g.shape(key)[2:]))
            layout = "conv"
        elif node.op_type == "Gemm":
            if W.ndim != 2:
                continue
            alpha = float(_attr(node, "alpha", 1.0))
            tb = int(_attr(node, "transB", 0))
            w2d = (W if tb else W.T).astype(np.float64) * alpha
            groups, positions, layout = 1, 1, ("rows" if tb else "cols")
        else:  # MatMul x @ W
            if W.ndim != 2 or len(g.shape(x)) < 2:
                continue
            w2d = W.T.astype(np.float64)
            groups, layout = 1, "cols"
            positions = int(np.prod(g.shape(x)[1:-1])) if len(g.shape(x)) > 2 else 1
        out.append(LinearLayer(key, name, node.op_type, x, gate, w2d, groups, layout, tuple(W.shape),
                               positions, wname))
    if not out:
        raise XCompileError(f"{where}: no linear layer (Conv, Gemm, MatMul with a constant weight) on the path from the input to the scores")
    return out


def fingerprint(g, layers: list[LinearLayer]) -> str:
    """sha256 of the linear layers (names, geometry, weights) and the input shape."""
    h = hashlib.sha256()
    h.update(json.dumps([list(g.shape(g.data_input)[1:])]).encode())
    for L in layers:
        node = g.producer[L.key]
        attrs = sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute)
        h.update(json.dumps([L.key, L.op, list(L.weight_shape), attrs]).encode())
        h.update(np.ascontiguousarray(g.const(L.weight_name), dtype=np.float32).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- instrumented model
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
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
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
    graph = helper.make_graph(list(src.node) + b.nodes, "xcompile_fit", list(src.input),
                              [helper.make_tensor_value_info(n, dtype, None) for n in names],
                              initializer=list(src.initializer) + b.initializers)
    model = helper.make_model(graph, opset_imports=list(g.model.opset_import), ir_version=g.model.ir_version,
                              producer_name="xcompile-fit")
    return model, outs


def _session(model: onnx.ModelProto, threads: Optional[int] = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    from ..protobuf_limit import inference_session
    return inference_session(model, so)


# ---------------------------------------------------------------------------------------- statistics
@dataclass
class PatternStats:
    """Running sums (float64) per linear layer + counts; merging = adding."""
    fingerprint: str
    layers: list[dict]                         # LinearLayer.describe() per layer, graph order
    sums: list[dict] = field(default_factory=list)
    n: np.ndarray = None                       # samples per layer (rows * positions), float64 [n_layers]
    rows: int = 0                              # data rows seen
    info: dict = field(default_factory=dict)   # source, shard, batch size (informative / resume)

    @classmethod
    def empty(cls, fp: str, layers: list[LinearLayer], info=None) -> "PatternStats":
        sums = []
        for L in layers:
            C, Dg = L.w2d.shape
            d = {k: np.zeros(C) for k in VEC}
            d.update({k: np.zeros((C, Dg)) for k in MAT})
            d["sx"] = np.zeros((L.groups, Dg))
            sums.append(d)
        return cls(fp, [L.describe() for L in layers], sums, np.zeros(len(layers)), 0, dict(info or {}))

    def add_batch(self, layers: list[LinearLayer], outs: list, rows: int) -> None:
        for i, (L, res) in enumerate(zip(layers, outs)):
            xy, v, sx = res
            G = L.groups
            C, Dg = L.w2d.shape
            Cg = C // G
            xy = np.asarray(xy, np.float64).reshape(G, 3, Cg, Dg)
            v = np.asarray(v, np.float64).reshape(G, 5, Cg).transpose(1, 0, 2).reshape(5, C)
            s = self.sums[i]
            s["sxy"] += xy[:, 0].reshape(C, Dg)
            s["sxy_pos"] += xy[:, 1].reshape(C, Dg)
            s["sx_pos"] += xy[:, 2].reshape(C, Dg)
            for k, name in enumerate(VEC):
                s[name] += v[k]
            s["sx"] += np.asarray(sx, np.float64).reshape(G, Dg)
            self.n[i] += rows * L.positions
        self.rows += rows

    def merge(self, other: "PatternStats", where: str = "patterns") -> "PatternStats":
        if other.fingerprint != self.fingerprint:
            raise XCompileError(f"{where}: the shards were fitted on different models (fingerprints {self.fingerprint[:12]} and {other.fingerprint[:12]})")
        out = PatternStats(self.fingerprint, self.layers,
                           [{k: a[k] + b[k] for k in a} for a, b in zip(self.sums, other.sums)],
                           self.n + other.n, self.rows + other.rows,
                           {"merged": [self.info, other.info]})
        return out

    # ----------------------------------------------------------------------------- patterns
    def moments(self, i: int, L: LinearLayer) -> dict:
        s, n = self.sums[i], max(self.n[i], 1.0)
        G = L.groups
        C, Dg = L.w2d.shape
        sx_all = np.repeat(s["sx"], C // G, axis=0)
        n_pos = s["n_pos"][:, None]
        n_neg = self.n[i] - s["n_pos"][:, None]
        return dict(
            n=self.n[i], n_pos=s["n_pos"], Ey=s["sy"] / n, Ex=sx_all / n, Exy=s["sxy"] / n,
            Ex_pos=s["sx_pos"] / np.maximum(n_pos, 1), Exy_pos=s["sxy_pos"] / np.maximum(n_pos, 1),
            Ex_neg=(sx_all - s["sx_pos"]) / np.maximum(n_neg, 1),
            Exy_neg=(s["sxy"] - s["sxy_pos"]) / np.maximum(n_neg, 1),
            Eyy=s["syy"] / n)

    def patterns2d(self, i: int, L: LinearLayer, kind: str, raw: bool = False) -> np.ndarray:
        """[C, Dg] float64: kind = linear | relu (a₊) | relu_neg (a₋). Unreliable patterns (few samples, tiny
        covariance, huge gain) are shrunk toward the weight direction (patterns/shrink.py) unless `raw`."""
        M = self.moments(i, L)
        Ey = M["Ey"][:, None]
        if kind == "linear":
            num = M["Exy"] - M["Ex"] * Ey
        elif kind == "relu":
            num = M["Exy_pos"] - M["Ex_pos"] * Ey
        elif kind == "relu_neg":
            num = M["Exy_neg"] - M["Ex_neg"] * Ey
        else:
            raise XCompileError(f"option pattern={kind!r}: expected relu, relu_all or linear")
        if not raw:
            from .shrink import shrink
            count = {"linear": M["n"], "relu": M["n_pos"], "relu_neg": M["n"] - M["n_pos"]}[kind]
            return shrink(num, L.w2d, count, M["Eyy"])[0]
        den = np.sum(L.w2d * num, axis=1, keepdims=True)
        den = np.where(den == 0, 1.0, den)
        return num / den

    def patterns(self, layers: list[LinearLayer], kind: str) -> dict:
        """{layer key: pattern in the weight's layout (float64)}; kind = relu | relu_all | linear
        (see LinearLayer.pattern_kind)."""
        return {L.key: L.to_layout(self.patterns2d(i, L, L.pattern_kind(kind))) for i, L in enumerate(layers)}

    def check(self, fp: str, where: str) -> None:
        if fp != self.fingerprint:
            raise XCompileError(f"{where}: these patterns were fitted on another model (fingerprint {self.fingerprint[:12]}, this model {fp[:12]})")

    # -------------------------------------------------------------------------------- files
    def to_arrays(self) -> dict:
        meta = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "layers": self.layers,
                "rows": int(self.rows), "info": self.info}
        arrays = {"meta": np.asarray(json.dumps(meta, sort_keys=True)), "n": self.n}
        for i, s in enumerate(self.sums):
            for k, v in s.items():
                arrays[f"L{i}.{k}"] = v
        return arrays

    def save(self, path) -> None:
        """Atomic write (a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        buf = io.BytesIO()
        np.savez(buf, **self.to_arrays())
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)


def load_stats(path, where: Optional[str] = None) -> PatternStats:
    where = where or str(path)
    p = Path(path)
    if not p.is_file():
        raise XCompileError(f"{where}: no such patterns file")
    try:
        z = np.load(p, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError
        n = np.asarray(z["n"], np.float64)
        sums = []
        for i in range(len(meta["layers"])):
            sums.append({k: np.asarray(z[f"L{i}.{k}"], np.float64) for k in VEC + MAT + ("sx",)})
    except Exception:  # noqa: BLE001
        raise XCompileError(f"{where}: not an xcompile patterns file (write one with `xcompile fit-patterns`)") from None
    return PatternStats(meta["fingerprint"], meta["layers"], sums, n, int(meta["rows"]), meta.get("info", {}))


def merge_stats(paths: Iterable, out=None) -> PatternStats:
    total = None
    for p in paths:
        s = load_stats(p)
        total = s if total is None else total.merge(s, str(p))
    if total is None:
        raise XCompileError("merge: no patterns files given")
    if out is not None:
        total.save(out)
    return total


# -------------------------------------------------------------------------------------------- data
class DataSource:
    """Rows of a dataset, streamed: .npy (memory-mapped), .npz (key `x` or the first array), an image,
    or a folder of those (images through the same preprocessing as `xcompile run`)."""

    def __init__(self, path, sample_shape: tuple, preprocess: Optional[str] = None):
        from ..runtime.io import ARRAY_SUFFIXES, IMAGE_SUFFIXES, parse_preprocess
        self.path = Path(path)
        self.sample_shape = tuple(sample_shape)
        self.prep = parse_preprocess(preprocess)
        if not self.path.exists():
            raise XCompileError(f"{self.path}: no such data file or folder")
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES)
            if not files:
                raise XCompileError(f"{self.path}: no .npy/.npz or image files in this folder")
        else:
            files = [self.path]
        self.parts = []  # (file, kind, rows, array or None)
        for f in files:
            s = f.suffix.lower()
            if s in ARRAY_SUFFIXES:
                a = self._array(f)
                self.parts.append((f, "array", len(a), a))
            elif s in IMAGE_SUFFIXES:
                self.parts.append((f, "image", 1, None))
            else:
                raise XCompileError(f"{f}: unsupported data file {s!r} (use .npy, .npz, an image or a folder)")
        self.rows = sum(p[2] for p in self.parts)

    def _array(self, f: Path) -> np.ndarray:
        try:
            if f.suffix.lower() == ".npy":
                a = np.load(f, mmap_mode="r", allow_pickle=False)
            else:
                z = np.load(f, allow_pickle=False)
                key = "x" if "x" in z.files else (z.files[0] if z.files else None)
                if key is None:
                    raise XCompileError(f"{f}: empty .npz")
                a = z[key]
        except XCompileError:
            raise
        except Exception as e:  # noqa: BLE001
            raise XCompileError(f"{f}: not a readable numpy file ({type(e).__name__})") from None
        if a.ndim == len(self.sample_shape):
            a = a[None]
        if a.dtype.kind not in "fiu":
            raise XCompileError(f"{f}: array of dtype {a.dtype}; expected numbers")
        if a.ndim != len(self.sample_shape) + 1 or tuple(a.shape[1:]) != self.sample_shape:
            raise XCompileError(f"{f}: data of shape {list(a.shape)}; the model takes [N, {', '.join(map(str, self.sample_shape))}]")
        return a

    def batches(self, batch_size: int, start: int = 0, stop: Optional[int] = None) -> Iterator[np.ndarray]:
        """Rows [start, stop) in batches of batch_size (the last one may be smaller)."""
        from ..runtime.io import load_image
        stop = self.rows if stop is None else min(stop, self.rows)
        buf, have, pos = [], 0, 0
        for f, kind, n, a in self.parts:
            lo, hi = max(start - pos, 0), min(stop - pos, n)
            pos += n
            if hi <= lo:
                continue
            r = lo
            while r < hi:
                take = min(hi - r, batch_size - have)
                if kind == "array":
                    buf.append(np.asarray(a[r:r + take], np.float32))
                else:
                    buf.append(load_image(f, self.sample_shape, self.prep)[0][None])
                have += take
                r += take
                if have == batch_size:
                    yield np.concatenate(buf)
                    buf, have = [], 0
        if have:
            yield np.concatenate(buf)


def iter_batches(path, sample_shape, batch_size: int = 64, preprocess=None, start=0, stop=None):
    src = DataSource(path, sample_shape, preprocess)
    return src.rows, src.batches(batch_size, start, stop)


# --------------------------------------------------------------------------------------------- fit
def forward_graph(model, where: str = "model", **common):
    """The canonical forward graph exactly as `compile` sees it (same canonicalization, same names)."""
    from ..compiler import load_forward, split_params
    from ..graph import ForwardGraph
    if isinstance(model, ForwardGraph):
        return model
    c, rest = split_params(common)
    if rest:
        raise XCompileError(f"unknown option(s) {', '.join(sorted(rest))}")
    return load_forward(model, c, where)


class Fitter:
    """Holds the instrumented session; feed it batches."""

    def __init__(self, model, where: str = "model", threads: Optional[int] = None, **common):
        self.where = where
        self.g = forward_graph(model, where, **common)
        self.layers = linear_layers(self.g, where)
        self.fingerprint = fingerprint(self.g, self.layers)
        self.sample_shape = tuple(self.g.shape(self.g.data_input)[1:])
        m, self.outs = instrument(self.g, self.layers)
        self.session = _session(m, threads)
        self.input_name = self.g.data_input
        self.names = [n for o in self.outs for n in (o["xy"], o["v"], o["sx"])]

    def new_stats(self, info=None) -> PatternStats:
        return PatternStats.empty(self.fingerprint, self.layers, info)

    def check_batch(self, x, what: str = "data") -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != len(self.sample_shape) + 1 or tuple(x.shape[1:]) != self.sample_shape:
            raise XCompileError(f"{what}: batch of shape {list(x.shape)}; the model {self.where} takes [N, {', '.join(map(str, self.sample_shape))}]")
        if x.dtype.kind not in "fiu":
            raise XCompileError(f"{what}: dtype {x.dtype}; expected numbers")
        return np.ascontiguousarray(x, dtype=np.float32)

    def add(self, stats: PatternStats, x) -> None:
        x = self.check_batch(x)
        res = self.session.run(self.names, {self.input_name: x})
        outs = [res[3 * i:3 * i + 3] for i in range(len(self.layers))]
        with _defer_sigint():  # a Ctrl-C never leaves half a batch in the sums
            stats.add_batch(self.layers, outs, len(x))


class _defer_sigint:
    def __enter__(self):
        import signal
        import threading
        self.got, self.old = False, None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, lambda *a: setattr(self, "got", True))
        return self

    def __exit__(self, *exc):
        import signal
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.got:
                raise KeyboardInterrupt
        return False


def fit_patterns(model, batches: Iterable, where: str = "model", stats: Optional[PatternStats] = None,
                 on_batch: Optional[Callable[[PatternStats, int], None]] = None, **common) -> PatternStats:
    """One pass over `batches` (arrays [N, *sample_shape]); returns the accumulated statistics.
    Pass `stats` to continue a previous (interrupted) pass."""
    fitter = model if isinstance(model, Fitter) else Fitter(model, where, **common)
    st = stats if stats is not None else fitter.new_stats()
    st.check(fitter.fingerprint, where)
    for x in batches:
        fitter.add(st, x)
        if on_batch:
            on_batch(st, len(x))
    return st


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


def raw_activations(g, layers, x: np.ndarray, threads: Optional[int] = None) -> list[dict]:
    return RawActivations(g, layers, threads)(x)


def fit_file(model, data, out=None, batch_size: int = 64, preprocess=None, shard: Optional[tuple] = None,
             resume: bool = False, checkpoint_s: float = 30.0, progress: bool = True, where: Optional[str] = None,
             echo=None, **common) -> PatternStats:
    """The `fit-patterns` command: stream `data` through the instrumented model, with a progress bar and an
    ETA; checkpoint to OUT.partial every `checkpoint_s` seconds and on Ctrl-C; `resume` continues from it.
    shard = (k, n): fit only the k-th of n contiguous row ranges (merge the shard files afterwards)."""
    where = where or str(model)
    fitter = Fitter(model, where, **common)
    src = DataSource(data, fitter.sample_shape, preprocess)
    start, stop = 0, src.rows
    if shard:
        k, n = shard
        if not (0 <= k < n):
            raise XCompileError(f"--shard {k}/{n}: expected K/N with 0 <= K < N")
        start, stop = src.rows * k // n, src.rows * (k + 1) // n
    info = {"data": str(data), "rows_total": src.rows, "start": start, "stop": stop, "batch_size": batch_size,
            "preprocess": preprocess or ""}
    partial = Path(str(out) + ".partial") if out is not None else None
    stats = None
    if resume and partial is not None and partial.is_file():
        stats = load_stats(partial)
        stats.check(fitter.fingerprint, str(partial))
        old = {k: stats.info.get(k) for k in ("data", "start", "stop", "batch_size", "preprocess")}
        new = {k: info[k] for k in old}
        if old != new:
            raise XCompileError(f"{partial}: was started with other data options ({old}); cannot resume with {new}")
        if echo:
            echo(f"resuming {partial}: {stats.rows} of {stop - start} rows done")
    if stats is None:
        stats = fitter.new_stats(info)
    done = stats.rows
    batches = src.batches(batch_size, start + done, stop)
    last = [time.monotonic()]

    def checkpoint(st):
        if partial is not None:
            st.save(partial)
        last[0] = time.monotonic()

    bar = None
    try:
        if progress:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            bar = Progress(TextColumn("fit-patterns"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                           TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False)
            bar.start()
            task = bar.add_task("fit", total=stop - start, completed=done)

        def on_batch(st, n):
            if bar is not None:
                bar.update(task, advance=n)
            if time.monotonic() - last[0] > checkpoint_s:
                checkpoint(st)

        stats = fit_patterns(fitter, batches, where, stats=stats, on_batch=on_batch)
    except KeyboardInterrupt:
        if bar is not None:
            bar.stop()
            bar = None
        if partial is not None:
            stats.save(partial)
            raise XCompileError(f"interrupted after {stats.rows} rows; progress saved to {partial} (run again with --resume)") from None
        raise
    finally:
        if bar is not None:
            bar.stop()
    if out is not None:
        stats.save(out)
        if partial is not None and partial.exists():
            partial.unlink()
    return stats
