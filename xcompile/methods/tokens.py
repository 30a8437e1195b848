"""Token-id inputs (text classifiers): every method explains the output E = table[ids] of the embedding Gather
(`ForwardGraph.token`); this module turns that [N, L, D] relevance into one value per token and builds token
occlusion.

Per token: the sum over D for attribution methods (their relevance is additive: input x gradient, integrated
gradients, LRP, DeepLIFT), the L2 norm over D for pure gradients (gradient; SmoothGrad: the norm of the mean
gradient), as Captum's and LXT's text tutorials report them. Position and token-type embeddings are added after the
Gather, so they get no token relevance. Occlusion replaces whole tokens by `baseline_token` (a window of `window`
tokens, moved by `stride`, both 1 by default) and reports the score drop, without an embedding relevance.

Padding: with an attention mask applied additively before the softmax (BERT, DistilBERT, RoBERTa, ALBERT, ELECTRA,
GPT-2 in transformers), a masked position's attention weight is exactly 0, so its relevance is exactly 0 for every
method here (measured in tests/methods/test_tokens.py: <= 1e-6 of max, in fact 0); nothing is multiplied by the mask. A
window of several tokens that covers a real token and padding gives the padding that window's drop."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import TensorProto, helper

from ..backward.builder import Builder
from ..errors import XCompileError
from ..graph import ForwardGraph

EMBEDDING_RELEVANCE = "embedding_relevance"


def refuse(method, g: ForwardGraph, where: str) -> None:
    """One line for the methods that have no meaning at an embedding (they modify ReLU backward passes or need
    image feature maps / fitted input statistics)."""
    if g.token is not None and getattr(method, "token_relevance", "sum") is None:
        raise XCompileError(f"{where}: method {method.name!r} does not apply to token-id inputs ({g.token.input!r}); "
                            "use gradient, input_x_gradient, integrated_gradients, smoothgrad, deeplift, lrp or occlusion")


def baseline_embedding(g: ForwardGraph) -> np.ndarray:
    """[D] float32: the embedding of `baseline_token`, or the zero vector when it is not set."""
    table = g.const(g.token.table)
    if g.token.baseline_token is None:
        return np.zeros(table.shape[1], np.float32)
    return np.asarray(table[g.token.baseline_token], np.float32)


def no_float_baseline(method, g: ForwardGraph, where: str) -> None:
    base = method.values.get("baseline")
    if g.token is not None and base not in (None, 0.0):
        raise XCompileError(f"{where}: option baseline={base!r} applies to float inputs; for token ids give "
                            "--set baseline_token=K (the embedding of token K at every position)")


def token_outputs(method, g: ForwardGraph, b: Builder, built):
    """relevance [N, L, D] at the embedding -> relevance [N, L] per token + `embedding_relevance` [N, L, D]."""
    how = getattr(method, "token_relevance", "sum")
    if how == "own":  # the method already gives one value per token (occlusion)
        return built
    e = built.relevance
    with b.scope("tokens"):
        if how == "norm":
            r = b.op("ReduceL2", [e, b.i64([2])], "token_norm", keepdims=0) if g.opset >= 18 else \
                b.op("ReduceL2", [e], "token_norm", axes=[2], keepdims=0)
        else:
            r = b.reduce("ReduceSum", e, [2], keepdims=0, hint="token_sum")
    shape = ["N"] + [int(d) for d in g.shape(g.data_input)[1:]]
    vi = helper.make_tensor_value_info(EMBEDDING_RELEVANCE, TensorProto.FLOAT, shape)
    return replace(built, relevance=r, extra_outputs=[(e, vi)] + list(built.extra_outputs))  # a methods.base.Built
