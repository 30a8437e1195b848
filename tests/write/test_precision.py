"""`--set precision=float16` (docs/deployment.md, "float16 explainers"): a float32 model compiled into a float16
explainer, compared with the float32 explainer of the same model (the reference: float16 is a deployment choice,
not a different explanation). Measured: max |float16 - float32| / max |float32| over the relevance (and the
scores), on the shipped digits CNN and on a random-weight resnet18 whose gradient is ill-conditioned (its own
float32 explainer moves as much when the input is only rounded to float16)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from xcompile.compiler import compile as xcompile
from xcompile.errors import XCompileError

DIGITS = Path(__file__).resolve().parents[2] / "xcompile" / "data" / "digits_cnn.onnx"


def _run(m, x, target):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    out = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x, "target": target})
    return dict(zip([o.name for o in m.graph.output], out))


def _err(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


def _digits():
    data = np.load(DIGITS.parent / "digits_heldout.npz")
    x = data[data.files[0]][:16].astype(np.float32)
    return x.reshape(len(x), 1, 8, 8)


@pytest.mark.parametrize("method,kw,bound", [("gradient", {}, 1e-3), ("input_x_gradient", {}, 1e-3),
                                             ("integrated_gradients", {}, 5e-3),
                                             ("lrp", {"rules": "epsilon-plus-flat"}, 1e-3)])
def test_float16_explainer_of_digits_cnn(method, kw, bound):
    x = _digits()
    target = np.full(len(x), -1, np.int64)
    full = xcompile(str(DIGITS), method, **kw)
    half = xcompile(str(DIGITS), method, precision="float16", **kw)
    onnx.checker.check_model(half, full_check=True)
    # the I/O keep the model's dtypes, relevance is float32; the weights are float16 (about half the file)
    io = {v.name: v.type.tensor_type.elem_type for v in list(half.graph.input) + list(half.graph.output)}
    assert io["input"] == io["relevance"] == onnx.TensorProto.FLOAT
    assert half.ByteSize() < 0.6 * full.ByteSize()
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    a, b = _run(full, x, target), _run(half, x, target)
    score = full.graph.output[0].name
    assert b["relevance"].dtype == np.float32 and b[score].dtype == np.float32
    np.testing.assert_array_equal(a["explained_class"], b["explained_class"])
    rows = np.array([_err(a["relevance"][k], b["relevance"][k]) for k in range(len(x))])
    es = _err(a[score], b[score])
    print(f"digits CNN {method}: float16 vs float32 explainer, relevance error / the row's max: median "
          f"{np.median(rows):.1e}, worst {rows.max():.1e}; scores {es:.1e} of max")
    # most rows agree to float16's precision; a row where a ReLU input lies within float16 rounding of 0 flips it
    # (the float16 forward's own choice), which moves that row's gradient by up to ~2e-2 of its max
    assert np.median(rows) <= bound and rows.max() <= 5e-2 and es <= 1e-3


def test_lrp_stabilized_divisions_stay_float32():
    half = xcompile(str(DIGITS), "lrp", rules="epsilon", precision="float16")
    types = {v.name: v.type.tensor_type.elem_type for v in half.graph.value_info}
    divs = [n for n in half.graph.node if n.op_type == "Div" and n.name.startswith("xc/lrp/")]
    assert divs and all(types.get(n.output[0]) == onnx.TensorProto.FLOAT for n in divs)
    eps = [n for n in half.graph.node if n.name.endswith("/eps_signed")]
    assert eps and all(types.get(n.output[0]) == onnx.TensorProto.FLOAT for n in eps)
    # every other emitted arithmetic runs in float16
    convs = [n for n in half.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm") and n.name.startswith("xc/")]
    assert convs and all(types.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in convs)


def test_float16_explainer_of_resnet18(tmp_path):
    """resnet18 (random weights, calibrated BatchNorm, 3x64x64): the float16 explainer's gradient is within twice
    the change that rounding the INPUT to float16 makes in the float32 explainer (the network's own conditioning),
    and correlates > 0.99 with it."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from model_zoo.zoo import export_calibrated
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    export_calibrated(m, torch.Generator().manual_seed(0), 64, tmp_path / "r18.onnx")
    x = np.random.RandomState(5).randn(2, 3, 64, 64).astype(np.float32)
    target = np.array([-1, -1])
    full = xcompile(str(tmp_path / "r18.onnx"), "gradient")
    half = xcompile(str(tmp_path / "r18.onnx"), "gradient", precision="float16")
    a, b = _run(full, x, target), _run(half, x, target)
    rounded = _run(full, x.astype(np.float16).astype(np.float32), target)
    e, conditioning = _err(a["relevance"], b["relevance"]), _err(a["relevance"], rounded["relevance"])
    pearson = np.corrcoef(a["relevance"].ravel(), b["relevance"].ravel())[0, 1]
    es = _err(a["scores"], b["scores"])
    print(f"resnet18 gradient: float16 vs float32 explainer {e:.1e} of max (input rounded to float16 alone: "
          f"{conditioning:.1e}); Pearson {pearson:.4f}; scores {es:.1e}")
    assert e <= 2 * conditioning and pearson > 0.99 and es <= 1e-2


def test_precision_refusals():
    with pytest.raises(XCompileError, match=r"option precision='bfloat16'") as e:
        xcompile(str(DIGITS), "gradient", precision="bfloat16")
    assert "\n" not in str(e.value)
    # a quantized model keeps its own integer forward: no float16 explainer of it
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["scores"])]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
                          initializer=[numpy_helper.from_array(np.float32(0.1), "s"),
                                       numpy_helper.from_array(np.uint8(128), "z"),
                                       numpy_helper.from_array(np.ones((4, 2), np.float32), "w")])
    q = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(XCompileError, match=r"precision=float16 applies to float models; this model is quantized") as e:
        xcompile(q, "gradient", precision="float16")
    assert "\n" not in str(e.value)
