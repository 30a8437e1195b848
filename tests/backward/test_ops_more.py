"""The operators of issue 15 item 4 as PyTorch's exporters write them (not hand-built one-node graphs): adaptive
average pooling that up-samples (the dynamo exporter writes GatherND), Conv with padding_mode="reflect" (Pad
reflect), nn.Fold (Col2Im). Gradient vs autograd, and LRP runs on them."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from oracle import rel_err

import xcompile


class AdaptiveReflect(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
        self.pool = nn.AdaptiveAvgPool2d(7)  # 4x4 -> 7x7: GatherND under the dynamo exporter
        self.fc = nn.Linear(4 * 49, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class FoldUnfold(nn.Module):
    def __init__(self):
        super().__init__()
        self.fold = nn.Fold((6, 6), 3, padding=1, stride=2)
        self.fc = nn.Linear(3 * 36, 5)

    def forward(self, x):
        u = torch.nn.functional.unfold(x, 3, padding=1, stride=2)
        return self.fc(self.fold(torch.tanh(u)).flatten(1))


@pytest.mark.parametrize("name,dynamo,ops", [("adaptive_reflect", True, {"GatherND", "Pad"}),
                                             ("fold", True, {"Col2Im"}), ("fold", False, {"Col2Im"})])
def test_exported_models_match_autograd(name, dynamo, ops, tmp_path):
    torch.manual_seed(0)
    m = (AdaptiveReflect() if name == "adaptive_reflect" else FoldUnfold()).eval()
    x = torch.randn(1, 3, 4, 4) if name == "adaptive_reflect" else torch.randn(1, 3, 6, 6)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(m, (x,), str(path), dynamo=True, opset_version=18, input_names=["x"],
                              dynamic_shapes=({0: torch.export.Dim("N", min=1, max=64)},))
        else:
            torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=18, input_names=["x"],
                              dynamic_axes={"x": {0: "N"}})
    model = onnx.load(str(path))
    assert ops <= {n.op_type for n in model.graph.node}
    xb = torch.randn(3, *x.shape[1:])
    target = np.array([0, 1, 4])
    out = xcompile.Explainer(xcompile.compile(model, "gradient")).explain(xb.numpy(), target)
    xt = xb.clone().requires_grad_(True)
    scores = m(xt)
    g, = torch.autograd.grad(scores[torch.arange(3), torch.tensor(target)].sum(), xt)
    assert rel_err(out.scores, scores.detach().numpy()) < 1e-5
    assert rel_err(out.relevance, g.numpy()) < 1e-4
    lrp = xcompile.Explainer(xcompile.compile(model, "lrp", rules="epsilon")).explain(xb.numpy(), target)
    assert np.all(np.isfinite(lrp.relevance))


# ------------------------------------------------------------------ float16 models (issue 15 item 2, first half)
FP16_METHODS = [("gradient", {}), ("input_x_gradient", {}), ("guided_backprop", {}), ("integrated_gradients", {"steps": 4}),
                ("smoothgrad", {"samples": 2}), ("gradcam", {}), ("deeplift", {}), ("lrp", {"rules": "epsilon-plus-flat"})]


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_float16_model_explains_like_float32(keep_io_types):
    """A model converted by onnxconverter_common.float16 (keep_io_types both ways) compiles for every method; the
    forward stays float16 (its scores the float16 model's own to float16 rounding), the backward reads it through Casts and runs in
    float32, relevance comes back float32, close to the float32 model's explainer (float16 forward activations and
    switches: measured Pearson >= 0.9999, max |diff| / max <= 4.3e-2 on the digits CNN)."""
    float16 = pytest.importorskip("onnxconverter_common.float16")
    from pathlib import Path

    import onnxruntime as ort
    root = Path(__file__).resolve().parents[2]
    m32 = onnx.load(str(root / "xcompile" / "data" / "digits_cnn.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m16 = float16.convert_float_to_float16(onnx.load(str(root / "xcompile" / "data" / "digits_cnn.onnx")),
                                               keep_io_types=keep_io_types)
    x = np.load(root / "xcompile" / "data" / "digits_heldout.npz")["x"][:32].astype(np.float32)
    x16 = x if keep_io_types else x.astype(np.float16)
    own = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x16})[0]

    def run(model, xi):
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = s.run(None, {s.get_inputs()[0].name: xi, "target": np.full(len(xi), 3, np.int64)})
        return dict(zip([o.name for o in s.get_outputs()], outs))

    from test_cuda_ops import cuda_offenders
    for method, params in FP16_METHODS:
        ref = run(xcompile.compile(m32, method, **params), x)["relevance"]
        ex = xcompile.compile(m16, method, **params)
        out = run(ex, x16)
        # the Python API feeds the model's own input dtype (float16 when keep_io_types=False)
        np.testing.assert_array_equal(xcompile.Explainer(ex).explain(x, np.full(len(x), 3)).relevance, out["relevance"])
        emitted = [n for n in ex.graph.node if n.name.startswith("xc/")]
        del ex.graph.node[:]
        ex.graph.node.extend(emitted)
        assert not cuda_offenders(ex, f"digits_float16/{method}")
        r = out["relevance"]
        assert r.dtype == np.float32 and np.all(np.isfinite(r)), method
        # the float16 forward (BatchNorm folded into the Conv in float64, rounded to float16: within float16 rounding)
        np.testing.assert_allclose(out[m16.graph.output[0].name], own, rtol=0, atol=2e-3 * np.abs(own).max())
        assert np.corrcoef(r.ravel(), ref.ravel())[0, 1] > 0.9995, method
        assert np.abs(r - ref).max() <= 0.1 * np.abs(ref).max(), method
