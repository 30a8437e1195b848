"""PatternNet and PatternAttribution (Kindermans et al. 2018, "Learning how to explain neural networks: PatternNet and PatternAttribution"; docs/patterns.md).

Backward per input: start from the target score; ReLUs gate by the forward activation (the gradient's
entry); every fitted linear layer propagates with its pattern A in place of W (PatternNet) or with W ⊙ A
(PatternAttribution); MaxPool uses the forward switches; no final multiplication by x.

The patterns come from `xcompile fit-patterns` (``--set patterns=patterns.npz``) or are fitted while compiling
(``--set data=train.npy``); they become initializers of the emitted graph (the explainer is self-contained).
"""
from __future__ import annotations

import numpy as np

from ..backward.ops.linear import conv_input_grad
from ..backward.table import TABLE, Backward
from ..errors import XCompileError
from ..options import positive_int
from .base import Method, Param, register


def _kind(v):
    v = str(v).lower()
    if v not in ("relu", "linear", "relu_all"):
        raise ValueError(v)
    return v


def _weight(ctx):
    """The emitted weight for this node (pattern or W ⊙ A), or None when the node has no fitted pattern."""
    M = ctx.method.emitted.get(ctx.node.output[0])
    if M is None:
        return None
    return ctx.b.const(M.astype(np.float32), hint="pattern")


def _conv(ctx, gy):
    M = _weight(ctx)
    if M is None:
        return TABLE["Conv"].fn(ctx, gy)
    return [conv_input_grad(ctx, gy[0], M), None, None]


def _gemm(ctx, gy):
    M = _weight(ctx)
    if M is None or not ctx.needs(0):
        return TABLE["Gemm"].fn(ctx, gy)
    b = ctx.b
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    g = gy[0]
    # M has the layout of B and already includes alpha (it is the pattern of the effective weight)
    dA = (b.op("Gemm", [M, g], "dA", transA=tb, transB=1) if ta
          else b.op("Gemm", [g, M], "dA", transB=0 if tb else 1))
    return [dA, None, None]


def _matmul(ctx, gy):
    if ctx.node.output[0] not in ctx.method.emitted or not ctx.needs(0):
        return TABLE["MatMul"].fn(ctx, gy)
    M = ctx.method.emitted[ctx.node.output[0]]          # [D, C]
    Mt = ctx.b.const(np.ascontiguousarray(M.T).astype(np.float32), hint="pattern_t")
    return [ctx.b.op("MatMul", [gy[0], Mt], "dA"), None]


class _PatternMethod(Method):
    token_relevance = None
    seed = "score"
    attribution = False
    params = {
        "patterns": Param(None, "a patterns file written by `xcompile fit-patterns`"),
        "pattern": Param("relu", "relu (two-component where a ReLU gates the layer, linear elsewhere; default), relu_all (two-component everywhere) or linear", _kind),
        "data": Param(None, "fit the patterns while compiling from this .npy/.npz/image folder (instead of patterns=)"),
        "preprocess": Param(None, "image preprocessing for data= (as `xcompile run --preprocess`)"),
        "batch_size": Param(64, "rows per onnxruntime call when fitting with data= (a positive integer)", positive_int),
    }
    overrides = {"Conv": Backward(_conv, TABLE["Conv"].inputs),
                 "Gemm": Backward(_gemm, TABLE["Gemm"].inputs),
                 "MatMul": Backward(_matmul, TABLE["MatMul"].inputs)}

    def prepare(self, g, where):
        from ..patterns.fit import DataSource, Fitter, fingerprint, fit_patterns, linear_layers, load_stats
        layers = linear_layers(g, where)
        fp = fingerprint(g, layers)
        if self["patterns"]:
            stats = load_stats(self["patterns"])
            stats.check(fp, str(self["patterns"]))
        elif self["data"]:
            fitter = Fitter(g, where)
            src = DataSource(self["data"], fitter.sample_shape, self["preprocess"])
            stats = fit_patterns(fitter, src.batches(self["batch_size"]), where)
        else:
            raise XCompileError(f"method {self.name!r} needs fitted patterns: --set patterns=PATTERNS.npz "
                                f"(from `xcompile fit-patterns`) or --set data=TRAIN.npy")
        if stats.rows == 0:
            raise XCompileError(f"{self['patterns'] or self['data']}: the patterns were fitted on no data")
        patterns = stats.patterns(layers, self["pattern"])
        self.emitted = {}
        for L in layers:
            A = patterns[L.key]
            if self.attribution:
                W = L.to_layout(L.w2d)  # effective weight (alpha folded in), weight layout
                self.emitted[L.key] = W * A
            else:
                self.emitted[L.key] = A


@register
class PatternNet(_PatternMethod):
    name = "patternnet"
    summary = "signal back-projected with the fitted patterns A in place of W"


@register
class PatternAttribution(_PatternMethod):
    name = "patternattribution"
    summary = "relevance propagated with W ⊙ A (fitted patterns)"
    attribution = True
