"""Encoder–decoder classifiers (BART, T5) built from transformers configs (no download): they compile (the probe ids
end with the EOS their classification head reads), run at any batch size, and the explained embedding collects
both uses of the shared table (encoder at the ids, decoder at the ids shifted right). Oracle: PyTorch autograd,
the gradient at every call of the shared embedding, the decoder's mapped back to the id positions it read."""
from __future__ import annotations

import numpy as np
import pytest

import xcompile

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
from model_zoo.token_models import TokenLogits, export_token_classifier  # noqa: E402

L = 8


def _model(kind):
    torch.manual_seed(0)
    if kind == "bart":
        cfg = tf.BartConfig(vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                            max_position_embeddings=32, num_labels=3, attn_implementation="eager")
        return tf.BartForSequenceClassification(cfg).eval(), cfg.eos_token_id
    cfg = tf.T5Config(vocab_size=100, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                      num_labels=3, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      attn_implementation="eager")
    return tf.T5ForSequenceClassification(cfg).eval(), cfg.eos_token_id


def _export(m, ids, export_rows):
    # the logits keep the export's batch size: the explainer must still run at any batch size
    return export_token_classifier(TokenLogits(m), (ids[:export_rows], torch.ones_like(ids[:export_rows])),
                                   dynamic_logits=False, grad=True)


def _oracle(m, ids, target):
    """Gradient of the target logits at every call of the shared embedding: [calls] of (ids read, grad [N, L, D])."""
    shared = m.get_input_embeddings()
    calls = []

    def hook(mod, inp, out):
        z = torch.zeros_like(out, requires_grad=True)
        calls.append((inp[0], z))
        return out + z
    hooks = [mod.register_forward_hook(hook) for mod in m.modules()
             if isinstance(mod, torch.nn.Embedding) and mod.weight.data_ptr() == shared.weight.data_ptr()]
    logits = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    for h in hooks:
        h.remove()
    logits[torch.arange(len(ids)), torch.as_tensor(target)].sum().backward()
    return logits.detach().numpy(), [(i.numpy(), z.grad.numpy()) for i, z in calls]


@pytest.mark.parametrize("export_rows", [1, 2])
@pytest.mark.parametrize("kind", ["bart", "t5"])
def test_encoder_decoder_gradient_sums_both_uses(kind, export_rows):
    m, eos = _model(kind)
    ids = torch.randint(5, 90, (3, L))
    ids[:, -1] = eos
    ex = xcompile.Explainer(xcompile.compile(_export(m, ids, export_rows), "gradient"))
    target = np.array([0, 1, 2])
    scores, calls = _oracle(m, ids, target)
    assert len(calls) == 2  # encoder and decoder read the same table
    (enc_ids, enc), (dec_ids, dec) = calls
    assert (dec_ids[:, 1:] == enc_ids[:, :-1]).all()  # shift_tokens_right: decoder position j reads id j - 1
    ref = enc.copy()
    ref[:, :-1] += dec[:, 1:]
    assert np.linalg.norm(dec) > 0.5 * np.linalg.norm(enc)  # the decoder's share is sizable: a real test
    for rows in (1, 2, 3):  # any batch size
        res = ex.explain({"input_ids": ids[:rows].numpy(), "attention_mask": np.ones((rows, L), np.int64)}, target[:rows])
        assert np.abs(res.scores - scores[:rows]).max() < 1e-4
        got = res.extras["embedding_relevance"]
        assert np.abs(got - ref[:rows]).max() / np.abs(ref[:rows]).max() < 1e-4


def test_missing_eos_at_run_time_is_one_line():
    m, eos = _model("bart")
    ids = torch.randint(5, 90, (2, L))
    ids[:, -1] = eos
    ex = xcompile.Explainer(xcompile.compile(_export(m, ids, 2), "gradient"))
    bad = ids.numpy().copy()
    bad[:, -1] = 7  # no EOS: BART's head selects nothing
    with pytest.raises(xcompile.XCompileError) as e:
        ex.explain({"input_ids": bad, "attention_mask": np.ones((2, L), np.int64)}, np.array([0, 0]))
    assert "\n" not in str(e.value) and f"token id(s) [{eos}]" in str(e.value)


