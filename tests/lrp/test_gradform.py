"""LRP in gradient form (xcompile/lrp/gradform.py): which rule sets take it, and that it computes the relevance form's
numbers. The relevance itself is checked against LXT by tests/methods/test_tokens.py and
tests/lrp/test_lrp_transformers.py (which now run in gradient form); here the two forms are compared on the same model
and the choice of form is pinned."""
from __future__ import annotations

import numpy as np
import pytest

import xcompile
from xcompile.errors import XCompileError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import test_tokens as TT  # noqa: E402


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    m, names = TT.build("bert")
    path = tmp_path_factory.mktemp("gradform") / "bert.onnx"
    TT.export(TT.Wrap(m, names), names, path, "legacy")
    return path, {k: v.numpy() for k, v in zip(names, TT.example(names))}


def _explain(path, feeds, **opts):
    model = xcompile.compile(str(path), "lrp", input_shape=TT.L, **opts)
    return model, xcompile.Explainer(model).explain(feeds, np.array([1, 2]))


def test_attnlrp_gradient_form_matches_relevance_form(bert):
    path, feeds = bert
    fast, a = _explain(path, feeds, rules="attnlrp")
    slow, r = _explain(path, feeds, rules="attnlrp", form="relevance")
    assert len(fast.graph.node) < 0.6 * len(slow.graph.node)  # no Less / Where / Add / Div / Mul per activation
    assert not any(n.op_type == "Where" and "eps_signed" in n.name for n in fast.graph.node)
    for got, ref in ((a.relevance, r.relevance), (a.extras["embedding_relevance"], r.extras["embedding_relevance"]),
                     (a.extras["conservation"], r.extras["conservation"])):
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_rule_sets_without_a_gradient_form_keep_the_relevance_form(bert):
    path, feeds = bert
    m, _ = _explain(path, feeds, rules="epsilon")  # epsilon 1e-6 on every layer: the stabilizer is kept
    assert any("stabilized" in n.name for n in m.graph.node)
    with pytest.raises(XCompileError, match="form"):
        xcompile.compile(str(path), "lrp", rules="attnlrp", input_shape=TT.L, form="fast")


@pytest.mark.parametrize("rules", ["attnlrp", "cp-lrp"])
def test_vision_transformer_on_an_image_input_takes_the_gradient_form(tmp_path, rules):
    """An image input (a graph input, not a probed tensor) of float32 qualifies too; the small torchvision ViT of
    tests/lrp/test_lrp_transformers.py (legacy export: GELU as x * 0.5 * (1 + erf(x / sqrt 2)))."""
    import test_lrp_transformers as VT

    from model_zoo.zoo import export_onnx
    torch.set_num_threads(2)
    path = tmp_path / "vit.onnx"
    export_onnx(VT.small_vit(), torch.tensor(VT.X), path, "legacy")
    fast = xcompile.compile(str(path), "lrp", rules=rules)
    slow = xcompile.compile(str(path), "lrp", rules=rules, form="relevance")
    assert len(fast.graph.node) < 0.8 * len(slow.graph.node)
    assert any("input_times_g" in n.name for n in fast.graph.node)
    a = xcompile.Explainer(fast).explain(VT.X, VT.TARGET)
    r = xcompile.Explainer(slow).explain(VT.X, VT.TARGET)
    for got, ref in ((a.relevance, r.relevance), (a.extras["conservation"], r.extras["conservation"])):
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
