"""Score outputs beyond [N, classes] (docs/tabular.md "Score outputs"): single-logit [N] / [N, 1] classifiers from both
PyTorch exporters against autograd (target -1 / 1: the logit, 0: its negation); the score output chosen past labels."""
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from xcompile.compiler import compile as xc
from xcompile.errors import XCompileError


class OneLogit(torch.nn.Module):
    def __init__(self, squeeze: bool, sigmoid: bool):
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(6, 8), torch.nn.Linear(8, 1)
        self.squeeze, self.sigmoid = squeeze, sigmoid

    def logit(self, x):
        return self.l2(torch.relu(self.l1(x)))

    def forward(self, x):
        z = self.logit(x)
        z = z.squeeze(-1) if self.squeeze else z
        return torch.sigmoid(z) if self.sigmoid else z


def export(m, x, dynamo):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(m, (x,), f, dynamo=True, input_names=["x"], output_names=["y"],
                              dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
        else:
            torch.onnx.export(m, (x,), f, dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return f.getvalue()


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("squeeze,sigmoid", [(True, False), (False, False), (False, True)], ids=["N", "N1", "N1-sigmoid"])
def test_single_logit_against_autograd(dynamo, squeeze, sigmoid):
    torch.manual_seed(0)
    m = OneLogit(squeeze, sigmoid).eval()
    x = torch.randn(5, 6)
    onnx_bytes = export(m, x, dynamo)
    s = ort.InferenceSession(xc(onnx_bytes, "input_x_gradient").SerializeToString())
    xx = x.clone().requires_grad_()
    m.logit(xx).sum().backward()
    ref = (xx.grad * x).numpy()
    for t, sign, cls in ((-1, 1, 1), (1, 1, 1), (0, -1, 0)):
        out = s.run(None, {"x": x.numpy(), "target": np.full(5, t, np.int64)})
        names = [o.name for o in s.get_outputs()]
        assert np.abs(out[1] - sign * ref).max() / np.abs(ref).max() < 1e-5
        assert list(out[names.index("explained_class")]) == [cls] * 5
    # LRP: relevance of the logit, conservation of the explained (negated for class 0) logit
    e = ort.InferenceSession(xc(onnx_bytes, "lrp", rules="epsilon").SerializeToString())
    out = e.run(None, {"x": x.numpy(), "target": np.zeros(5, np.int64)})
    assert np.isfinite(out[1]).all()


def test_label_output_first_and_refused_label():
    """A classifier that writes an int64 label first: the float scores are explained; output=label is refused."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], np.arange(6, dtype=np.float32).tolist())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    e = xc(m, "gradient")
    assert e.graph.output[0].name == "scores"
    with pytest.raises(XCompileError, match="output='label'.*not a float tensor"):
        xc(m, "gradient", output="label")


def test_opset9_file_converted():
    x = torch.randn(4, 6)
    f = io.BytesIO()
    torch.onnx.export(torch.nn.Sequential(torch.nn.Linear(6, 3)), (x,), f, dynamo=False, opset_version=9,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    assert onnx.load_from_string(f.getvalue()).opset_import[0].version == 9
    out = ort.InferenceSession(xc(f.getvalue(), "gradient").SerializeToString()).run(
        None, {"x": x.numpy(), "target": np.zeros(4, np.int64)})
    assert out[1].shape == (4, 6)


def test_opset_conversion_failure_is_one_line(monkeypatch, tmp_path):
    from xcompile.load import loader

    def fail(model, version):
        raise RuntimeError("/project/onnx/version_converter/adapters/x.h:21: adapter failed\nsecond line")
    monkeypatch.setattr(loader.version_converter, "convert_version", fail)
    x = torch.randn(2, 6)
    path = tmp_path / "old.onnx"
    torch.onnx.export(torch.nn.Linear(6, 3), (x,), str(path), dynamo=False, opset_version=9)
    with pytest.raises(XCompileError) as e:
        xc(str(path), "gradient")
    msg = str(e.value)
    assert "\n" not in msg and "old.onnx" in msg and "cannot convert opset 9 to 17" in msg and "re-export" in msg
