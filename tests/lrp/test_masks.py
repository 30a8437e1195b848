"""Attention masks written as -inf, -1e9 or finfo.min on the logits (float32 and float16 models), including rows that a
causal + padding mask masks completely (left padding: the padded queries see no key): every LRP rule set is finite,
padding tokens get relevance <= 1e-6 of the row max (docs/coverage.md, "Attention masks"), the gradient equals
PyTorch autograd and AttnLRP equals LXT 2.1's explicit rules (lxt.explicit.functional) in float64.

-inf logits made AttnLRP's softmax rule R_i = x_i (R_i - s_i sum_j R_j) compute -inf * 0 = NaN on masked keys; LXT
reads -inf as 0 there, and so does lrp/emitters.py now. With -inf a fully masked row is NaN in the model's own
forward (PyTorch's too), so fully masked rows are tested with the finite mask values, as models write them.

The Hugging Face and PyTorch models where this was found (BERT and Llama with sdpa attention, legacy exporter;
nn.TransformerEncoder with src_key_padding_mask) are checked too, BERT against LXT on its eager twin."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from oracle import rel_err

import xcompile
from model_zoo.token_models import TokenLogits, export_token_classifier

L, D, C = 6, 4, 5
PADDED = 2   # row 1 is left-padded: its first PADDED tokens are padding
RULESETS = ["auto", "attnlrp", "cp-lrp", "epsilon", "zero", "epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box",
            "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat"]
RNG = np.random.default_rng(0)
W = {k: RNG.standard_normal(s) * 0.7 for k, s in {"Wq": (D, D), "Wk": (D, D), "Wv": (D, D), "Wh": (D, C)}.items()}
MASKS = {"-inf": lambda dt: -np.inf, "-1e9": lambda dt: -1e9, "finfo.min": lambda dt: np.finfo(dt).min}


def attention_model(mask_value, dtype, causal):
    """x [N, L, D], mask [N, L] (1 keep, 0 padding) -> one attention head (no scale: folded into Wq) with the additive
    mask where(mask == 0, mask_value, 0) (+ a causal mask of the same value) -> the last token -> Wh -> scores."""
    t = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    inits = {k: v.astype(dtype) for k, v in W.items()}
    inits.update(masked=np.array(mask_value).astype(dtype), zero=np.array(0, dtype), zero_i=np.array(0, np.int64),
                 ax1=np.array([1], np.int64), last=np.array(L - 1, np.int64))
    nodes = [helper.make_node("MatMul", ["x", k], [k + "_out"]) for k in ("Wq", "Wk", "Wv")]
    nodes += [helper.make_node("Transpose", ["Wk_out"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["Wq_out", "kt"], ["logits"]),
              helper.make_node("Equal", ["mask", "zero_i"], ["pad"]),
              helper.make_node("Where", ["pad", "masked", "zero"], ["bias"]),
              helper.make_node("Unsqueeze", ["bias", "ax1"], ["bias3"]),
              helper.make_node("Add", ["logits", "bias3"], ["a1"])]
    if causal:
        inits["causal"] = np.where(np.triu(np.ones((L, L)), 1) > 0, mask_value, 0).astype(dtype)  # finite here
        nodes.append(helper.make_node("Add", ["a1", "causal"], ["a2"]))
    nodes += [helper.make_node("Softmax", ["a2" if causal else "a1"], ["s"], axis=-1),
              helper.make_node("MatMul", ["s", "Wv_out"], ["h"]),
              helper.make_node("Gather", ["h", "last"], ["hl"], axis=1),
              helper.make_node("MatMul", ["hl", "Wh"], ["scores"])]
    g = helper.make_graph(nodes, "masked_attention",
                          [helper.make_tensor_value_info("x", t, ["N", L, D]),
                           helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", L])],
                          [helper.make_tensor_value_info("scores", t, ["N", C])],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


def rows(dtype):
    x = RNG.standard_normal((2, L, D)).astype(dtype)
    mask = np.ones((2, L), np.int64)
    mask[1, :PADDED] = 0
    return x, mask


def torch_forward(x, mask, mask_value, causal, rules=None):
    """The same maths in torch float64; rules="attnlrp": LXT's explicit AttnLRP functions (epsilon rule on the
    linear maps, uniform rule on q k^T and s v, its softmax rule)."""
    w = {k: torch.tensor(v.astype(np.float32).astype(np.float64)) for k, v in W.items()}
    if rules == "attnlrp":
        import lxt.explicit.functional as lf
        lin, mm, soft = (lambda a, b: lf.linear_epsilon(a, b.T)), lf.matmul, (lambda a: lf.softmax(a, -1))
    else:
        lin, mm, soft = (lambda a, b: a @ b), torch.matmul, (lambda a: torch.softmax(a, -1))
    q, k, v = lin(x, w["Wq"]), lin(x, w["Wk"]), lin(x, w["Wv"])
    bias = torch.where(torch.tensor(mask)[:, None, :] == 0, mask_value, 0.0).double()
    a = mm(q, k.transpose(1, 2)) + bias
    if causal:
        a = a + torch.tensor(np.where(np.triu(np.ones((L, L)), 1) > 0, mask_value, 0.0))
    return lin(mm(soft(a), v)[:, -1], w["Wh"])


# -inf (and -1e9, which is -inf in float16) with the causal mask: fully masked rows are NaN in the model itself
CASES = [(name, dt, causal) for name in MASKS for dt in (np.float32, np.float16) for causal in (False, True)
         if not (causal and np.isinf(np.asarray(MASKS[name](dt)).astype(dt)))]


@pytest.mark.parametrize("name,dtype,causal", CASES)
def test_masked_attention(name, dtype, causal):
    with np.errstate(over="ignore"):
        mv = np.asarray(MASKS[name](dtype)).astype(dtype)
    model = attention_model(mv, dtype, causal)
    x, mask = rows(dtype)
    target = np.array([1, 3])
    feeds = {"x": x, "mask": mask}
    # gradient: autograd on the float64 model with the same (float16-rounded) weights and mask value
    grad = xcompile.Explainer(xcompile.compile(model, "gradient")).explain(feeds, target)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    s = torch_forward(xt, mask, float(mv), causal)
    g, = torch.autograd.grad(s.gather(1, torch.tensor(target)[:, None]).sum(), xt)
    tol = 1e-5 if dtype == np.float32 else 2e-2
    assert rel_err(grad.relevance, g.numpy()) < tol
    for rules in RULESETS if dtype == np.float32 and name != "-1e9" else RULESETS[:4]:  # the full list: -inf, finfo.min
        e = xcompile.Explainer(xcompile.compile(model, "lrp", rules=rules)).explain(feeds, target)
        R = e.relevance.sum(-1)
        assert np.isfinite(e.relevance).all(), (rules, R)
        assert np.abs(R[1, :PADDED]).max() <= 1e-6 * np.abs(R[1]).max(), (rules, R[1])
        if rules == "attnlrp":
            xr = torch.tensor(x.astype(np.float64), requires_grad=True)
            out = torch_forward(xr, mask, float(mv), causal, rules="attnlrp")
            seed = torch.zeros_like(out)
            seed[np.arange(2), target] = out[np.arange(2), target].detach()
            ref = (torch.autograd.grad(out, xr, seed)[0]).numpy()  # LXT's explicit backward returns relevance
            err = rel_err(e.relevance, ref)
            print(f"{name} {np.dtype(dtype).name} causal={causal}: attnlrp vs LXT {err:.1e}")
            assert err < (1e-3 if dtype == np.float32 else 3e-2)


# ---------------------------------------------------------------------------------- the models it was found on
def _check_rows(path, feeds, pad_slice, rulesets, input_shape=None, target=None):
    """Every rule set finite, padding <= 1e-6 of the padded row's max; returns {rule set: explanation}."""
    opts = {"input_shape": input_shape} if input_shape else {}
    out = {}
    for rules in rulesets:
        e = out[rules] = xcompile.Explainer(xcompile.compile(str(path), "lrp", rules=rules, **opts)).explain(feeds, target)
        R = e.relevance if e.relevance.ndim == 2 else e.relevance.sum(-1)
        assert np.isfinite(e.relevance).all(), rules
        assert np.abs(R[1, pad_slice]).max() <= 1e-6 * np.abs(R[1]).max(), rules
    return out


