"""`--rules auto` (rules/auto.toml, xcompile/lrp/blocks.py): per block type the rule the literature gives.

* pure CNNs: byte-identical to epsilon-plus-flat (itself checked against Zennit's EpsilonPlusFlat in
  test_lrp_zennit.py); with --set low/high the first layer is z^B;
* the small torchvision ViT of test_lrp_transformers.py: byte-identical to attnlrp (checked there against LXT);
* the blow-up mechanisms, each on a minimal hand-made graph, with a numpy reference;
* the `conservation` output (sum of relevance / explained score) vs numpy."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from oracle import layernorm_lrp_reference
from oracle import lrp_seed as _seed
from oracle import lrp_stab as _stab

import xcompile
from model_zoo.timm_zoo import redraw_zero_parameters
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


# ------------------------------------------------------------------- blow-up mechanisms, each on a minimal graph
def _graph(nodes, x_shape, out_shape, inits, opset=17):
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", *out_shape])],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_split_off_bias_absorbs_its_share():
    """MatMul + Add(bias) (how 3-D linear layers are exported): the bias Add used to pass all relevance, so the
    epsilon rule divided it by the bias-free z = x W, which cancels where x W ~ -b (1e35 / NaN on DeiT under ε+♭).
    Now it is the epsilon rule of the layer with its bias: R_x = x * W^T (R / (x W + b)), as the same layer as a
    Gemm with a bias."""
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    x[0] = 0.0
    x[0, 0], x[0, 1] = 1.0, -w[0, 1] / w[1, 1] * (1 + 1e-2)   # row 0, class 1: x W cancels to ~1e-2, x W + b not
    t = np.array([1, 0, 2])
    split = _graph([helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["scores"])],
                   [4], [3], [("w", w), ("b", b)])
    gemm = _graph([helper.make_node("Gemm", ["x", "w", "b"], ["scores"])], [4], [3], [("w", w), ("b", b)])
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    zn = x64 @ w64
    z = zn + b
    Rz = zn * _seed(z, t) / _stab(z, 1e-6)           # the bias Add: proportional (Zennit Norm)
    ref = x64 * ((Rz / _stab(zn, 1e-6)) @ w64.T)     # the MatMul: epsilon
    for rules in ("epsilon",):
        r = _explain(split, x, t, rules=rules).relevance
        np.testing.assert_allclose(r, ref, rtol=1e-3, atol=1e-5)  # float32 x W cancels to ~1e-3
        assert np.abs(r[0]).max() < 10, r[0]   # passing R on to x W gave |R_x| ~ |b| / 1e-3
        # = the layer's own epsilon rule with its bias (stabilizer placed once: 1e-6 / 1e-3 apart)
        np.testing.assert_allclose(r, _explain(gemm, x, t, rules=rules).relevance, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("rules", ["auto", "epsilon", "epsilon-plus-flat"])
def test_instance_norm_holds_its_std_constant(rules):
    """GroupNorm(1) as PyTorch exports it (InstanceNormalization): passed unchanged, its relevance no longer follows
    the values it explains, and the next ratio rule divides by a near-zero input (MobileViTv2: -1.9e5 under auto).
    Now AttnLRP's LayerNorm rule over the normalised axes: R_x = x * (g - mean(g)) / std, g = scale R / y."""
    C, L = 2, 5
    scale = RNG.uniform(0.5, 1.5, C).astype(np.float32)
    bias = (RNG.standard_normal(C) * 0.3).astype(np.float32)
    m = _graph([helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5),
                helper.make_node("Flatten", ["y"], ["scores"], axis=1)], [C, L], [C * L], [("s", scale), ("b", bias)])
    x = RNG.standard_normal((3, C, L)).astype(np.float32)
    t = np.array([0, 4, 7])
    x64 = x.astype(np.float64)
    xc = x64 - x64.mean(2, keepdims=True)
    std = np.sqrt((xc ** 2).mean(2, keepdims=True) + 1e-5)
    y = xc / std * scale[:, None] + bias[:, None]
    eps = 1e-9 if rules == "auto" else 1e-6
    g = scale[:, None] * _seed(y.reshape(3, -1), t).reshape(y.shape) / _stab(y, eps)
    ref = x64 * (g - g.mean(2, keepdims=True)) / std
    np.testing.assert_allclose(_explain(m, x, t, rules=rules).relevance, ref, rtol=1e-4, atol=1e-6)


