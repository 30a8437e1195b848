"""Each LRP rule on one-layer graphs (Gemm, MatMul, Conv incl. stride/padding/groups) vs a numpy reference written
from the formulas; Add / AveragePool proportional; conservation; rule-set selection; deep_taylor."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from oracle import layernorm_lrp_reference, lrp_stab
from oracle import lrp_seed as seed

import xcompile
from xcompile.errors import XCompileError

EPS = 1e-6
RNG = np.random.default_rng(0)


def _model(nodes, x_shape, n_out, inits):
    g = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", n_out])],
                          initializer=[numpy_helper.from_array(np.asarray(v) if np.asarray(v).dtype.kind == "i" else np.asarray(v, np.float32), k)
                                       for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


def _rulefile(tmp_path, rule, **params):
    p = tmp_path / f"{rule}.toml"
    ps = ", ".join(f"{k} = {v}" for k, v in params.items())
    p.write_text(f'name = "t"\n[[rule]]\nkind = "linear"\nrule = "{rule}"\n' + (f"params = {{ {ps} }}\n" if ps else ""))
    return str(p)


def _explain(model, x, target, rules, **kw):
    ex = xcompile.Explainer(xcompile.compile(model, "lrp", rules=rules, **kw))
    return ex.explain(x, target)


def _stab(z, eps=EPS):
    return lrp_stab(z, eps)


def dense_reference(rule, x, W, b, R, low=None, high=None, gamma=0.25, alpha=2.0, beta=1.0, eps=EPS):
    """x [N,I], W [I,O] (y = x W + b), R [N,O] -> R_in [N,I], written from the formulas (Zennit's conventions)."""
    P, M = np.maximum, np.minimum
    xp, xn, Wp, Wn, bp, bn = P(x, 0), M(x, 0), P(W, 0), M(W, 0), P(b, 0), M(b, 0)
    if rule in ("zero", "epsilon"):
        s = R / _stab(x @ W + b, 0.0 if rule == "zero" else eps)
        return x * (s @ W.T)
    if rule == "zplus":
        s = R / _stab(xp @ Wp + xn @ Wn + bp)
        return xp * (s @ Wp.T) + xn * (s @ Wn.T)
    if rule == "alpha_beta":
        sp = R / _stab(xp @ Wp + xn @ Wn + bp)
        sn = R / _stab(xp @ Wn + xn @ Wp + bn)
        return alpha * (xp * (sp @ Wp.T) + xn * (sp @ Wn.T)) - beta * (xp * (sn @ Wn.T) + xn * (sn @ Wp.T))
    if rule == "gamma":
        z = x @ W + b
        up, dn = W + gamma * Wp, W + gamma * Wn
        s1 = (z > 0) * R / _stab(xp @ up + xn @ dn + b + gamma * bp)
        s2 = (z < 0) * R / _stab(xp @ dn + xn @ up + b + gamma * bn)
        return xp * (s1 @ up.T) + xn * (s1 @ dn.T) + xp * (s2 @ dn.T) + xn * (s2 @ up.T)
    if rule == "zbox":
        L, H = np.broadcast_to(low, x.shape), np.broadcast_to(high, x.shape)
        s = R / _stab(x @ W - L @ Wp - H @ Wn)
        return x * (s @ W.T) - L * (s @ Wp.T) - H * (s @ Wn.T)
    if rule in ("wsquare", "wsquare_nobias"):  # Montavon et al. 2017: sum_j w_ij^2 / sum_i' w_i'j^2 R_j; Zennit adds b^2
        s = R / _stab(np.ones_like(x) @ W ** 2 + (b ** 2 if rule == "wsquare" else 0))
        return s @ (W ** 2).T
    if rule == "flat":
        ones = (W != 0).astype(np.float64)  # all ones over the receptive field (the dense form's connectivity)
        s = R / _stab(np.ones_like(x) @ ones)
        return s @ ones.T
    raise ValueError(rule)


RULES = ["zero", "epsilon", "zplus", "alpha_beta", "gamma", "zbox", "wsquare", "flat"]


def _kw(rule):
    return dict(low="-1", high="1.5") if rule == "zbox" else {}


@pytest.mark.parametrize("rule", RULES)
def test_gemm_rules(rule, tmp_path):
    I, O = 6, 4
    W = RNG.standard_normal((O, I)).astype(np.float32)  # torch layout, transB = 1
    b = RNG.standard_normal(O).astype(np.float32) * 0.3
    m = _model([helper.make_node("Gemm", ["x", "W", "b"], ["scores"], name="fc", transB=1)], [I], O, [("W", W), ("b", b)])
    x = RNG.uniform(-1, 1.5, (3, I)).astype(np.float32)
    target = np.array([0, 2, 3])
    res = _explain(m, x, target, _rulefile(tmp_path, rule), **_kw(rule))
    Wd, bd, xd = W.T.astype(np.float64), b.astype(np.float64), x.astype(np.float64)
    ref = dense_reference(rule, xd, Wd, bd, seed(xd @ Wd + bd, target), low=-1.0, high=1.5)
    np.testing.assert_allclose(res.relevance, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max())


def test_wsquare_without_bias_is_the_spec_formula(tmp_path):
    W = RNG.standard_normal((4, 6)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    m = _model([helper.make_node("Gemm", ["x", "W", "b"], ["scores"], name="fc", transB=1)], [6], 4, [("W", W), ("b", b)])
    x = RNG.uniform(-1, 1, (3, 6)).astype(np.float32)
    res = _explain(m, x, np.array([0, 1, 3]), _rulefile(tmp_path, "wsquare", bias="false"))
    Wd, bd, xd = W.T.astype(np.float64), b.astype(np.float64), x.astype(np.float64)
    R = seed(xd @ Wd + bd, np.array([0, 1, 3]))
    ref = dense_reference("wsquare_nobias", xd, Wd, bd, R)
    np.testing.assert_allclose(res.relevance, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_allclose(res.relevance.sum(1), R.sum(1), rtol=1e-5)      # conservative without the bias


@pytest.mark.parametrize("rule", ["epsilon", "zplus", "gamma", "flat"])
def test_matmul_rules(rule, tmp_path):
    I, O = 5, 3
    W = RNG.standard_normal((I, O)).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "W"], ["scores"], name="mm")], [I], O, [("W", W)])
    x = RNG.standard_normal((2, I)).astype(np.float32)
    target = np.array([1, 2])
    res = _explain(m, x, target, _rulefile(tmp_path, rule))
    xd, Wd = x.astype(np.float64), W.astype(np.float64)
    ref = dense_reference(rule, xd, Wd, np.zeros(O), seed(xd @ Wd, target))
    np.testing.assert_allclose(res.relevance, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max())


