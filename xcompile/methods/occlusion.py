"""Occlusion (Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks") as ONE batched graph: every occluded copy of the input is built in-graph.

For P window positions, constant masks M [P, 1, *spatial] (0 inside the window, 1 outside) turn the
input x [N, C, *spatial] into x[:, None] * M + fill * (1 - M) = [N, P, C, *spatial]; a copy of the forward
graph (weights shared) scores the flattened [N*P, ...] batch, and the target score of each copy is
gathered. drop_p = F_c(x) - F_c(x occluded at window p), where F_c(x) comes from the original forward
graph that runs anyway. Each window's drop is spread over the pixels it covers and averaged over the
windows that cover a pixel (Captum ``Occlusion`` semantics: windows at offsets 0, s, 2s, ... per axis,
ceil((size - window) / s) + 1 of them, the last one clipped at the border). Zennit's ``Occlusion`` with
``occlusion_fn=partial(occlude_independent, invert=True)`` gives, for window == stride tilings,
F_c(occluded) per window, i.e. F_c(x) minus this map.

The occluded copies are processed ``chunk`` windows at a time by successive forward copies (bounds
memory; 0 = all at once). All channels are occluded together (the window spans the channel axis).
No Python loop runs at explanation time: one onnxruntime call explains a batch.

Token-id inputs (`occlusion_tokens`): windows of whole tokens (default 1 token, stride 1) are replaced by
`--set baseline_token=K` (required: the pad id of the model's tokenizer, typically) in the ids themselves.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..backward.builder import Builder
from ..errors import XCompileError
from ..graph import ForwardGraph
from ..options import check_memory, in_range, non_negative_int
from .base import Built, Method, Param, as_float, register, resolve_target
from .clone import clone_forward
from .paths import NODE_BYTES, row_activations


def as_window(v):
    """8 -> (8,), '8x4' -> (8, 4), [8, 4] -> (8, 4)."""
    if isinstance(v, (list, tuple)):
        out = tuple(int(d) for d in v)
    elif isinstance(v, str):
        out = tuple(int(d) for d in v.lower().replace(",", "x").split("x") if d.strip())
    else:
        out = (int(v),)
    if not out or any(d <= 0 for d in out):
        raise ValueError(v)
    return out


def spatial_dims(sample: tuple) -> tuple:
    """The axes a window slides over: all axes after the channel axis ([C, H, W] -> H, W; [C, L] -> L);
    a flat feature vector [D] is its own spatial axis."""
    return tuple(sample[1:]) if len(sample) >= 2 else tuple(sample)


def window_positions(spatial: tuple, window, stride) -> tuple[tuple, tuple, list]:
    """Resolve window/stride (an int applies to every spatial axis, capped at its size, as Zennit does)
    and list the top-left offsets of the windows: 0, s, 2s, ... until the input is covered, the last window
    clipped at the border (as Captum does)."""
    window, stride = as_window(window), as_window(stride)
    nd = len(spatial)
    if len(window) == 1:
        window = window * nd
    if len(stride) == 1:
        stride = stride * nd
    if len(window) != nd or len(stride) != nd:
        raise XCompileError(f"occlusion: window {list(window)} / stride {list(stride)} do not match the "
                            f"{nd} spatial axes of an input of spatial shape {list(spatial)}")
    window = tuple(min(w, s) for w, s in zip(window, spatial))
    stride = tuple(min(t, s) for t, s in zip(stride, spatial))
    # Captum: ceil((size - window) / stride) + 1 offsets per axis; the last window is clipped at the border
    ranges = [range(0, -(-(s - w) // t) * t + 1, t) for s, w, t in zip(spatial, window, stride)]
    return window, stride, list(itertools.product(*ranges))


def occlusion_masks(spatial: tuple, window, stride):
    """-> (keep [P, *spatial] float32: 0 inside window p, 1 outside;
           spread [P, prod(spatial)] float32: 1/count(pixel) inside window p, 0 outside)."""
    window, stride, offsets = window_positions(spatial, window, stride)
    inside = np.zeros((len(offsets),) + tuple(spatial), np.float32)
    for p, off in enumerate(offsets):
        inside[(p,) + tuple(slice(o, o + w) for o, w in zip(off, window))] = 1.0
    count = inside.sum(axis=0)
    spread = np.where(count > 0, inside / np.maximum(count, 1.0), 0.0).astype(np.float32)
    return (1.0 - inside).astype(np.float32), spread.reshape(len(offsets), -1)


@register
class Occlusion(Method):
    name = "occlusion"
    summary = "score drop F_c(x) - F_c(x with a window filled), one batched graph over all windows"
    params = {
        "window": Param((8,), "window size: an integer or HxW (e.g. 8 or 8x8)", as_window),
        "stride": Param((8,), "window stride: an integer or HxW", as_window),
        "fill": Param(0.0, "value written into the occluded window (a number within float32's range, |fill| <= 1e30)",
                      in_range(as_float, -1e30, 1e30)),
        "chunk": Param(0, "windows scored per forward copy (0: all at once) -- bounds memory", non_negative_int),
    }

    def check(self, g: ForwardGraph, where: str, full: bool = False) -> None:
        """Occlusion never runs a backward pass: every operator the forward graph has is fine."""

    token_relevance = "own"  # token ids: whole tokens replaced by baseline_token (occlusion_tokens)

    def build(self, g: ForwardGraph, b: Builder, where: str) -> Built:
        if g.token is not None:
            return occlusion_tokens(self, g, b, where)
        x = g.data_input
        sample = tuple(int(d) for d in g.shape(x)[1:])
        if len(sample) == 1:  # a feature vector (tabular rows): one feature at a time unless told otherwise
            self.values.update({k: (1,) for k in ("window", "stride") if k not in self.given})
        spatial = spatial_dims(sample)
        n_win = len(window_positions(spatial, self.values["window"], self.values["stride"])[2])
        chunk = min(self.values["chunk"] or n_win, n_win)
        # before building: the masks (3 x [P, pixels]), the activations of `chunk` occluded copies of one row, and
        # the ceil(P / chunk) forward copies
        pixels = float(np.prod(spatial, dtype=np.float64))
        check_memory(4.0 * 3 * n_win * pixels + 4.0 * 2 * row_activations(g) * chunk
                     + NODE_BYTES * len(g.nodes) * -(-n_win // chunk),
                     f"{where}: occlusion with {n_win} windows" + (f", chunk={chunk}" if self.values["chunk"] else ""))
        keep, spread = occlusion_masks(spatial, self.values["window"], self.values["stride"])
        if chunk < 0:
            raise XCompileError(f"option chunk={chunk}: must be >= 0 for method 'occlusion'")
        # mask layout [P, 1, *spatial] broadcasts over the channel axis; [P, D] for flat inputs
        lead = (1,) if len(sample) >= 2 else ()
        fill = self.values["fill"]
        n_classes = g.shape(g.explained)[1]
        target = resolve_target(b, g, g.explained)
        with b.scope("occlusion"):
            onehot = b.one_hot(target, n_classes, "target_onehot")
            base = b.reduce("ReduceSum", b.mul(g.explained, onehot), [1], keepdims=1, hint="score")  # [N, 1]
            onehot3 = b.unsqueeze(onehot, [1], "target_onehot_rows")  # [N, 1, K]
            xe = b.unsqueeze(x, [1], "x_rows")  # [N, 1, C, ...]
            drops = []
            for c, start in enumerate(range(0, n_win, chunk)):
                k = min(chunk, n_win - start)
                with b.scope(f"chunk{c}"):
                    m = keep[start:start + k].reshape((k,) + lead + tuple(spatial))
                    occ = b.mul(xe, b.const(m, hint="keep_mask"), "kept")
                    if fill != 0.0:
                        occ = b.add(occ, b.const((1.0 - m) * np.float32(fill), hint="fill"), "occluded")
                    flat = b.reshape(occ, [-1] + list(sample), "occluded_batch")  # [N*k, C, ...]
                    rename = clone_forward(g, b, flat, b.fresh("fwd"), repeat=k)
                    s = b.reshape(rename(g.explained), [-1, k, n_classes], "scores_per_row")
                    s = b.reduce("ReduceSum", b.mul(s, onehot3), [2], keepdims=0, hint="occluded_score")  # [N, k]
                    drops.append(b.sub(base, s, "drop"))
            drop = drops[0] if len(drops) == 1 else b.op("Concat", drops, "drops", axis=1)  # [N, P]
            heat = b.op("MatMul", [drop, b.const(spread, hint="window_to_pixels")], "heatmap")  # [N, prod(spatial)]
            heat = b.reshape(heat, [-1] + list(lead) + list(spatial), "heatmap_map")
            if len(sample) >= 2 and sample[0] != 1:
                heat = b.op("Expand", [heat, b.i64([1] + list(sample))], "all_channels")
        return Built(heat)


def occlusion_tokens(method, g: ForwardGraph, b: Builder, where: str) -> Built:
    """Score drop when a window of tokens is replaced by `baseline_token`: every occluded copy of the ids is built
    in-graph ([N, P, L] -> [N*P, L]) and scored by a copy of the forward graph that reads the ids (so what the model
    derives from the ids besides the embedding, e.g. positions or the pooled token, sees the replaced ids too)."""
    tok = g.token
    if tok.baseline_token is None:
        raise XCompileError(f"{where}: occlusion of token ids needs --set baseline_token=K: the id that replaces an occluded "
                            "token (typically the pad id)")
    given = getattr(method, "given", set())
    window = method.values["window"] if "window" in given else (1,)
    stride = method.values["stride"] if "stride" in given else (1,)
    length = int(g.shape(tok.input)[1])
    keep, spread = occlusion_masks((length,), window, stride)
    n_win = keep.shape[0]
    chunk = min(method.values["chunk"] or n_win, n_win)
    ids_dtype = np.int32 if np.dtype(g.dtypes.get(tok.input, np.int64)) == np.int32 else np.int64
    check_memory(4.0 * 2 * row_activations(g) * chunk + NODE_BYTES * len(g.nodes) * -(-n_win // chunk),
                 f"{where}: occlusion with {n_win} token windows")
    n_classes = g.shape(g.explained)[1]
    target = resolve_target(b, g, g.explained)
    with b.scope("occlusion"):
        onehot = b.one_hot(target, n_classes, "target_onehot")
        base = b.reduce("ReduceSum", b.mul(g.explained, onehot), [1], keepdims=1, hint="score")  # [N, 1]
        onehot3 = b.unsqueeze(onehot, [1], "target_onehot_rows")
        ids = b.unsqueeze(tok.input, [1], "ids_rows")  # [N, 1, L]
        drops = []
        for c, start in enumerate(range(0, n_win, chunk)):
            k = min(chunk, n_win - start)
            with b.scope(f"chunk{c}"):
                m = keep[start:start + k].astype(ids_dtype)  # [k, L]: 1 keep, 0 replace
                occ = b.add(b.mul(ids, b.const(m, ids_dtype, hint="keep_mask")),
                            b.const((1 - m) * tok.baseline_token, ids_dtype, hint="baseline_ids"), "occluded_ids")
                flat = b.reshape(occ, [-1, length], "occluded_batch")
                rename = clone_forward(g, b, flat, b.fresh("fwd"), repeat=k, source=tok.input)
                s = b.reshape(rename(g.explained), [-1, k, n_classes], "scores_per_row")
                s = b.reduce("ReduceSum", b.mul(s, onehot3), [2], keepdims=0, hint="occluded_score")
                drops.append(b.sub(base, s, "drop"))
        drop = drops[0] if len(drops) == 1 else b.op("Concat", drops, "drops", axis=1)  # [N, P]
        heat = b.op("MatMul", [drop, b.const(spread, hint="window_to_tokens")], "token_drop")  # [N, L]
    return Built(heat)
