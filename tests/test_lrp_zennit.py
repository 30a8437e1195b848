"""vgg16 and resnet50 (random weights, seed 0, 32x32 input) vs Zennit composites for every built-in rule set:
max|ours - zennit| <= 1e-3 max|zennit| and Pearson >= 0.9999 (ours float32; Zennit float32, except as below)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lrp_helpers as H

X = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
# ResNet-50 with LRP-0 / epsilon on every conv: at this input one ReLU (sample 1, layer3.1's residual sum, channel
# 792, position (1, 1)) sits at a near-tie, 1.508 + (-1.508) = +1.0e-5 in float64, inside the float32 rounding of
# the 30 layers before it; LRP-0 / epsilon relevance is discontinuous there, so float32 Zennit (its BN merge puts the
# sum at -5.6e-5: unit off) and our float32 graph (+1.2e-5: on) differ by 2.5e-2. For these two cases the reference
# is Zennit in float64 on a BN-free copy carrying OUR folded float32 weights (the same function, evaluated exactly):
# docs/lrp_parity.md, Known deviations.
FLOAT64_REFERENCE = {("resnet50", "zero"), ("resnet50", "epsilon")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("lrp_zennit")
    out = {}
    for name, model in (("vgg16", H.vgg16_small()), ("resnet50", H.torch_model("resnet50", 32))):
        out[name] = (model, H.export(model, torch.tensor(X), d / f"{name}.onnx", "legacy"))
    return out


@pytest.mark.parametrize("ruleset", H.RULESETS)
@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_zennit_parity(models, name, ruleset):
    model, path = models[name]
    scores, ours = H.our_relevance(path, X, ruleset)
    if (name, ruleset) in FLOAT64_REFERENCE:
        _, ref = H.zennit_relevance(H.folded_clone(model, path), X, ruleset, name, dtype=torch.float64)
    else:
        _, ref = H.zennit_relevance(model, X, ruleset, name)
    err, r = H.compare(ours, ref)
    assert err <= 1e-3, (err, r)
    assert r >= 0.9999, (err, r)
