"""LSTM / GRU / RNN, unrolled at compile time (xcompile/canonicalize/recurrent.py).

Oracles: onnxruntime's own LSTM/GRU/RNN kernels (forward), a PyTorch transcription of the ONNX operator equations
(one-node graphs: reverse, layout 1, peepholes, given initial states; its autograd for the gradient), PyTorch
autograd / Captum on `nn.LSTM` / `nn.GRU` / `nn.RNN` classifiers exported by both exporters, and a numpy LRP of
LSTM and GRU cells written from Arras et al. 2017 ("Explaining Recurrent Neural Network Predictions in Sentiment
Analysis": gates are constant weights, the signal takes all relevance, c_t = f c_{t-1} + i g split in proportion to
its terms, the linear maps by LRP-epsilon)."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from oracle import rel_err

import xcompile
from model_zoo.zoo import export_onnx
from xcompile.errors import XCompileError

SLOW = pytest.mark.slow
F, H, T, C = 4, 5, 7, 3   # features, hidden size, sequence length, classes
RNG = np.random.default_rng(0)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


# ------------------------------------------------------------------------------ the ONNX equations in PyTorch
def onnx_reference(op, x, W, R, B=None, h0=None, c0=None, P=None, direction="forward", layout=0, lbr=0, acts=None):
    """Y, Y_h, Y_c of the ONNX LSTM/GRU/RNN (operator specification, opset 14), in torch (differentiable in x).
    x: [T, N, F] (layout 0) or [N, T, F] (layout 1); W [D, G*H, F], R [D, G*H, H], B [D, 2*G*H]."""
    f = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}
    t = lambda a: None if a is None else torch.as_tensor(a, dtype=x.dtype)  # noqa: E731
    W, R, B, h0, c0, P = map(t, (W, R, B, h0, c0, P))
    if layout:
        x = x.transpose(0, 1)
        h0, c0 = (None if s is None else s.transpose(0, 1) for s in (h0, c0))
    n_dir, hs = W.shape[0], R.shape[-1]
    k = len({"LSTM": "fgh", "GRU": "fg", "RNN": "f"}[op])
    acts = acts or {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[op] * n_dir
    ys, yh, yc = [], [], []
    for d in range(n_dir):
        a = [f[n] for n in acts[d * k:(d + 1) * k]]
        Wd, Rd = W[d], R[d]
        Bd = B[d] if B is not None else torch.zeros(2 * Wd.shape[0], dtype=x.dtype)
        Wb, Rb = Bd[:Wd.shape[0]], Bd[Wd.shape[0]:]
        h = h0[d].expand(x.shape[1], hs) if h0 is not None else torch.zeros(x.shape[1], hs, dtype=x.dtype)
        c = c0[d].expand(x.shape[1], hs) if c0 is not None else torch.zeros(x.shape[1], hs, dtype=x.dtype)
        rev = direction == "reverse" or d == 1
        out = [None] * x.shape[0]
        for s in (range(x.shape[0] - 1, -1, -1) if rev else range(x.shape[0])):
            xt = x[s]
            if op == "RNN":
                h = a[0](xt @ Wd.T + h @ Rd.T + Wb + Rb)
            elif op == "LSTM":
                g = xt @ Wd.T + h @ Rd.T + Wb + Rb
                gi, go, gf, gc = g.split(hs, 1)
                if P is not None:
                    gi, gf = gi + P[d][:hs] * c, gf + P[d][2 * hs:] * c
                i, fg, cc = a[0](gi), a[0](gf), a[1](gc)
                c = fg * c + i * cc
                if P is not None:
                    go = go + P[d][hs:2 * hs] * c
                h = a[0](go) * a[2](c)
            else:
                gz, gr = (xt @ Wd[:2 * hs].T + h @ Rd[:2 * hs].T + Wb[:2 * hs] + Rb[:2 * hs]).split(hs, 1)
                z, r = a[0](gz), a[0](gr)
                if lbr:
                    n = a[1](xt @ Wd[2 * hs:].T + Wb[2 * hs:] + r * (h @ Rd[2 * hs:].T + Rb[2 * hs:]))
                else:
                    n = a[1](xt @ Wd[2 * hs:].T + (r * h) @ Rd[2 * hs:].T + Wb[2 * hs:] + Rb[2 * hs:])
                h = (1 - z) * n + z * h
            out[s] = h
        ys.append(torch.stack(out))
        yh.append(h)
        yc.append(c)
    Y, Yh, Yc = torch.stack(ys, 1), torch.stack(yh), torch.stack(yc)   # [T, D, N, H], [D, N, H]
    if layout:
        Y, Yh, Yc = Y.permute(2, 0, 1, 3), Yh.transpose(0, 1), Yc.transpose(0, 1)
    return Y, Yh, Yc


def one_node(op, direction="forward", layout=0, bias=True, states=False, peep=False, lbr=0, acts=None, extra=None,
             seq_lens=None, t_dim=T, inits=None, head=None):
    """x [N, T, F] -> (Transpose for layout 0) -> op -> every output, batch first, flattened -> Concat -> MatMul.
    inits / head: given parameters (else drawn)."""
    n_dir = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    p = {"W": RNG.standard_normal((n_dir, G * H, F)) * 0.5, "R": RNG.standard_normal((n_dir, G * H, H)) * 0.5}
    if bias:
        p["B"] = RNG.standard_normal((n_dir, 2 * G * H)) * 0.3
    if states:  # batch 1: broadcast to every row (onnxruntime's kernel is run at batch 1 only)
        p["h0"] = RNG.standard_normal((1, n_dir, H) if layout else (n_dir, 1, H)) * 0.5
        if op == "LSTM":
            p["c0"] = RNG.standard_normal((1, n_dir, H) if layout else (n_dir, 1, H)) * 0.5
    if peep:
        p["P"] = RNG.standard_normal((n_dir, 3 * H)) * 0.5
    inits = inits or {k: v.astype(np.float32) for k, v in p.items()}
    names = ["x_seq", "W", "R", "B" if bias else "", "seq_lens" if seq_lens is not None else "",
             "h0" if states else "", "c0" if states and op == "LSTM" else "", "P" if peep else ""]
    if op != "LSTM":
        names = names[:6]
    while names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    kw = dict(hidden_size=H, direction=direction, layout=layout, **(extra or {}))
    if op == "GRU":
        kw["linear_before_reset"] = lbr
    if acts:
        kw["activations"] = acts
    nodes = [helper.make_node("Transpose", ["x"], ["x_seq"], perm=[1, 0, 2]) if not layout else
             helper.make_node("Identity", ["x"], ["x_seq"]),
             helper.make_node(op, names, outs, name="cell", **kw)]
    flat = []
    for o in outs:  # batch first, then flatten
        perm = None if layout else ([2, 0, 1, 3] if o == "Y" else [1, 0, 2])
        src = o
        if perm:
            nodes.append(helper.make_node("Transpose", [o], [o + "_bf"], perm=perm))
            src = o + "_bf"
        nodes.append(helper.make_node("Flatten", [src], [o + "_flat"], axis=1))
        flat.append(o + "_flat")
    nodes.append(helper.make_node("Concat", flat, ["feats"], axis=1))
    width = (t_dim * n_dir * H) + n_dir * H * (len(outs) - 1)
    head = RNG.standard_normal((width, C)).astype(np.float32) * 0.3 if head is None else head
    nodes.append(helper.make_node("MatMul", ["feats", "head"], ["scores"]))
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()] + [numpy_helper.from_array(head, "head")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", t_dim, F])]
    if isinstance(seq_lens, str):
        inputs.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, ["N"]))
    elif seq_lens is not None:
        tensors.append(numpy_helper.from_array(np.asarray(seq_lens, np.int32), "seq_lens"))
    graph = helper.make_graph(nodes, "one_" + op, inputs,
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", C])], initializer=tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, inits, head, kw


def reference_scores(op, inits, head, kw, x):
    """scores of the one-node graph through onnx_reference (float64, differentiable in x)."""
    xs = x if kw["layout"] else x.transpose(0, 1)
    Y, Yh, Yc = onnx_reference(op, xs, inits["W"], inits["R"], inits.get("B"), inits.get("h0"), inits.get("c0"),
                               inits.get("P"), kw["direction"], kw["layout"], kw.get("linear_before_reset", 0),
                               kw.get("activations"))
    parts = [Y, Yh, Yc][:3 if op == "LSTM" else 2]
    if not kw["layout"]:
        parts = [parts[0].permute(2, 0, 1, 3)] + [p.transpose(0, 1) for p in parts[1:]]
    feats = torch.cat([p.reshape(x.shape[0], -1) for p in parts], 1)
    return feats @ torch.as_tensor(head, dtype=x.dtype)


ONE_NODE = [
    ("LSTM", dict(direction="bidirectional", layout=0, states=True, peep=True)),
    ("LSTM", dict(direction="reverse", layout=1, bias=False)),
    ("GRU", dict(direction="bidirectional", layout=0, states=True, lbr=0)),
    ("GRU", dict(direction="forward", layout=1, lbr=1, states=True)),
    ("RNN", dict(direction="reverse", layout=0, states=True, acts=["Relu"])),
    ("RNN", dict(direction="bidirectional", layout=1, acts=["Tanh", "Sigmoid"])),
]


@pytest.mark.parametrize("op,form", ONE_NODE, ids=[f"{o}-{'-'.join(f'{k}={v}' for k, v in f.items())}" for o, f in ONE_NODE])
def test_one_node_forward_and_gradient(op, form):
    model, inits, head, kw = one_node(op, **form)
    x = RNG.standard_normal((3, T, F)).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    twin = model
    if form.get("layout"):  # onnxruntime's kernels have no layout 1: the same parameters at layout 0
        twin = one_node(op, **{**form, "layout": 0}, head=head, inits={
            k: (v.transpose(1, 0, 2) if k in ("h0", "c0") else v) for k, v in inits.items()})[0]
    ort_scores = ort.InferenceSession(twin.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x[:1]})[0]   # onnxruntime's kernel: batch 1 (the initial states are given for one row)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = reference_scores(op, inits, head, kw, xt)
    assert rel_err(ref[:1].detach().numpy(), ort_scores) < 1e-5   # the reference is the operator's definition
    target = np.array([0, 2, 1])
    grad, = torch.autograd.grad(ref[torch.arange(3), torch.as_tensor(target)].sum(), xt)
    out = xcompile.Explainer(xcompile.compile(model, "gradient")).explain(x, target)
    assert not any(n.op_type == op for n in onnx.load_from_string(
        xcompile.compile(model, "gradient").SerializeToString()).graph.node)
    errs = (rel_err(out.scores[:1], ort_scores), rel_err(out.scores, ref.detach().numpy()), rel_err(out.relevance, grad.numpy()))
    print(op, form, "scores vs onnxruntime %.1e, vs reference %.1e; gradient %.1e" % errs)
    assert errs[0] < 1e-5 and errs[1] < 1e-5
    assert errs[2] < 1e-4


def test_one_node_float16_keeps_dtype():
    from onnxconverter_common import float16
    model, inits, head, kw = one_node("GRU", direction="bidirectional", lbr=1)
    m16 = float16.convert_float_to_float16(model, keep_io_types=False)
    ex = xcompile.compile(m16, "gradient")
    assert ex.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = RNG.standard_normal((2, T, F)).astype(np.float16)
    out = xcompile.Explainer(ex).explain(x, np.array([0, 1]))
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    ref = reference_scores("GRU", inits, head, kw, xt)
    grad, = torch.autograd.grad(ref[torch.arange(2), torch.tensor([0, 1])].sum(), xt)
    errs = rel_err(out.scores.astype(np.float64), ref.detach().numpy()), rel_err(out.relevance, grad.numpy())
    print("float16 GRU: scores %.1e, gradient %.1e" % errs)
    assert errs[0] < 5e-3 and errs[1] < 5e-3   # float16 arithmetic (10-bit mantissa) over 7 steps


@pytest.mark.parametrize("form,match", [
    (dict(extra={"clip": 3.0}), r"node 'cell' \(LSTM\): cell clipping"),
    (dict(acts=["LeakyRelu", "Tanh", "Tanh"]), r"node 'cell' \(LSTM\): activations .* not supported"),
    (dict(seq_lens=[T, T - 2, T]), r"node 'cell' \(LSTM\): sequence_lens \[7, 5, 7\] is not the full length 7"),
    (dict(seq_lens="input"), r"node 'cell' \(LSTM\): sequence_lens 'seq_lens' is computed at run time.*frozen"),
    (dict(extra={"input_forget": 1}), r"node 'cell' \(LSTM\): coupled input and forget gates"),
])
def test_unsupported_forms_one_line(form, match):
    model, *_ = one_node("LSTM", **form)
    with pytest.raises(XCompileError, match=match) as e:
        xcompile.compile(model, "gradient")
    assert "\n" not in str(e.value)


def test_full_constant_sequence_lens_is_accepted():
    model, inits, head, kw = one_node("LSTM", seq_lens=[T, T, T])
    x = RNG.standard_normal((3, T, F)).astype(np.float32)
    out = xcompile.Explainer(xcompile.compile(model, "gradient")).explain(x, np.array([0, 1, 2]))
    assert rel_err(out.scores, reference_scores("LSTM", inits, head, kw, torch.tensor(x, dtype=torch.float64)).numpy()) < 1e-5


def test_symbolic_length_and_other_lengths_refused():
    model, *_ = one_node("GRU")
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "T"
    with pytest.raises(XCompileError, match=r"node 'cell' \(GRU\): the sequence length .* is not fixed"):
        xcompile.compile(model, "gradient")
    model, *_ = one_node("GRU")
    ex = xcompile.Explainer(xcompile.compile(model, "gradient"))
    with pytest.raises(XCompileError, match=rf"input has shape \[2, {T + 3}, {F}\].*expects \[N, {T}, {F}\]"):
        ex.explain(np.zeros((2, T + 3, F), np.float32), np.array([0, 0]))


# ------------------------------------------------------------------------------ PyTorch classifiers
class SeqClassifier(torch.nn.Module):
    """[N, T, F] (batch_first) or [T, N, F] -> nn.LSTM/GRU/RNN -> last step, mean over time or the final hidden
    state (pool = last | mean | final) -> Linear -> logits."""

    def __init__(self, cell, bidirectional=False, layers=1, batch_first=True, pool="last", states=False,
                 nonlinearity="tanh", zero_bias=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        kw = {"nonlinearity": nonlinearity} if cell == "RNN" else {}
        self.rnn = getattr(torch.nn, cell)(F, H, num_layers=layers, bidirectional=bidirectional,
                                           batch_first=batch_first, bias=not zero_bias, **kw)
        d = 2 if bidirectional else 1
        self.fc = torch.nn.Linear(d * H, C, bias=not zero_bias)
        self.batch_first, self.pool, self.cell = batch_first, pool, cell
        if states:  # initial states: parameters of the module (initializers in the export), one row broadcast
            self.h0 = torch.nn.Parameter(torch.randn(layers * d, 1, H) * 0.5)
            self.c0 = torch.nn.Parameter(torch.randn(layers * d, 1, H) * 0.5) if cell == "LSTM" else None
        else:
            self.h0 = None

    def forward(self, x):
        if self.h0 is not None:
            n = x.shape[0 if self.batch_first else 1]
            h0 = self.h0.expand(-1, n, -1).contiguous()
            st = (h0, self.c0.expand(-1, n, -1).contiguous()) if self.cell == "LSTM" else h0
            y, hn = self.rnn(x, st)
        else:
            y, hn = self.rnn(x)
        if self.pool == "final":  # the last layer's final hidden states (Y_h), both directions
            hn = hn[0] if self.cell == "LSTM" else hn
            d = 2 if self.rnn.bidirectional else 1
            return self.fc(hn[-d:].transpose(0, 1).reshape(hn.shape[1], -1))
        t_axis = 1 if self.batch_first else 0
        z = y.mean(t_axis) if self.pool == "mean" else y.select(t_axis, -1)
        return self.fc(z)


def _x(batch_first, n=3):
    x = np.random.default_rng(7).standard_normal((n, T, F)).astype(np.float32)
    return x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2))


def _compiled(tmp_path, model, x, exporter, method, **params):
    path = tmp_path / f"{exporter}.onnx"
    if not path.exists():
        export_onnx(model, torch.tensor(x[:2]), path, exporter)
    return xcompile.Explainer(xcompile.compile(str(path), method, **params))


def _check_gradient_family(tmp_path, model, exporter, ig=True):
    """gradient, input_x_gradient (autograd / Captum) <= 1e-4 of max, integrated_gradients (Captum) <= 1e-3."""
    from captum.attr import InputXGradient, IntegratedGradients
    if not model.batch_first:
        pytest.skip("the explained input is batch first (the data input's dim 0 is the batch)")
    x = _x(model.batch_first)
    m64 = copy.deepcopy(model).double().eval()
    target = torch.tensor([0, 2, 1])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    scores = m64(xt)
    grad, = torch.autograd.grad(scores[torch.arange(3), target].sum(), xt)
    errs = {}
    out = _compiled(tmp_path, model, x, exporter, "gradient").explain(x, target.numpy())
    assert rel_err(out.scores, scores.detach().numpy()) < 1e-5
    errs["gradient"] = rel_err(out.relevance, grad.numpy())
    ixg = InputXGradient(m64).attribute(torch.tensor(x, dtype=torch.float64), target=target).detach().numpy()
    errs["input_x_gradient"] = rel_err(_compiled(tmp_path, model, x, exporter, "input_x_gradient").explain(x, target.numpy()).relevance, ixg)
    if ig:
        ref = IntegratedGradients(m64).attribute(torch.tensor(x, dtype=torch.float64), target=target, n_steps=8,
                                                 method="riemann_right").detach().numpy()
        errs["integrated_gradients"] = rel_err(_compiled(tmp_path, model, x, exporter, "integrated_gradients",
                                                         steps=8).explain(x, target.numpy()).relevance, ref)
    print(errs)
    assert errs["gradient"] <= 1e-4 and errs["input_x_gradient"] <= 1e-4, errs
    assert errs.get("integrated_gradients", 0) <= 1e-3, errs
    return errs


DEFAULT_MODELS = [
    ("LSTM", dict(bidirectional=True, layers=2, pool="mean"), "legacy"),
    ("GRU", dict(states=True), "dynamo"),
    ("RNN", dict(bidirectional=True, nonlinearity="relu"), "legacy"),
    ("LSTM", dict(bidirectional=True, layers=2, pool="final"), "legacy"),
]


@pytest.mark.parametrize("cell,kw,exporter", DEFAULT_MODELS, ids=[f"{c}-{e}" for c, _, e in DEFAULT_MODELS])
def test_torch_gradient_family(tmp_path, cell, kw, exporter):
    _check_gradient_family(tmp_path, SeqClassifier(cell, **kw), exporter)


MATRIX = [(cell, dict(bidirectional=bi, layers=layers, batch_first=True, states=st, nonlinearity=nl, pool=pool), ex)
          for cell in ("LSTM", "GRU", "RNN") for bi in (False, True) for layers in (1, 2) for st in (False, True)
          for nl in (("tanh", "relu") if cell == "RNN" else ("tanh",)) for pool in (("last", "final") if bi else ("last",))
          for ex in ("legacy", "dynamo")]


@SLOW
@pytest.mark.parametrize("cell,kw,exporter", MATRIX, ids=[f"{c}-{'-'.join(str(v) for v in k.values())}-{e}" for c, k, e in MATRIX])
def test_torch_gradient_family_matrix(tmp_path, cell, kw, exporter):
    _check_gradient_family(tmp_path, SeqClassifier(cell, **kw), exporter, ig=kw["layers"] == 1)


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=SLOW)])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_sequence_first_layout(tmp_path, cell, exporter):
    """batch_first=False: the model transposes a [N, T, F] input to [T, N, F] itself (the data input stays batch
    first); both orders of the recurrent op's input are exercised (layout 0 after the transpose)."""
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.batch_first = SeqClassifier(cell, batch_first=False, pool="mean", bidirectional=True), True

        def forward(self, x):
            return self.inner(x.transpose(0, 1))
    _check_gradient_family(tmp_path, Wrap(), exporter, ig=False)