def _written_out_layernorm(square="Pow"):
    """LayerNorm as ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div / Mul / Add (older exporters)."""
    sq = (helper.make_node("Pow", ["xc", "two"], ["sq"]) if square == "Pow" else
          helper.make_node("Mul", ["xc", "xc"], ["sq"]))
    return [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["xc"]), sq,
            helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]), helper.make_node("Add", ["var", "eps"], ["ve"]),
            helper.make_node("Sqrt", ["ve"], ["std"]), helper.make_node("Div", ["xc", "std"], ["xh"]),
            helper.make_node("Mul", ["xh", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["scores"])]


@pytest.mark.parametrize("square", ["Pow", "Mul"])
@pytest.mark.parametrize("rules", ["auto", "attnlrp"])
def test_written_out_layernorm_is_attnlrp_layernorm(rules, square):
    """A written-out LayerNorm: the Div by the std is no product of two activations (split half into the std path
    under attnlrp's uniform rule; the std path's ratios divide by cancelling sums): the std is held constant, the
    centering x - mean(x) is proportional, which together is AttnLRP's LayerNorm rule (numpy, from the formula)."""
    D = 6
    w = RNG.uniform(0.5, 1.5, D).astype(np.float32)
    b = (RNG.standard_normal(D) * 0.3).astype(np.float32)
    m = _graph(_written_out_layernorm(square), [D], [D],
               [("w", w), ("b", b), ("two", np.float32(2.0)), ("eps", np.float32(1e-5))])
    x = RNG.standard_normal((3, D)).astype(np.float32)
    t = np.array([0, 2, 5])
    ref = layernorm_lrp_reference(x, w, b, t)
    np.testing.assert_allclose(_explain(m, x, t, rules=rules).relevance, ref, rtol=1e-4, atol=1e-6)


def test_sigmoid_gate_keeps_the_signal_under_auto(tmp_path):
    """Arras et al. 2017 (gated cells): in a model that is no pure CNN (a LayerNorm here), Mul(signal,
    sigmoid(gate)) gives all relevance to the signal under auto, while act x act gating (SwiGLU-like u * v) splits."""
    D = 4
    nodes = [helper.make_node("LayerNormalization", ["x", "ones"], ["h"], axis=-1),
             helper.make_node("Split", ["h", "sp"], ["u", "v"], axis=1),
             helper.make_node("Sigmoid", ["v"], ["gv"]),
             helper.make_node("Mul", ["u", "gv"], ["gated"]),
             helper.make_node("Mul", ["u", "v"], ["prod"]),
             helper.make_node("Sub", ["one", "gv"], ["omz"]), helper.make_node("Tanh", ["u"], ["tu"]),
             helper.make_node("Mul", ["omz", "tu"], ["gru"]),     # GRU's (1 - z) * n: 1 - sigmoid is a gate too
             helper.make_node("Concat", ["gated", "prod", "gru"], ["scores"], axis=1)]
    m = _graph(nodes, [2 * D], [3 * D], [("ones", np.ones(2 * D, np.float32)), ("sp", np.array([D, D], np.int64)),
                                         ("one", np.float32(1.0))])
    import onnx as _onnx

    from xcompile.commands.inspect_model import inspect_model
    lines = []
    p = "/tmp/_auto_gate.onnx"
    _onnx.save(m, p)
    for rules in ("auto", "attnlrp"):   # attnlrp: split, half passed the sigmoid into the squeeze path (MaxViT 700)
        lines.clear()
        inspect_model(p, "lrp", rules, {}, lines.append)
        rows = {ln.split()[0]: " ".join(ln.split()[2:]) for ln in lines[1:] if ln.startswith("  ")}
        assert rows["gated"].startswith("signal 1/0") and rows["gru"].startswith("signal 0/1"), rows
        assert rows["prod"].startswith("product 0.5/0.5"), rows
        if rules == "auto":   # inspect says why: the block type
            assert "[gate:" in rows["gated"] and "[gating:" in rows["prod"], rows


# ------------------------------------------------------------------------------------------------- warnings
def _attention_graph():
    """x [N, T, D] -> softmax(x x^T) x -> mean over tokens and features -> Gemm: softmax attention, no norm."""
    D, T = 4, 3
    w = RNG.standard_normal((D, 2)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["a"]), helper.make_node("Softmax", ["a"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "x"], ["o"]),
             helper.make_node("ReduceMean", ["o"], ["m"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["m", "w"], ["scores"])]
    return _graph(nodes, [T, D], [2], [("w", w)])


def test_compile_warns_when_cnn_rules_meet_attention(capsys):
    m = _attention_graph()
    xcompile.compile(m, "lrp", rules="epsilon-plus-flat", where="attn.onnx")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "designed for CNNs" in ln]
    assert len(lines) == 1 and "attention" in lines[0] and "--rules auto" in lines[0], err
    xcompile.compile(m, "lrp", rules="auto", where="attn2.onnx")
    assert "designed for" not in capsys.readouterr().err


