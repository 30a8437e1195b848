"""Each onnxruntime ``com.microsoft`` fused op as the ai.onnx subgraph it fuses, written from its documented maths
(onnxruntime docs/ContribOperators.md; the CPU kernels for mask formats and defaults). load/contrib.py puts these in
the backward's view, so every method and every LRP rule set treats a fused op exactly as the unfused subgraph an
exporter writes (AttnLRP on a fused Attention = AttnLRP on MatMul / Softmax / MatMul; LayerNorm's std held constant;
GELU a self-gate x * f(x)).

An expansion ``fn(d, n)`` reads the fused node's inputs through ``d.x(k)`` (float32; "" when absent) and returns
one float32 tensor per output it reproduces (None for outputs that carry no relevance: mask_index, saved
statistics, KV caches); ``d.refuse(why)`` names an unsupported mode."""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

SQRT2, TANH_C = math.sqrt(2.0), math.sqrt(2.0 / math.pi)


# ------------------------------------------------------------------------------------------------ activations
def erf_gelu(b, x):
    """x * 0.5 (1 + erf(x / sqrt 2)), as PyTorch's exporter writes GELU."""
    inner = b.add(b.op("Erf", [b.div(x, b.f32(SQRT2), "x_over_sqrt2")], "erf"), b.f32(1.0), "one_plus_erf")
    return b.mul(b.mul(x, inner, "x_times"), b.f32(0.5), "gelu")