# ------------------------------------------------------------------------------ LRP: Arras et al. 2017 in numpy
def _eps(z, e):
    return z + e * np.where(z >= 0, 1.0, -1.0)


def _lrp_linear(a, w, z, r, e):
    """LRP-epsilon through z = a @ w (+ bias, which is inside z and absorbs its share): a [N, I], w [I, J]."""
    return a * ((r / _eps(z, e)) @ w.T)


def arras_lrp(cell, rnn, fc, x, target, e):
    """Relevance of x [N, T, F] for a one-layer unidirectional nn.LSTM / nn.GRU (batch_first, zero initial states)
    read out at the last step by fc; written from Arras et al. 2017 (and its GRU form: gates are constant weights)."""
    p = {k: v.detach().double().numpy() for k, v in rnn.named_parameters()}
    Wi, Wh = p["weight_ih_l0"], p["weight_hh_l0"]
    bi, bh = p.get("bias_ih_l0", np.zeros(Wi.shape[0])), p.get("bias_hh_l0", np.zeros(Wi.shape[0]))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    N, T_ = x.shape[:2]
    h = [np.zeros((N, H))]
    c = [np.zeros((N, H))]
    keep = []
    for t in range(T_):
        xh = np.concatenate([x[:, t], h[-1]], 1)
        if cell == "LSTM":   # torch gate order i, f, g, o
            z = xh @ np.concatenate([Wi, Wh], 1).T + bi + bh
            i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
            c.append(f * c[-1] + i * g)
            h.append(o * np.tanh(c[-1]))
            keep.append(dict(xh=xh, z=z, i=i, f=f, g=g))
        else:                # torch gate order r, z, n; n = tanh(W_n x + b_in + r * (R_n h + b_hn))
            zr = xh[:, :F] @ Wi[:2 * H].T + h[-1] @ Wh[:2 * H].T + bi[:2 * H] + bh[:2 * H]
            r, u = sig(zr[:, :H]), sig(zr[:, H:])
            xn = x[:, t] @ Wi[2 * H:].T + bi[2 * H:]
            hn = h[-1] @ Wh[2 * H:].T + bh[2 * H:]
            n = np.tanh(xn + r * hn)
            h.append((1 - u) * n + u * h[-1])
            keep.append(dict(u=u, n=n, r=r, xn=xn, hn=hn, hprev=h[-2], xt=x[:, t]))
    wf = fc.weight.detach().double().numpy().T
    bf = fc.bias.detach().double().numpy() if fc.bias is not None else 0.0
    s = h[-1] @ wf + bf
    rs = np.zeros_like(s)
    rs[np.arange(N), target] = s[np.arange(N), target]
    rh = _lrp_linear(h[-1], wf, s, rs, e)
    rc = np.zeros((N, H))
    rx = np.zeros((N, T_, F))
    for t in range(T_ - 1, -1, -1):
        k = keep[t]
        if cell == "LSTM":
            rc = rc + rh                                     # h = o * tanh(c): gate o constant, tanh passes
            ct = c[t + 1]
            r_prev = k["f"] * c[t] / _eps(ct, e) * rc     # c_t = f c_{t-1} + i g: proportional
            rg = k["i"] * k["g"] / _eps(ct, e) * rc       # i * g: the signal g takes it all; tanh passes
            w = np.concatenate([Wi, Wh], 1)[2 * H:3 * H].T   # the candidate's linear map over [x_t, h_{t-1}]
            rxh = _lrp_linear(k["xh"], w, k["z"][:, 2 * H:3 * H], rg, e)
            rx[:, t] = rxh[:, :F]
            rh, rc = rxh[:, F:], r_prev
        else:
            hn_new = h[t + 1]
            a, b = (1 - k["u"]) * k["n"], k["u"] * k["hprev"]
            rn = a / _eps(hn_new, e) * rh                  # (1 - z) n + z h: proportional; gates constant
            r_hprev = b / _eps(hn_new, e) * rh
            zn = k["xn"] + k["r"] * k["hn"]                    # tanh passes; Add proportional
            rxn = k["xn"] / _eps(zn, e) * rn
            rrh = k["r"] * k["hn"] / _eps(zn, e) * rn       # r * (R_n h + b): the gate r is constant
            rx[:, t] = _lrp_linear(k["xt"], Wi[2 * H:].T, k["xn"], rxn, e)
            r_hprev = r_hprev + _lrp_linear(k["hprev"], Wh[2 * H:].T, k["hn"], rrh, e)
            rh = r_hprev
    return s, rx


