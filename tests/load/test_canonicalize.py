"""Canonicalization passes (xcompile/canonicalize/passes.py), each on a tiny hand-made graph.

Every pass must (a) make its structural change and (b) leave the model's function unchanged, checked by
running the ORIGINAL model and the rewritten one in onnxruntime. BatchNorm folding is also checked end to
end: the gradient explainer of a BN model against PyTorch float64 autograd of the same torch module."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from oracle import rel_err

import xcompile
from xcompile.canonicalize import passes as P

RNG = np.random.default_rng(7)
TOL = 1e-5


def A(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def U(*shape):
    return RNG.uniform(0.5, 1.5, shape).astype(np.float32)


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def mk(nodes, x_shape, inits=(), outputs=("y",), opset=17):
    """Model x -> nodes -> outputs; IR 8 so that any onnxruntime reads it. Output types/shapes are
    declared from an onnxruntime run at batch 2 (batch dim symbolic), so the checker accepts the model."""
    graph = helper.make_graph(
        list(nodes), "g", [vi("x", ["N", *x_shape])], [onnx.ValueInfoProto(name=o) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    vals = run(model, np.zeros((2, *x_shape), np.float32))
    del model.graph.output[:]
    model.graph.output.extend(vi(o, ["N", *v.shape[1:]], helper.np_dtype_to_tensor_dtype(v.dtype))
                              for o, v in zip(outputs, vals))
    return model


def run(model, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def apply(pass_fn, model, *args):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    count = pass_fn(m, *args)
    return m, count


def ops(model):
    return [n.op_type for n in model.graph.node]


def assert_same_function(before, after, x, tol=TOL):
    onnx.checker.check_model(after, full_check=True)
    ref, got = run(before, x), run(after, x)
    assert [o.name for o in before.graph.output] == [o.name for o in after.graph.output]
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        assert rel_err(g, r) <= tol, rel_err(g, r)


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=f"{op.lower()}_{outputs[0]}", **attrs)


def bn_params(prefix, c):
    return {f"{prefix}_s": U(c), f"{prefix}_b": A(c), f"{prefix}_m": A(c), f"{prefix}_v": U(c)}


def bn(prefix, x, y, eps=1e-5):
    return node("BatchNormalization", [x, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y], epsilon=eps)


# ---------------------------------------------------------------- constants_to_initializers

def test_constants_to_initializers():
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(A(3, 1, 1))),
             helper.make_node("Constant", [], ["f"], value_float=2.5),
             helper.make_node("Constant", [], ["shp"], value_ints=[0, -1]),
             node("Mul", ["x", "k"], ["a"]), node("Add", ["a", "f"], ["b"]), node("Reshape", ["b", "shp"], ["y"])]
    m = mk(nodes, (3, 2, 2))
    out, n = apply(P.constants_to_initializers, m)
    assert n == 3
    assert "Constant" not in ops(out)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert inits["f"].dtype == np.float32 and float(inits["f"]) == 2.5
    assert inits["shp"].dtype == np.int64 and inits["shp"].tolist() == [0, -1]
    assert_same_function(m, out, A(2, 3, 2, 2))


# ---------------------------------------------------------------- drop_identity

def test_drop_identity_and_dropout():
    nodes = [node("Identity", ["x"], ["i1"]), node("Relu", ["i1"], ["r"]),
             node("Dropout", ["r"], ["d"]),                       # inference dropout: dropped
             node("Mul", ["d", "two"], ["m"]),
             node("Dropout", ["m", "ratio"], ["d2", "mask"]),     # its mask is used: kept
             node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT), node("Add", ["d2", "maskf"], ["s"]),
             node("Identity", ["s"], ["y"])]                      # produces the graph output: kept
    m = mk(nodes, (4,), inits={"two": np.float32(2), "ratio": np.float32(0.5)})
    out, n = apply(P.drop_identity, m)
    assert n == 2
    assert ops(out) == ["Relu", "Mul", "Dropout", "Cast", "Add", "Identity"]
    assert out.graph.node[0].input[0] == "x"
    assert_same_function(m, out, A(3, 4))


# ---------------------------------------------------------------- fold_constants

def test_fold_constants_shape_arithmetic_on_weights():
    """Shape/Gather/Concat/ConstantOfShape/Range on initializers fold; everything reading x stays."""
    w = A(3, 4)
    nodes = [node("Shape", ["W"], ["ws"]), node("Gather", ["ws", "i1"], ["d1"], axis=0),
             node("Unsqueeze", ["d1", "ax0"], ["d1u"]), node("Concat", ["minus1", "d1u"], ["shp"], axis=0),
             node("ConstantOfShape", ["d1u"], ["ones"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
             node("Range", ["zero", "four", "one"], ["rng"]), node("Cast", ["rng"], ["rngf"], to=TensorProto.FLOAT),
             node("Mul", ["ones", "rngf"], ["scale"]),
             node("MatMul", ["x", "W"], ["h"]), node("Mul", ["h", "scale"], ["hs"]),
             node("Shape", ["hs"], ["hsh"]), node("Reshape", ["hs", "shp"], ["r"]),   # Shape(x-derived) must stay
             node("Constant", [], ["c"], value=numpy_helper.from_array(np.float32(3))),
             node("Add", ["r", "c"], ["y"])]
    inits = {"W": w, "i1": np.array(1, np.int64), "ax0": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
             "zero": np.array(0, np.int64), "four": np.array(4, np.int64), "one": np.array(1, np.int64)}
    m = mk(nodes, (3,), inits=inits)
    out, n = apply(P.fold_constants, m)
    assert n == 9
    assert ops(out) == ["MatMul", "Mul", "Shape", "Reshape", "Add"]
    vals = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert vals["shp"].tolist() == [-1, 4]
    np.testing.assert_array_equal(vals["scale"], np.arange(4, dtype=np.float32))
    assert "ws" not in vals and "i1" not in vals      # intermediates and now-unused initializers are gone
    assert_same_function(m, out, A(2, 3))


def test_fold_constants_nothing_to_do():
    m = mk([node("Relu", ["x"], ["y"])], (3,))
    out, n = apply(P.fold_constants, m)
    assert n == 0 and ops(out) == ["Relu"]


def test_fold_constants_never_folds_random_ops():
    nodes = [node("RandomNormal", [], ["noise"], shape=[3], seed=1.0), node("Mul", ["noise", "zero"], ["z"]),
             node("Add", ["x", "z"], ["y"])]
    m = mk(nodes, (3,), inits={"zero": np.float32(0)})
    out, n = apply(P.fold_constants, m)
    assert "RandomNormal" in ops(out) and n == 0


# ---------------------------------------------------------------- remove_unused_initializers

def test_remove_unused_initializers_also_drops_input_declarations():
    m = mk([node("Add", ["x", "b"], ["y"])], (3,), inits={"b": A(3), "unused": A(5), "unused2": A(2)})
    # old-style: initializers also declared as graph inputs
    m.graph.input.extend([vi("b", [3]), vi("unused", [5])])
    out, n = apply(P.remove_unused_initializers, m)
    assert n == 2
    assert {t.name for t in out.graph.initializer} == {"b"}
    assert [i.name for i in out.graph.input] == ["x", "b"]
    assert_same_function(m, out, A(2, 3))


def test_passes_keep_tensors_that_subgraphs_read():
    """An If branch reads an outer initializer and an outer foldable tensor by name: both must survive."""
    then = helper.make_graph([node("Add", ["x", "K2"], ["t"])], "then", [], [vi("t", ["N", 3])])
    other = helper.make_graph([node("Sub", ["x", "K"], ["e"])], "else", [], [vi("e", ["N", 3])])
    nodes = [node("Mul", ["K", "two"], ["K2"]), node("Identity", ["K"], ["Kid"]),
             node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    for cond in (True, False):
        m = mk(nodes, (3,), inits={"cond": np.array(cond), "K": np.float32(1.5), "two": np.float32(2)})
        out, _ = apply(P.remove_unused_initializers, m)
        assert "K" in {t.name for t in out.graph.initializer}
        assert_same_function(m, out, A(2, 3))
        out, _ = apply(P.fold_constants, m)
        assert_same_function(m, out, A(2, 3))
        out, _ = apply(P.canonicalize, m)
        assert_same_function(m, out, A(2, 3))


# ---------------------------------------------------------------- fold_batchnorm

def test_fold_batchnorm_into_conv_with_and_without_bias():
    inits = {"W": A(4, 3, 3, 3), "B": A(4), **bn_params("bn1", 4), "W2": A(5, 4, 1, 1), **bn_params("bn2", 5)}
    nodes = [node("Conv", ["x", "W", "B"], ["c1"], pads=[1, 1, 1, 1]), bn("bn1", "c1", "b1", eps=1e-3),
             node("Relu", ["b1"], ["r"]),
             node("Conv", ["r", "W2"], ["c2"], strides=[2, 2]), bn("bn2", "c2", "y")]
    m = mk(nodes, (3, 6, 6), inits=inits)
    out, n = apply(P.fold_batchnorm, m)
    assert n == 2
    assert ops(out) == ["Conv", "Relu", "Conv"]
    assert len(out.graph.node[2].input) == 3 and out.graph.node[2].input[2]   # a bias was added
    assert not any(t.name.startswith("bn") for t in out.graph.initializer)
    assert_same_function(m, out, A(2, 3, 6, 6))


@pytest.mark.parametrize("trans_b,alpha,beta,bias", [(0, 1.0, 1.0, "vec"), (1, 0.5, 2.0, "vec"),
                                                      (1, 1.0, 1.0, None), (0, 2.0, 0.5, "scalar")])
def test_fold_batchnorm_into_gemm(trans_b, alpha, beta, bias):
    w = A(6, 4) if not trans_b else A(4, 6)
    inits = {"W": w, **bn_params("bn", 4)}
    ins = ["x", "W"]
    if bias:
        inits["C"] = A(4) if bias == "vec" else A(1)
        ins.append("C")
    nodes = [node("Gemm", ins, ["g"], transB=trans_b, alpha=alpha, beta=beta), bn("bn", "g", "y")]
    m = mk(nodes, (6,), inits=inits)
    out, n = apply(P.fold_batchnorm, m)
    assert n == 1 and ops(out) == ["Gemm"]
    assert_same_function(m, out, A(3, 6))


def test_fold_batchnorm_into_grouped_conv_transpose():
    inits = {"W": A(4, 3, 3, 3), **bn_params("bn", 6)}   # group 2: Cin 4, Cout 2*3
    nodes = [node("ConvTranspose", ["x", "W"], ["c"], group=2, strides=[2, 2]), bn("bn", "c", "y")]
    m = mk(nodes, (4, 3, 3), inits=inits)
    out, n = apply(P.fold_batchnorm, m)
    assert n == 1 and ops(out) == ["ConvTranspose"]
    assert_same_function(m, out, A(2, 4, 3, 3))


def test_fold_batchnorm_shared_weights_get_separate_folded_copies():
    """Two convs share W and B, each followed by its own BN: each needs its own folded parameters."""
    inits = {"W": A(3, 3, 3, 3), "B": A(3), **bn_params("bn1", 3), **bn_params("bn2", 3)}
    nodes = [node("Conv", ["x", "W", "B"], ["c1"], pads=[1, 1, 1, 1]), bn("bn1", "c1", "y1"),
             node("Conv", ["y1", "W", "B"], ["c2"], pads=[1, 1, 1, 1]), bn("bn2", "c2", "y")]
    m = mk(nodes, (3, 4, 4), inits=inits)
    out, n = apply(P.fold_batchnorm, m)
    assert n == 2 and ops(out) == ["Conv", "Conv"]
    names = [t.name for t in out.graph.initializer]
    assert len(names) == len(set(names))
    assert_same_function(m, out, A(2, 3, 4, 4), tol=1e-4)


def test_batchnorm_after_relu_becomes_channel_affine():
    inits = {"W": A(4, 3, 3, 3), **bn_params("bn", 4)}
    nodes = [node("Conv", ["x", "W"], ["c"]), node("Relu", ["c"], ["r"]), bn("bn", "r", "y", eps=1e-2)]
    m = mk(nodes, (3, 5, 5), inits=inits)
    out, n = apply(P.fold_batchnorm, m)
    assert n == 1
    assert ops(out) == ["Conv", "Relu", "Mul", "Add"]
    assert_same_function(m, out, A(2, 3, 5, 5))


def test_batchnorm_on_graph_input_1d():
    """BatchNorm1d on the [N, C] graph input: the affine must broadcast over C only."""
    m = mk([bn("bn", "x", "y")], (4,), inits=bn_params("bn", 4))
    out, n = apply(P.fold_batchnorm, m)
    assert n == 1 and ops(out) == ["Mul", "Add"]
    assert_same_function(m, out, A(3, 4))


@pytest.mark.parametrize("rank", [2, 3])
def test_batchnorm_after_relu_without_value_info(rank):
    """No value_info in the model (shape inference not run): the affine must still get the input's rank."""
    x_shape = (3,) if rank == 2 else (3, 5)
    m = mk([node("Relu", ["x"], ["r"]), bn("bn", "r", "y")], x_shape, inits=bn_params("bn", 3))
    assert not m.graph.value_info
    out, n = apply(P.fold_batchnorm, m)
    assert_same_function(m, out, A(2, *x_shape))


