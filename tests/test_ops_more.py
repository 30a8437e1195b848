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
