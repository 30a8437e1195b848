"""The files deployment pipelines write after export: a tiny BERT (and GPT-2 / Llama / Qwen2 classifiers) through
onnxruntime's transformer optimizer (``optimize_model``: default fusions, with the embedding fusion turned off,
float32 and float16) and through ``quantize_dynamic`` / ``quantize_static`` with their defaults.

Oracles: PyTorch autograd at the word-embedding output (test_tokens.grad_at_embedding), and the UNOPTIMIZED file's
own explainer (itself checked against autograd and LXT's AttnLRP in tests/methods/test_tokens.py): an optimized file's
gradient / AttnLRP / integrated gradients equal the unoptimized file's. Quantized: the scores are the quantized
file's own, bit for bit; quantize_dynamic's gradient equals autograd through the same BERT with the file's
dequantized weights and tables and each MatMul input fake-quantized as DynamicQuantizeLinear does (uint8, per
tensor, round half to even) with the straight-through gradient."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime.transformers.optimizer")

from test_tokens import L, Wrap, build, example, export, feeds, grad_at_embedding, rel_err  # noqa: E402

import xcompile  # noqa: E402

TARGET = np.array([0, 1])


def randomized(kind):
    """The tiny model with every LayerNorm / RMSNorm weight and every bias drawn at random (BERT's init makes them
    1 and 0, which onnxruntime's optimizer then shares between layers)."""
    m, names = build(kind)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if "weight" in name else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    return Wrap(m, names).eval(), names


def decoder(kind):
    T = transformers
    torch.manual_seed(0)
    cfg = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, max_position_embeddings=64, num_labels=3, pad_token_id=0,
               attn_implementation="eager", initializer_range=0.2)
    cls, conf = {"llama": (T.LlamaForSequenceClassification, T.LlamaConfig),
                 "qwen2": (T.Qwen2ForSequenceClassification, T.Qwen2Config)}[kind]
    names = ["input_ids", "attention_mask"]
    return Wrap(cls(conf(**cfg)).eval(), names).eval(), names


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """files(kind) -> (wrap, names, {variant: path}); files.explain(path, method, **opts) -> Explanation."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    d = tmp_path_factory.mktemp("contrib_models")
    cache, explained = {}, {}

    def get(kind):
        if kind in cache:
            return cache[kind]
        wrap, names = randomized(kind) if kind in ("bert", "gpt2") else decoder(kind)
        base = d / f"{kind}.onnx"
        export(wrap, names, base, "legacy")
        paths = {"unoptimized": base}
        model_type, heads = ("bert", 2) if kind == "bert" else ("gpt2", 2 if kind == "gpt2" else 4)
        for variant, emb in (("optimized", True), ("no_embed_fusion", False)):
            if variant == "no_embed_fusion" and kind != "bert":
                continue
            opts = FusionOptions(model_type)
            opts.enable_embed_layer_norm = emb
            with warnings.catch_warnings(), contextlib.redirect_stdout(None):
                warnings.simplefilter("ignore")
                o = optimize_model(str(base), model_type=model_type, num_heads=heads, hidden_size=32,
                                   optimization_options=opts)
                o.save_model_to_file(str(d / f"{kind}_{variant}.onnx"))
                paths[variant] = d / f"{kind}_{variant}.onnx"
                if kind == "bert":
                    o.convert_float_to_float16()
                    o.save_model_to_file(str(d / f"{kind}_{variant}_fp16.onnx"))
                    paths[variant + "_fp16"] = d / f"{kind}_{variant}_fp16.onnx"
        cache[kind] = (wrap, names, paths)
        return cache[kind]

    def explain(path, method, **opts):
        key = (str(path), method, tuple(sorted(opts.items())))
        if key not in explained:
            wrap_names = next(v for v in cache.values() if path in v[2].values())
            ex = xcompile.Explainer(xcompile.compile(path, method, input_shape=L, **opts))
            explained[key] = ex.explain(feeds(wrap_names[1], example(wrap_names[1])), TARGET)
        return explained[key]

    get.explain = explain
    get.dir = d
    return get


FUSED = {"optimized": {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu"},
         "no_embed_fusion": {"Attention", "SkipLayerNormalization", "BiasGelu"}}


@pytest.mark.parametrize("variant", ["optimized", "no_embed_fusion", pytest.param("optimized_fp16", marks=pytest.mark.slow),
                                     pytest.param("no_embed_fusion_fp16", marks=pytest.mark.slow)])
def test_optimized_bert_matches_autograd_and_the_unoptimized_file(files, variant):
    wrap, names, paths = files("bert")
    path = paths[variant]
    ops = {n.op_type for n in onnx.load(path).graph.node if n.domain == "com.microsoft"}
    assert FUSED[variant.replace("_fp16", "")] <= ops, ops
    fp16 = variant.endswith("fp16")
    tol = 1e-2 if fp16 else 1e-5  # float16: the model's own rounding (measured 2e-3 to 4e-3)
    args = example(names)
    own = ort.InferenceSession(str(path)).run(None, feeds(names, args))[0]
    for method, opts in (("gradient", {}), ("lrp", {"rules": "attnlrp"}), ("lrp", {"rules": "cp-lrp"}),
                         ("input_x_gradient", {})):
        res = files.explain(path, method, **opts)
        ref = files.explain(paths["unoptimized"], method, **opts)
        assert np.array_equal(res.scores, own)  # the fused forward's own scores
        assert res.relevance.shape == (2, L)
        e_res, e_ref = res.extras["embedding_relevance"], ref.extras["embedding_relevance"]
        print(f"bert {variant} {method} {opts.get('rules', '')}: vs unoptimized {rel_err(e_res, e_ref):.2e} (embedding) "
              f"{rel_err(res.relevance, ref.relevance):.2e} (tokens)")
        assert rel_err(e_res, e_ref) <= tol and rel_err(res.relevance, ref.relevance) <= tol, (method, variant)
        r = np.abs(res.relevance)
        assert r[1, 8:].max() <= 1e-6 * r.max()  # padding (attention mask 0) gets no relevance
    _, g = grad_at_embedding(wrap, args, torch.as_tensor(TARGET))
    err = rel_err(files.explain(path, "gradient").extras["embedding_relevance"], g.numpy())
    print(f"bert {variant} gradient: vs autograd {err:.2e}")
    assert err <= (tol if fp16 else 1e-4)


@pytest.mark.slow
def test_optimized_bert_integrated_gradients_copies_the_fused_forward(files):
    """Integrated gradients runs copies of the forward on repeated rows: the fused embedding's mask index too."""
    _, _, paths = files("bert")
    opts = dict(steps=8, baseline_token=0)
    res = files.explain(paths["optimized"], "integrated_gradients", **opts)
    ref = files.explain(paths["unoptimized"], "integrated_gradients", **opts)
    print(f"bert optimized integrated_gradients: vs unoptimized {rel_err(res.relevance, ref.relevance):.2e}")
    assert rel_err(res.relevance, ref.relevance) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_optimized_decoders_match_the_unoptimized_file(files, kind):
    """GPT-2: SkipLayerNormalization + FastGelu; Llama / Qwen2: SimplifiedLayerNormalization (a default-domain
    contrib op) + SkipSimplifiedLayerNormalization."""
    _, _, paths = files(kind)
    ops = {n.op_type for n in onnx.load(paths["optimized"]).graph.node}
    assert ops & {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"}, ops
    for method, opts in (("gradient", {}), ("lrp", {"rules": "attnlrp"})):
        res = files.explain(paths["optimized"], method, **opts)
        ref = files.explain(paths["unoptimized"], method, **opts)
        err = rel_err(res.extras["embedding_relevance"], ref.extras["embedding_relevance"])
        print(f"{kind} optimized {method}: vs unoptimized {err:.2e}")
        assert err <= 1e-5, (kind, method)


# -------------------------------------------------------------------------------------------- quantized
def _quantize(files, how):
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    _, names, paths = files("bert")
    out = files.dir / f"bert_{how}.onnx"
    paths[how] = out
    if out.exists():
        return out
    with warnings.catch_warnings(), contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):
        warnings.simplefilter("ignore")
        if how == "dynamic":
            quantize_dynamic(str(paths["unoptimized"]), str(out))
        else:
            class Rows(CalibrationDataReader):
                def __init__(self):
                    self.rows = iter([{k: v[i:i + 1] for k, v in feeds(names, example(names, seed=s)).items()}
                                      for s in range(4) for i in range(2)])

                def get_next(self):
                    return next(self.rows, None)
            quantize_static(str(paths["unoptimized"]), str(out), Rows())
    return out


