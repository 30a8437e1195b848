"""Quantized models (docs/deployment.md, "Quantized models"): onnxruntime.quantization's QDQ, QOperator and dynamic
resnet18 (random weights, calibrated BatchNorm, 3x64x64) — scores equal the quantized file's onnxruntime output,
gradient equal to an independent PyTorch oracle with fake_quantize at the file's own quantization points
(tests/quant_oracle.py), every method compiles; one-node tests of the quantized ops against numpy."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import quant_oracle
from onnx import TensorProto, helper, numpy_helper

from xcompile.compiler import compile as xcompile
from xcompile.errors import XCompileError

ort_q = pytest.importorskip("onnxruntime.quantization")
H = 64


def _session(model, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = 2
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _explain(m, x, target):
    out = _session(m).run(None, {"input": x, "target": target})
    return dict(zip([o.name for o in m.graph.output], out))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """resnet18 (10 classes) at 3x64x64, BatchNorm statistics calibrated on seeded images, exported by zoo."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from model_zoo.zoo import export_calibrated
    d = tmp_path_factory.mktemp("quantized")
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    export_calibrated(m, torch.Generator().manual_seed(0), H, d / "float.onnx")
    return d


def _calibration(hw):
    class Reader(ort_q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": np.random.RandomState(100 + i).randn(1, 3, hw, hw).astype(np.float32)}
                            for i in range(8)])

        def get_next(self):
            return next(self.it, None)
    return Reader()


def quantized(d, form: str, hw: int = H):
    """form: qdq / qoperator (+ '_pc' per channel) or dynamic (QUInt8 weights) / dynamic_pc (QInt8, per channel)."""
    out = d / f"{form}.onnx"
    if not out.exists():
        pc = form.endswith("_pc")
        if form.startswith("dynamic"):
            ort_q.quantize_dynamic(str(d / "float.onnx"), str(out), per_channel=pc,
                                   weight_type=ort_q.QuantType.QInt8 if pc else ort_q.QuantType.QUInt8)
        else:
            fmt = ort_q.QuantFormat.QDQ if form.startswith("qdq") else ort_q.QuantFormat.QOperator
            act = ort_q.QuantType.QInt8 if form.startswith("qdq") else ort_q.QuantType.QUInt8
            ort_q.quantize_static(str(d / "float.onnx"), str(out), _calibration(hw), quant_format=fmt, per_channel=pc,
                                  activation_type=act, weight_type=ort_q.QuantType.QInt8)
    return out


X = np.random.RandomState(5).randn(2, 3, H, H).astype(np.float32)
FORMS = ["qdq", "qoperator_pc", "dynamic",
         pytest.param("qdq_pc", marks=pytest.mark.slow), pytest.param("qoperator", marks=pytest.mark.slow),
         pytest.param("dynamic_pc", marks=pytest.mark.slow)]


