"""`--rules auto` (rules/auto.toml, xcompile/lrp/blocks.py): per block type the rule the literature gives.

* pure CNNs: byte-identical to epsilon-plus-flat (itself checked against Zennit's EpsilonPlusFlat in
  test_lrp_zennit.py); with --set low/high the first layer is z^B;
* the small torchvision ViT of test_lrp_transformers.py: byte-identical to attnlrp (checked there against LXT);
* the blow-up mechanisms, each on a minimal hand-made graph, with a numpy reference;
* the `conservation` output (sum of relevance / explained score) vs numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import xcompile
from model_zoo.zoo import export_onnx

RNG = np.random.default_rng(0)


class ResNetish(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        h = torch.nn.functional.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
        h = torch.relu(h + self.c3(torch.relu(self.c2(h))))
        return self.fc(h.mean((2, 3)))


class VGGish(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                     torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.h = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 16), torch.nn.ReLU(),
                                     torch.nn.Linear(16, 5))

    def forward(self, x):
        return self.h(self.f(x))


def _export(model, x, path, exporter="legacy"):
    torch.manual_seed(0)
    export_onnx(model.eval(), torch.tensor(x), path, exporter)
    return path


def _explain(model, x, target=None, **kw):
    return xcompile.Explainer(xcompile.compile(model, "lrp", **kw)).explain(x, target)


@pytest.fixture(scope="module")
def cnns(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cnn")
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    return x, {n: _export(m(), x, d / f"{n}.onnx") for n, m in (("resnetish", ResNetish), ("vggish", VGGish))}


@pytest.mark.parametrize("name", ["resnetish", "vggish"])
def test_auto_is_epsilon_plus_flat_on_pure_cnns(cnns, name):
    x, paths = cnns
    auto = _explain(paths[name], x)  # auto is the default rule set
    epf = _explain(paths[name], x, rules="epsilon-plus-flat")
    assert np.array_equal(auto.relevance, epf.relevance)
    assert np.abs(auto.relevance).max() > 0


def test_auto_uses_zbox_first_when_bounds_are_given(cnns, tmp_path):
    x, paths = cnns
    rf = tmp_path / "zb.toml"
    rf.write_text('[[rule]]\nposition = "first"\nrule = "zbox"\n[[rule]]\nkind = "conv"\nrule = "zplus"\n'
                  '[[rule]]\nkind = "dense"\nrule = "epsilon"\n')
    a = _explain(paths["vggish"], x, rules="auto", low=-3.0, high=3.0)
    b = _explain(paths["vggish"], x, rules=str(rf), low=-3.0, high=3.0)
    assert np.array_equal(a.relevance, b.relevance)
    assert not np.array_equal(a.relevance, _explain(paths["vggish"], x).relevance)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_auto_is_attnlrp_on_a_vit(tmp_path, exporter):
    from test_lrp_transformers import TARGET, X, small_vit
    torch.set_num_threads(2)
    p = _export(small_vit(), X, tmp_path / "vit.onnx", exporter)
    auto = _explain(p, X, TARGET, rules="auto")
    ref = _explain(p, X, TARGET, rules="attnlrp")
    assert np.array_equal(auto.relevance, ref.relevance)
    np.testing.assert_allclose(auto.extras["conservation"], ref.extras["conservation"])


# ----------------------------------------------------------------------------------------- conservation output
def test_conservation_output_is_sum_of_relevance_over_score(cnns):
    x, paths = cnns
    ex = xcompile.Explainer(xcompile.compile(paths["resnetish"], "lrp"))
    assert [o.name for o in ex.session.get_outputs()] == ["scores", "relevance", "explained_class", "conservation"]
    res = ex.explain(x, np.array([1, -1]))
    cls = res.extras["explained_class"]
    ref = res.relevance.astype(np.float64).reshape(2, -1).sum(1) / res.scores[np.arange(2), cls]
    np.testing.assert_allclose(res.extras["conservation"], ref, rtol=1e-5)
    grad = xcompile.Explainer(xcompile.compile(paths["resnetish"], "gradient"))
    assert "conservation" not in [o.name for o in grad.session.get_outputs()]


def test_conservation_is_nan_where_the_score_is_zero():
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["scores"])], "lin",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
                          initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.stack([RNG.standard_normal(4), np.zeros(4)]).astype(np.float32)
    res = _explain(m, x, np.array([0, 1]), rules="epsilon")
    c = res.extras["conservation"]
    assert np.isnan(c[1]) and abs(c[0] - 1.0) < 1e-5