TINY = 1e-10


def tiny_rules(tmp_path):
    """LRP-epsilon with a tiny epsilon, and the proportional sums with a tiny stabilizer: where nothing (no bias, no
    initial state) absorbs relevance, conservation is then exact up to float32 rounding."""
    path = tmp_path / "tiny.toml"
    path.write_text(f'name = "epsilon-tiny"\n\n[[rule]]\nop = ["Add", "ReduceMean"]\nrule = "proportional"\n'
                    f'params = {{ stabilizer = {TINY} }}\n\n[[rule]]\nkind = "linear"\nrule = "epsilon"\n'
                    f'params = {{ epsilon = {TINY} }}\n')
    return str(path)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("zero_bias", [True, False])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_lrp_matches_arras_reference(tmp_path, cell, zero_bias, exporter):
    model = SeqClassifier(cell, zero_bias=zero_bias, seed=3).eval()
    x = _x(True)
    target = np.array([0, 2, 1])
    e = TINY if zero_bias else 1e-6
    s, ref = arras_lrp(cell, model.rnn, model.fc, x.astype(np.float64), target, e)
    rules = tiny_rules(tmp_path) if zero_bias else "epsilon"
    out = _compiled(tmp_path, model, x, exporter, "lrp", rules=rules).explain(x, target)
    err = rel_err(out.relevance, ref)
    cons = out.relevance.reshape(3, -1).sum(1) / s[np.arange(3), target]
    print(cell, exporter, "zero_bias" if zero_bias else "bias", "err", err, "sum R / score", cons)
    assert err <= 1e-3
    if zero_bias:   # nothing absorbs: every step's relevance reaches the input
        assert np.abs(cons - 1).max() <= 1e-4