@pytest.mark.parametrize("form", FORMS)
def test_resnet18_gradient_matches_fake_quantize_oracle(resnet, form):
    path = quantized(resnet, form)
    assert {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv"} & {n.op_type for n in onnx.load(str(path)).graph.node}
    m = xcompile(str(path), "gradient")
    onnx.checker.check_model(m, full_check=True)
    float_grad = _explain(xcompile(str(resnet / "float.onnx"), "gradient"), X, np.array([-1, -1]))
    target = float_grad["explained_class"]  # the float model's classes: the Pearson below compares like with like
    got = _explain(m, X, target)
    # scores: the quantized file's own (its forward is kept node for node), with graph optimizations off ...
    own = _session(path).run(None, {"input": X})[0]
    np.testing.assert_array_equal(got[m.graph.output[0].name], own)
    # ... and at onnxruntime's default level, where the forward's DQ -> op -> Q groups fuse into integer kernels as in
    # the model's own session (the backward reads none of their tensors)
    lvl = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    np.testing.assert_array_equal(_session(m, lvl).run(None, {"input": X, "target": target})[0],
                                  _session(path, lvl).run(None, {"input": X})[0])
    scores, ref = quant_oracle.run(path, X, target)
    np.testing.assert_array_equal(scores, own)
    err = np.abs(got["relevance"] - ref).max() / np.abs(ref).max()
    assert err <= 1e-4, err
    # a score outside the calibrated range of the quantized logits is clipped: its straight-through gradient is 0
    live = [k for k in range(2) if np.abs(got["relevance"][k]).max() > 0]
    assert live
    pearson = [np.corrcoef(got["relevance"][k].ravel(), float_grad["relevance"][k].ravel())[0, 1] for k in live]
    print(f"{form}: gradient vs fake_quantize oracle {err:.1e} of max; Pearson vs float gradient {np.round(pearson, 3)}"
          f" (rows with a score inside the quantized range: {live})")
    assert min(pearson) > 0.5  # the quantized model's gradient is still mostly the float model's


@pytest.mark.parametrize("form", ["qoperator_pc", pytest.param("dynamic", marks=pytest.mark.slow),
                                  pytest.param("qdq", marks=pytest.mark.slow)])
def test_resnet18_methods(resnet, form):
    """input_x_gradient = x * the oracle's gradient; integrated_gradients, LRP epsilon-plus-flat and
    patternattribution run, finite; LRP's relevance sums to a sensible share of the score (dequantized weights,
    relevance passed through Q/DQ)."""
    path = quantized(resnet, form)
    target = np.array([3, 7])
    _, ref = quant_oracle.run(path, X, target)
    ixg = _explain(xcompile(str(path), "input_x_gradient"), X, target)["relevance"]
    assert np.abs(ixg - X * ref).max() <= 1e-4 * np.abs(X * ref).max()
    ig = _explain(xcompile(str(path), "integrated_gradients", steps=8), X, target)["relevance"]
    assert np.isfinite(ig).all() and np.abs(ig).max() > 0
    lrp = xcompile(str(path), "lrp", rules="epsilon-plus-flat")
    onnx.checker.check_model(lrp, full_check=True)
    out = _explain(lrp, X, target)
    score = out[lrp.graph.output[0].name][np.arange(2), target]
    ratio = out["relevance"].reshape(2, -1).sum(1) / score
    print(f"{form}: LRP epsilon-plus-flat sum(R) / score = {np.round(ratio, 3)}")
    assert np.isfinite(out["relevance"]).all() and np.all(np.abs(ratio) < 10)
    # patterns are fitted on the layers' float view too (its recomputed tensors go into the instrumented graph)
    from xcompile.patterns.fit import fit_file
    np.save(path.parent / "fit.npy", np.random.RandomState(1).randn(8, 3, H, H).astype(np.float32))
    fit_file(str(path), str(path.parent / "fit.npy"), out=str(path.parent / f"{form}_patterns.npz"), batch_size=8)
    pa = _explain(xcompile(str(path), "patternattribution", patterns=str(path.parent / f"{form}_patterns.npz")), X, target)
    assert np.isfinite(pa["relevance"]).all() and np.abs(pa["relevance"]).max() > 0


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """mobilenet_v2 (3x64x64, calibrated BatchNorm) and a tiny ViT (3x32x32, 2 layers; its zero-initialised head
    given seeded weights so the scores are not all 0), float ONNX."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from model_zoo.zoo import export_calibrated, export_onnx
    d = tmp_path_factory.mktemp("quantized_small")
    torch.manual_seed(0)
    mb = torchvision.models.mobilenet_v2(num_classes=10)
    gen = torch.Generator().manual_seed(0)
    export_calibrated(mb, gen, 64, d / "mobilenet_v2" / "float.onnx")
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                               mlp_dim=64, num_classes=10).eval()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.2, generator=gen)
    (d / "vit").mkdir()
    export_onnx(vit, torch.randn(1, 3, 32, 32, generator=gen), d / "vit" / "float.onnx")
    return d


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "vit"])
@pytest.mark.parametrize("form", ["qdq_pc", "qoperator_pc", "dynamic_pc"])
def test_mobilenet_and_vit(small_models, name, form):
    d, hw = small_models / name, 64 if name == "mobilenet_v2" else 32
    path = quantized(d, form, hw)
    x = np.random.RandomState(5).randn(2, 3, hw, hw).astype(np.float32)
    target = np.array([2, 5])
    m = xcompile(str(path), "gradient")
    got = _explain(m, x, target)
    np.testing.assert_array_equal(got[m.graph.output[0].name], _session(path).run(None, {"input": x})[0])
    _, ref = quant_oracle.run(path, x, target)
    err = np.abs(got["relevance"] - ref).max() / np.abs(ref).max()
    assert err <= 1e-4, err
    ixg = _explain(xcompile(str(path), "input_x_gradient"), x, target)["relevance"]
    assert np.abs(ixg - x * ref).max() <= 1e-4 * np.abs(x * ref).max()
    for method, kw in (("integrated_gradients", {"steps": 8}),
                       ("lrp", {"rules": "attnlrp" if name == "vit" else "epsilon-plus-flat"})):
        r = _explain(xcompile(str(path), method, **kw), x, target)["relevance"]
        assert np.isfinite(r).all() and np.abs(r).max() > 0, method
    print(f"{name} {form}: gradient vs fake_quantize oracle {err:.1e} of max")


# ----------------------------------------------------------------------------------- one-node tests against numpy
def _model(nodes, inits, n_in, shape_in, n_classes, opsets=(("", 17),)):
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *shape_in])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", n_classes])],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=8)


def _quant(x, s, z, lo, hi):
    return np.clip(np.round(x / s) + z, lo, hi), (np.round(x / s) + z >= lo) & (np.round(x / s) + z <= hi)


def _conv_np(x, w, pad=1):
    n, c, h, wd = x.shape
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, w.shape[0], h + 2 * pad - k + 1, wd + 2 * pad - k + 1), np.float64)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = np.einsum("nckl,ockl->no", xp[:, :, i:i + k, j:j + k], w)
    return out


def _jacobian(f, shape):
    """The matrix of a linear map f on arrays of `shape` (rows: outputs)."""
    eye = np.eye(int(np.prod(shape)))
    return np.stack([f(e.reshape(1, *shape)).ravel() for e in eye], 1)


def _grad(model, x, target):
    return _explain(xcompile(model, "gradient"), x, target)["relevance"]


def test_quantize_dequantize_straight_through_clips():
    """Q -> DQ passes the gradient where qmin <= round(x/s) + zp <= qmax and blocks it outside (uint8 and int8)."""
    rs = np.random.RandomState(0)
    w = rs.randn(6, 3).astype(np.float32)
    for zp in (np.uint8(100), np.int8(-20)):
        nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
                 helper.make_node("MatMul", ["d", "w"], ["scores"])]
        m = _model(nodes, {"s": np.float32(0.05), "z": zp, "w": w}, 1, [6], 3)
        x = (rs.randn(4, 6) * 6).astype(np.float32)
        lo, hi = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
        _, inside = _quant(x, 0.05, int(zp), lo, hi)
        assert 0 < inside.mean() < 1  # both sides exercised
        t = np.array([0, 1, 2, 0])
        np.testing.assert_allclose(_grad(m, x, t), inside * w[:, t].T, rtol=0, atol=1e-6)


def test_qlinearconv_and_qlinearmatmul_one_node():
    """QLinearConv (per-channel weight, int32 bias) and QLinearMatMul: gradient = input mask * W_deq^T (output mask *
    upstream), from numpy."""
    rs = np.random.RandomState(1)
    wq = rs.randint(-60, 60, (3, 2, 3, 3)).astype(np.int8)
    ws = np.array([0.01, 0.02, 0.015], np.float32)
    bq = rs.randint(-200, 200, 3).astype(np.int32)
    xs, ys = np.float32(0.05), np.float32(0.04)
    w2 = rs.randn(3 * 4 * 4, 5).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz", "bq"], ["yq"], pads=[1, 1, 1, 1]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
             helper.make_node("Flatten", ["y"], ["f"]),
             helper.make_node("MatMul", ["f", "w2"], ["scores"])]
    m = _model(nodes, {"xs": xs, "xz": np.uint8(128), "wq": wq, "ws": ws, "wz": np.zeros(3, np.int8), "ys": ys,
                       "yz": np.uint8(10), "bq": bq, "w2": w2}, 1, [2, 4, 4], 5)
    x = (rs.randn(3, 2, 4, 4) * 4).astype(np.float32)
    t = np.array([0, 3, 4])
    q, in_mask = _quant(x, xs, 128, 0, 255)
    wf = wq.astype(np.float32) * ws[:, None, None, None]
    yf = _conv_np((q - 128) * xs, wf) + (bq * xs * ws)[None, :, None, None]
    _, out_mask = _quant(yf, ys, 10, 0, 255)
    J = _jacobian(lambda e: _conv_np(e, wf), (2, 4, 4))
    ref = np.stack([in_mask[k].ravel() * (J.T @ (out_mask[k].ravel() * w2[:, t[k]])) for k in range(3)])
    np.testing.assert_allclose(_grad(m, x, t).reshape(3, -1), ref, rtol=0, atol=1e-5 * np.abs(ref).max())

    wq = rs.randint(-100, 100, (6, 4)).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
             helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["scores"])]
    m = _model(nodes, {"xs": xs, "xz": np.int8(0), "wq": wq, "ws": np.float32(0.03), "wz": np.int8(0), "ys": ys,
                       "yz": np.int8(-5)}, 1, [6], 4)
    x = (rs.randn(5, 6) * 3).astype(np.float32)
    t = np.array([0, 1, 2, 3, 1])
    q, in_mask = _quant(x, xs, 0, -128, 127)
    wf = wq * np.float32(0.03)
    _, out_mask = _quant(q * xs @ wf, ys, -5, -128, 127)
    ref = in_mask * (out_mask[np.arange(5), t][:, None] * wf[:, t].T)
    np.testing.assert_allclose(_grad(m, x, t), ref, rtol=0, atol=1e-6)


def test_convinteger_and_matmulinteger_one_node():
    """The dynamic form DynamicQuantizeLinear -> ConvInteger / MatMulInteger -> Cast -> Mul(x_scale * w_scale): the
    gradient is the float layer's with the dequantized weight (DynamicQuantizeLinear passes it unchanged)."""
    rs = np.random.RandomState(2)
    wq = rs.randint(0, 255, (3, 2, 3, 3)).astype(np.uint8)
    wz, ws = np.uint8(120), np.float32(0.01)
    w2 = rs.randn(3 * 4 * 4, 4).astype(np.float32)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["input"], ["xq", "xs", "xz"]),
             helper.make_node("Mul", ["xs", "ws"], ["scale"]),
             helper.make_node("ConvInteger", ["xq", "wq", "xz", "wz"], ["yi"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["yi"], ["yc"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["yc", "scale"], ["y"]),
             helper.make_node("Flatten", ["y"], ["f"]),
             helper.make_node("MatMul", ["f", "w2"], ["scores"])]
    m = _model(nodes, {"wq": wq, "wz": wz, "ws": ws, "w2": w2}, 1, [2, 4, 4], 4)
    x = rs.randn(2, 2, 4, 4).astype(np.float32)
    t = np.array([1, 2])
    wf = (wq.astype(np.float32) - 120) * ws
    J = _jacobian(lambda e: _conv_np(e, wf), (2, 4, 4))
    ref = np.stack([J.T @ w2[:, k] for k in t]).reshape(x.shape)
    np.testing.assert_allclose(_grad(m, x, t), ref, rtol=0, atol=1e-5 * np.abs(ref).max())

    wq = rs.randint(-100, 100, (6, 3)).astype(np.int8)
    ws = np.array([0.02, 0.01, 0.03], np.float32)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["input"], ["xq", "xs", "xz"]),
             helper.make_node("Mul", ["xs", "ws"], ["scale"]),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["yi"]),
             helper.make_node("Cast", ["yi"], ["yc"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["yc", "scale"], ["scores"])]
    m = _model(nodes, {"wq": wq, "wz": np.zeros(3, np.int8), "ws": ws}, 1, [6], 3)
    x = rs.randn(4, 6).astype(np.float32)
    t = np.array([0, 1, 2, 1])
    np.testing.assert_allclose(_grad(m, x, t), (wq * ws)[:, t].T, rtol=0, atol=1e-6)