@pytest.mark.slow  # ~10 s: the same mask path as BERT's (test above)
def test_transformer_encoder_key_padding_mask(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x, pad):
            keep = (~pad).unsqueeze(-1).float()
            return self.head((self.enc(x, src_key_padding_mask=pad) * keep).sum(1) / keep.sum(1))

    torch.manual_seed(0)
    net = Net().eval()
    x, pad = torch.randn(2, 6, 16), torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    export_token_classifier(net, (x, pad), tmp_path / "enc.onnx", names=["x", "pad"], grad=True)
    _check_rows(tmp_path / "enc.onnx", {"x": x.numpy(), "pad": pad.numpy()}, slice(4, None), ["auto", "attnlrp", "cp-lrp", "epsilon"])
    g = xcompile.Explainer(xcompile.compile(str(tmp_path / "enc.onnx"), "gradient")).explain(
        {"x": x.numpy(), "pad": pad.numpy()}, np.array([0, 1]))
    xt = x.clone().requires_grad_(True)
    ref, = torch.autograd.grad(net(xt, pad).gather(1, torch.tensor([[0], [1]])).sum(), xt)
    assert rel_err(g.relevance, ref.numpy()) < 1e-5


@pytest.fixture(scope="module")
def tokens():
    import test_tokens
    return test_tokens


