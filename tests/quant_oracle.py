"""An independent PyTorch oracle for quantized ONNX models: it evaluates the quantized file node by node from the
ONNX / onnxruntime operator definitions, every quantized tensor as its dequantized value, each requantization as
PyTorch's ``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine`` with the file's own scales and
zero points (so autograd gives the clipped straight-through gradient), DynamicQuantizeLinear as the identity
gradient. It shares no code with xcompile's dequantized view (load/quantized.py)."""
from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def _attrs(n):
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def _fq(x, scale, zp, axis=1):
    """fake_quantize with the zero point's dtype range (uint8 when absent)."""
    zp = np.zeros((), np.uint8) if zp is None else zp
    qmin, qmax = RANGE[zp.dtype]
    if np.size(scale) == 1:
        return torch.fake_quantize_per_tensor_affine(x, float(np.asarray(scale).ravel()[0]), int(np.asarray(zp).ravel()[0]), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, torch.tensor(scale, dtype=torch.float32),
                                                  torch.tensor(zp.astype(np.int32)), axis % x.dim(), qmin, qmax)


def _deq(q, s, z, axis=1):
    q = q.astype(np.int64)
    z = np.zeros((), np.int64) if z is None else z.astype(np.int64)
    s = np.asarray(s, np.float32)
    if s.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        s, z = s.reshape(shape), (z.reshape(shape) if z.ndim == 1 else z)
    return torch.tensor(((q - z).astype(np.float32) * s).astype(np.float32))


def _conv(x, w, b, a):
    k = len(w.shape) - 2
    pads = a.get("pads", [0] * 2 * k)
    if pads[:k] != pads[k:]:
        x = F.pad(x, [p for i in reversed(range(k)) for p in (pads[i], pads[i + k])])
        pads = [0] * 2 * k
    return F.conv2d(x, w, b, stride=a.get("strides", 1), padding=pads[:k], dilation=a.get("dilations", 1),
                    groups=a.get("group", 1))


def _gemm(a_, b_, c, at):
    if at.get("transA", 0):
        a_ = a_.t()
    if at.get("transB", 0):
        b_ = b_.t()
    y = at.get("alpha", 1.0) * (a_ @ b_)
    return y if c is None else y + at.get("beta", 1.0) * c


def measured(m: onnx.ModelProto, x: np.ndarray) -> dict:
    """Every node output of the quantized model as onnxruntime computes it (no graph optimization)."""
    import onnxruntime as ort
    mm = onnx.ModelProto()
    mm.CopyFrom(m)
    names = [o for n in mm.graph.node for o in n.output if o]
    del mm.graph.output[:]
    mm.graph.output.extend([onnx.ValueInfoProto(name=o) for o in names])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(mm.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(None, {mm.graph.input[0].name: x})))


def _ints(t):
    return [int(d) for d in (t.tolist() if hasattr(t, "tolist") else t)]


def _slice(n, a, x, c):
    t = x[0]
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    idx = [slice(None)] * t.dim()
    for s_, e_, ax, st in zip(starts, ends, axes, steps):
        size = t.shape[ax]
        s_ = max(0, min(size, s_ + size if s_ < 0 else s_))
        e_ = max(0, min(size, e_ + size if e_ < 0 else e_))
        idx[ax] = slice(s_, e_, st)
    return t[tuple(idx)]


def _layernorm(n, a, x, c):
    axis = a.get("axis", -1)
    dims = tuple(range(axis % x[0].dim(), x[0].dim()))
    mu = x[0].mean(dims, keepdim=True)
    var = ((x[0] - mu) ** 2).mean(dims, keepdim=True)
    y = (x[0] - mu) / torch.sqrt(var + a.get("epsilon", 1e-5)) * x[1]
    return y + x[2] if len(x) > 2 and x[2] is not None else y


FLOAT_OPS = {  # the float ops of the small models these tests quantize (resnet18, mobilenet_v2, a tiny ViT)
    "Clip": lambda n, a, x, c: torch.clamp(x[0], float(x[1]) if len(x) > 1 and x[1] is not None else None,
                                           float(x[2]) if len(x) > 2 and x[2] is not None else None),
    "Div": lambda n, a, x, c: x[0] / x[1],
    "Sqrt": lambda n, a, x, c: torch.sqrt(x[0]),
    "Erf": lambda n, a, x, c: torch.erf(x[0]),
    "Softmax": lambda n, a, x, c: torch.softmax(x[0], a.get("axis", -1)),
    "LayerNormalization": _layernorm,
    "Transpose": lambda n, a, x, c: x[0].permute(*a["perm"]),
    "Concat": lambda n, a, x, c: torch.cat(x, a["axis"]),
    "Slice": _slice,
    "Gather": lambda n, a, x, c: torch.index_select(x[0], a.get("axis", 0) % x[0].dim(),
                                                    x[1].reshape(-1).long() % x[0].shape[a.get("axis", 0)]).reshape(
        tuple(x[0].shape[:a.get("axis", 0) % x[0].dim()]) + tuple(x[1].shape) + tuple(x[0].shape[a.get("axis", 0) % x[0].dim() + 1:])),
    "Expand": lambda n, a, x, c: x[0] * torch.ones(_ints(x[1])),
    "Unsqueeze": lambda n, a, x, c: x[0].reshape(_unsqueezed(x[0].shape, _ints(x[1]))),
    "Squeeze": lambda n, a, x, c: x[0].squeeze(tuple(d % x[0].dim() for d in _ints(x[1]))),
    "Identity": lambda n, a, x, c: x[0],
    "Where": lambda n, a, x, c: torch.where(x[0].bool(), x[1], x[2]),
}