def test_run_warns_once_outside_the_band(cnns, tmp_path):
    import subprocess
    import sys
    x, paths = cnns
    np.save(tmp_path / "x.npy", x)
    rf = tmp_path / "tight.toml"
    rf.write_text('[options]\nband = [0.99, 1.01]\n[[rule]]\nkind = "linear"\nrule = "epsilon"\n')

    def run(rules):
        p = tmp_path / f"e_{rf.stem if rules != 'auto' else 'auto'}.onnx"
        onnx.save(xcompile.compile(paths["vggish"], "lrp", rules=rules), p)
        r = subprocess.run([sys.executable, "-m", "xcompile.cli", "run", str(p), "-i", str(tmp_path / "x.npy"),
                            "--out", str(tmp_path / "out")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return [ln for ln in r.stderr.splitlines() if "warning" in ln]

    warned = run(str(rf))
    assert len(warned) == 1 and "leaves [0.99, 1.01]" in warned[0] and "2 of 2 rows" in warned[0], warned
    assert run("auto") == []   # VGGish: -0.21 / -0.19, inside auto's [-1, 2]


def test_run_warning_names_non_finite_relevance():
    from xcompile.lrp.rulesets import run_warning
    r = np.ones((3, 2, 2), np.float32)
    r[1, 0, 0] = np.nan
    msg = run_warning({"method": "lrp", "params": {"rules": "auto"}}, r, np.ones(3))
    assert "NaN/Inf" in msg and "1 of 3 rows" in msg and "--rules auto" not in msg  # auto is in use: another hint
    r[1, 0, 0] = 1
    assert run_warning({"method": "lrp", "params": {}}, r, np.array([1.0, 5.0, np.nan])).startswith(
        "sum(relevance) / score leaves [-1, 2] (rule set 'auto') in 1 of 3 rows (worst 5)")
    assert run_warning({"method": "gradient"}, r, None) is None


# ---------------------------------------------------------------------- transformers and hybrids under auto
def _randomize_zeros(m):
    """timm zero-initialises heads, layer scales and some biases: every score would be 0."""
    return redraw_zero_parameters(m, torch.Generator().manual_seed(1)).eval()


def _timm(name):
    import timm
    torch.manual_seed(0)
    if name == "deit":
        m = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2)
    elif name == "swin":
        m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=5, img_size=32,
                              window_size=4, depths=(1, 1), num_heads=(2, 4), embed_dim=32)
    elif name == "mobilevit":
        m = timm.create_model("mobilevitv2_050", pretrained=False, num_classes=5)
    elif name == "poolformer":
        from timm.models.metaformer import GroupNorm1, MetaFormer
        m = MetaFormer(depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), downsample_norm=None, mlp_act=torch.nn.GELU,
                       mlp_bias=True, norm_layers=GroupNorm1, layer_scale_init_values=1e-5, res_scale_init_values=None,
                       use_mlp_head=False, num_classes=5)
    else:  # gMLP: spatial gating u * proj(v) (act x act) and a gated MLP
        from timm.layers import GatedMlp
        from timm.models.mlp_mixer import MlpMixer, SpatialGatingBlock
        m = MlpMixer(num_classes=5, img_size=32, patch_size=8, num_blocks=2, embed_dim=32, mlp_ratio=6,
                     block_layer=SpatialGatingBlock, mlp_layer=GatedMlp)
    return _randomize_zeros(m)


@pytest.mark.parametrize("name", ["deit", "swin",
                                  pytest.param("mobilevit", marks=pytest.mark.slow),
                                  pytest.param("poolformer", marks=pytest.mark.slow),
                                  pytest.param("gmlp", marks=pytest.mark.slow)])
def test_auto_on_transformers_and_hybrids(tmp_path, name):
    """Finite, the two exporters agree (<= 1e-3 of max), sum(relevance) / score inside auto's band."""
    from xcompile.lrp.rulesets import load
    torch.set_num_threads(2)
    m = _timm(name)
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    rel = {}
    with torch.no_grad():  # the class of the largest |score|: conservation is a ratio, ill-conditioned near 0
        t = m(torch.tensor(x)).abs().argmax(1).numpy()
    for e in ("legacy", "dynamo"):
        res = _explain(_export(m, x, tmp_path / f"{name}_{e}.onnx", e), x, t)
        assert np.isfinite(res.relevance).all()
        lo, hi = load("auto").band
        c = res.extras["conservation"]
        assert ((c >= lo) & (c <= hi)).all(), c
        rel[e] = res.relevance
    assert np.abs(rel["legacy"] - rel["dynamo"]).max() <= 1e-3 * np.abs(rel["legacy"]).max()
