"""Token-id inputs: tiny Hugging Face text classifiers (built from configs, no download) and a text CNN, both PyTorch
exporters, against independent oracles computed on the torch model at the word-embedding output E = table[ids]:

- gradient: autograd dF/dE element by element, token relevance = its L2 norm over D;
- input_x_gradient: Captum ``LayerGradientXActivation`` on the word embedding (E * dF/dE), summed over D;
- integrated_gradients: Captum ``LayerIntegratedGradients(method="riemann_right")`` with baselines = ids filled with K;
- smoothgrad: a torch restatement (the same seeded noise table, sigma from E's range per row, mean gradient);
- occlusion: a torch loop replacing each token by K (Captum's ``Occlusion`` on E is not token replacement);
- deeplift: Captum ``LayerDeepLift`` on the text CNN; completeness sum(R) = F(E) - F(E') on transformers;
- lrp attnlrp: BERT with LXT 2.1's AttnLRP rules (its LayerNorm / attention / identity-rule functions) in float64.

Scores equal onnxruntime on the exported file; padding positions (attention mask 0) get relevance <= 1e-6 of max."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import xcompile  # noqa: E402
from model_zoo.token_models import TokenLogits as Wrap  # noqa: E402  (test_contrib_models imports it from here)
from model_zoo.token_models import export_token_classifier  # noqa: E402
from xcompile.errors import XCompileError  # noqa: E402

L, V, K, PAD = 12, 100, 3, 0
HF = ["bert", "distilbert", "roberta", "albert", "electra", "gpt2"]
EXPORTERS = ["legacy", "dynamo"]


# ----------------------------------------------------------------------------------------------- models
class TextCNN(torch.nn.Module):
    """Embedding -> Conv1d -> ReLU -> max over time -> Linear (Kim 2014)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 16)
        self.conv = torch.nn.Conv1d(16, 8, 3)
        self.relu = torch.nn.ReLU()  # a module: Captum's DeepLift rescales modules, not torch.relu
        self.pool = torch.nn.MaxPool1d(L - 2)
        self.fc = torch.nn.Linear(8, K)

    def forward(self, input_ids):
        h = self.relu(self.conv(self.emb(input_ids).transpose(1, 2)))
        return self.fc(self.pool(h).flatten(1))

    def get_input_embeddings(self):
        return self.emb


def build(kind):
    """(torch model in eval mode, its input names). Weights wider than the default init (std 0.2) so that logits
    are O(1). "albert+erf" / "gpt2+erf": the exact (erf) GELU instead of their default tanh approximation."""
    T = transformers
    torch.manual_seed(0)
    kind, erf = kind.split("+")[0], kind.endswith("+erf")
    common = dict(vocab_size=V, num_labels=K, attn_implementation="eager", initializer_range=0.2)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    if kind == "textcnn":
        return TextCNN().eval(), ["input_ids"]
    if kind == "bert":
        m, names = T.BertForSequenceClassification(T.BertConfig(**small, **common)), ["input_ids", "attention_mask", "token_type_ids"]
    elif kind == "distilbert":
        m = T.DistilBertForSequenceClassification(T.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                                                     max_position_embeddings=64, **common))
        names = ["input_ids", "attention_mask"]
    elif kind == "roberta":
        m, names = T.RobertaForSequenceClassification(T.RobertaConfig(pad_token_id=1, **small, **common)), ["input_ids", "attention_mask"]
    elif kind == "albert":  # one layer's weights shared by both layers
        m = T.AlbertForSequenceClassification(T.AlbertConfig(embedding_size=16, **small, **common,
                                                             **({"hidden_act": "gelu"} if erf else {})))
        names = ["input_ids", "attention_mask", "token_type_ids"]
    elif kind == "electra":
        m = T.ElectraForSequenceClassification(T.ElectraConfig(embedding_size=16, **small, **common))
        names = ["input_ids", "attention_mask", "token_type_ids"]
    elif kind == "gpt2":  # causal mask, the last non-pad token pools
        m = T.GPT2ForSequenceClassification(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, pad_token_id=PAD,
                                                         bos_token_id=1, eos_token_id=1, **common,
                                                         **({"activation_function": "gelu"} if erf else {})))
        names = ["input_ids", "attention_mask"]
    return m.eval(), names


