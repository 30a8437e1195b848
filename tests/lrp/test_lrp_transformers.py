"""LRP for transformers: the `attnlrp` and `cp-lrp` rule sets vs AttnLRP / CP-LRP as LXT computes them
(tests/attnlrp_reference.py: Gradient x Input in float64 autograd with LXT's modified backward), on a small
torchvision VisionTransformer (random weights) exported by both PyTorch exporters.

The legacy export spells GELU as x * 0.5 * (1 + erf(x / sqrt 2)) and the dynamo export keeps a Gelu node;
both must get the identity rule. Tolerance: max|ours - ref| <= 2e-5 max|ref| (float32 explainer vs float64
reference; measured 1.6e-6 (attnlrp) and 2.0e-6 (cp-lrp), both exporters)."""
from __future__ import annotations

import attnlrp_reference as REF
import numpy as np
import pytest
import torch

import xcompile
from model_zoo.zoo import export_onnx

TOL = 2e-5


def small_vit():
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=48,
                                             mlp_dim=96, num_classes=10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialized head / class token would make every score 0; LayerNorms get real affines
        for name, p in m.named_parameters():
            if not p.any() or "ln" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() < 2 else 1 / np.sqrt(p.shape[-1]))
                        + (1.0 if name.endswith("ln.weight") or name.endswith(("ln_1.weight", "ln_2.weight")) else 0.0))
    return m.eval()


X = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
TARGET = np.array([2, 7, -1])


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("vit")
    model = small_vit()
    paths = {e: d / f"vit_{e}.onnx" for e in ("legacy", "dynamo")}
    for e, p in paths.items():
        export_onnx(model, torch.tensor(X), p, e)
    return model, paths


def _targets(model):
    with torch.no_grad():
        pred = model(torch.tensor(X)).argmax(1).numpy()
    return np.where(TARGET < 0, pred, TARGET)


def test_reference_forward_is_the_model(vit):
    model, _ = vit
    scores, _ = REF.relevance(model, X, _targets(model), "attnlrp")
    with torch.no_grad():
        ref = model.double()(torch.tensor(X, dtype=torch.float64)).numpy()
    model.float()
    np.testing.assert_allclose(scores, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("ruleset, mode", [("attnlrp", "attnlrp"), ("cp-lrp", "cp-lrp")])
def test_matches_lxt_reference(vit, exporter, ruleset, mode):
    model, paths = vit
    t = _targets(model)
    res = xcompile.Explainer(xcompile.compile(paths[exporter], "lrp", rules=ruleset)).explain(X, TARGET)
    scores, ref = REF.relevance(model, X, t, mode)
    np.testing.assert_allclose(res.scores, scores, rtol=1e-4, atol=1e-4)
    err = float(np.abs(res.relevance - ref).max() / np.abs(ref).max())
    assert err <= TOL, err
    # not a degenerate comparison: relevance is spread over the image and the variants differ
    assert np.count_nonzero(np.abs(ref) > 1e-3 * np.abs(ref).max()) > 0.5 * ref.size


def test_attention_rules_differ_and_the_default_keeps_working(vit):
    model, paths = vit
    t = _targets(model)
    _, attn = REF.relevance(model, X, t, "attnlrp")
    _, cp = REF.relevance(model, X, t, "cp-lrp")
    assert np.abs(attn - cp).max() > 1e-2 * np.abs(cp).max()   # queries/keys matter under AttnLRP
    res = xcompile.Explainer(xcompile.compile(paths["dynamo"], "lrp", rules="epsilon")).explain(X, TARGET)
    assert np.isfinite(res.relevance).all()


def test_gelu_written_as_a_product_gets_the_identity_rule(vit):
    """`xcompile inspect`-level check: in the legacy export the Mul x * (1 + erf(...)) is an activation, so all of
    its relevance goes to x (product 1/0), also under the uniform (split) gate option."""
    from xcompile.commands.inspect_model import inspect_model

    _, paths = vit
    lines = []
    inspect_model(paths["legacy"], "lrp", "attnlrp", {}, lines.append)
    rows = [ln.split() for ln in lines[1:]]
    muls = [" ".join(r[2:]) for r in rows if r[1] == "Mul"]
    assert sum(m in ("product 1/0", "product 0/1") for m in muls) == 3, muls        # one GELU per block
    assert sum(m == "product 0.5/0.5" for m in muls) == 0, muls                     # q k^T etc. are MatMuls
    mm = [" ".join(r[2:]) for r in rows if r[1] == "MatMul" and r[2] == "product"]
    assert mm.count("product 0.5/0.5") == 6, mm                                     # q k^T and attn v, 3 blocks
    assert {" ".join(r[2:]) for r in rows if r[1] == "LayerNormalization"} == {"std-constant"}