def test_batchnorm_not_folded_when_conv_output_has_other_consumers():
    inits = {"W": A(4, 3, 1, 1), **bn_params("bn", 4)}
    nodes = [node("Conv", ["x", "W"], ["c"]), bn("bn", "c", "b"), node("Add", ["b", "c"], ["y"])]
    m = mk(nodes, (3, 3, 3), inits=inits)
    out, n = apply(P.fold_batchnorm, m)
    assert n == 1
    assert ops(out) == ["Conv", "Mul", "Add", "Add"]
    assert numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "W")).tolist() == inits["W"].tolist()
    assert_same_function(m, out, A(2, 3, 3, 3))


def test_batchnorm_before_padded_conv_is_not_merged_forward():
    """BN followed by a zero-padded Conv: folding forward would be inexact at the borders; the affine stays."""
    inits = {"W": A(2, 3, 3, 3), **bn_params("bn", 3)}
    nodes = [bn("bn", "x", "b"), node("Conv", ["b", "W"], ["y"], pads=[1, 1, 1, 1])]
    m = mk(nodes, (3, 4, 4), inits=inits)
    out, n = apply(P.fold_batchnorm, m)
    assert n == 1 and ops(out) == ["Mul", "Add", "Conv"]
    assert_same_function(m, out, A(2, 3, 4, 4))


