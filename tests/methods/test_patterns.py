"""PatternNet / PatternAttribution: fitted statistics vs a numpy im2col reference, the linear toy of Kindermans et al. 2018,
the emitted backward vs a PyTorch oracle, sharded/resumed fits, and bad inputs (exit 2, one line)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from clirun import inproc, one_line_error
from torch import nn
from torch.nn import functional as F

from xcompile import compiler
from xcompile.errors import XCompileError
from xcompile.patterns.fit import Fitter, fit_file, fit_patterns, load_stats, merge_stats
from xcompile.runtime.explainer import Explainer

GEOM = {"conv1": dict(stride=1, padding=1, dilation=1, groups=1),
        "conv2": dict(stride=2, padding=2, dilation=2, groups=2)}


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, **GEOM["conv1"])
        self.conv2 = nn.Conv2d(6, 8, 3, **GEOM["conv2"])
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def export(model, path, sample):
    model.eval()
    torch.onnx.export(model, torch.from_numpy(sample), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["scores"],
                      dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}})
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("patterns")
    net = SmallCNN()
    rng = np.random.default_rng(0)
    x = rng.random((96, 2, 10, 10), dtype=np.float32) - 0.3
    path = export(net, d / "cnn.onnx", x[:2])
    np.save(d / "data.npy", x)
    return net, path, x, d


# ----------------------------------------------------------------------------------- numpy reference
def im2col(x, k, stride, padding, dilation):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    cols = np.empty((n, c, k, k, ho, wo))
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i * dilation: i * dilation + stride * (ho - 1) + 1: stride,
                                  j * dilation: j * dilation + stride * (wo - 1) + 1: stride]
    return cols.reshape(n, c * k * k, ho * wo)  # rows ordered (channel, kh, kw) like the weight


def reference_patterns(net, x):
    """{layer: (linear [C, Dg], relu [C, Dg])} from the layer activations, im2col in numpy."""
    acts = {}
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, (i[0].double().numpy(), o.double().numpy())))
             for n in ("conv1", "conv2", "fc1", "fc2")]
    with torch.no_grad():
        net(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    out = {}
    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer = getattr(net, name)
        W = layer.weight.detach().double().numpy()
        bias = layer.bias.detach().double().numpy()
        xin, z = acts[name]
        C = W.shape[0]
        if name.startswith("conv"):
            geo = GEOM[name]
            cols = im2col(xin, 3, geo["stride"], geo["padding"], geo["dilation"])  # [N, Cin*9, L]
            G = geo["groups"]
            Dg = cols.shape[1] // G
            zz = z.reshape(z.shape[0], C, -1)
            per = []
            for c in range(C):
                gi = c // (C // G)
                X = cols[:, gi * Dg:(gi + 1) * Dg].transpose(0, 2, 1).reshape(-1, Dg)
                per.append((X, zz[:, c].reshape(-1) - bias[c], zz[:, c].reshape(-1) > 0))
        else:
            per = [(xin, z[:, c] - bias[c], z[:, c] > 0) for c in range(C)]
        w2d = W.reshape(C, -1)
        lin, relu = [], []
        for c, (X, y, m) in enumerate(per):
            cov = (X * y[:, None]).mean(0) - X.mean(0) * y.mean()
            lin.append(cov / (w2d[c] @ cov))
            if not m.any():  # a dead neuron: E₊ over no samples -> zero pattern (denominator 0 -> 1)
                relu.append(np.zeros(X.shape[1]))
                continue
            num = (X[m] * y[m, None]).mean(0) - X[m].mean(0) * y.mean()
            relu.append(num / (w2d[c] @ num))
        out[name] = (np.array(lin), np.array(relu))
    return out


def test_statistics_match_numpy_im2col(cnn):
    net, path, x, _ = cnn
    fitter = Fitter(path)
    assert [L.op for L in fitter.layers] == ["Conv", "Conv", "Gemm", "Gemm"]
    assert [L.gated for L in fitter.layers] == [True, True, True, False]  # the logits have no ReLU
    st = fit_patterns(fitter, (x[i:i + 40] for i in range(0, len(x), 40)))  # uneven last batch
    ref = reference_patterns(net, x)
    for i, (L, name) in enumerate(zip(fitter.layers, ("conv1", "conv2", "fc1", "fc2"))):
        for kind, r in zip(("linear", "relu"), ref[name]):
            got = st.patterns2d(i, L, kind, raw=True)
            rel = np.abs(got - r).max() / np.abs(r).max()
            assert rel <= 1e-4, (name, kind, rel)
    assert st.rows == len(x)


# ------------------------------------------------------------------------------ the emitted backward
def oracle(net, x, pats, target):
    """PyTorch reference of the PatternNet/PatternAttribution backward with the given per-layer matrices."""
    xt = torch.from_numpy(x).double()
    net = net.double()
    with torch.no_grad():
        z1 = net.conv1(xt)
        a1 = F.relu(z1)
        z2 = net.conv2(a1)
        p, idx = F.max_pool2d(F.relu(z2), 2, return_indices=True)
        z3 = net.fc1(p.flatten(1))
        z4 = net.fc2(F.relu(z3))
        g = F.one_hot(torch.as_tensor(target), 4).double() * z4
        g = g @ torch.from_numpy(pats["fc2"])
        g = (g * (z3 > 0)) @ torch.from_numpy(pats["fc1"])
        g = F.max_unpool2d(g.reshape(p.shape), idx, 2, output_size=z2.shape[2:]) * (z2 > 0)
        g = torch.nn.grad.conv2d_input(a1.shape, torch.from_numpy(pats["conv2"]), g, **GEOM["conv2"]) * (z1 > 0)
        g = torch.nn.grad.conv2d_input(xt.shape, torch.from_numpy(pats["conv1"]), g, **GEOM["conv1"])
    net.float()
    return g.numpy()


@pytest.mark.parametrize("method,kind", [("patternnet", "relu"), ("patternattribution", "linear"),
                                         ("patternattribution", "relu_all")])
def test_explainer_matches_torch_oracle(cnn, method, kind):
    net, path, x, d = cnn
    st = fit_file(path, d / "data.npy", d / "p.npz", batch_size=32, progress=False)
    fitter = Fitter(path)
    ex = compiler.compile(path, method, patterns=str(d / "p.npz"), pattern=kind)
    onnx.checker.check_model(ex, full_check=True)
    assert {i.name for i in ex.graph.initializer if "pattern" in i.name}, "patterns must be initializers"
    pats = {}
    for i, (L, name) in enumerate(zip(fitter.layers, ("conv1", "conv2", "fc1", "fc2"))):
        A = L.to_layout(st.patterns2d(i, L, L.pattern_kind(kind)))
        pats[name] = A * getattr(net, name).weight.detach().double().numpy() if method == "patternattribution" else A
    target = np.array([0, 1, 2, 3, -1, 2], np.int64)
    res = Explainer(ex).explain(x[:6], target)
    tgt = np.where(target < 0, res.scores.argmax(1), target)
    ref = oracle(net, x[:6], pats, tgt)
    assert np.abs(res.relevance - ref).max() <= 1e-4 * np.abs(ref).max()
    # compiling twice gives the same bytes (patterns are deterministic initializers)
    ex2 = compiler.compile(path, method, patterns=str(d / "p.npz"), pattern=kind)
    assert ex.SerializeToString() == ex2.SerializeToString()


# ------------------------------------------------------------------------------------ the linear toy
def linear_toy(tmp_path, n=4000, dim=16, seed=0):
    """x = a_s s + a_d d + small noise, with the distractor direction at 45° to the signal (as Kindermans et al. 2018's
    a_s = (1, 0), a_d = (1, 1)); the linear model is the least-squares filter for s."""
    rng = np.random.default_rng(seed)
    a_s = rng.standard_normal(dim)
    a_s /= np.linalg.norm(a_s)
    e = rng.standard_normal(dim)
    e -= (e @ a_s) * a_s
    a_d = (a_s + e / np.linalg.norm(e)) / np.sqrt(2)
    s, dist = rng.standard_normal(n), 3 * rng.standard_normal(n)
    x = (np.outer(s, a_s) + np.outer(dist, a_d) + 0.02 * rng.standard_normal((n, dim))).astype(np.float32)
    w = np.linalg.lstsq(x, s, rcond=None)[0]
    lin = nn.Linear(dim, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w[None].astype(np.float32)))
        lin.bias.fill_(0.5)
    path = export(lin, tmp_path / "toy.onnx", x[:2])
    np.save(tmp_path / "toy.npy", x)
    return path, x, w, a_s


def cos(u, v):
    return float(abs(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_linear_toy(tmp_path):
    path, x, w, a_s = linear_toy(tmp_path)
    fit_file(path, tmp_path / "toy.npy", tmp_path / "p.npz", progress=False)
    xs = x[:20]
    grad = Explainer(compiler.compile(path, "gradient")).explain(xs).relevance
    for kind in ("linear", "relu", "relu_all"):
        pn = Explainer(compiler.compile(path, "patternnet", patterns=str(tmp_path / "p.npz"), pattern=kind)).explain(xs)
        assert min(cos(r, a_s) for r in pn.relevance) >= 0.99, kind
        pa = Explainer(compiler.compile(path, "patternattribution", patterns=str(tmp_path / "p.npz"), pattern=kind)).explain(xs)
        # a single linear neuron: wᵀa = 1, so PatternAttribution sums to the score y
        np.testing.assert_allclose(pa.relevance.sum(1), pa.scores[:, 0], rtol=1e-4, atol=1e-4)
    assert max(cos(r, a_s) for r in grad) < 0.75  # the gradient shows the filter w (≈ 0.71), not the signal
    assert cos(w, a_s) < 0.75


# ------------------------------------------------------------------------------- shards and resume
def test_shards_and_resume_equal_single_pass(cnn, tmp_path, monkeypatch):
    _, path, x, d = cnn
    data = d / "data.npy"
    one = fit_file(path, data, tmp_path / "one.npz", batch_size=16, progress=False)
    for k in range(3):
        fit_file(path, data, tmp_path / f"s{k}.npz", batch_size=16, shard=(k, 3), progress=False)
    merged = merge_stats([tmp_path / f"s{k}.npz" for k in range(3)], tmp_path / "merged.npz")
    merged = load_stats(tmp_path / "merged.npz")
    assert merged.rows == one.rows == len(x)
    np.testing.assert_array_equal(merged.n, one.n)
    for a, b in zip(merged.sums, one.sums):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-12)
    # interrupt after 3 batches, then resume: bit-identical to one pass
    calls = {"n": 0}
    real_add = Fitter.add

    def flaky(self, stats, xb):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_add(self, stats, xb)

    monkeypatch.setattr(Fitter, "add", flaky)
    with pytest.raises(XCompileError, match="resume"):
        fit_file(path, data, tmp_path / "r.npz", batch_size=16, progress=False)
    monkeypatch.setattr(Fitter, "add", real_add)
    assert load_stats(str(tmp_path / "r.npz") + ".partial").rows == 48
    res = fit_file(path, data, tmp_path / "r.npz", batch_size=16, progress=False, resume=True)
    for a, b in zip(res.sums, one.sums):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert not (tmp_path / "r.npz.partial").exists()


# ---------------------------------------------------------------------------------------- bad input
def test_bad_inputs_exit_2_one_line(cnn, tmp_path, capsys):
    _, path, x, d = cnn
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 10, 10), np.float32))
    one_line_error(inproc(capsys, "fit-patterns", path, "--data", tmp_path / "wrong.npy", "-o", tmp_path / "p.npz",
                          "--no-progress"), "wrong.npy", "[N, 2, 10, 10]")
    assert not (tmp_path / "p.npz").exists()
    # a patterns file from another model
    other, _, _, _ = linear_toy(tmp_path, n=200)
    fit_file(other, tmp_path / "toy.npy", tmp_path / "toy_p.npz", progress=False)
    one_line_error(inproc(capsys, "compile", path, "-m", "patternnet", "--set", f"patterns={tmp_path / 'toy_p.npz'}",
                          "-o", tmp_path / "ex.onnx"), "another model")
    assert not (tmp_path / "ex.onnx").exists()
    # not a patterns file / missing patterns option
    one_line_error(inproc(capsys, "compile", path, "-m", "patternattribution", "--set", f"patterns={d / 'data.npy'}",
                          "-o", tmp_path / "ex.onnx"), "not an xcompile patterns file")
    one_line_error(inproc(capsys, "compile", path, "-m", "patternnet", "-o", tmp_path / "ex.onnx"), "patterns")
    one_line_error(inproc(capsys, "compile", path, "-m", "patternnet", "--set", "pattern=quadratic",
                          "-o", tmp_path / "ex.onnx"))


def test_cli_fit_merge_compile(cnn, tmp_path, capsys):
    _, path, x, d = cnn
    for k in range(2):
        r = inproc(capsys, "fit-patterns", path, "--data", d / "data.npy", "-o", tmp_path / f"s{k}.npz",
                   "--shard", f"{k}/2", "--batch-size", "20")
        assert r.returncode == 0, r.stderr
    r = inproc(capsys, "merge-patterns", tmp_path / "s0.npz", tmp_path / "s1.npz", "-o", tmp_path / "m.npz")
    assert r.returncode == 0, r.stderr
    r = inproc(capsys, "compile", path, "-m", "patternattribution", "--set", f"patterns={tmp_path / 'm.npz'}",
               "-o", tmp_path / "ex.onnx")
    assert r.returncode == 0, r.stderr
    (tmp_path / "m.npz").unlink()  # the explainer is self-contained
    res = Explainer(tmp_path / "ex.onnx").explain(x[:3])
    assert res.relevance.shape == (3, 2, 10, 10) and np.isfinite(res.relevance).all()


def test_matmul_with_extra_dims(tmp_path):
    """MatMul x[N, T, D] @ W[D, C] (+ bias Add, ReLU): every (row, t) is a sample; gate found through the Add."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    W = rng.standard_normal((5, 4)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(4)).astype(np.float32)
    V = rng.standard_normal((12, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="proj"),
         helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
         helper.make_node("Relu", ["hb"], ["a"], name="relu"),
         helper.make_node("Reshape", ["a", "shape"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "V"], ["scores"], name="head")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(bias, "b"), numpy_helper.from_array(V, "V"),
         numpy_helper.from_array(np.array([-1, 12], np.int64), "shape")])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((64, 3, 5)).astype(np.float32)
    fitter = Fitter(path)
    assert [(L.op, L.positions, L.gated) for L in fitter.layers] == [("MatMul", 3, True), ("Gemm", 1, False)]
    st = fit_patterns(fitter, [x[:30], x[30:]])
    X = x.reshape(-1, 5).astype(np.float64)
    Y = X @ W.astype(np.float64)
    M = (Y + bias) > 0
    for c in range(4):
        y, m = Y[:, c], M[:, c]
        cov = (X * y[:, None]).mean(0) - X.mean(0) * y.mean()
        num = (X[m] * y[m, None]).mean(0) - X[m].mean(0) * y.mean()
        for kind, ref in (("linear", cov / (W[:, c] @ cov)), ("relu", num / (W[:, c] @ num))):
            got = st.patterns2d(0, fitter.layers[0], kind, raw=True)[c]
            assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), (c, kind)
    np.save(tmp_path / "mm.npy", x)
    # data= fits while compiling (no patterns file)
    res = Explainer(compiler.compile(path, "patternattribution", data=str(tmp_path / "mm.npy"))).explain(x[:4])
    assert res.relevance.shape == (4, 3, 5) and np.isfinite(res.relevance).all()