def _dynamic_oracle(wrap, qpath, args, target):
    """(logits, d score[target] / dE) by autograd through the torch BERT with the file's dequantized weights and
    tables (each matched to the float tensor it quantizes: same shape, nearest values). A quantized forward is
    discontinuous and onnxruntime's u8 x s8 integer kernel may saturate, so, as tests/quant_oracle.py does, each
    Linear layer's VALUE is onnxruntime's own product (+ bias) while its GRADIENT is autograd's through the
    dequantized weight (DynamicQuantizeLinear's straight-through gradient is the identity)."""
    m = onnx.load(qpath)
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    mats = {k: (q.astype(np.float32) - init[k[:-10] + "_zero_point"].astype(np.float32)) * init[k[:-10] + "_scale"]
            for k, q in init.items() if k.endswith("_quantized") and q.ndim == 2}
    products = {o for n in m.graph.node for o in n.output if o.endswith(("MatMul_output_0", "_MatMul"))}
    names, linear = {}, {}
    with torch.no_grad():
        for mname, mod in wrap.named_modules():
            w = getattr(mod, "weight", None)
            if w is None or w.dim() != 2:
                continue
            cands = [v.T if isinstance(mod, torch.nn.Linear) else v for v in mats.values()]
            cands = [c for c in cands if c.shape == tuple(w.shape)]
            best = min(cands, key=lambda c: np.abs(c - w.numpy()).max())
            assert np.abs(best - w.numpy()).max() < 0.05
            w.copy_(torch.tensor(best))
            if isinstance(mod, torch.nn.Linear):
                path = "/" + "/".join(mname.split(".")).replace("layer/", "layer.")
                hit = [p for p in products if p.startswith(path + "/") or (mname == "m.classifier" and p == "logits_MatMul")]
                assert len(hit) == 1, (mname, hit)
                names[mname], linear[mname] = hit[0], mod
    for o in names.values():
        m.graph.output.append(onnx.ValueInfoProto(name=o))
    measured = dict(zip(names, ort.InferenceSession(m.SerializeToString()).run(list(names.values()),
                                                                               feeds(wrap.names, args))))

    def onnxruntime_value(mod, inp, out, key=None):
        return out + (torch.tensor(measured[key]) + mod.bias - out).detach()

    hooks = [mod.register_forward_hook(lambda mod, i, o, k=k: onnxruntime_value(mod, i, o, k)) for k, mod in linear.items()]
    try:
        with torch.no_grad():
            logits = wrap(*args).numpy()
        return logits, grad_at_embedding(wrap, args, target)[1].numpy()
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("how", ["dynamic", pytest.param("static", marks=pytest.mark.slow)])
def test_default_quantized_bert(files, how):
    """quantize_dynamic / quantize_static defaults quantize the word embedding (integer table -> Gather ->
    DequantizeLinear; static: DequantizeLinear -> Gather -> Q/DQ): it compiles; the scores are the file's own."""
    wrap, names, paths = files("bert")
    qpath = _quantize(files, how)
    m = onnx.load(qpath)
    word = next(n for n in m.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
    assert word.input[0].endswith(("_quantized", "_DequantizeLinear_Output")), word.input
    args = example(names)
    own = ort.InferenceSession(str(qpath)).run(None, feeds(names, args))[0]
    for method, opts in (("gradient", {}), ("lrp", {"rules": "attnlrp"})):
        res = files.explain(qpath, method, **opts)
        assert np.array_equal(res.scores, own), method
        assert np.isfinite(res.relevance).all() and res.relevance.shape == (2, L)
        r = np.abs(res.relevance)
        assert r[1, 8:].max() <= 1e-6 * r.max()
    if how == "dynamic":
        wrap_q, _ = randomized("bert")
        logits, ref = _dynamic_oracle(wrap_q, qpath, args, torch.as_tensor(TARGET))
        assert rel_err(logits, own) <= 1e-5  # the oracle computes what the quantized file computes
        err = rel_err(files.explain(qpath, "gradient").extras["embedding_relevance"], ref)
        print(f"bert quantize_dynamic gradient: vs autograd (dequantized weights, onnxruntime's values) {err:.2e}")
        assert err <= 1e-4


# ------------------------------------------------------------------- hand-made: per-axis table, index arithmetic
def test_per_axis_quantized_table_behind_index_arithmetic(tmp_path):
    """ids -> Where(Less(ids, 0), ids + V, ids) -> Mod(V) -> Clip(0, V-1) -> Cast -> Gather(int8 table) ->
    DequantizeLinear(per axis: one scale / zero point per embedding column) -> ReduceMean over L -> MatMul: the ids
    are found through the arithmetic, E is the dequantized look-up, scores bit-identical; gradient and
    input x gradient at E against numpy (dF_t/dE[l] = W[:, t] / L)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    V, D, C, Lh = 20, 6, 3, 5
    table = rng.integers(-128, 128, (V, D)).astype(np.int8)
    scale = rng.uniform(0.01, 0.05, D).astype(np.float32)
    zp = rng.integers(-5, 5, D).astype(np.int8)
    W = rng.standard_normal((D, C)).astype(np.float32)
    c = lambda a, n: numpy_helper.from_array(np.asarray(a), n)  # noqa: E731
    nodes = [
        helper.make_node("Less", ["ids", "zero"], ["neg"]),
        helper.make_node("Add", ["ids", "vocab"], ["wrapped"]),
        helper.make_node("Where", ["neg", "wrapped", "ids"], ["ids1"]),
        helper.make_node("Mod", ["ids1", "vocab"], ["ids2"]),
        helper.make_node("Clip", ["ids2", "zero", "top"], ["ids3"]),
        helper.make_node("Cast", ["ids3"], ["ids4"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "ids4"], ["q"], axis=0),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["E"], axis=2),
        helper.make_node("ReduceMean", ["E", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    inits = [c(table, "table"), c(scale, "scale"), c(zp, "zp"), c(W, "W"), c(np.array(0, np.int64), "zero"),
             c(np.array(V, np.int64), "vocab"), c(np.array(V - 1, np.int64), "top"), c(np.array([1], np.int64), "axes")]
    g = helper.make_graph(nodes, "qtable", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", Lh])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])], initializer=inits)
    path = tmp_path / "qtable.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    ids = np.array([[1, 2, 3, 4, 5], [19, 7, 19, 0, 3]], np.int64)  # (negative ids are refused at run time)
    own = ort.InferenceSession(str(path)).run(None, {"ids": ids})[0]
    E = (table[np.where(ids < 0, ids + V, ids) % V].astype(np.float32) - zp.astype(np.float32)) * scale
    t = np.array([0, 2])
    grad = np.broadcast_to(W[:, t].T[:, None, :] / Lh, E.shape)
    for method, ref in (("gradient", grad), ("input_x_gradient", E * grad)):
        ex = xcompile.Explainer(xcompile.compile(path, method))
        assert ex.token_input and ex.vocab == V
        res = ex.explain(ids, t)
        assert np.array_equal(res.scores, own)
        assert rel_err(res.extras["embedding_relevance"], ref) <= 1e-6, method
    # baseline token: the dequantized row of the table
    ig = xcompile.Explainer(xcompile.compile(path, "integrated_gradients", baseline_token=0, steps=4)).explain(ids, t)
    E0 = (table[0].astype(np.float32) - zp) * scale
    assert rel_err(ig.extras["embedding_relevance"], (E - E0) * grad) <= 1e-5