def test_matmulnbits_and_bfloat16_refused_in_one_line():
    nodes = [helper.make_node("MatMulNBits", ["input", "w", "s"], ["scores"], domain="com.microsoft", K=4, N=2, bits=4,
                              block_size=16)]
    m = _model(nodes, {"w": np.zeros((2, 1, 8), np.uint8), "s": np.ones(2, np.float32)}, 1, [4], 2,
               opsets=(("", 17), ("com.microsoft", 1)))
    with pytest.raises(XCompileError, match=r"MatMulNBits.*not supported") as e:
        xcompile(m, "gradient")
    assert "\n" not in str(e.value)
    nodes = [helper.make_node("Cast", ["input"], ["b"], to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["b"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["c", "w"], ["scores"])]
    m = _model(nodes, {"w": np.ones((4, 2), np.float32)}, 1, [4], 2)
    with pytest.raises(XCompileError, match=r"bfloat16 models are not supported") as e:
        xcompile(m, "gradient")
    assert "\n" not in str(e.value)


def test_weight_fake_quantized_in_graph_is_a_constant_for_lrp():
    """A float weight quantized in the graph (Q(W) -> DQ, as QAT exports write it): LRP's rules see the constant
    DQ(Q(W)); LRP-epsilon of x -> Q/DQ -> Gemm equals numpy's a_i W_it R_t / (z_t + eps sign z_t)."""
    rs = np.random.RandomState(3)
    w, b = rs.randn(3, 6).astype(np.float32), rs.randn(3).astype(np.float32) * 0.1
    ws = (np.abs(w).max(1) / 127).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["a"]),
             helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Gemm", ["a", "wd", "b"], ["scores"], transB=1)]
    m = _model(nodes, {"s": np.float32(0.02), "z": np.int8(0), "w": w, "ws": ws, "wz": np.zeros(3, np.int8), "b": b},
               1, [6], 3)
    x = rs.randn(4, 6).astype(np.float32)
    t = np.array([0, 1, 2, 1])
    a = (np.clip(np.round(x / np.float32(0.02)), -128, 127) * np.float32(0.02)).astype(np.float32)
    wd = (np.clip(np.round(w / ws[:, None]), -128, 127) * ws[:, None]).astype(np.float32)
    z = a @ wd.T + b
    zt = z[np.arange(4), t]
    ref = a * wd[t] * (zt / (zt + 1e-6 * np.where(zt < 0, -1, 1)))[:, None]
    got = _explain(xcompile(m, "lrp", rules="epsilon"), x, t)["relevance"]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_qoperator_activation_pool_concat_ops(tmp_path):
    """QLinearLeakyRelu, QLinearSigmoid, QLinearConcat, QLinearAveragePool, QLinearGlobalAveragePool and QLinearAdd
    (com.microsoft) in one small graph: gradient equal to the fake_quantize oracle."""
    rs = np.random.RandomState(4)
    u8 = np.uint8
    c = {"s0": np.float32(0.03), "z0": u8(128), "s1": np.float32(0.02), "z1": u8(100), "s2": np.float32(1 / 255),
         "z2": u8(0), "s3": np.float32(0.02), "z3": u8(90), "s4": np.float32(0.015), "z4": u8(80),
         "s5": np.float32(0.01), "z5": u8(60), "s6": np.float32(0.012), "z6": u8(40), "w": rs.randn(2, 4).astype(np.float32)}
    ms = "com.microsoft"
    nodes = [helper.make_node("QuantizeLinear", ["input", "s0", "z0"], ["q0"]),
             helper.make_node("QLinearLeakyRelu", ["q0", "s0", "z0", "s1", "z1"], ["q1"], domain=ms, alpha=0.1),
             helper.make_node("QLinearSigmoid", ["q0", "s0", "z0", "s2", "z2"], ["q2"], domain=ms),
             helper.make_node("QLinearConcat", ["s3", "z3", "q1", "s1", "z1", "q2", "s2", "z2"], ["q3"], domain=ms, axis=1),
             helper.make_node("QLinearAveragePool", ["q3", "s3", "z3", "s4", "z4"], ["q4"], domain=ms,
                              kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("QLinearAdd", ["q4", "s4", "z4", "q4", "s4", "z4", "s5", "z5"], ["q5"], domain=ms),
             helper.make_node("QLinearGlobalAveragePool", ["q5", "s5", "z5", "s6", "z6"], ["q6"], domain=ms),
             helper.make_node("DequantizeLinear", ["q6", "s6", "z6"], ["d"]),
             helper.make_node("Flatten", ["d"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["scores"])]
    m = _model(nodes, c, 1, [1, 5, 5], 4, opsets=(("", 17), (ms, 1)))
    onnx.save(m, tmp_path / "q.onnx")
    x = (rs.randn(3, 1, 5, 5) * 2).astype(np.float32)
    t = np.array([0, 1, 3])
    expl = xcompile(str(tmp_path / "q.onnx"), "gradient")
    onnx.checker.check_model(expl, full_check=True)
    got = _explain(expl, x, t)
    scores, ref = quant_oracle.run(tmp_path / "q.onnx", x, t)
    np.testing.assert_array_equal(got["scores"], scores)
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(got["relevance"], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
