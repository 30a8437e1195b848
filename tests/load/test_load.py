"""Loading ONNX classifiers (xcompile/load/loader.py, probe.py, through xcompile.compile).

Oracles: PyTorch float64 autograd of the same network (weights copied into hand-made ONNX graphs, or the
module exported by torch.onnx.export), and onnxruntime running the original model."""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from oracle import rel_err

import xcompile

RNG = np.random.default_rng(11)
N_CLASSES = 4
X_SHAPE = (2, 6, 6)

# weights of the small Conv/Relu/MaxPool/Gemm classifier
W1 = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
B1 = RNG.standard_normal(3).astype(np.float32)
W2 = (RNG.standard_normal((5, 27)) / 4).astype(np.float32)
B2 = RNG.standard_normal(5).astype(np.float32)
W3 = RNG.standard_normal((N_CLASSES, 5)).astype(np.float32)
B3 = RNG.standard_normal(N_CLASSES).astype(np.float32)


def t64(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def torch_net(x):
    """Float64 reference of the classifier (x: float64 tensor [N, 2, 6, 6])."""
    h = F.max_pool2d(F.relu(F.conv2d(x, t64(W1), t64(B1), padding=1)), 2)
    h = F.relu(h.flatten(1) @ t64(W2).T + t64(B2))
    return h @ t64(W3).T + t64(B3)


def autograd(fn, x, target):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    scores = fn(xt)
    g, = torch.autograd.grad(scores.gather(1, torch.tensor(target)[:, None]).sum(), xt)
    return scores.detach().numpy(), g.numpy()


def check_gradient(model, x, target, fn=torch_net, **params):
    ex = xcompile.Explainer(xcompile.compile(model, "gradient", **params)).explain(x, np.asarray(target))
    ref_s, ref_g = autograd(fn, x, target)
    assert ex.relevance.shape == x.shape
    assert rel_err(ex.scores, ref_s) < 1e-5, rel_err(ex.scores, ref_s)
    assert rel_err(ex.relevance, ref_g) < 1e-4, rel_err(ex.relevance, ref_g)
    return ex


def sample(n=2):
    return RNG.standard_normal((n, *X_SHAPE)).astype(np.float32)


def ort_run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    return ort.InferenceSession(str(data) if isinstance(data, os.PathLike) else data, so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def classifier(opset=17, ir_version=8, front=(), front_inits=(), x_name="x"):
    """x -> [front nodes] -> Conv -> Relu -> MaxPool -> Flatten -> Unsqueeze/Squeeze -> Gemm -> Relu -> Gemm,
    written in the operator forms of `opset` (axes attribute before 13, input from 13)."""
    inits = {"W1": W1, "B1": B1, "W2": W2, "B2": B2, "W3": W3, "B3": B3, **dict(front_inits)}
    first = front[-1].output[0] if front else x_name
    if opset < 13:
        squeeze = [helper.make_node("Unsqueeze", ["f"], ["fu"], name="unsq", axes=[2]),
                   helper.make_node("Squeeze", ["fu"], ["fs"], name="sq", axes=[2])]
    else:
        inits["ax2"] = np.array([2], np.int64)
        squeeze = [helper.make_node("Unsqueeze", ["f", "ax2"], ["fu"], name="unsq"),
                   helper.make_node("Squeeze", ["fu", "ax2"], ["fs"], name="sq")]
    nodes = [*front,
             helper.make_node("Conv", [first, "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p1"], ["f"], name="flatten", axis=1), *squeeze,
             helper.make_node("Gemm", ["fs", "W2", "B2"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["hr"], name="relu2"),
             helper.make_node("Gemm", ["hr", "W3", "B3"], ["scores"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, ["N", *X_SHAPE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", N_CLASSES])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------- opsets

@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_opsets_handmade(opset):
    model = classifier(opset)
    x = sample(2)
    assert rel_err(ort_run(model, {"x": x})[0], torch_net(t64(x)).numpy()) < 1e-5   # the graph is the net
    check_gradient(model, x, [1, 3])


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.fc1 = torch.nn.Linear(27, 5)
        self.fc2 = torch.nn.Linear(5, N_CLASSES)
        for p, v in zip(self.parameters(), (W1, B1, W2, B2, W3, B3)):
            p.data = torch.tensor(v)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        h = h.view(h.size(0), -1)          # legacy exporter: Shape -> Gather -> Unsqueeze -> Concat -> Reshape
        return self.fc2(F.relu(self.fc1(h)))


def torch_export(opset, dynamic=True):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TorchNet().eval(), torch.zeros(1, *X_SHAPE), f, opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["scores"],
                          dynamic_axes={"x": {0: "batch"}, "scores": {0: "batch"}} if dynamic else None)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_opsets_torch_legacy_export_with_runtime_shape_arithmetic(opset):
    model = torch_export(opset)
    types = [n.op_type for n in model.graph.node]
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= set(types)   # as the legacy exporter writes it
    x = sample(3)
    check_gradient(model, x, [0, 2, 3])


# ---------------------------------------------------------------- external data, missing shapes

def test_external_data_loads_from_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(classifier(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    header = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in header.graph.initializer)   # weights really are outside
    assert (tmp_path / "model.onnx.data").stat().st_size >= 4 * (W1.size + W2.size + W3.size)
    x = sample(2)
    check_gradient(str(path), x, [0, 1])
    check_gradient(path, x, [2, 3])


def test_external_data_file_missing(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(classifier(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(xcompile.XCompileError, match=str(path).replace("\\", "\\\\")):
        xcompile.compile(str(path), "gradient")


def test_model_without_value_info_or_output_shape():
    model = classifier()
    model = onnx.shape_inference.infer_shapes(model)
    assert model.graph.value_info                         # there was shape info ...
    del model.graph.value_info[:]                          # ... and now there is none
    for d in model.graph.output[0].type.tensor_type.shape.dim:
        d.Clear()                                          # output dims unknown
    onnx.checker.check_model(model)
    check_gradient(model, sample(2), [3, 0])


def test_input_shape_option_when_the_input_dims_are_unknown():
    model = classifier()
    for d in model.graph.input[0].type.tensor_type.shape.dim:
        d.Clear()
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    model.graph.output[0].type.tensor_type.shape.dim.add()
    model.graph.output[0].type.tensor_type.shape.dim.add()
    with pytest.raises(xcompile.XCompileError, match="input_shape"):
        xcompile.compile(model, "gradient")
    check_gradient(model, sample(2), [1, 2], input_shape="2x6x6")


# ---------------------------------------------------------------- normalization in front

MEAN = np.array([0.4, -0.2], np.float32).reshape(1, 2, 1, 1)
STD = np.array([0.5, 2.0], np.float32).reshape(1, 2, 1, 1)


def test_input_normalization_arithmetic():
    front = [helper.make_node("Mul", ["img", "inv255"], ["x01"], name="scale"),
             helper.make_node("Sub", ["x01", "mean"], ["xc"], name="center"),
             helper.make_node("Div", ["xc", "std"], ["xn"], name="normalize")]
    model = classifier(front=front, front_inits={"inv255": np.float32(1 / 255), "mean": MEAN, "std": STD}, x_name="img")

    def fn(x):
        return torch_net((x * (1 / 255) - t64(MEAN)) / t64(STD))
    x = (RNG.uniform(0, 255, (2, *X_SHAPE))).astype(np.float32)
    ex = check_gradient(model, x, [0, 3], fn=fn)
    # the chain rule through the normalization: d/dimg = d/dxn / (255 * std)
    ref_xn = autograd(torch_net, ((x / 255 - MEAN) / STD).astype(np.float32), [0, 3])[1]
    assert rel_err(ex.relevance, ref_xn / (255 * STD)) < 1e-3


def test_normalization_as_constant_nodes():
    """Same, with the constants given as Constant nodes (as exporters write them)."""
    front = [helper.make_node("Constant", [], ["mean"], value=numpy_helper.from_array(MEAN)),
             helper.make_node("Constant", [], ["std"], value=numpy_helper.from_array(STD)),
             helper.make_node("Sub", ["x", "mean"], ["xc"], name="center"),
             helper.make_node("Div", ["xc", "std"], ["xn"], name="normalize")]
    model = classifier(front=front)
    check_gradient(model, sample(2), [2, 1], fn=lambda x: torch_net((x - t64(MEAN)) / t64(STD)))


# ---------------------------------------------------------------- run-time shape arithmetic, hand-made

def test_runtime_shape_arithmetic_is_not_differentiated():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (flatten), plus ConstantOfShape(Shape(x)) and
    Range(0, C) feeding multiplications: all of it depends on x's shape only, never on its values."""
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    front = [helper.make_node("Shape", ["x"], ["xs"], name="shape_x"),
             helper.make_node("ConstantOfShape", ["xs"], ["half"], name="cos",
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Gather", ["xs", "one"], ["nc"], name="gather_c", axis=0),
             helper.make_node("Range", ["zero", "nc", "one"], ["ar"], name="range"),
             helper.make_node("Cast", ["ar"], ["arf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Add", ["arf", "onef"], ["ar1"], name="ar_plus1"),
             helper.make_node("Reshape", ["ar1", "chan_shape"], ["ar4"], name="ar_reshape"),
             helper.make_node("Mul", ["x", "half"], ["xh"], name="mul_half"),
             helper.make_node("Mul", ["xh", "ar4"], ["xw"], name="mul_range")]
    model = classifier(front=front, front_inits={"one": np.array(1, np.int64), "zero": np.array(0, np.int64), "onef": np.float32(1),
                                                 "chan_shape": i64(1, -1, 1, 1)})
    # replace the Flatten with the legacy exporter's run-time reshape
    g = model.graph
    k = next(i for i, n in enumerate(g.node) if n.op_type == "Flatten")
    legacy = [helper.make_node("Shape", ["p1"], ["ps"], name="shape_p"),
              helper.make_node("Gather", ["ps", "zero"], ["n"], name="gather_n", axis=0),
              helper.make_node("Unsqueeze", ["n", "ax0"], ["nu"], name="unsq_n"),
              helper.make_node("Concat", ["nu", "minus1"], ["fshape"], name="concat_shape", axis=0),
              helper.make_node("Reshape", ["p1", "fshape"], ["f"], name="flatten_reshape")]
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes[:k] + legacy + nodes[k + 1:])
    g.initializer.extend([numpy_helper.from_array(i64(0), "ax0"), numpy_helper.from_array(i64(-1), "minus1")])
    onnx.checker.check_model(model, full_check=True)

    def fn(x):
        scale = 0.5 * torch.arange(1, 3, dtype=torch.float64).reshape(1, -1, 1, 1)
        return torch_net(x * scale)
    x = sample(2)
    assert rel_err(ort_run(model, {"x": x})[0], fn(t64(x)).numpy()) < 1e-5
    check_gradient(model, x, [0, 1], fn=fn)
    check_gradient(model, sample(3), [3, 3, 2], fn=fn)
    # no backward node is emitted for the shape arithmetic (backward nodes are named xc/<method>/<forward node>/...)
    emitted = [n.name for n in xcompile.compile(model, "gradient").graph.node if n.name.startswith("xc/gradient/")]
    assert any(n.startswith("xc/gradient/mul_range/") for n in emitted)
    shape_nodes = ["shape_x", "cos", "gather_c", "range", "cast", "ar_plus1", "ar_reshape",
                   "shape_p", "gather_n", "unsq_n", "concat_shape"]
    assert not [n for n in emitted if n.split("/")[2] in shape_nodes]


# ---------------------------------------------------------------- batch sizes

def test_dynamic_batch_answers_batch_1_and_3():
    ex = xcompile.Explainer(xcompile.compile(classifier(), "gradient"))
    for n in (1, 3):
        x = sample(n)
        target = np.arange(n) % N_CLASSES
        out = ex.explain(x, target)
        ref_s, ref_g = autograd(torch_net, x, target)
        assert out.scores.shape == (n, N_CLASSES) and out.relevance.shape == x.shape
        assert rel_err(out.scores, ref_s) < 1e-5 and rel_err(out.relevance, ref_g) < 1e-4


def test_fixed_batch_export_still_explains_its_batch():
    """A model exported with a fixed batch of 1 (no dynamic axes)."""
    model = torch_export(17, dynamic=False)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    check_gradient(model, sample(1), [2])


def test_default_target_is_the_predicted_class():
    x = sample(3)
    out = xcompile.Explainer(xcompile.compile(classifier(), "gradient")).explain(x)
    pred = torch_net(t64(x)).numpy().argmax(1)
    assert rel_err(out.relevance, autograd(torch_net, x, pred)[1]) < 1e-4


# ---------------------------------------------------------------- IR / opset versions

def test_ir_version_newer_than_onnxruntime_supports_is_lowered():
    """onnx stamps IR 14 (onnx >= 1.23) that onnxruntime <= 1.2x rejects: the loader lowers it and loads."""
    model = classifier(ir_version=onnx.IR_VERSION)
    check_gradient(model, sample(2), [0, 3])


def test_ir_version_newer_than_onnx_knows_is_a_clear_error(tmp_path):
    model = classifier()
    model.ir_version = onnx.IR_VERSION + 1
    path = tmp_path / "future.onnx"
    onnx.save(model, str(path))
    with pytest.raises(xcompile.XCompileError, match=rf"{path.name}.*ir_version"):
        xcompile.compile(str(path), "gradient")


@pytest.mark.parametrize("opset", [7, 9, 10])
def test_old_opsets_are_converted(opset):
    """Opsets 7 to 10 go through onnx.version_converter (docs/tabular.md "Opsets")."""
    check_gradient(classifier(opset), sample(2), [0, 3])


def test_opset_below_7_is_a_clear_error(tmp_path):
    model = classifier(7)
    model.opset_import[0].version = 6
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    with pytest.raises(xcompile.XCompileError, match=r"old\.onnx.*opset 6 is not supported"):
        xcompile.compile(str(path), "gradient")


# ---------------------------------------------------------------- bad inputs

def test_nonexistent_path(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(xcompile.XCompileError, match="nope.onnx"):
        xcompile.compile(str(path), "gradient")


def test_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\xffthis is not a protobuf\x13\x37" * 10)
    with pytest.raises(xcompile.XCompileError, match="junk.onnx"):
        xcompile.compile(str(path), "gradient")
    text = tmp_path / "text.onnx"
    text.write_text("hello")
    with pytest.raises(xcompile.XCompileError, match="text.onnx"):
        xcompile.compile(str(text), "gradient")


def _two_inputs(tmp_path):
    nodes = [helper.make_node("Gemm", ["a", "Wa"], ["ha"], name="fa"), helper.make_node("Gemm", ["b", "Wb"], ["hb"], name="fb"),
             helper.make_node("Add", ["ha", "hb"], ["scores"], name="add")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
                                             helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
                              initializer=[numpy_helper.from_array(RNG.standard_normal((3, 4)).astype(np.float32), "Wa"),
                                           numpy_helper.from_array(RNG.standard_normal((2, 4)).astype(np.float32), "Wb")])
    path = tmp_path / "two_inputs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_two_float_inputs_need_the_input_option(tmp_path):
    path = _two_inputs(tmp_path)
    with pytest.raises(xcompile.XCompileError, match=r"two_inputs\.onnx.*'a'.*'b'.*input="):
        xcompile.compile(str(path), "gradient")


def test_an_input_that_no_node_reads_is_dropped(tmp_path):
    """Keras' ONNX export (TensorFlow backend) leaves folded constants behind as graph inputs nothing reads; the
    model itself then needs dummy feeds. The explainer does not declare them: one float input remains."""
    wa = RNG.standard_normal((3, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["a", "Wa"], ["scores"], name="fa")], "dead",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
                               helper.make_tensor_value_info("dead", TensorProto.FLOAT, [1, 1, 1, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
                              initializer=[numpy_helper.from_array(wa, "Wa")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(Exception, match="dead"):  # onnxruntime wants a feed for it
        ort.InferenceSession(model.SerializeToString()).run(None, {"a": np.zeros((1, 3), np.float32)})
    ex = xcompile.Explainer(xcompile.compile(model, "gradient"))
    assert ex.input_names == ["a"]
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    out = ex.explain(x, np.array([1, 3]))
    np.testing.assert_allclose(out.scores, x @ wa, rtol=1e-6)
    np.testing.assert_allclose(out.relevance, wa[:, [1, 3]].T, rtol=1e-6)  # d(x @ Wa)[t] / dx = Wa[:, t]


def test_input_option_naming_a_missing_tensor(tmp_path):
    path = tmp_path / "clf.onnx"
    onnx.save(classifier(), str(path))
    with pytest.raises(xcompile.XCompileError, match=r"clf\.onnx.*input='nothere'"):
        xcompile.compile(str(path), "gradient", input="nothere")
    with pytest.raises(xcompile.XCompileError, match=r"clf\.onnx.*output='nothere'"):
        xcompile.compile(str(path), "gradient", output="nothere")
    # naming the real ones is fine
    x = sample(1)
    out = xcompile.Explainer(xcompile.compile(str(path), "gradient", input="x", output="scores")).explain(x, np.array([1]))
    assert rel_err(out.relevance, autograd(torch_net, x, [1])[1]) < 1e-4


def test_model_with_no_nodes_and_invalid_model(tmp_path):
    graph = helper.make_graph([], "empty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])])
    empty = tmp_path / "empty.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(empty))
    with pytest.raises(xcompile.XCompileError, match="empty.onnx"):
        xcompile.compile(str(empty), "gradient")
    bad = classifier()
    bad.graph.node[0].input[1] = "no_such_weight"            # dangling input: not a valid graph
    path = tmp_path / "dangling.onnx"
    onnx.save(bad, str(path))
    with pytest.raises(xcompile.XCompileError, match="dangling.onnx"):
        xcompile.compile(str(path), "gradient")