def tanh_gelu(b, x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (FastGelu's 0.797885 x + 0.035677 x^3)."""
    cube = b.mul(b.op("Pow", [x, b.f32(3.0)], "cube"), b.f32(0.044715), "cube_scaled")
    t = b.op("Tanh", [b.mul(b.add(x, cube, "inner"), b.f32(TANH_C), "inner_scaled")], "tanh")
    return b.mul(b.mul(x, b.add(t, b.f32(1.0), "one_plus_tanh"), "x_times"), b.f32(0.5), "gelu")


def with_bias(d, k=1):
    x = d.x(0)
    return d.b.add(x, d.x(k), "biased") if d.x(k) else x


def gelu(d, n):
    return [erf_gelu(d.b, d.x(0))]


def bias_gelu(d, n):
    return [erf_gelu(d.b, with_bias(d))]


def fast_gelu(d, n):
    return [tanh_gelu(d.b, with_bias(d))]


def quick_gelu(d, n):
    x = d.x(0)
    gate = d.b.op("Sigmoid", [d.b.mul(x, d.b.f32(d.attr("alpha", 1.702)), "ax")], "sigmoid")
    return [d.b.mul(x, gate, "quick_gelu")]


def bias_add(d, n):
    return [d.b.add(d.b.add(d.x(0), d.x(1), "biased"), d.x(2), "residual")]


def bias_split_gelu(d, n):
    b, width = d.b, d.shape(0)[-1]
    h = b.add(d.x(0), d.x(1), "biased")
    left = b.slice(h, [0], [width // 2], [-1], hint="left")
    right = b.slice(h, [width // 2], [width], [-1], hint="right")
    return [b.mul(left, erf_gelu(b, right), "gated")]


# ------------------------------------------------------------------------------------------------ normalisations
def rms(b, x, axes, eps, scale):
    """x / sqrt(mean(x^2) + eps) * scale, written out as Hugging Face's RMSNorm exports (the statistic is a reduction
    through elementwise maps: LRP's norm block holds it constant)."""
    ms = b.reduce("ReduceMean", b.op("Pow", [x, b.f32(2.0)], "square"), axes, keepdims=1, hint="mean_square")
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.add(ms, b.f32(eps), "plus_eps")], "rms")], "inv_rms")
    return b.mul(b.mul(x, inv, "normalized"), scale, "scaled")


def skip_sum(d, bias_slot):
    """input (+ bias) + skip: the layer's bias first (an Add after its MatMul), then the residual."""
    b = d.b
    t = b.add(d.x(0), d.x(bias_slot), "biased") if d.x(bias_slot) else d.x(0)
    return b.add(t, d.x(1), "residual")


def skip_layer_norm(d, n):
    s = skip_sum(d, 4)
    ins = [s, d.x(2)] + ([d.x(3)] if d.x(3) else [])
    y = d.b.op("LayerNormalization", ins, "layer_norm", axis=-1, epsilon=d.attr("epsilon", 1e-12))
    return [y, None, None, s]


def skip_simplified_layer_norm(d, n):
    s = skip_sum(d, 3)
    return [rms(d.b, s, [-1], d.attr("epsilon", 1e-12), d.x(2)), None, None, s]


def simplified_layer_norm(d, n):
    rank = len(d.shape(0))
    axis = d.attr("axis", -1) % rank
    return [rms(d.b, d.x(0), list(range(axis, rank)), d.attr("epsilon", 1e-5), d.x(1)), None]


def embed_layer_norm(d, n):
    """word[ids] (+ segment[segment_ids]) + position[position_ids or 0..S-1] -> LayerNorm; the word look-up's output
    is the token model's embedding E (load/contrib.py names it)."""
    b = d.b
    seq = d.shape(0)[1]
    if d.raw(1) and not d.raw(4):
        d.refuse("segment_ids without a segment_embedding")
    e = b.op("Gather", [d.raw(2), d.raw(0)], "word", axis=0)
    e = d.word(e)
    s = b.add(e, b.op("Gather", [d.raw(4), d.raw(1)], "segment", axis=0), "plus_segment") if d.raw(1) else e
    pos = d.raw(8) or b.i64(np.arange(seq, dtype=np.int64)[None, :])
    s = b.add(s, b.op("Gather", [d.raw(3), pos], "position", axis=0), "plus_position")
    s32 = d.f32(s)
    y = b.op("LayerNormalization", [s32, d.x(5), d.x(6)], "layer_norm", axis=-1, epsilon=d.attr("epsilon", 1e-12))
    if len(n.output) > 1 and n.output[1] and d.raw(7):
        # the mask index (number of words, right padding) recomputed from the mask: copies of the forward that run on
        # repeated rows (integrated gradients, smoothgrad) see it for their own batch
        d.forward_output(1, b.reduce("ReduceSum", b.cast(d.raw(7), TensorProto.INT32, "mask"), [1], keepdims=0,
                                     hint="mask_index"))
    return [y, None, s32]


# ------------------------------------------------------------------------------------------------ attention
def heads(b, t, n_heads, head, hint):
    """[B, S, n*h] -> [B, n, S, h]."""
    return b.transpose(b.reshape(t, [0, 0, n_heads, head], f"{hint}_split"), [0, 2, 1, 3], f"{hint}_heads")


def additive_mask(d, mask, total, filter_value):
    """An additive mask [B, 1, S or 1, T] (0 where attended, mask_filter_value where masked) from onnxruntime's mask
    formats: lengths [B] (right padding: keys j >= length masked), a raw 0/1 mask [B, T] or [B, S, T]. (The left
    padding format [2B] cannot be told from [B] by shape and is not read.)"""
    b, shape = d.b, d.shape_of(mask)
    m = b.cast(mask, TensorProto.INT64, "mask_i64")
    if len(shape) == 1:
        keep = b.op("Less", [b.i64(np.arange(total, dtype=np.int64)[None, :]), b.unsqueeze(m, [1])], "kept")
    elif len(shape) in (2, 3):
        keep = b.op("Equal", [m, b.i64(np.array(1, np.int64))], "kept")
    else:
        d.refuse(f"a mask of shape {list(shape)}")
    add = b.where(keep, b.f32(0.0), b.f32(filter_value), "additive")
    return b.unsqueeze(add, [1, 2] if len(shape) in (1, 2) else [1])


def causal(b, seq, total, past, filter_value, window=-1):
    """[1, 1, S, T] additive: query i (absolute position past + i) attends to keys j <= past + i (and, with a local
    window w, j > past + i - w)."""
    i = np.arange(seq)[:, None] + past
    j = np.arange(total)[None, :]
    keep = j <= i
    if window is not None and window > 0:
        keep &= j > i - window
    return b.f32(np.where(keep, 0.0, filter_value).astype(np.float32)[None, None])


def attend(d, q, k, v, n_heads, kv_heads, head, scale, masks, softcap=0.0):
    """softmax(q k^T * scale + masks) v over heads, merged back to [B, S, n*h_v]: the eager attention of Hugging
    Face models (q k^T a product of two activations, Softmax, then attention x value)."""
    b = d.b
    qh, kh, vh = heads(b, q, n_heads, head, "q"), heads(b, k, kv_heads, head, "k"), None
    v_head = d.shape_of(v)[-1] // kv_heads
    vh = heads(b, v, kv_heads, v_head, "v")
    if kv_heads != n_heads:  # grouped-query attention: each key/value head serves n / kv query heads (repeat_kv)
        group = n_heads // kv_heads
        seq_k = d.shape_of(k)[1]

        def repeat(t, h, hint):
            e = b.op("Expand", [b.unsqueeze(t, [2]), b.i64([1, 1, group, 1, 1])], f"{hint}_repeat")
            return b.reshape(e, [0, n_heads, seq_k, h], f"{hint}_repeated")
        kh, vh = repeat(kh, head, "k"), repeat(vh, v_head, "v")
    scores = b.op("MatMul", [qh, b.transpose(kh, [0, 1, 3, 2], "k_t")], "scores")
    scores = b.mul(scores, b.f32(scale), "scaled")
    if softcap:
        scores = b.mul(b.op("Tanh", [b.div(scores, b.f32(softcap), "capped")], "tanh_cap"), b.f32(softcap), "softcap")
    for m in masks:
        scores = b.add(scores, m, "masked")
    probs = b.op("Softmax", [scores], "probs", axis=-1)
    ctx = b.op("MatMul", [probs, vh], "context")
    return b.reshape(b.transpose(ctx, [0, 2, 1, 3], "context_t"), [0, 0, n_heads * v_head], "merged")


def attention(d, n):
    """com.microsoft.Attention: packed Q/K/V projection, then multi-head attention (BERT; GPT-2 unidirectional)."""
    b = d.b
    if d.attr("do_rotary", 0):
        d.refuse("do_rotary=1")
    if d.raw(4) and d.shape(4)[3] != 0:
        d.refuse("a past state (KV cache)")
    if d.raw(6):
        d.refuse("past_present_share_buffer")
    n_heads = d.attr("num_heads")
    width = d.shape(1)[1]
    sizes = d.attr("qkv_hidden_sizes") or [width // 3] * 3
    proj = b.op("MatMul", [d.x(0), d.x(1)], "qkv")
    if d.x(2):
        proj = b.add(proj, d.x(2), "qkv_bias")
    lo = np.cumsum([0] + list(sizes))
    q, k, v = (b.slice(proj, [int(lo[i])], [int(lo[i + 1])], [-1], hint="qkv"[i]) for i in range(3))
    head = sizes[0] // n_heads
    seq = d.shape(0)[1]
    fv = d.attr("mask_filter_value", -10000.0)
    masks = attention_masks(d, 3, 5, seq, seq, fv, d.attr("unidirectional", 0))
    return [attend(d, q, k, v, n_heads, n_heads, head, d.attr("scale", 1.0 / math.sqrt(head)), masks), None]


def attention_masks(d, mask_slot, bias_slot, seq, total, fv, unidirectional, past=0):
    masks = []
    if d.raw(mask_slot):
        masks.append(additive_mask(d, d.raw(mask_slot), total, fv))
    if unidirectional:
        masks.append(causal(d.b, seq, total, past, fv))
    if d.raw(bias_slot):
        masks.append(d.x(bias_slot))
    return masks


def multi_head_attention(d, n):
    """com.microsoft.MultiHeadAttention: separate (or packed [B, S, n, 3, h]) Q, K, V, an optional projection bias."""
    b = d.b
    n_heads = d.attr("num_heads")
    if (d.raw(6) and d.shape(6)[2] != 0) or d.raw(8) or d.raw(9):
        d.refuse("a past state (KV cache)")
    q_shape = d.shape(0)
    if len(q_shape) == 5:  # packed QKV [B, S, n, 3, h]
        if d.raw(1) or d.raw(2):
            d.refuse("packed QKV with separate key / value")
        h = q_shape[4]
        parts = [b.reshape(b.squeeze(b.slice(d.x(0), [i], [i + 1], [3], hint=f"packed{i}"), [3]), [0, 0, n_heads * h])
                 for i in range(3)]
        q, k, v = parts
    else:
        if not d.raw(1) or not d.raw(2) or len(d.shape(1)) != 3 or len(d.shape(2)) != 3:
            d.refuse("key / value other than [B, L, D] tensors (packed KV or BNSH past key)")
        q, k, v = d.x(0), d.x(1), d.x(2)
    width_q, width_v = d.shape_of(q)[-1], d.shape_of(v)[-1]
    if d.raw(3):
        lo = [0, width_q, 2 * width_q, 2 * width_q + width_v]
        q, k, v = (b.add(t, b.slice(d.x(3), [lo[i]], [lo[i + 1]], [0], hint=f"bias{i}"), f"{'qkv'[i]}_biased")
                   for i, t in enumerate((q, k, v)))
    head = width_q // n_heads
    seq, total = d.shape_of(q)[1], d.shape_of(k)[1]
    fv = d.attr("mask_filter_value", -10000.0)
    masks = attention_masks(d, 4, 5, seq, total, fv, d.attr("unidirectional", 0))
    return [attend(d, q, k, v, n_heads, n_heads, head, d.attr("scale", 1.0 / math.sqrt(head)), masks),
            None, None, None]


# ------------------------------------------------------------------------------------------------ rotary
def rotate(d, x, cos, sin, rot_dim, interleaved, hint):
    """x * cos + rotate_half(x) * sin on the first rot_dim features of the last axis (Su et al. 2021, as Hugging Face
    writes it; interleaved: pairs (2i, 2i+1)); cos / sin [.., rot_dim / 2] broadcast over x's leading axes."""
    b = d.b
    width = d.shape_of(x)[-1]
    xr = b.slice(x, [0], [rot_dim], [-1], hint=f"{hint}_rot") if rot_dim < width else x
    half = rot_dim // 2
    if interleaved:
        shape = list(d.shape_of(xr))
        pairs = b.reshape(xr, [0] * (len(shape) - 1) + [half, 2], f"{hint}_pairs")
        x1 = b.slice(pairs, [0], [1], [-1], hint=f"{hint}_even")
        x2 = b.slice(pairs, [1], [2], [-1], hint=f"{hint}_odd")
        rot = b.reshape(b.op("Concat", [b.neg(x2, f"{hint}_neg"), x1], f"{hint}_rotated", axis=-1),
                        [0] * (len(shape) - 1) + [rot_dim], f"{hint}_rotate_pairs")
        cos_f = b.reshape(b.op("Concat", [b.unsqueeze(cos, [-1])] * 2, "cos_pairs", axis=-1),
                          [0] * (len(d.shape_of(cos)) - 1) + [rot_dim], "cos_full")
        sin_f = b.reshape(b.op("Concat", [b.unsqueeze(sin, [-1])] * 2, "sin_pairs", axis=-1),
                          [0] * (len(d.shape_of(sin)) - 1) + [rot_dim], "sin_full")
    else:
        x1 = b.slice(xr, [0], [half], [-1], hint=f"{hint}_first")
        x2 = b.slice(xr, [half], [rot_dim], [-1], hint=f"{hint}_second")
        rot = b.op("Concat", [b.neg(x2, f"{hint}_neg"), x1], f"{hint}_rotate_half", axis=-1)
        cos_f = b.op("Concat", [cos, cos], "cos_full", axis=-1)
        sin_f = b.op("Concat", [sin, sin], "sin_full", axis=-1)
    out = b.add(b.mul(xr, cos_f, f"{hint}_cos"), b.mul(rot, sin_f, f"{hint}_sin"), f"{hint}_rotary")
    if rot_dim < width:
        out = b.op("Concat", [out, b.slice(x, [rot_dim], [width], [-1], hint=f"{hint}_pass")], f"{hint}_joined", axis=-1)
    return out


def cos_sin(d, cos_slot, sin_slot, positions, axis_heads):
    """cos / sin caches gathered at the positions [B or 1, S] -> [B or 1, S, 1, r/2] (axis_heads=2) or
    [B or 1, 1, S, r/2] (axis_heads=1)."""
    b = d.b
    cos = b.unsqueeze(b.op("Gather", [d.x(cos_slot), positions], "cos", axis=0), [axis_heads])
    sin = b.unsqueeze(b.op("Gather", [d.x(sin_slot), positions], "sin", axis=0), [axis_heads])
    return cos, sin


def rotary_embedding(d, n):
    """com.microsoft.RotaryEmbedding on [B, S, n*h] (num_heads given or h = 2 * cache width) or [B, n, S, h]."""
    b = d.b
    if d.attr("is_packed_batching", 0):
        d.refuse("is_packed_batching=1")
    shape = d.shape(0)
    half = d.shape(2)[1]
    rot_dim = d.attr("rotary_embedding_dim", 0) or 2 * half
    seq = shape[1] if len(shape) == 3 else shape[2]
    pos_shape = d.shape(1)
    pos = b.cast(d.raw(1), TensorProto.INT64, "positions")
    if len(pos_shape) == 1:  # one start position: start + 0..S-1
        pos = b.add(b.unsqueeze(pos, [1]), b.i64(np.arange(seq, dtype=np.int64)[None, :]), "positions_from_start")
    if len(shape) == 3:
        n_heads = d.attr("num_heads", 0) or shape[2] // (2 * half if not d.attr("rotary_embedding_dim", 0) else 1)
        head = shape[2] // n_heads
        x = b.reshape(d.x(0), [0, 0, n_heads, head], "x_heads")
        cos, sin = cos_sin(d, 2, 3, pos, 2)
        y = rotate(d, x, cos, sin, rot_dim, d.attr("interleaved", 0), "x")
        return [b.reshape(y, [0, 0, shape[2]], "merged")]
    cos, sin = cos_sin(d, 2, 3, pos, 1)
    return [rotate(d, d.x(0), cos, sin, rot_dim, d.attr("interleaved", 0), "x")]


def group_query_attention(d, n):
    """com.microsoft.GroupQueryAttention on a prompt without past (a classifier's single pass): causal attention,
    kv_num_heads key/value heads shared by num_heads query heads, optional rotary on q and k, local window, softcap;
    keys j > seqlens_k[b] (right padding) are masked."""
    b = d.b
    n_heads, kv_heads = d.attr("num_heads"), d.attr("kv_num_heads")
    if d.raw(3) and d.shape(3)[2] != 0:
        d.refuse("a past state (KV cache)")
    for slot, what in ((10, "attention_bias"), (11, "head_sink"), (12, "k_scale"), (14, "q_norm_weight"),
                       (16, "query_seqlens")):
        if d.raw(slot):
            d.refuse(what)
    if d.attr("smooth_softmax", 0) or d.attr("qk_output", 0):
        d.refuse("smooth_softmax / qk_output")
    if d.attr("causal", 1) != 1:
        d.refuse("causal=0")
    q = d.x(0)
    if not d.raw(1):  # packed QKV [B, S, (n + 2 kv) h]
        width = d.shape(0)[2]
        head = width // (n_heads + 2 * kv_heads)
        lo = [0, n_heads * head, (n_heads + kv_heads) * head, width]
        q, k, v = (b.slice(d.x(0), [lo[i]], [lo[i + 1]], [-1], hint="qkv"[i]) for i in range(3))
    else:
        k, v = d.x(1), d.x(2)
        head = d.shape(0)[2] // n_heads
    seq = d.shape(0)[1]
    if d.attr("do_rotary", 0):
        pos = b.i64(np.arange(seq, dtype=np.int64)[None, :])
        if d.raw(9):
            pos = b.cast(d.raw(9), TensorProto.INT64, "positions")
        cos, sin = cos_sin(d, 7, 8, pos, 2)
        rot_dim = 2 * d.shape(7)[1]
        inter = d.attr("rotary_interleaved", 0)
        q = b.reshape(rotate(d, b.reshape(q, [0, 0, n_heads, head], "q_4d"), cos, sin, rot_dim, inter, "q"),
                      [0, 0, n_heads * head], "q_rotated")
        k = b.reshape(rotate(d, b.reshape(k, [0, 0, kv_heads, head], "k_4d"), cos, sin, rot_dim, inter, "k"),
                      [0, 0, kv_heads * head], "k_rotated")
    fv = float(np.finfo(np.float32).min)
    masks = [causal(b, seq, seq, 0, fv, d.attr("local_window_size", -1))]
    lengths = b.add(b.cast(d.raw(5), TensorProto.INT64, "seqlens"), b.i64(np.array(1, np.int64)), "lengths")
    masks.append(additive_mask(d, lengths, seq, fv))
    out = attend(d, q, k, v, n_heads, kv_heads, head, d.attr("scale", 0.0) or 1.0 / math.sqrt(head), masks,
                 softcap=d.attr("softcap", 0.0))
    return [out, None, None, None]


def fused_matmul(d, n):
    """alpha * op(A) @ op(B), op a transpose of the last two axes (transA / transB; transBatch* refused)."""
    b = d.b
    if d.attr("transBatchA", 0) or d.attr("transBatchB", 0):
        d.refuse("transBatchA / transBatchB")
    ab = []
    for k, flag in ((0, "transA"), (1, "transB")):
        t = d.x(k)
        if d.attr(flag, 0):
            rank = len(d.shape(k))
            if d.g.is_const(d.raw(k)):  # a constant weight stays one (LRP's rules see a linear layer)
                t = b.const(np.swapaxes(d.g.const(d.raw(k)), -1, -2).astype(np.float32), hint=f"{'ab'[k]}_t")
            else:
                t = b.transpose(t, list(range(rank - 2)) + [rank - 1, rank - 2], f"{'ab'[k]}_t")
        ab.append(t)
    y = b.op("MatMul", ab, "matmul")
    alpha = d.attr("alpha", 1.0)
    return [b.mul(y, b.f32(alpha), "scaled") if alpha != 1.0 else y]


EXPANSIONS = {
    "Gelu": gelu, "BiasGelu": bias_gelu, "FastGelu": fast_gelu, "QuickGelu": quick_gelu, "BiasAdd": bias_add,
    "BiasSplitGelu": bias_split_gelu, "SkipLayerNormalization": skip_layer_norm,
    "SkipSimplifiedLayerNormalization": skip_simplified_layer_norm, "SimplifiedLayerNormalization": simplified_layer_norm,
    "EmbedLayerNormalization": embed_layer_norm, "Attention": attention, "MultiHeadAttention": multi_head_attention,
    "RotaryEmbedding": rotary_embedding, "GroupQueryAttention": group_query_attention, "FusedMatMul": fused_matmul,
}
