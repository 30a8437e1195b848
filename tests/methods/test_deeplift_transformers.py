"""DeepLIFT on token transformers built from transformers configs (no download): Llama and Qwen2 (RMSNorm, rotary
embeddings, SiLU gating, grouped-query softmax attention), DeBERTa-v2 and MPNet (LayerNorm, relative positions).
No Captum oracle covers these blocks: completeness (sum of relevance = F(x) - F(x'), the `completeness_gap` output
against the explained scores) and, as a sanity reference, agreement with Integrated Gradients at many steps."""
from __future__ import annotations

import numpy as np
import pytest

import xcompile

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
from model_zoo.token_models import TokenLogits, export_token_classifier  # noqa: E402

L = 8
COMMON = dict(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              max_position_embeddings=40, num_labels=3)
MODELS = {
    "llama": lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(**COMMON, num_key_value_heads=1, pad_token_id=0,
                                                                      attn_implementation="eager")),
    "qwen2": lambda: tf.Qwen2ForSequenceClassification(tf.Qwen2Config(**COMMON, num_key_value_heads=1, pad_token_id=0,
                                                                      attn_implementation="eager")),
    "deberta-v2": lambda: tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(**COMMON, pad_token_id=0)),
    "mpnet": lambda: tf.MPNetForSequenceClassification(tf.MPNetConfig(**COMMON, pad_token_id=1)),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_deeplift_complete_on_token_transformers(kind):
    torch.manual_seed(0)
    m = MODELS[kind]().eval()
    ids = torch.randint(3, 90, (2, L))
    model = export_token_classifier(TokenLogits(m), (ids, torch.ones_like(ids)), dynamic_logits=False, grad=True)
    feeds = {"input_ids": np.random.default_rng(1).integers(3, 90, (4, L)), "attention_mask": np.ones((4, L), np.int64)}
    target = np.array([0, 1, 2, 0])
    dl = xcompile.Explainer(xcompile.compile(model, "deeplift")).explain(feeds, target)
    assert np.isfinite(dl.relevance).all()
    total = dl.relevance.sum(1)
    delta = total - dl.extras["completeness_gap"]  # F(x) - F(x') as the explainer's two forward passes give it
    assert np.abs(dl.extras["completeness_gap"]).max() <= 1e-4 * np.abs(delta).max()
    ig = xcompile.Explainer(xcompile.compile(model, "integrated_gradients", steps=128)).explain(feeds, target)
    corr = np.corrcoef(dl.relevance.ravel(), ig.relevance.ravel())[0, 1]
    assert corr > 0.9, corr  # measured 0.957 (Qwen2) to 0.99999 (DeBERTa-v2, MPNet)
