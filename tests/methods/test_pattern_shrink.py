"""PatternNet / PatternAttribution never go non-finite: unreliable patterns (a never-active neuron, a neuron
active on a handful of samples, a tiny covariance) are shrunk toward the weight direction (patterns/shrink.py)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from xcompile import Explainer, compiler
from xcompile.patterns.fit import Fitter, fit_patterns
from xcompile.patterns.shrink import G_MAX, N_MIN, gain, shrink


def _mlp(path, depth=4, width=8, dead=True):
    """x[N, 8] -> depth x (Gemm + ReLU) -> Gemm[3]. In every hidden layer neuron 0 has bias -1e3 (never
    active) and neuron 1 a bias that keeps it active on ~1 sample in 200."""
    rng = np.random.default_rng(0)
    nodes, inits, t = [], [], "x"
    for k in range(depth):
        W = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        b = np.zeros(width, np.float32)
        if dead:
            b[0] = -1e3
            b[1] = -2.6 * np.linalg.norm(W[1]) * (1.0 if k == 0 else 0.8)
        inits += [numpy_helper.from_array(W, f"W{k}"), numpy_helper.from_array(b, f"b{k}")]
        nodes += [helper.make_node("Gemm", [t, f"W{k}", f"b{k}"], [f"z{k}"], name=f"fc{k}", transB=1),
                  helper.make_node("Relu", [f"z{k}"], [f"a{k}"], name=f"relu{k}")]
        t = f"a{k}"
    H = rng.standard_normal((3, width)).astype(np.float32)
    inits.append(numpy_helper.from_array(H, "H"))
    nodes.append(helper.make_node("Gemm", [t, "H"], ["scores"], name="head", transB=1))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_shrink_keeps_reliable_patterns_and_normalization():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 5))
    a = rng.standard_normal((4, 5))
    a /= np.sum(w * a, axis=1, keepdims=True)  # wᵀa = 1
    a[gain(a, w) > G_MAX] = w[gain(a, w) > G_MAX] / np.sum(w[gain(a, w) > G_MAX] ** 2, axis=1, keepdims=True)
    num = a * 3.0  # any positive scale: the pattern is num / wᵀnum
    out, lam = shrink(num, w, np.full(4, 10 * N_MIN), np.full(4, 1.0))
    np.testing.assert_allclose(out, a, rtol=1e-12, atol=1e-12)
    assert (lam == 1).all()
    # few samples: halfway toward u = w/|w|^2; wᵀa' = 1 still
    out, lam = shrink(num, w, np.full(4, N_MIN / 2), np.full(4, 1.0))
    u = w / np.sum(w * w, axis=1, keepdims=True)
    np.testing.assert_allclose(out, u + 0.5 * (a - u), atol=1e-12)
    np.testing.assert_allclose(np.sum(w * out, axis=1), 1.0, atol=1e-12)
    # no sample, negative or zero covariance, non-finite sums: the weight direction; zero weights: zero
    bad = num.copy()
    bad[1] = -bad[1]
    bad[2] = np.nan
    w0 = w.copy()
    w0[3] = 0
    out, lam = shrink(bad, w0, np.array([0.0, 1e6, 1e6, 1e6]), np.ones(4))
    np.testing.assert_allclose(out[:3], u[:3], atol=1e-12)
    assert (out[3] == 0).all() and (lam == 0).all() and np.isfinite(out).all()
    # a huge gain is capped at G_MAX
    r = np.cross(np.cross(w[0, :3], [1.0, 0, 0]), w[0, :3])  # ⊥ w (first three coordinates)
    big = u[:1].copy()
    big[0, :3] += 1e4 * r
    out, lam = shrink(big, w[:1], [1e6], [1.0])
    assert abs(gain(out, w[:1])[0] - G_MAX) < 1e-6 and lam[0] < 1


@pytest.mark.parametrize("method", ["patternnet", "patternattribution"])
def test_never_active_neuron_gives_finite_relevance(method, tmp_path):
    path = _mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(2).standard_normal((200, 8)).astype(np.float32)
    fitter = Fitter(path)
    st = fit_patterns(fitter, [x[:100], x[100:]])
    counts = [st.sums[i]["n_pos"] for i in range(len(fitter.layers) - 1)]
    assert all(c[0] == 0 for c in counts), "neuron 0 must never be active"
    assert any(0 < c[1] < 10 for c in counts), "neuron 1 must be rarely active somewhere"
    L = fitter.layers[0]
    raw = st.patterns2d(0, L, "relu", raw=True)
    assert (raw[0] == 0).all()  # the old rule: a zero pattern for a dead neuron
    stable = st.patterns2d(0, L, "relu")
    np.testing.assert_allclose(stable[0], L.w2d[0] / np.sum(L.w2d[0] ** 2), rtol=1e-9)  # -> weight direction
    for i, Li in enumerate(fitter.layers):
        for kind in ("relu", "linear"):
            assert gain(st.patterns2d(i, Li, kind), Li.w2d).max() <= G_MAX + 1e-9
    np.save(tmp_path / "x.npy", x)
    for pattern in ("relu", "relu_all", "linear"):
        ex = Explainer(compiler.compile(path, method, data=str(tmp_path / "x.npy"), pattern=pattern))
        res = ex.explain(x[:16] * 10)  # far outside the fitted range too
        assert np.isfinite(res.relevance).all(), pattern
        assert np.abs(res.relevance).max() > 0