def _lrp_conservation(tmp_path, model, exporter, rules="epsilon"):
    x = _x(True)
    out = _compiled(tmp_path, model, x, exporter, "lrp", rules=rules).explain(x, np.array([0, 2, 1]))
    assert np.isfinite(out.relevance).all()
    return out.relevance.reshape(3, -1).sum(1) / out.scores[np.arange(3), [0, 2, 1]]


@pytest.mark.parametrize("cell,kw,exporter", [
    ("LSTM", dict(bidirectional=True, layers=2, pool="mean"), "dynamo"),
    ("GRU", dict(bidirectional=True, layers=2), "legacy"),
    ("RNN", dict(layers=2, nonlinearity="relu", pool="mean"), "dynamo"),
])
def test_lrp_conservation_without_biases(tmp_path, cell, kw, exporter):
    """LRP-epsilon on bias-free stacked / bidirectional cells: relevance is conserved exactly (nothing absorbs it)."""
    cons = _lrp_conservation(tmp_path, SeqClassifier(cell, zero_bias=True, **kw), exporter, tiny_rules(tmp_path))
    print(cell, exporter, cons)
    assert np.abs(cons - 1).max() <= 1e-4


@SLOW
@pytest.mark.parametrize("cell,kw,exporter", MATRIX, ids=[f"{c}-{'-'.join(str(v) for v in k.values())}-{e}" for c, k, e in MATRIX])
def test_lrp_matrix_finite(tmp_path, cell, kw, exporter):
    """With biases (and initial states) relevance is absorbed there: finite, and conserved once both are removed."""
    cons = _lrp_conservation(tmp_path, SeqClassifier(cell, **kw), exporter)
    print(cell, kw, exporter, cons)
    if not kw["states"]:
        (tmp_path / f"{exporter}.onnx").unlink()
        cons0 = _lrp_conservation(tmp_path, SeqClassifier(cell, zero_bias=True, **kw), exporter, tiny_rules(tmp_path))
        assert np.abs(cons0 - 1).max() <= 1e-4, cons0