def example(names, seed=0):
    """Two rows; the second padded after 8 tokens (mask 0, pad id)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (2, L), generator=g)
    mask = torch.ones(2, L, dtype=torch.long)
    if "attention_mask" in names:
        mask[1, 8:] = 0
        ids[1, 8:] = PAD
    d = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(2, L, dtype=torch.long)}
    return [d[k] for k in names]


def export(wrap, names, path, exporter):
    export_token_classifier(wrap, example(names), path, names=names, exporter=exporter)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """zoo(kind, exporter) -> (wrap, names, onnx path); zoo.explainer(kind, exporter, method, **opts) -> Explainer.
    Each model is exported and each explainer compiled once per module."""
    d = tmp_path_factory.mktemp("tokens")
    models, paths, explainers = {}, {}, {}

    def get(kind, exporter):
        if kind not in models:
            m, names = build(kind)
            models[kind] = (Wrap(m, names).eval(), names)
        wrap, names = models[kind]
        if (kind, exporter) not in paths:
            paths[kind, exporter] = d / f"{kind}_{exporter}.onnx"
            export(wrap, names, paths[kind, exporter], exporter)
        return wrap, names, paths[kind, exporter]

    def explainer(kind, exporter, method, **opts):
        key = (kind, exporter, method, tuple(sorted(opts.items())))
        if key not in explainers:
            explainers[key] = xcompile.Explainer(xcompile.compile(get(kind, exporter)[2], method, **opts))
        return explainers[key]

    get.explainer = explainer
    return get


def feeds(names, args):
    return {k: v.numpy() for k, v in zip(names, args)}


def embedding(wrap):
    return wrap.m.get_input_embeddings()


@contextlib.contextmanager
def replaced_embedding(wrap, value=None, store=None):
    """Within: the word embedding's output is `value` (a tensor [N, L, D]) when given, and is kept in store["E"]
    (with its gradient retained)."""
    def hook(mod, inp, out):
        out = value if value is not None else out
        if out.requires_grad:
            out.retain_grad()
        if store is not None:
            store["E"] = out
        return out
    h = embedding(wrap).register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def grad_at_embedding(wrap, args, target, value=None):
    """(E, dF_target/dE) in float32 autograd; E replaced by `value` when given."""
    store = {}
    with replaced_embedding(wrap, value, store):
        if value is None:
            embedding(wrap).weight.requires_grad_(True)
        logits = wrap(*args)
        g, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), store["E"])
    return store["E"].detach(), g


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check_common(res, wrap, names, args, path, padding=True):
    """Scores are the model's own (onnxruntime on the exported file, and torch); padding gets ~0 relevance."""
    own = ort.InferenceSession(str(path)).run(None, feeds(names, args))[0]
    np.testing.assert_allclose(res.scores, own, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(res.scores, wrap(*args).numpy(), rtol=1e-4, atol=1e-4)
    if "attention_mask" in names and padding:
        r = np.abs(res.relevance)
        assert r[1, 8:].max() <= 1e-6 * r.max(), r[1]


# ------------------------------------------------------------------------------------- default run: gradient
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind", HF + ["textcnn"])
def test_gradient_matches_autograd_at_the_embedding(zoo, kind, exporter):
    wrap, names, path = zoo(kind, exporter)
    ex = zoo.explainer(kind, exporter, "gradient", input_shape=L)
    assert ex.token_input and ex.data_input.name == "input_ids" and ex.input_names == names and ex.vocab == V
    assert ex.outputs == ["logits", "relevance", "embedding_relevance", "explained_class"]
    args = example(names)
    res = ex.explain(feeds(names, args))
    t = torch.as_tensor(res.predicted)
    _, g = grad_at_embedding(wrap, args, t)
    assert res.relevance.shape == (2, L) and res.extras["embedding_relevance"].shape == tuple(g.shape)
    errors = rel_err(res.extras["embedding_relevance"], g), rel_err(res.relevance, g.norm(dim=2))
    print(kind, exporter, f"gradient embedding {errors[0]:.1e} tokens {errors[1]:.1e}")
    assert max(errors) <= 1e-4, errors
    check_common(res, wrap, names, args, path)


def test_attribution_methods_on_bert(zoo):
    """input_x_gradient (Captum LayerGradientXActivation) and integrated gradients (Captum LayerIntegratedGradients,
    right Riemann sum, baselines = ids filled with K) on BERT, legacy export."""
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
    wrap, names, path = zoo("bert", "legacy")
    args = example(names)
    t = torch.tensor([0, 2])
    ixg = zoo.explainer("bert", "legacy", "input_x_gradient", input_shape=L).explain(feeds(names, args), t.numpy())
    ref = LayerGradientXActivation(wrap, embedding(wrap)).attribute(args[0], target=t, additional_forward_args=tuple(args[1:]))
    assert rel_err(ixg.extras["embedding_relevance"], ref.detach()) <= 1e-4
    assert rel_err(ixg.relevance, ref.detach().sum(2)) <= 1e-4
    check_common(ixg, wrap, names, args, path)
    ig = zoo.explainer("bert", "legacy", "integrated_gradients", input_shape=L, steps=16, baseline_token=PAD)
    res = ig.explain(feeds(names, args), t.numpy())
    ref = LayerIntegratedGradients(wrap, embedding(wrap)).attribute(
        args[0], baselines=torch.full_like(args[0], PAD), target=t, additional_forward_args=tuple(args[1:]),
        n_steps=16, method="riemann_right")
    assert rel_err(res.extras["embedding_relevance"], ref.detach()) <= 1e-3
    assert rel_err(res.relevance, ref.detach().sum(2)) <= 1e-3
    check_common(res, wrap, names, args, path)


def test_refusals_and_run_time_checks(zoo):
    wrap, names, path = zoo("bert", "legacy")
    for method in ("guided_backprop", "deconvnet", "gradcam", "deep_taylor"):
        with pytest.raises(XCompileError, match=f"method '{method}' does not apply to token-id inputs"):
            xcompile.compile(path, method, input_shape=L)
    with pytest.raises(XCompileError, match="needs --set baseline_token"):
        xcompile.compile(path, "occlusion", input_shape=L)
    with pytest.raises(XCompileError, match="baseline_token=100: not an id"):
        xcompile.compile(path, "integrated_gradients", input_shape=L, baseline_token=V)
    with pytest.raises(XCompileError, match="is int64 but no Gather reads it"):
        xcompile.compile(path, "gradient", input_shape=L, input="attention_mask")
    ex = zoo.explainer("bert", "legacy", "gradient", input_shape=L)
    args = feeds(names, example(names))
    with pytest.raises(XCompileError, match="pad \\(or cut\\) the inputs to 12 tokens"):
        ex.explain({k: v[:, :10] for k, v in args.items()})
    with pytest.raises(XCompileError, match="token id 100 is out of range"):
        ex.explain({**args, "input_ids": np.full((2, L), V)})
    with pytest.raises(XCompileError, match="pass a dict"):
        ex.explain(args["input_ids"])
    with pytest.raises(XCompileError, match="missing \\['token_type_ids'\\]"):
        ex.explain({k: v for k, v in args.items() if k != "token_type_ids"})
    with pytest.raises(XCompileError, match="different numbers of rows"):
        ex.explain({**args, "attention_mask": args["attention_mask"][:1]})


def test_text_cnn_takes_a_plain_array_and_the_length_can_be_chosen(zoo):
    wrap, names, path = zoo("textcnn", "legacy")
    ex = zoo.explainer("textcnn", "legacy", "input_x_gradient")
    ids = example(names)[0]
    res = ex.explain(ids.numpy())
    t = torch.as_tensor(res.predicted)
    e, g = grad_at_embedding(wrap, [ids], t)
    assert rel_err(res.relevance, (e * g).sum(2)) <= 1e-4
    longer = xcompile.Explainer(xcompile.compile(path, "gradient", input_shape=L + 4))  # --set input_shape=16
    assert longer.data_input.shape == ["N", L + 4]
    ids16 = torch.randint(0, V, (3, L + 4), generator=torch.Generator().manual_seed(1))
    res = longer.explain(ids16.numpy())
    _, g = grad_at_embedding(wrap, [ids16], torch.as_tensor(res.predicted))
    assert rel_err(res.extras["embedding_relevance"], g) <= 1e-4
    with pytest.raises(XCompileError, match="pad \\(or cut\\) the inputs to 16 tokens"):
        longer.explain(ids.numpy())


class _FromEmbedding(torch.nn.Module):
    """The text CNN after its embedding: Zennit explains this module's input, E."""

    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn

    def forward(self, e):
        c = self.cnn
        return c.fc(c.pool(c.relu(c.conv(e.transpose(1, 2)))).flatten(1))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("ruleset", ["epsilon", "epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1"])
def test_text_cnn_lrp_matches_zennit(zoo, exporter, ruleset):
    from lrp_helpers import zennit_composite
    from zennit.attribution import Gradient
    wrap, names, path = zoo("textcnn", exporter)
    ids = example(names)[0]
    t = torch.tensor([1, 2])
    res = zoo.explainer("textcnn", exporter, "lrp", rules=ruleset).explain(ids.numpy(), t.numpy())
    sub = _FromEmbedding(wrap.m).eval()
    e = embedding(wrap)(ids).detach()
    with Gradient(model=sub, composite=zennit_composite(ruleset, [], e.shape)) as attributor:
        out, ref = attributor(e, lambda y: torch.nn.functional.one_hot(t, K).to(y) * y)
    assert rel_err(res.extras["embedding_relevance"], ref.detach()) <= 1e-4
    assert rel_err(res.relevance, ref.detach().sum(2)) <= 1e-4


def test_token_occlusion_windows(zoo):
    """Windows of 3 tokens moved by 2 (offsets 0, 2, ..., 10, the last one clipped, as Captum places them): each token
    gets the mean score drop of the windows that cover it; torch loop as the reference."""
    wrap, names, path = zoo("bert", "legacy")
    args = example(names)
    t = torch.tensor([0, 1])
    ex = zoo.explainer("bert", "legacy", "occlusion", input_shape=L, baseline_token=PAD, window=3, stride=2)
    res = ex.explain(feeds(names, args), t.numpy())
    with torch.no_grad():
        base = wrap(*args).gather(1, t[:, None])[:, 0]
        total, count = torch.zeros(2, L), torch.zeros(L)
        for off in range(0, L - 1, 2):
            ids = args[0].clone()
            ids[:, off:off + 3] = PAD
            total[:, off:off + 3] += (base - wrap(ids, *args[1:]).gather(1, t[:, None])[:, 0])[:, None]
            count[off:off + 3] += 1
    assert rel_err(res.relevance, total / count) <= 1e-4
    check_common(res, wrap, names, args, path, padding=False)  # a window over the last real token covers padding


# ------------------------------------------------------------------------------------------- slow: every method
def _smoothgrad_reference(wrap, args, t, samples, noise_level, seed):
    """Mean gradient at E + sigma * noise, noise the seeded table [1, samples, L, D] the method documents."""
    e, _ = grad_at_embedding(wrap, args, t)
    table = np.random.default_rng(seed).standard_normal((1, samples, *e.shape[1:])).astype(np.float32)
    sigma = noise_level * (e.amax(dim=(1, 2)) - e.amin(dim=(1, 2)))
    total = 0
    for s in range(samples):
        noisy = e + torch.from_numpy(table[0, s])[None] * sigma[:, None, None]
        total = total + grad_at_embedding(wrap, args, t, noisy.requires_grad_(True))[1]
    return total / samples


def _occlusion_reference(wrap, args, t, k):
    with torch.no_grad():
        base = wrap(*args).gather(1, t[:, None])[:, 0]
        out = torch.zeros(args[0].shape)
        for p in range(args[0].shape[1]):
            ids = args[0].clone()
            ids[:, p] = k
            out[:, p] = base - wrap(ids, *args[1:]).gather(1, t[:, None])[:, 0]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind", HF + ["textcnn"])
def test_every_method(zoo, kind, exporter):
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
    wrap, names, path = zoo(kind, exporter)
    args = example(names)
    t = torch.tensor([1, 2])
    x = feeds(names, args)
    extra = tuple(args[1:]) or None
    errors = {}
    res = zoo.explainer(kind, exporter, "input_x_gradient", input_shape=L).explain(x, t.numpy())
    ref = LayerGradientXActivation(wrap, embedding(wrap)).attribute(args[0], target=t, additional_forward_args=extra).detach()
    errors["input_x_gradient"] = rel_err(res.relevance, ref.sum(2)), 1e-4
    check_common(res, wrap, names, args, path)
    res = zoo.explainer(kind, exporter, "integrated_gradients", input_shape=L, steps=8, baseline_token=PAD).explain(x, t.numpy())
    ref = LayerIntegratedGradients(wrap, embedding(wrap)).attribute(
        args[0], baselines=torch.full_like(args[0], PAD), target=t, additional_forward_args=extra, n_steps=8,
        method="riemann_right").detach()
    errors["integrated_gradients"] = rel_err(res.relevance, ref.sum(2)), 1e-3
    check_common(res, wrap, names, args, path)
    res = zoo.explainer(kind, exporter, "smoothgrad", input_shape=L, samples=4, noise_level=0.1).explain(x, t.numpy())
    ref = _smoothgrad_reference(wrap, args, t, 4, 0.1, 0)
    errors["smoothgrad"] = rel_err(res.extras["embedding_relevance"], ref), 1e-4
    errors["smoothgrad tokens"] = rel_err(res.relevance, ref.norm(dim=2)), 1e-4
    check_common(res, wrap, names, args, path)
    res = zoo.explainer(kind, exporter, "occlusion", input_shape=L, baseline_token=PAD).explain(x, t.numpy())
    assert "embedding_relevance" not in res.extras
    errors["occlusion"] = rel_err(res.relevance, _occlusion_reference(wrap, args, t, PAD)), 1e-4
    check_common(res, wrap, names, args, path)
    res = zoo.explainer(kind, exporter, "deeplift", input_shape=L, baseline_token=PAD).explain(x, t.numpy())
    check_common(res, wrap, names, args, path)
    if kind == "textcnn":  # element by element: Captum's DeepLift (Rescale on ReLU, its MaxPool rule)
        from captum.attr import LayerDeepLift
        ref = LayerDeepLift(wrap, embedding(wrap)).attribute(args[0], baselines=torch.full_like(args[0], PAD), target=t).detach()
        errors["deeplift"] = rel_err(res.extras["embedding_relevance"], ref), 1e-4
    else:  # no element-wise oracle on transformers (Captum rescales none of GELU/LayerNorm/attention): report the
        # completeness gap |sum R - (F(E) - F(E'))| / sum |R| with F(E') from torch, not asserted
        base = embedding(wrap)(torch.full_like(args[0], PAD)).detach()
        with torch.no_grad(), replaced_embedding(wrap, base):
            f_ref = wrap(*args).gather(1, t[:, None])[:, 0].numpy()
        gap = res.relevance.sum(1) - (res.scores[[0, 1], t.numpy()] - f_ref)
        print(kind, exporter, f"deeplift completeness gap {float(np.abs(gap).max() / np.abs(res.relevance).sum(1).max()):.1e}")
        assert np.isfinite(res.extras["embedding_relevance"]).all()
    if kind != "textcnn":  # every transformer compiles and runs under AttnLRP (LXT parity: test_attnlrp_*)
        res = zoo.explainer(kind, exporter, "lrp", rules="attnlrp", input_shape=L).explain(x, t.numpy())
        assert np.isfinite(res.extras["embedding_relevance"]).all()
        check_common(res, wrap, names, args, path)
    print(kind, exporter, {k: f"{v:.1e}" for k, (v, _) in errors.items()})
    bad = {k: v for k, v in errors.items() if not v[0] <= v[1]}
    assert not bad, bad


# ------------------------------------------------------------------------------------------- AttnLRP vs LXT
@functools.lru_cache(maxsize=None)
def _lxt():
    """lxt.efficient.{rules, patches} without LXT's package __init__ (it imports its transformers model maps)."""
    spec = importlib.util.find_spec("lxt")
    if spec is None:
        pytest.skip("lxt is not installed (pip install --no-deps lxt==2.1)")
    root = Path(spec.submodule_search_locations[0])
    saved = {k: sys.modules.get(k) for k in ("lxt", "lxt.efficient")}
    for pkg, where in (("lxt", root), ("lxt.efficient", root / "efficient")):
        if pkg not in sys.modules or not hasattr(sys.modules[pkg], "__path__"):
            mod = types.ModuleType(pkg)
            mod.__path__ = [str(where)]
            sys.modules[pkg] = mod
    from lxt.efficient import patches, rules
    for k, v in saved.items():
        if v is not None:
            sys.modules[k] = v
    return patches, rules


IDENTITY_RULE = {"GELUActivation", "NewGELUActivation", "GELUTanh", "FastGELUActivation", "GELU", "Tanh"}


@contextlib.contextmanager
def lxt_rules(model, mode):
    """LXT's AttnLRP (or CP-LRP) on a transformers classifier, as its model maps do: its LayerNorm (std held constant),
    its attention wrapper (AttnLRP: uniform rule on q k^T and attention x v; CP-LRP: q and k detached) around the
    modeling module's eager attention, and its identity rule on the GELU / tanh activation modules; patched into this
    model instance and its modeling modules for the duration."""
    P, R = _lxt()
    wrap_attention = P.wrap_attention_forward if mode == "attnlrp" else P.cp_wrap_attention_forward
    modules = {sys.modules[type(m).__module__] for m in model.modules()}
    originals = {mb: mb.eager_attention_forward for mb in modules if hasattr(mb, "eager_attention_forward")}
    for mb, eager in originals.items():
        mb.eager_attention_forward = wrap_attention(eager)
    patched = []
    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.forward = types.MethodType(P.layer_norm_forward, mod)
        elif type(mod).__name__ in IDENTITY_RULE:
            mod.forward = functools.partial(R.identity_rule_implicit, mod.forward)
        else:
            continue
        patched.append(mod)
    # RoBERTa's classification head calls torch.tanh, not a module: the identity rule on the function itself
    tanh = torch.tanh
    torch.tanh = functools.partial(R.identity_rule_implicit, tanh)
    try:
        yield
    finally:
        torch.tanh = tanh
        for mb, eager in originals.items():
            mb.eager_attention_forward = eager
        for mod in patched:
            del mod.forward


def _lxt_case(zoo, kind, exporter, mode):
    wrap, names, path = zoo(kind, exporter)
    args = example(names)
    t = torch.tensor([1, 2])
    res = zoo.explainer(kind, exporter, "lrp", rules=mode, input_shape=L).explain(feeds(names, args), t.numpy())
    model = build(kind)[0].double()  # the same seed: the same weights
    ref_wrap = Wrap(model, names)
    with lxt_rules(model, mode):
        store = {}
        with replaced_embedding(ref_wrap, None, store):
            logits = ref_wrap(*args)
            g, = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), store["E"])
        ref = (store["E"] * g).detach().numpy()
    err = rel_err(res.extras["embedding_relevance"], ref), rel_err(res.relevance, ref.sum(2))
    print(kind, exporter, mode, f"embedding {err[0]:.1e} tokens {err[1]:.1e}")
    assert max(err) <= 1e-3, err
    check_common(res, wrap, names, args, path)


