"""Value-range analysis (xcompile/lrp/ranges.py): a table of small graphs -> expected sign facts / bounds; the LRP
terms it removes leave relevance unchanged; weights derived in the graph equal stored ones; files stay small."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import xcompile
from xcompile.lrp import emitters as E
from xcompile.lrp import ranges

RNG = np.random.default_rng(0)
H = helper.make_node
C = {  # constants of the table's graphs
    "zero": np.zeros(1, np.float32), "six": np.full(1, 6.0, np.float32), "m1": np.full(1, -1.0, np.float32),
    "one": np.ones(1, np.float32), "two": np.full(1, 2.0, np.float32), "m2": np.full(1, -2.0, np.float32),
    "shape": np.array([0, -1], np.int64), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
    "idx": np.array([0, 1], np.int64), "st": np.array([0], np.int64), "en": np.array([2], np.int64),
    "ax": np.array([1], np.int64), "wpos": np.abs(RNG.standard_normal((2, 3, 1, 1))).astype(np.float32),
    "wmix": RNG.standard_normal((2, 3, 1, 1)).astype(np.float32),
}
R = "r"  # Relu(x): the non-negative tensor most cases start from
S = "s"  # Sigmoid(x)

# (name, nodes after r = Relu(x) and s = Sigmoid(x), tensor asked, expected (lo, hi) -- None: unbounded side)
TABLE = [
    ("input", [], "x", (None, None)),
    ("relu", [], R, (0.0, None)),
    ("sigmoid", [], S, (0.0, 1.0)),
    ("relu6 (Clip 0 6)", [H("Clip", ["x", "zero", "six"], ["y"])], "y", (0.0, 6.0)),
    ("Clip -1 1", [H("Clip", ["x", "m1", "one"], ["y"])], "y", (-1.0, 1.0)),
    ("Clip without min", [H("Clip", ["x", "", "six"], ["y"])], "y", (None, 6.0)),
    ("softmax", [H("Softmax", ["x"], ["y"], axis=1)], "y", (0.0, 1.0)),
    ("tanh", [H("Tanh", ["x"], ["y"])], "y", (-1.0, 1.0)),
    ("abs", [H("Abs", ["x"], ["y"])], "y", (0.0, None)),
    ("exp", [H("Exp", ["x"], ["y"])], "y", (0.0, None)),
    ("maxpool of relu", [H("MaxPool", [R], ["y"], kernel_shape=[2, 2])], "y", (0.0, None)),
    ("maxpool of x", [H("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])], "y", (None, None)),
    ("avgpool of sigmoid, padded", [H("AveragePool", [S], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "y",
     (0.0, 1.0)),
    ("global avgpool of relu", [H("GlobalAveragePool", [R], ["y"])], "y", (0.0, None)),
    ("concat relu sigmoid", [H("Concat", [R, S], ["y"], axis=1)], "y", (0.0, None)),
    ("concat relu x", [H("Concat", [R, "x"], ["y"], axis=1)], "y", (None, None)),
    ("reshape of relu", [H("Reshape", [R, "shape"], ["y"])], "y", (0.0, None)),
    ("transpose of sigmoid", [H("Transpose", [S], ["y"], perm=[0, 2, 3, 1])], "y", (0.0, 1.0)),
    ("flatten of relu", [H("Flatten", [R], ["y"])], "y", (0.0, None)),
    ("pad 0 of relu", [H("Pad", [R, "pads"], ["y"])], "y", (0.0, None)),
    ("pad -1 of relu", [H("Pad", [R, "pads", "m1"], ["y"])], "y", (-1.0, None)),
    ("reflect pad of sigmoid", [H("Pad", [S, "pads"], ["y"], mode="reflect")], "y", (0.0, 1.0)),
    ("slice of relu", [H("Slice", [R, "st", "en", "ax"], ["y"])], "y", (0.0, None)),
    ("gather of sigmoid", [H("Gather", [S, "idx"], ["y"], axis=1)], "y", (0.0, 1.0)),
    ("add relu relu", [H("Add", [R, R], ["y"])], "y", (0.0, None)),
    ("add sigmoid 1", [H("Add", [S, "one"], ["y"])], "y", (1.0, 2.0)),
    ("sub relu relu", [H("Sub", [R, R], ["y"])], "y", (None, None)),
    ("sub 2 sigmoid", [H("Sub", ["two", S], ["y"])], "y", (1.0, 2.0)),
    ("mul relu sigmoid", [H("Mul", [R, S], ["y"])], "y", (0.0, None)),
    ("mul relu -2", [H("Mul", [R, "m2"], ["y"])], "y", (None, 0.0)),
    ("mul sigmoid -2", [H("Mul", [S, "m2"], ["y"])], "y", (-2.0, 0.0)),
    ("neg relu", [H("Neg", [R], ["y"])], "y", (None, 0.0)),
    ("div relu exp", [H("Exp", ["x"], ["e"]), H("Div", [R, "e"], ["y"])], "y", (0.0, None)),
    ("div relu x", [H("Div", [R, "x"], ["y"])], "y", (None, None)),
    ("div sigmoid 2", [H("Div", [S, "two"], ["y"])], "y", (0.0, 0.5)),
    ("relu of sigmoid-2", [H("Sub", [S, "two"], ["t"]), H("Relu", ["t"], ["y"])], "y", (0.0, 0.0)),
    ("max relu x", [H("Max", [R, "x"], ["y"])], "y", (0.0, None)),
    ("min sigmoid x", [H("Min", [S, "x"], ["y"])], "y", (None, 1.0)),
    ("conv non-negative weight on relu", [H("Conv", [R, "wpos"], ["y"])], "y", (0.0, None)),
    ("conv mixed weight on relu", [H("Conv", [R, "wmix"], ["y"])], "y", (None, None)),
    ("conv non-negative weight on x", [H("Conv", ["x", "wpos"], ["y"])], "y", (None, None)),
    ("leaky relu of relu", [H("LeakyRelu", [R], ["y"])], "y", (0.0, None)),
    ("chain: relu -> maxpool -> pad -> reshape -> add", [
        H("MaxPool", [R], ["p"], kernel_shape=[2, 2]), H("Pad", ["p", "pads"], ["q"]),
        H("Reshape", ["q", "shape"], ["t"]), H("Add", ["t", "t"], ["y"])], "y", (0.0, None)),
]


@pytest.mark.parametrize("name,nodes,tensor,expected", TABLE, ids=[t[0] for t in TABLE])
def test_sign_facts(name, nodes, tensor, expected):
    got = ranges.analyze([H("Relu", ["x"], [R]), H("Sigmoid", ["x"], [S])] + nodes, C.get)[tensor]
    lo, hi = (-math.inf if expected[0] is None else expected[0]), (math.inf if expected[1] is None else expected[1])
    assert (got.lo, got.hi) == pytest.approx((lo, hi)), (name, got)
    assert got.nonneg == (lo >= 0) and got.nonpos == (hi <= 0)
    # soundness on random data: the facts hold for what onnxruntime computes
    import onnxruntime as ort
    outs = [helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None)]
    g = helper.make_graph([H("Relu", ["x"], [R]), H("Sigmoid", ["x"], [S])] + nodes, "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])], outs,
                          initializer=[numpy_helper.from_array(v, k) for k, v in C.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": (RNG.standard_normal((2, 3, 4, 4)) * 3).astype(np.float32)})[0]
    assert y.min() >= lo - 1e-6 and y.max() <= hi + 1e-6


# ------------------------------------------------------------------------------ term elimination on small CNNs
def _cnn(first_bias=True):
    """x -> Conv(3x3) -> Relu -> Conv(stride 2) -> Relu -> MaxPool -> Conv 1x1 (no activation: a mixed-sign input
    for the next) -> Conv 3x3 -> Relu -> Flatten -> Gemm; biases of both signs."""
    def w(*s):
        return RNG.standard_normal(s).astype(np.float32) * 0.5
    inits = {"w1": w(6, 3, 3, 3), "b1": w(6), "w2": w(8, 6, 3, 3), "b2": w(8), "w3": w(8, 8, 1, 1), "b3": w(8),
             "w4": w(6, 8, 3, 3), "b4": w(6), "wf": w(5, 6 * 2 * 2), "bf": w(5)}
    nodes = [H("Conv", ["x", "w1"] + (["b1"] if first_bias else []), ["c1"], pads=[1, 1, 1, 1]),
             H("Relu", ["c1"], ["r1"]),
             H("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]), H("Relu", ["c2"], ["r2"]),
             H("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             H("Conv", ["p2", "w3", "b3"], ["c3"]),
             H("Conv", ["c3", "w4", "b4"], ["c4"], pads=[1, 1, 1, 1]), H("Relu", ["c4"], ["r4"]),
             H("Flatten", ["r4"], ["f"]), H("Gemm", ["f", "wf", "bf"], ["scores"], transB=1)]
    if not first_bias:
        inits.pop("b1")
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


RULES = [("zplus", ""), ("alpha_beta", ""), ("gamma", "gamma = 0.25"), ("zbox", "low = -1.0, high = 1.0"),
         ("zbox", "low = 0.0, high = 1.0"), ("flat", ""), ("wsquare", ""), ("epsilon", ""), ("zero", "")]


def _rules(tmp_path, rule, params):
    p = tmp_path / "r.toml"
    p.write_text(f'name = "t"\n[[rule]]\nkind = "linear"\nrule = "{rule}"\n'
                 + (f"params = {{ {params} }}\n" if params else ""))
    return str(p)


def _relevance(model, rules, x):
    m = xcompile.compile(model, "lrp", rules=rules)
    return xcompile.Explainer(m).explain(x, np.array([1, 3])).relevance, m


def _stored(self, rho, w):
    return self.b.const(np.asarray(w, np.float32), hint="w")


@pytest.mark.parametrize("rule,params", RULES, ids=[f"{r}-{p}" if p else r for r, p in RULES])
def test_term_elimination_and_derived_weights_keep_relevance(rule, params, tmp_path, monkeypatch):
    model = _cnn()
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    rules = _rules(tmp_path, rule, params)
    lean, m_lean = _relevance(model, rules, x)
    with monkeypatch.context() as mp:  # every term emitted (no sign facts), every weight stored
        mp.setattr(E, "_vanishes", lambda kind, sign, rule: False)
        mp.setattr(E, "input_sign", lambda g, name: 0)
        mp.setattr(E.Linear, "weight", _stored)
        full, m_full = _relevance(model, rules, x)
    scale = np.abs(full).max()
    assert scale > 0 and np.isfinite(lean).all()
    np.testing.assert_allclose(lean, full, rtol=0, atol=1e-6 * max(1.0, scale))
    if rule in ("zplus", "alpha_beta", "gamma"):  # layers 2, 3 and the Gemm read a ReLU output: x- terms gone
        n_conv = lambda m: sum(n.op_type in ("Conv", "ConvTranspose") for n in m.graph.node)  # noqa: E731
        assert n_conv(m_lean) < n_conv(m_full)


def test_derived_weights_equal_stored_ones(tmp_path, monkeypatch):
    """W+, W-, W + gamma W+, W^2, ones and flipped kernels derived in the graph: the same relevance as stored
    (<= 1e-6), and the explainer holds each weight once."""
    model = _cnn(first_bias=False)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    for rule, params in [("gamma", "gamma = 0.5"), ("alpha_beta", ""), ("wsquare", "")]:
        rules = _rules(tmp_path, rule, params)
        derived, m_d = _relevance(model, rules, x)
        with monkeypatch.context() as mp:
            mp.setattr(E.Linear, "weight", _stored)
            stored, m_s = _relevance(model, rules, x)
        np.testing.assert_allclose(derived, stored, rtol=0, atol=1e-6 * max(1.0, np.abs(stored).max()))
        big = lambda m: sum(numpy_helper.to_array(t).size for t in m.graph.initializer if len(t.dims) > 1)  # noqa: E731
        weights = big(model)
        assert big(m_d) <= weights + 8 * 8 * 3 * 2, (rule, big(m_d), weights)  # + the z^B / flat constant inputs
        assert big(m_s) >= 2 * weights


def test_weight_not_an_initializer_is_stored_once(tmp_path):
    """A Gemm with alpha != 1 (its LinearView weight is alpha W, computed at compile time): stored once, W+ derived
    from that copy; relevance vs the numpy formula of z+ on a ReLU input."""
    W = RNG.standard_normal((4, 6)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    g = helper.make_graph([H("Relu", ["x"], ["r"]), H("Gemm", ["r", "w", "b"], ["scores"], transB=1, alpha=0.5)],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
                          initializer=[numpy_helper.from_array(W, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    m = xcompile.compile(model, "lrp", rules=_rules(tmp_path, "zplus", ""))
    rel = xcompile.Explainer(m).explain(x, np.array([0, 1, 2])).relevance
    a, Wp, bp = np.maximum(x, 0), np.maximum(0.5 * W.T, 0), np.maximum(b, 0)
    z = a @ Wp + bp
    y = np.maximum(x, 0) @ (0.5 * W.T) + b
    Rout = np.zeros_like(y)
    Rout[np.arange(3), [0, 1, 2]] = y[np.arange(3), [0, 1, 2]]
    ref = a * ((Rout / (z + 1e-6 * np.where(z < 0, -1, 1))) @ Wp.T)
    np.testing.assert_allclose(rel, ref, rtol=1e-5, atol=1e-6)
    mats = [t for t in m.graph.initializer if tuple(t.dims) == (4, 6)]
    assert len(mats) == 2  # the model's W and alpha W (derived W+ is not stored)


def test_modified_forwards_wait_for_the_relevance(tmp_path):
    """Every modified forward z of a layer reads (through its bias) the relevance arriving at that layer, so that
    onnxruntime cannot evaluate all of them right after the forward pass and keep them alive (memory)."""
    from xcompile.graph import TARGET
    m = xcompile.compile(_cnn(), "lrp", rules=_rules(tmp_path, "alpha_beta", ""))
    producer = {o: n for n in m.graph.node for o in n.output}

    def reads_target(t, seen):
        if t == TARGET:
            return True
        n = producer.get(t)
        if n is None or t in seen:
            return False
        seen.add(t)
        return any(reads_target(i, seen) for i in n.input if i)

    zs = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm") and n.name.startswith("xc/")
          and n.output[0].split("/")[-1].startswith("z")]
    assert len(zs) >= 6  # two groups on 4 convs + the Gemm, x- terms gone on the ReLU-fed layers
    for n in zs:
        assert len(n.input) > 2 and reads_target(n.input[2], set()), n.name