# ------------------------------------------------------------------------------ an LSTM text classifier (token ids)
V_TEXT = 40


class LSTMText(torch.nn.Module):
    """token ids [N, T] -> Embedding -> nn.LSTM (batch first) -> the last step -> Linear: an LSTM text classifier."""

    def __init__(self, bidirectional=False, zero_bias=False, seed=5):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(V_TEXT, F)
        self.rnn = torch.nn.LSTM(F, H, batch_first=True, bidirectional=bidirectional, bias=not zero_bias)
        self.fc = torch.nn.Linear((2 if bidirectional else 1) * H, C, bias=not zero_bias)

    def forward(self, ids):
        return self.fc(self.rnn(self.emb(ids))[0][:, -1])

    def from_embedding(self, e):
        return self.fc(self.rnn(e)[0][:, -1])


def _ids(n=3, length=T, seed=11):
    return np.random.default_rng(seed).integers(1, V_TEXT, (n, length)).astype(np.int64)


def _export_ids(model, path, exporter):
    """Token ids [N, L] with both the batch and the length symbolic (the legacy exporter), or the batch only."""
    ids = torch.tensor(_ids(2))
    if exporter == "legacy":
        from model_zoo.zoo import quiet
        with quiet(), torch.no_grad():
            torch.onnx.export(model, (ids,), str(path), dynamo=False, opset_version=17, input_names=["input_ids"],
                              output_names=["scores"], dynamic_axes={"input_ids": {0: "N", 1: "L"}, "scores": {0: "N"}})
    else:
        export_onnx(model, ids, path, exporter)
    return str(path)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_lstm_text_classifier_gradient_family(tmp_path, exporter):
    """Token ids through an embedding into a bidirectional LSTM: gradient (autograd at the embedding output E,
    element by element; token relevance = its L2 norm over D), input_x_gradient (sum over D) and integrated gradients
    along table[baseline_token] -> E (Captum LayerIntegratedGradients, right Riemann sum)."""
    from captum.attr import LayerIntegratedGradients
    model = LSTMText(bidirectional=True).eval()
    path = _export_ids(model, tmp_path / f"{exporter}.onnx", exporter)
    m64 = copy.deepcopy(model).double()
    ids = _ids()
    target = torch.tensor([0, 2, 1])
    e = m64.emb(torch.tensor(ids)).detach().requires_grad_(True)
    scores = m64.from_embedding(e)
    g, = torch.autograd.grad(scores[torch.arange(3), target].sum(), e)
    out = xcompile.Explainer(xcompile.compile(path, "gradient", input_shape=T)).explain(ids, target.numpy())
    assert out.relevance.shape == (3, T) and rel_err(out.scores, scores.detach().numpy()) < 1e-5
    errs = {"gradient": rel_err(out.extras["embedding_relevance"], g.numpy()),
            "gradient tokens": rel_err(out.relevance, g.norm(dim=2).numpy())}
    ixg = xcompile.Explainer(xcompile.compile(path, "input_x_gradient", input_shape=T)).explain(ids, target.numpy())
    errs["input_x_gradient tokens"] = rel_err(ixg.relevance, (e * g).sum(2).detach().numpy())
    ig = xcompile.Explainer(xcompile.compile(path, "integrated_gradients", input_shape=T, steps=8, baseline_token=0))
    ref = LayerIntegratedGradients(m64, m64.emb).attribute(torch.tensor(ids), baselines=torch.zeros_like(torch.tensor(ids)),
                                                           target=target, n_steps=8, method="riemann_right").detach()
    res = ig.explain(ids, target.numpy())
    errs["integrated_gradients"] = rel_err(res.extras["embedding_relevance"], ref.numpy())
    errs["integrated_gradients tokens"] = rel_err(res.relevance, ref.sum(2).numpy())
    print(exporter, errs)
    assert max(v for k, v in errs.items() if not k.startswith("integrated")) <= 1e-4, errs
    assert max(errs["integrated_gradients"], errs["integrated_gradients tokens"]) <= 1e-3, errs