def test_mbart_start_token_that_moves_with_padding():
    """mBART's decoder starts with the last non-pad id, a rearrangement that moves with the padding: no fixed map
    exists, so a copy of it runs on position codes in the explainer. On padded rows the gradient sums the encoder's
    use and the decoder's (its first position mapped back to the last non-pad id) as autograd does."""
    torch.manual_seed(0)
    cfg = tf.MBartConfig(vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                         num_labels=3, attn_implementation="eager")
    m = tf.MBartForSequenceClassification(cfg).eval()
    eos, pad = cfg.eos_token_id, cfg.pad_token_id
    ids = torch.randint(5, 90, (3, L))
    ids[:, -1] = eos
    onnx_bytes = _export(m, ids, 2)
    ids[1, 5], ids[1, 6:] = eos, pad  # padded rows: the decoder's start token moves
    ids[2, 3], ids[2, 4:] = eos, pad
    mask = (ids != pad).long()
    target = np.array([0, 1, 2])
    shared, calls = m.get_input_embeddings(), []

    def hook(mod, inp, out):
        z = torch.zeros_like(out, requires_grad=True)
        calls.append((inp[0].numpy(), z))
        return out + z
    hooks = [mod.register_forward_hook(hook) for mod in m.modules()
             if isinstance(mod, torch.nn.Embedding) and mod.weight.data_ptr() == shared.weight.data_ptr()]
    logits = m(input_ids=ids, attention_mask=mask).logits
    for h in hooks:
        h.remove()
    logits[torch.arange(3), torch.as_tensor(target)].sum().backward()
    (enc_ids, enc), (dec_ids, dec) = [(i, z.grad.numpy()) for i, z in calls]
    last = (enc_ids != pad).sum(1) - 1
    assert (dec_ids[np.arange(3), 0] == enc_ids[np.arange(3), last]).all() and (dec_ids[:, 1:] == enc_ids[:, :-1]).all()
    ref = enc.copy()
    ref[np.arange(3), last] += dec[:, 0]
    ref[:, :-1] += dec[:, 1:]
    assert np.linalg.norm(dec) > 0.5 * np.linalg.norm(enc)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    res = xcompile.Explainer(xcompile.compile(onnx_bytes, "gradient")).explain(feed, target)
    assert np.abs(res.scores - logits.detach().numpy()).max() < 1e-4
    err = np.abs(res.extras["embedding_relevance"] - ref).max() / np.abs(ref).max()
    print(f"mBART padded rows, gradient over both uses: {err:.1e}")
    assert err < 1e-4
    for rules in ("epsilon", "attnlrp"):
        rel = xcompile.Explainer(xcompile.compile(onnx_bytes, "lrp", rules=rules)).explain(feed, target).relevance
        assert np.isfinite(rel).all() and np.abs(rel).max() > 0, rules


def test_look_up_that_is_no_rearrangement_is_warned(capfd):
    """A second look-up of the table at ids that are computed, not moved (2·id mod V), is left as it is: one warning
    line, and the explainer still compiles with the first look-up's relevance."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    table, w = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array(2, np.int64), "two"), numpy_helper.from_array(np.array(50, np.int64), "v")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="encoder_lookup"),
             helper.make_node("Mul", ["ids", "two"], ["ids2"]), helper.make_node("Mod", ["ids2", "v"], ["ids3"]),
             helper.make_node("Gather", ["table", "ids3"], ["e2"], name="computed_lookup"),
             helper.make_node("Add", ["e", "e2"], ["s"]), helper.make_node("ReduceMean", ["s"], ["p"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["p", "w"], ["logits"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    ex = xcompile.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), "gradient")
    err = capfd.readouterr().err
    assert "computed_lookup" in err and "not a rearrangement" in err
    assert not any("xc_shared" in n.name for n in ex.graph.node)
