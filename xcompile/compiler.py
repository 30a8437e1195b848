"""The pipeline: load -> canonicalize -> probe shapes -> choose method/rules -> emit backward -> write.

Reading the model is `load.forward.load_forward`; this module only joins it to a method and the writer."""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from . import verify
from .backward.builder import Builder
from .errors import XCompileError, warn_once
from .load.forward import COMMON, jsonable, load_forward, reserved_names, split_params
from .metadata import ExplainerMeta, source_class_names
from .methods import METHODS
from .methods.tokens import refuse as refuse_tokens
from .methods.tokens import token_outputs
from .methods.treeshap import refuse_gradients as refuse_trees
from .version import __version__
from .write.writer import assemble

__all__ = ["compile", "make_method", "method_class", "load_forward", "split_params", "COMMON"]


def method_class(method: str):
    if method not in METHODS:
        raise XCompileError(f"unknown method {method!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[method]


def make_method(cls, method: str, rules, params: dict):
    """The method object (its own options validated) and the common model-reading options."""
    common, rest = split_params(dict(params))
    if rules is not None:
        if not getattr(cls, "uses_rules", False):
            raise XCompileError(f"option --rules applies to rule-based methods, not to {method!r}")
        rest["rules"] = rules
    return cls(**rest), common


# ops through which an infinite constant is a legitimate mask or bound (-inf before a softmax, Clip's open end)
_INF_OK = frozenset({"Add", "Sub", "Where", "Max", "Min", "Clip", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
                     "Equal", "Expand", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Concat", "Identity", "Cast",
                     "Trilu", "ConstantOfShape"})


def warn_non_finite_weights(model: onnx.ModelProto, where: str) -> None:
    """ONE warning line when a float initializer holds NaN, or Inf where it is not a mask or a bound (the explainer's
    outputs would be NaN)."""
    readers: dict = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    bad = []
    for t in model.graph.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            a = numpy_helper.to_array(t)
            if not a.size or np.isfinite(a).all():
                continue
            if np.isnan(a).any() or not readers.get(t.name, set()) <= _INF_OK:
                bad.append(t.name)
    if bad:
        warn_once(f"weights:{where}", f"{where}: {len(bad)} weight tensor(s) hold NaN or Inf values (first: {bad[0]!r}); "
                                      "scores and relevance will not be meaningful")


def compile(model, method: str, rules=None, *, where: str | None = None, **params) -> onnx.ModelProto:  # noqa: A001
    """Compile `model` (path, bytes or ModelProto) into an explainer ModelProto."""
    if not isinstance(model, (str, os.PathLike, bytes, bytearray, onnx.ModelProto)):
        raise XCompileError(f"compile({type(model).__name__}): expected a path, bytes or an onnx.ModelProto")
    if not isinstance(method, str):
        raise XCompileError(f"method={method!r}: a method name such as 'gradient' or 'lrp'")
    where = where or (str(model) if isinstance(model, (str, os.PathLike)) else "model")
    cls = method_class(method)
    if getattr(cls, "compile_model", None):  # methods that rebuild the whole graph (neuralized models)
        return cls.compile_model(model, rules=rules, where=where, **params)
    m, common = make_method(cls, method, rules, params)
    g = load_forward(model, common, where)
    scores = g.shape(g.explained) or ()
    if any(d == 0 for d in scores[1:]):  # nothing to explain (TopK over 0 classes would fail the checker)
        raise XCompileError(f"{where}: the score output {g.explained!r} has shape {list(scores)}: 0 classes")
    refuse_trees(g.model, method, where)  # a tree ensemble: treeshap or occlusion (methods/treeshap)
    warn_non_finite_weights(g.model, where)
    refuse_tokens(m, g, where)
    m.prepare(g, where)
    m.check(g, where)
    b = Builder(g.opset, prefix=f"xc/{method}", reserved=reserved_names(g.model))
    built = m.build(g, b, where)
    if g.token is not None:
        built = token_outputs(m, g, b, built)
    given = {**m.values, **{k: v for k, v in common.items() if v is not None and k not in verify.OPTIONS}}
    band = getattr(m, "band", None)
    meta = ExplainerMeta(__version__, method,
                         {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(given.items()) if jsonable(v)},
                         g.graph_input, g.score_output, g.explained, g.input_names, g.token is not None,
                         band=None if band is None else list(band), class_names=source_class_names(g.model))
    if g.token is not None:
        meta.embedding, meta.vocab, meta.baseline_token = g.data_input, g.token.vocab, g.token.baseline_token
        meta.token_relevance = m.token_relevance
        meta.special_tokens = list(g.feed_plan[g.token.input][4])
    probe = verify.prepare(g, m, common, where)  # before assembling: a model over 2 GiB lends its proto to it
    try:
        model = assemble(g, b, built, meta, keep_outputs=common["keep_outputs"], where=where)
        return verify.check(g, m, model, probe, where, common)
    finally:
        verify.close(g)