class BNNet(torch.nn.Module):
    """Conv -> BN (foldable) -> ReLU -> BN (after ReLU: affine) -> flatten -> Linear -> BN1d (foldable) -> Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(3, eps=1e-3)
        self.bn2 = torch.nn.BatchNorm2d(3)
        self.fc1 = torch.nn.Linear(3 * 4 * 4, 6)
        self.bn3 = torch.nn.BatchNorm1d(6)
        self.fc2 = torch.nn.Linear(6, 4)
        for b in (self.bn1, self.bn2, self.bn3):
            c = b.num_features
            b.weight.data = torch.rand(c) + 0.5
            b.bias.data = torch.randn(c)
            b.running_mean = torch.randn(c)
            b.running_var = torch.rand(c) + 0.5
        self.eval()

    def forward(self, x):
        y = self.bn2(torch.relu(self.bn1(self.conv(x))))
        return self.fc2(torch.relu(self.bn3(self.fc1(y.flatten(1)))))


def bnnet_onnx(net: BNNet):
    p = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items() if v.dtype.is_floating_point}

    def bnode(name, x, y, eps):
        return helper.make_node("BatchNormalization", [x] + [f"{name}.{s}" for s in ("weight", "bias", "running_mean", "running_var")],
                                [y], name=name, epsilon=eps)
    nodes = [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             bnode("bn1", "c", "b1", 1e-3), helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
             bnode("bn2", "r1", "b2", 1e-5), helper.make_node("Flatten", ["b2"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
             bnode("bn3", "h", "b3", 1e-5), helper.make_node("Relu", ["b3"], ["r3"], name="relu3"),
             helper.make_node("Gemm", ["r3", "fc2.weight", "fc2.bias"], ["scores"], name="fc2", transB=1)]
    return mk(nodes, (2, 4, 4), inits=p, outputs=("scores",))


def test_fold_batchnorm_gradient_matches_autograd_float64():
    net = BNNet()
    model = bnnet_onnx(net)
    x = A(3, 2, 4, 4)
    target = np.array([0, 3, 1])
    # forward of the hand-made ONNX = torch module (the ONNX graph is a faithful copy)
    with torch.no_grad():
        assert rel_err(run(model, x)[0], net(torch.tensor(x)).numpy()) < 1e-5
    canon, report = apply(P.canonicalize, model)
    assert report["fold_batchnorm"] == 3
    assert ops(canon) == ["Conv", "Relu", "Mul", "Add", "Flatten", "Gemm", "Relu", "Gemm"]
    assert_same_function(model, canon, x)

    ex = xcompile.Explainer(xcompile.compile(model, "gradient")).explain(x, target)
    net64 = BNNet().double()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    scores = net64(xt)
    g, = torch.autograd.grad(scores.gather(1, torch.tensor(target)[:, None]).sum(), xt)
    assert rel_err(ex.scores, scores.detach().numpy()) < 1e-5
    assert rel_err(ex.relevance, g.numpy()) < 1e-4


# ---------------------------------------------------------------- expose_maxpool_indices

def test_expose_maxpool_indices():
    nodes = [node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             node("MaxPool", ["p"], ["q", "idx"], kernel_shape=[2, 2]),
             node("Cast", ["idx"], ["idxf"], to=TensorProto.FLOAT), node("Mul", ["idxf", "zero"], ["z"]),
             node("Add", ["q", "z"], ["y"])]
    m = mk(nodes, (2, 8, 8), inits={"zero": np.float32(0)})
    out, n = apply(P.expose_maxpool_indices, m)
    assert n == 1
    assert list(out.graph.node[0].output) == ["p", "p/indices"]
    assert list(out.graph.node[1].output) == ["q", "idx"]
    assert_same_function(m, out, A(2, 2, 8, 8))
    # the exposed indices are what onnxruntime computes for the first pool
    probe = onnx.ModelProto()
    probe.CopyFrom(out)
    probe.graph.output.extend([vi("p", ["N", 2, 4, 4]), vi("p/indices", ["N", 2, 4, 4], TensorProto.INT64)])
    x = A(1, 2, 8, 8)
    p, idx = run(probe, x)[1:]
    np.testing.assert_array_equal(x.ravel()[idx.ravel()], p.ravel())


# ---------------------------------------------------------------- find_explained_scores

def _head(last_ops):
    nodes = [node("Gemm", ["x", "W"], ["logits"])]
    t = "logits"
    for i, (op, attrs) in enumerate(last_ops):
        out = "y" if i == len(last_ops) - 1 else f"t{i}"
        nodes.append(node(op, [t], [out], **attrs))
        t = out
    return mk(nodes, (3,), inits={"W": A(3, 4)})


@pytest.mark.parametrize("tail,expected", [
    ([("Softmax", {"axis": 1})], "logits"),
    ([("LogSoftmax", {"axis": -1})], "logits"),
    ([("Softmax", {"axis": 1}), ("Identity", {})], "logits"),
    ([("Relu", {})], "y"),
    ([], "logits"),
])
def test_find_explained_scores(tail, expected):
    m = _head(tail) if tail else mk([node("Gemm", ["x", "W"], ["logits"])], (3,), inits={"W": A(3, 4)}, outputs=("logits",))
    assert P.find_explained_scores(m, m.graph.output[0].name) == expected
    assert P.find_explained_scores(m, m.graph.output[0].name, keep_softmax=True) == m.graph.output[0].name


def _softmax_classifier():
    torch.manual_seed(1)
    w, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    nodes = [node("Gemm", ["x", "W", "B"], ["logits"], transB=1), node("Softmax", ["logits"], ["probs"], axis=1)]
    m = mk(nodes, (6,), inits={"W": w.numpy().astype(np.float32), "B": b.numpy().astype(np.float32)},
           outputs=("probs",))
    return m, w, b


@pytest.mark.parametrize("keep_softmax", [False, True])
def test_softmax_is_skipped_unless_kept(keep_softmax):
    m, w, b = _softmax_classifier()
    x = A(3, 6)
    target = np.array([2, 0, 3])
    ex = xcompile.Explainer(xcompile.compile(m, "gradient", keep_softmax=keep_softmax)).explain(x, target)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logits = xt @ w.T + b
    probs = torch.softmax(logits, 1)
    explained = probs if keep_softmax else logits
    g, = torch.autograd.grad(explained.gather(1, torch.tensor(target)[:, None]).sum(), xt)
    assert rel_err(ex.scores, run(m, x)[0]) < 1e-5           # the score output stays the model's own output
    assert rel_err(ex.relevance, g.numpy()) < 1e-4


# ---------------------------------------------------------------- canonicalize (all passes)

def test_canonicalize_whole():
    inits = {"W": A(4, 2, 3, 3), **bn_params("bn", 4), "Wfc": A(4 * 2 * 2, 3), "ax": np.array([0], np.int64)}
    nodes = [helper.make_node("Constant", [], ["k"], name="const_k", value=numpy_helper.from_array(np.float32(0.5))),
             node("Mul", ["x", "k"], ["xs"]), node("Identity", ["xs"], ["xi"]),
             node("Conv", ["xi", "W"], ["c"], pads=[1, 1, 1, 1]), bn("bn", "c", "b"),
             node("Relu", ["b"], ["r"]), node("Dropout", ["r"], ["d"]),
             node("MaxPool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Shape", ["Wfc"], ["ws"]), node("Gather", ["ws", "zero"], ["n0"], axis=0),
             node("Unsqueeze", ["n0", "ax"], ["n0u"]), node("Concat", ["minus1", "n0u"], ["shp"], axis=0),
             node("Reshape", ["p", "shp"], ["f"]), node("MatMul", ["f", "Wfc"], ["logits"]),
             node("Softmax", ["logits"], ["y"], axis=1)]
    inits.update(zero=np.array(0, np.int64), minus1=np.array([-1], np.int64))
    m = mk(nodes, (2, 4, 4), inits=inits)
    out, report = apply(P.canonicalize, m)
    assert report == {"explicit_defaults": 0, "constants_to_initializers": 1, "drop_identity": 2, "fold_constants": 4,
                      "unroll_recurrent": 0, "fold_batchnorm": 1, "expose_maxpool_indices": 1}
    assert ops(out) == ["Mul", "Conv", "Relu", "MaxPool", "Reshape", "MatMul", "Softmax"]
    assert_same_function(m, out, A(2, 2, 4, 4))
    assert P.find_explained_scores(out, "y") == "logits"