@pytest.mark.parametrize("mode", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_attnlrp_on_bert_matches_lxt(zoo, exporter, mode):
    _lxt_case(zoo, "bert", exporter, mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind", ["distilbert", "roberta", "albert", "albert+erf", "electra", "gpt2", "gpt2+erf"])
def test_attnlrp_matches_lxt(zoo, kind, exporter, mode):
    _lxt_case(zoo, kind, exporter, mode)


@pytest.mark.parametrize("kind", ["gpt2"])
def test_attnlrp_tanh_gelu_matches_lxt(zoo, kind):
    """The tanh-approximated GELU (gelu_new: ALBERT's and GPT-2's default), written out as
    0.5 x (1 + tanh(c (x + 0.044715 x^3))), is an activation x * f(x): LXT's identity rule, not the product rule."""
    _lxt_case(zoo, kind, "legacy", "attnlrp")


# ------------------------------------------------------------------------------------------------ serving
def test_serving_declares_and_takes_every_input(zoo, tmp_path):
    """Triton's config lists every input with its dtype and the compiled length; the MLServer runtime (in process)
    takes them all over the Open Inference Protocol and answers what the local Explainer does."""
    import asyncio

    from xcompile.serving.triton import config_pbtxt
    from xcompile.write.writer import save
    wrap, names, path = zoo("bert", "legacy")
    model = xcompile.compile(path, "gradient", input_shape=L)
    text = config_pbtxt(model, "bert")
    for name in names:
        assert f'name: "{name}"\n    data_type: TYPE_INT64\n    dims: [ {L} ]' in text
    assert f'name: "embedding_relevance"\n    data_type: TYPE_FP32\n    dims: [ {L}, 32 ]' in text
    mlserver = pytest.importorskip("mlserver")
    from mlserver.codecs import NumpyCodec
    from mlserver.errors import InferenceError
    from mlserver.types import InferenceRequest

    from xcompile.serving.mlserver_runtime import XCompileRuntime
    save(model, tmp_path / "bert.onnx")
    rt = XCompileRuntime(mlserver.settings.ModelSettings(name="bert", implementation=XCompileRuntime,
                                                          parameters={"uri": str(tmp_path / "bert.onnx")}))
    x = feeds(names, example(names))
    local = xcompile.Explainer(model).explain(x, [0, 1])

    def request(arrays):
        return InferenceRequest(inputs=[NumpyCodec.encode_input(k, v) for k, v in arrays.items()])

    async def go():
        await rt.load()
        out = await rt.predict(request({**x, "target": np.array([0, 1])}))
        got = {o.name: NumpyCodec.decode_output(o) for o in out.outputs}
        with pytest.raises(InferenceError, match="missing input 'token_type_ids' \\(INT64 \\[N, 12\\]\\)"):
            await rt.predict(request({k: v for k, v in x.items() if k != "token_type_ids"}))
        with pytest.raises(InferenceError, match="unknown input 'x'"):
            await rt.predict(request({**x, "x": x["input_ids"]}))
        return got
    got = asyncio.run(go())
    np.testing.assert_array_equal(got["relevance"], local.relevance)
    np.testing.assert_array_equal(got["embedding_relevance"], local.extras["embedding_relevance"])
    np.testing.assert_array_equal(got["logits"], local.scores)