def _conv_as_dense(W, b, x_shape, **attrs):
    """The dense matrix M [I, O] and bias vector of a torch conv2d with these attributes (identity basis)."""
    n_in = int(np.prod(x_shape))
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *x_shape)
    out = torch.nn.functional.conv2d(eye, torch.tensor(W, dtype=torch.float64), None, **attrs)
    bias = torch.tensor(b, dtype=torch.float64).view(1, -1, 1, 1).expand(1, *out.shape[1:])
    return out.reshape(n_in, -1).numpy(), bias.reshape(-1).numpy(), out.shape[1:]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("geom", [dict(stride=1, padding=1, groups=1), dict(stride=2, padding=1, groups=2),
                                  dict(stride=1, padding=0, groups=4)], ids=["pad", "stride2-grouped", "depthwise"])
def test_conv_rules(rule, geom, tmp_path):
    C, H = 4, 5
    co = 4 if geom["groups"] != 1 else 3
    W = RNG.standard_normal((co, C // geom["groups"], 3, 3)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32) * 0.3
    M, bias, oshape = _conv_as_dense(W, b, (C, H, H), **geom)
    n_out = int(np.prod(oshape))
    node = helper.make_node("Conv", ["x", "W", "b"], ["y"], name="conv", strides=[geom["stride"]] * 2,
                            pads=[geom["padding"]] * 4, group=geom["groups"], kernel_shape=[3, 3])
    m = _model([node, helper.make_node("Flatten", ["y"], ["scores"], name="flat")], [C, H, H], n_out, [("W", W), ("b", b)])
    x = RNG.uniform(-1, 1.5, (2, C, H, H)).astype(np.float32)
    target = np.array([1, n_out - 1])
    res = _explain(m, x, target, _rulefile(tmp_path, rule), **_kw(rule))
    xd = x.reshape(2, -1).astype(np.float64)
    ref = dense_reference(rule, xd, M, bias, seed(xd @ M + bias, target), low=-1.0, high=1.5).reshape(x.shape)
    np.testing.assert_allclose(res.relevance, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max())


def test_add_proportional():
    m = _model([helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["a"], name="sa"),
                helper.make_node("Slice", ["x", "e0", "e1", "ax"], ["b"], name="sb"),
                helper.make_node("Add", ["a", "b"], ["scores"], name="add")], [6], 3,
               [("s0", np.array([0], np.int64)), ("e0", np.array([3], np.int64)), ("e1", np.array([6], np.int64)),
                ("ax", np.array([1], np.int64))])
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    res = _explain(m, x, np.array([0, 2]), "epsilon")
    y = x[:, :3] + x[:, 3:]
    R = seed(y.astype(np.float64), np.array([0, 2]))
    s = R / _stab(y)
    np.testing.assert_allclose(res.relevance, np.concatenate([x[:, :3] * s, x[:, 3:] * s], 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.relevance.sum(1), R.sum(1), rtol=1e-5)


def test_averagepool_proportional():
    m = _model([helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
                helper.make_node("Flatten", ["y"], ["scores"], name="flat")], [1, 4, 4], 4, [])
    x = RNG.uniform(0.1, 1, (2, 1, 4, 4)).astype(np.float32)
    res = _explain(m, x, np.array([0, 3]), "epsilon")
    y = x.reshape(2, 1, 2, 2, 2, 2).mean(axis=(3, 5)).reshape(2, 4)
    R = seed(y.astype(np.float64), np.array([0, 3]))
    s = (R / _stab(y)).reshape(2, 1, 2, 2) / 4
    ref = x * np.repeat(np.repeat(s, 2, axis=2), 2, axis=3)
    np.testing.assert_allclose(res.relevance, ref, rtol=1e-5, atol=1e-7)


def _relu_net(bias: bool):
    rng = np.random.default_rng(3)
    W1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5
    W2 = rng.standard_normal((8 * 6 * 6, 5)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "W1"] + (["b1"] if bias else []), ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "W2"], ["scores"], name="fc")]
    inits = [("W1", W1), ("W2", W2)] + ([("b1", rng.standard_normal(8) * 0.1)] if bias else [])
    return _model(nodes, [3, 12, 12], 5, inits)