def test_lstm_text_classifier_length_chosen_at_compile_time(tmp_path):
    """--set input_shape=L picks the unrolled length of a model exported with a symbolic length."""
    model = LSTMText().eval()
    path = _export_ids(model, tmp_path / "legacy.onnx", "legacy")
    ex = xcompile.Explainer(xcompile.compile(path, "gradient", input_shape=10))
    assert ex.data_input.shape == ["N", 10]
    ids = _ids(2, 10)
    e = model.emb(torch.tensor(ids)).detach().requires_grad_(True)
    s = model.from_embedding(e)
    g, = torch.autograd.grad(s[:, 1].sum(), e)
    out = ex.explain(ids, np.array([1, 1]))
    assert rel_err(out.extras["embedding_relevance"], g.numpy()) <= 1e-4
    with pytest.raises(XCompileError, match="is not fixed"):
        xcompile.compile(path, "gradient")  # the length is symbolic: it must be chosen


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("zero_bias", [True, False])
def test_lstm_text_classifier_lrp_matches_arras(tmp_path, zero_bias, exporter):
    """LRP of the LSTM text classifier at the embedding output = the numpy Arras et al. 2017 reference on E; token
    relevance its sum over D; conserved exactly without biases (tiny epsilon)."""
    model = LSTMText(zero_bias=zero_bias).eval()
    path = _export_ids(model, tmp_path / f"{exporter}.onnx", exporter)
    ids = _ids()
    target = np.array([2, 0, 1])
    e = model.emb(torch.tensor(ids)).detach().double().numpy()
    eps = TINY if zero_bias else 1e-6
    s, ref = arras_lrp("LSTM", model.rnn, model.fc, e, target, eps)
    rules = tiny_rules(tmp_path) if zero_bias else "epsilon"
    out = xcompile.Explainer(xcompile.compile(path, "lrp", rules=rules, input_shape=T)).explain(ids, target)
    errs = rel_err(out.extras["embedding_relevance"], ref), rel_err(out.relevance, ref.sum(2))
    cons = out.relevance.sum(1) / s[np.arange(3), target]
    print(exporter, "zero_bias" if zero_bias else "bias", errs, cons)
    assert max(errs) <= 1e-3, errs
    if zero_bias:
        assert np.abs(cons - 1).max() <= 1e-4, cons