def _unsqueezed(shape, axes):
    out = list(shape)
    for ax in sorted(d % (len(shape) + len(axes)) for d in axes):
        out.insert(ax, 1)
    return out


def run(model_path, x: np.ndarray, target: np.ndarray):
    """(scores, d score[target] / d x) of the quantized model, by autograd.

    A quantized forward is discontinuous (one rounding flip in float accumulation moves a value by a quantum, and
    flips multiply layer by layer), so every tensor's VALUE is onnxruntime's own (the quantized model's forward,
    as the explainer's), while its GRADIENT is autograd's through the torch op and fake_quantize at that point:
    ``out + (measured - out).detach()``."""
    m = onnx.load(str(model_path))
    seen = measured(m, x)
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    xt = torch.tensor(x, requires_grad=True)
    env: dict = {m.graph.input[0].name: xt}
    scale_of: dict = {}  # DynamicQuantizeLinear output -> (scale, zero point) tensors

    def c(name):  # a constant as numpy (None when absent)
        return init.get(name) if name else None

    def v(name):  # a run-time value, or a float constant as a tensor
        if name in env:
            return env[name]
        return torch.tensor(init[name])

    def qv(k, s, z, axis=1):  # a quantized input's value: dequantized when it is a constant
        return _deq(c(k), c(s), c(z), axis) if k in init else v(k)

    for n in m.graph.node:
        a, i, op = _attrs(n), list(n.input) + [""] * 10, n.op_type
        if op == "QuantizeLinear":
            out = _fq(v(i[0]), c(i[1]), c(i[2]), a.get("axis", 1))
        elif op == "DequantizeLinear":
            out = _deq(c(i[0]), c(i[1]), c(i[2]), a.get("axis", 1)) if i[0] in init else v(i[0])
        elif op in ("QLinearConv", "QLinearMatMul", "QGemm"):
            xq = qv(i[0], i[1], i[2])
            wq = qv(i[3], i[4], i[5], 0 if op == "QLinearConv" or a.get("transB") else -1)
            bslot = 8 if op == "QLinearConv" else 6
            b = None
            if op != "QLinearMatMul" and i[bslot]:
                b = torch.tensor(c(i[bslot]).astype(np.float32) * (c(i[1]).astype(np.float32) * c(i[4]).astype(np.float32)))
            if op == "QLinearConv":
                y = _conv(xq, wq, b, a)
            elif op == "QLinearMatMul":
                y = xq @ wq
            else:
                y = _gemm(xq, wq, b, {**a, "beta": 1.0})
            ys = 6 if op != "QGemm" else 7
            out = _fq(y, c(i[ys]), c(i[ys + 1])) if i[ys] else y
        elif op in ("QLinearAdd", "QLinearMul"):
            y = qv(i[0], i[1], i[2]) + qv(i[3], i[4], i[5]) if op == "QLinearAdd" else qv(i[0], i[1], i[2]) * qv(i[3], i[4], i[5])
            out = _fq(y, c(i[6]), c(i[7]))
        elif op == "QLinearGlobalAveragePool":
            out = _fq(v(i[0]).mean(dim=tuple(range(2, v(i[0]).dim())), keepdim=True), c(i[3]), c(i[4]))
        elif op == "QLinearConcat":
            out = _fq(torch.cat([qv(i[k], i[k + 1], i[k + 2]) for k in range(2, len(n.input), 3)], a["axis"]), c(i[0]), c(i[1]))
        elif op == "DynamicQuantizeLinear":
            t = v(i[0])
            lo, hi = min(float(t.detach().min()), 0.0), max(float(t.detach().max()), 0.0)
            s = np.float32((hi - lo) / 255.0)
            zp = np.uint8(np.clip(np.round(0 - lo / s), 0, 255))
            q = torch.fake_quantize_per_tensor_affine(t.detach(), float(s), int(zp), 0, 255)
            out = t + (q - t.detach())  # identity gradient
            scale_of[n.output[0]] = (s, zp)
            env[n.output[1]], env[n.output[2]] = torch.tensor(s), torch.tensor(zp)
        elif op in ("ConvInteger", "MatMulInteger"):
            # integer semantics: (x_q - x_zp) (*) (w_q - w_zp); x_q - x_zp = value / scale
            s, _ = scale_of[i[0]]
            xc = v(i[0]) / torch.tensor(s)
            wz = c(i[3]) if i[3] else np.zeros((), np.int8)
            wq = c(i[1]).astype(np.int64)
            if op == "MatMulInteger":
                w = torch.tensor((wq - wz.astype(np.int64)).astype(np.float32))
                out = xc @ w
            else:
                w = torch.tensor((wq - wz.astype(np.int64).reshape(-1, *[1] * (wq.ndim - 1)) if wz.ndim else wq - wz).astype(np.float32))
                out = _conv(xc, w, None, a)
        elif op == "Cast":
            out = v(i[0]).float()
        elif op in ("Add", "Mul", "Sub"):
            x0, x1 = v(i[0]), v(i[1])
            out = x0 + x1 if op == "Add" else (x0 * x1 if op == "Mul" else x0 - x1)
        elif op == "Reshape":
            shape = _ints(v(i[1]))
            out = v(i[0]).reshape([v(i[0]).shape[k] if d == 0 else d for k, d in enumerate(shape)])
        elif op == "Relu":
            out = F.relu(v(i[0]))
        elif op == "MaxPool":
            k = a["kernel_shape"]
            p = a.get("pads", [0] * 2 * len(k))
            out = F.max_pool2d(v(i[0]), k, a.get("strides", k), p[:len(k)], ceil_mode=bool(a.get("ceil_mode", 0)))
        elif op == "GlobalAveragePool":
            out = v(i[0]).mean(dim=(2, 3), keepdim=True)
        elif op == "Flatten":
            out = torch.flatten(v(i[0]), a.get("axis", 1))
        elif op == "Conv":
            out = _conv(v(i[0]), v(i[1]), v(i[2]) if i[2] else None, a)
        elif op == "Gemm":
            out = _gemm(v(i[0]), v(i[1]), v(i[2]) if i[2] else None, a)
        elif op == "MatMul":
            out = v(i[0]) @ v(i[1])
        elif op in FLOAT_OPS:
            out = FLOAT_OPS[op](n, a, [v(k) if k else None for k in n.input], c)
        elif op in ("QLinearLeakyRelu", "QLinearSigmoid"):
            t = qv(i[0], i[1], i[2])
            y = F.leaky_relu(t, a.get("alpha", 0.01)) if op == "QLinearLeakyRelu" else torch.sigmoid(t)
            out = _fq(y, c(i[3]), c(i[4]))
        elif op == "QLinearAveragePool":
            k = a["kernel_shape"]
            p = a.get("pads", [0] * 2 * len(k))
            y = F.avg_pool2d(qv(i[0], i[1], i[2]), k, a.get("strides", k), p[:len(k)],
                             count_include_pad=bool(a.get("count_include_pad", 0)))
            out = _fq(y, c(i[3]), c(i[4]))
        elif op == "QLinearSoftmax":
            out = _fq(torch.softmax(v(i[0]), a.get("axis", -1)), c(i[3]), c(i[4]))
        elif op in ("Shape", "Size", "Equal", "ConstantOfShape", "Constant") or \
                not any(k in env and env[k].requires_grad for k in n.input):
            # shape arithmetic and constants carry no gradient: onnxruntime's values
            for o in n.output:
                if o:
                    env[o] = torch.tensor(seen[o])
            continue
        else:
            raise NotImplementedError(op)
        ref = seen[n.output[0]]
        if op == "DynamicQuantizeLinear":
            ref = _deq(ref, seen[n.output[1]], seen[n.output[2]]).numpy()
            env[n.output[1]], env[n.output[2]] = torch.tensor(seen[n.output[1]]), torch.tensor(seen[n.output[2]])
            scale_of[n.output[0]] = (seen[n.output[1]], seen[n.output[2]])
        elif ref.dtype in (np.int8, np.uint8):  # a quantized output: its dequantized value
            slots = {"QuantizeLinear": (1, 2)}.get(op, (7, 8) if op == "QGemm" else
                                                    (0, 1) if op == "QLinearConcat" else
                                                    (3, 4) if op in ("QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearLeakyRelu",
                                                                      "QLinearSigmoid", "QLinearAveragePool") else (6, 7))
            if op != "QuantizeLinear" and not op.startswith("QLinear") and op != "QGemm":
                # a quantized tensor moved (MaxPool, Reshape, Transpose, ...): the value computed from its input
                slots = None
                ref = out.detach().numpy()
            if slots is not None:
                ref = _deq(ref, c(i[slots[0]]), c(i[slots[1]]), a.get("axis", 1)).numpy()
        elif ref.dtype != np.float32:
            env[n.output[0]] = out
            continue
        out = out + (torch.tensor(ref) - out).detach()
        env[n.output[0]] = out
    scores = env[m.graph.output[0].name]
    sel = scores[torch.arange(len(target)), torch.tensor(target)].sum()
    (grad,) = torch.autograd.grad(sel, xt)
    return scores.detach().numpy(), grad.numpy()