def test_bert_sdpa_legacy_matches_lxt(tokens, tmp_path):
    """BERT with its default sdpa attention (legacy export: the mask as -inf) against LXT on the eager twin (the same
    seed: the same weights): AttnLRP and CP-LRP (sdpa's Where(IsNaN(s), 0, s) guard read as the softmax it is); auto and epsilon finite too,
    padding at <= 1e-6."""
    import transformers
    T = tokens
    orig = transformers.BertConfig.__init__

    def sdpa(self, *a, **k):
        orig(self, *a, **{**k, "attn_implementation": "sdpa"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.BertConfig, "__init__", sdpa)
        model, names = T.build("bert")
    assert model.config._attn_implementation == "sdpa"
    args = T.example(names)
    path = tmp_path / "bert_sdpa.onnx"
    export_token_classifier(TokenLogits(model, names), args, path, names=names)
    feeds = T.feeds(names, args)
    t = torch.tensor([1, 2])
    res = _check_rows(path, feeds, slice(8, None), ["auto", "attnlrp", "cp-lrp", "epsilon"], T.L, t.numpy())
    for mode in ("attnlrp", "cp-lrp"):
        ref_model = T.build("bert")[0].double()
        ref_wrap = T.Wrap(ref_model, names)
        with T.lxt_rules(ref_model, mode):
            store = {}
            with T.replaced_embedding(ref_wrap, None, store):
                logits = ref_wrap(*args)
                g, = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), store["E"])
            ref = (store["E"] * g).detach().numpy()
        err = rel_err(res[mode].extras["embedding_relevance"], ref)
        print(f"bert sdpa legacy {mode} vs LXT (eager twin): {err:.1e}")
        assert err <= 1e-3


@pytest.mark.slow  # ~15 s
def test_llama_sdpa_legacy(tmp_path):
    """Left padding + the causal mask: the padded queries see no key; sdpa's export writes NaN rows and zeroes them
    (Where(IsNaN(s), 0, s)). Every rule set finite, padding 0; the gradient equals the eager twin's autograd."""
    import transformers as T
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, num_labels=3,
                        attn_implementation="sdpa", initializer_range=0.2)
    model = T.LlamaForSequenceClassification(cfg).eval()

    ids = torch.randint(2, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    ids[1, :4], mask[1, :4] = 0, 0  # left padding: with the causal mask the padded queries see no key (NaN rows
    export_token_classifier(TokenLogits(model), (ids, mask), tmp_path / "llama.onnx", names=["ids", "mask"])  # that sdpa's export zeroes)
    feeds = {"ids": ids.numpy(), "mask": mask.numpy()}
    _check_rows(tmp_path / "llama.onnx", feeds, slice(0, 4), ["auto", "attnlrp", "cp-lrp", "epsilon"], input_shape=12)
    g = xcompile.Explainer(xcompile.compile(str(tmp_path / "llama.onnx"), "gradient", input_shape=12)).explain(
        feeds, np.array([0, 1]))
    # oracle: autograd through the eager twin (finfo.min masks, no NaN rows), same weights, at the embedding output
    twin = T.LlamaForSequenceClassification(T.LlamaConfig(**{**cfg.to_dict(), "attn_implementation": "eager"})).eval()
    twin.load_state_dict(model.state_dict())
    E = twin.get_input_embeddings()(ids).detach().requires_grad_(True)
    out = twin(inputs_embeds=E, attention_mask=mask).logits  # the last position is a real token in both rows
    ref, = torch.autograd.grad(out.gather(1, torch.tensor([[0], [1]])).sum(), E)
    err = rel_err(g.extras["embedding_relevance"], ref.numpy())
    print(f"llama sdpa legacy, left padding: gradient vs eager autograd {err:.1e}")
    assert err < 1e-5


def test_run_hint_does_not_suggest_the_rule_set_in_use():
    from xcompile.lrp.rulesets import run_warning
    nan = np.array([[np.nan, 1.0]], np.float32)
    for meta in ({"method": "lrp"}, {"method": "lrp", "params": {"rules": "auto"}}):  # auto: the default
        msg = run_warning(meta, nan, None)
        assert "NaN/Inf" in msg and "--rules auto" not in msg and "--rules cp-lrp" in msg
    assert "try --rules auto" in run_warning({"method": "lrp", "params": {"rules": "epsilon"}}, nan, None)
    assert "--rules" not in run_warning({"method": "gradient"}, nan, None)


def test_float16_explainer_of_a_masked_model():
    """--set precision=float16 (the explainer converted to float16): the -inf test of the softmax rule stays valid."""
    x, mask = rows(np.float32)
    for rules in ("attnlrp", "auto"):
        e = xcompile.Explainer(xcompile.compile(attention_model(-np.inf, np.float32, False), "lrp", rules=rules,
                                                precision="float16")).explain({"x": x, "mask": mask}, np.array([1, 3]))
        R = e.relevance.sum(-1)
        assert np.isfinite(e.relevance).all() and np.abs(R[1, :PADDED]).max() <= 1e-6 * np.abs(R[1]).max(), rules