@pytest.mark.parametrize("rule", ["zero", "epsilon", "zplus", "flat", "wsquare", "zbox"])
def test_conservation(rule, tmp_path):
    """Bias-free ReLU net: LRP-0 / eps / z+ conserve the target score; z^B, w^2, flat conserve exactly."""
    m = _relu_net(bias=False)
    x = np.random.default_rng(4).uniform(0, 1, (3, 3, 12, 12)).astype(np.float32)
    p = tmp_path / "r.toml"
    first = {"zbox": "zbox", "flat": "flat", "wsquare": "wsquare"}.get(rule, rule)
    rest = "zplus" if rule in ("flat", "wsquare", "zbox") else rule
    p.write_text(f'[[rule]]\nposition = "first"\nrule = "{first}"\n[[rule]]\nkind = "linear"\nrule = "{rest}"\n')
    res = _explain(m, x, np.array([-1, -1, -1]), str(p), **(dict(low="0", high="1") if rule == "zbox" else {}))
    score = res.scores.max(1)
    rel = res.relevance.reshape(3, -1).sum(1)
    # the classifier's positive score: ReLU net with z+ conserves where the target score > 0
    np.testing.assert_allclose(rel, score, rtol=1e-4)


def test_ruleset_selection_and_inspect(tmp_path, capsys):
    from xcompile.commands.inspect_model import inspect_model
    m = _relu_net(bias=True)
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    p = tmp_path / "sel.toml"
    p.write_text('[options]\nmaxpool = "proportional"\n[[rule]]\nname = "fc"\nrule = "zero"\n'
                 '[[rule]]\nposition = "first"\nrule = "flat"\n[[rule]]\nop = "AveragePool"\nrule = "gradient"\n'
                 '[[rule]]\nkind = "linear"\nrule = "epsilon"\nparams = { epsilon = 0.1 }\n')
    lines = []
    assert inspect_model(path, "lrp", str(p), {}, lines.append) == 0
    text = "\n".join(lines)
    assert "conv" in text and "flat" in text and "zero" in text and "gradient" in text and "pass" in text


def test_product_gate_signal_and_split():
    """x * sigmoid(x) (SiLU written as a product) is an activation: identity rule, all relevance to x under both gate
    options and without a stabilized division. x1 * sigmoid(x2) (a squeeze-excitation-like gate): all to the signal
    x1 by default, half each (uniform rule: x1 * g * R / (x1 * g) / 2 = R / 2, no stabilizer) with split."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["g"], name="gate"),
             helper.make_node("Mul", ["x", "g"], ["scores"], name="mul")]
    m = _model(nodes, [4], 4, [])
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    t = np.array([0, 3])
    y = x / (1 + np.exp(-x))
    R = seed(y.astype(np.float64), t)
    for gate in ("signal", "split"):
        np.testing.assert_allclose(_explain(m, x, t, "epsilon", gate=gate).relevance, R, rtol=1e-6, atol=0)

    nodes = [helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["x1"], name="x1"),
             helper.make_node("Slice", ["x", "e0", "e1", "ax"], ["x2"], name="x2"),
             helper.make_node("Sigmoid", ["x2"], ["g"], name="gate"),
             helper.make_node("Mul", ["x1", "g"], ["scores"], name="mul")]
    m = _model(nodes, [8], 4, [("s0", np.array([0], np.int64)), ("e0", np.array([4], np.int64)),
                               ("e1", np.array([8], np.int64)), ("ax", np.array([1], np.int64))])
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    y = x[:, :4] / (1 + np.exp(-x[:, 4:]))
    R = seed(y.astype(np.float64), t)
    r = _explain(m, x, t, "epsilon").relevance
    np.testing.assert_allclose(r, np.concatenate([R, 0 * R], 1), rtol=1e-6, atol=0)
    r = _explain(m, x, t, "epsilon", gate="split").relevance
    np.testing.assert_allclose(r, np.concatenate([0.5 * R, 0.5 * R], 1), rtol=1e-6, atol=0)   # sigmoid: pass


def test_layernorm_std_constant_and_softmax_attnlrp():
    """AttnLRP's LayerNorm (std held constant: R_x = x * J^T(R / y), J^T g = (w g - mean(w g)) / std) and softmax
    (R_i = x_i (R_i - s_i sum_j R_j)) on one-node graphs, vs numpy written from those formulas."""
    w = RNG.uniform(0.5, 1.5, 6).astype(np.float32)
    bias = RNG.standard_normal(6).astype(np.float32) * 0.3
    m = _model([helper.make_node("LayerNormalization", ["x", "w", "b"], ["scores"], name="ln", axis=-1, epsilon=1e-5)],
               [6], 6, [("w", w), ("b", bias)])
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    t = np.array([0, 2, 5])
    ref = layernorm_lrp_reference(x, w, bias, t)
    rules = "attnlrp"
    np.testing.assert_allclose(_explain(m, x, t, rules).relevance, ref, rtol=1e-4, atol=1e-6)

    m = _model([helper.make_node("Softmax", ["x"], ["scores"], name="sm", axis=-1)], [5], 5, [])
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    t = np.array([0, 1, 4])
    e = np.exp(x.astype(np.float64))
    sm = e / e.sum(1, keepdims=True)
    R = seed(sm, t)
    ref = x * (R - sm * R.sum(1, keepdims=True))
    np.testing.assert_allclose(_explain(m, x, t, rules, keep_softmax="true").relevance, ref, rtol=1e-4, atol=1e-7)


def test_treatment_params_and_misplaced_std_constant(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[[rule]]\nop = "Add"\nrule = "proportional"\nparams = { epsilon = 1 }\n'
                 '[[rule]]\nkind = "linear"\nrule = "epsilon"\n')
    with pytest.raises(XCompileError, match=r"rule #1: 'proportional' takes params: stabilizer"):
        xcompile.compile(_relu_net(bias=True), "lrp", rules=str(p))
    p.write_text('[[rule]]\nop = "Relu"\nrule = "std-constant"\n[[rule]]\nkind = "linear"\nrule = "epsilon"\n')
    with pytest.raises(XCompileError, match=r"'relu' \(Relu\) for 'std-constant', which applies to LayerNormalization"):
        xcompile.compile(_relu_net(bias=True), "lrp", rules=str(p))


def test_vgg_recipe_maxpool_proportional():
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["y"], ["scores"], name="flat")]
    m = _model(nodes, [1, 4, 4], 4, [])
    x = RNG.uniform(0.1, 1, (1, 1, 4, 4)).astype(np.float32)
    r = _explain(m, x, np.array([0]), "epsilon", maxpool="proportional").relevance
    win = x[0, 0, :2, :2]
    np.testing.assert_allclose(r[0, 0, :2, :2], win / win.sum() * win.max(), rtol=1e-4)
    assert np.all(r[0, 0, 2:, :] == 0) and np.all(r[0, 0, :, 2:] == 0)


def test_zbox_bounds_pushed_through_normalisation(tmp_path):
    """Bounds in pixel space go through the graph's own (x - mean) / std before the first layer."""
    mean, std = np.array([0.5, 0.4]), np.array([0.2, 0.3])
    W = RNG.standard_normal((3, 2, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Sub", ["x", "mean"], ["xs"], name="sub"), helper.make_node("Div", ["xs", "std"], ["xn"], name="div"),
             helper.make_node("Conv", ["xn", "W"], ["y"], name="conv"), helper.make_node("Flatten", ["y"], ["scores"], name="flat")]
    m = _model(nodes, [2, 1, 1], 3, [("mean", mean.reshape(2, 1, 1)), ("std", std.reshape(2, 1, 1)), ("W", W)])
    x = RNG.uniform(0, 1, (2, 2, 1, 1)).astype(np.float32)
    r = _explain(m, x, np.array([0, 1]), _rulefile(tmp_path, "zbox"), low="0", high="1").relevance
    xn = ((x - mean.reshape(1, 2, 1, 1)) / std.reshape(1, 2, 1, 1)).reshape(2, 2)
    Wd = W.reshape(3, 2).T.astype(np.float64)
    ref = dense_reference("zbox", xn, Wd, np.zeros(3), seed(xn @ Wd, np.array([0, 1])),
                          low=(0 - mean) / std, high=(1 - mean) / std)
    np.testing.assert_allclose(r.reshape(2, 2), ref, rtol=1e-4, atol=1e-6)


def test_deep_taylor(tmp_path):
    m = _relu_net(bias=False)
    x = np.random.default_rng(4).uniform(0, 1, (2, 3, 12, 12)).astype(np.float32)
    with pytest.raises(XCompileError, match="low"):
        xcompile.compile(m, "deep_taylor")
    res = xcompile.Explainer(xcompile.compile(m, "deep_taylor", low="0", high="1")).explain(x)
    np.testing.assert_allclose(res.relevance.reshape(2, -1).sum(1), res.scores.max(1), rtol=1e-4)
    res2 = xcompile.Explainer(xcompile.compile(m, "deep_taylor", first="wsquare")).explain(x)
    np.testing.assert_allclose(res2.relevance.reshape(2, -1).sum(1), res2.scores.max(1), rtol=1e-4)


def test_every_core_op_has_lrp_behaviour():
    """--method lrp supports every op the gradient table supports (same liveness, no unsupported nodes)."""
    from onnx import helper

    from xcompile.backward.table import TABLE
    from xcompile.methods.lrp import LRP
    m = LRP()
    for op in TABLE:
        spec = m.backward_for(helper.make_node(op, ["x"], [f"{op}_y"]))
        assert spec is not None and spec.inputs == TABLE[op].inputs, op
