"""The axioms table (conservation and positivity: Montavon et al. 2018, "Methods for interpreting and understanding
deep neural networks"; implementation invariance: Sundararajan et al. 2017; docs/evaluation.md), measured for any
compiled explainer:

| axiom | measured as | expected to hold for |
|---|---|---|
| conservation  Σ_i R_i (+ε) = f(x) | per sample |Σ R − f_c(x)| / |f_c(x)| (IG: against f_c(x) − f_c(x')) | relevance-family methods with conservative rules (LRP, Deep Taylor, neuralized), IG (completeness) |
| positivity  R_i ≥ 0 | share of relevance mass that is negative, Σ min(R,0) / Σ |R| | z+ / flat / w² / Deep Taylor rule sets, occlusion never |
| continuity  R(x) ≈ R(x + ε) | median ‖R(x+δ) − R(x)‖ / ‖R(x)‖ for δ ~ N(0, (noise·range)²) | smooth methods (SmoothGrad, IG, LRP with ε / z+ rules); plain gradients can shatter |
| implementation invariance  R(x; f_θ) = R(x; f_θ') | max |R_a − R_b| / max |R_a| for two explainers of functionally equal graphs | everything xcompile emits: graphs are canonicalized (BatchNorm folded, Identity dropped) before rules apply |

Every row reports the measured value, the threshold it is judged against, and ``passed``; ``expected`` says
whether the method is supposed to satisfy the axiom (None: no claim), so a failing row where the
axiom is not expected is information, not a bug."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..errors import XCompileError
from ..graph import attr
from ..runtime.explainer import Explainer

RELEVANCE_FAMILY = {"lrp", "deep_taylor", "neuralized"}  # PatternAttribution has no final x-multiplication: not conservative
POSITIVE_RULESETS = {"zplus", "z-plus", "flat", "wsquare", "w2", "zplus-flat"}


@dataclass
class AxiomResult:
    axiom: str
    value: float
    threshold: float
    passed: bool
    expected: bool | None
    detail: str

    def as_dict(self):
        return asdict(self)


def as_explainer(e) -> Explainer:
    return e if isinstance(e, Explainer) else Explainer(e)


def explainer_meta(e: Explainer) -> dict:
    """method / params recorded by the compiler in the explainer's metadata."""
    return e.meta.as_dict()


def _target_scores(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    return scores[np.arange(len(scores)), target]


def conservation(ex: Explainer, x, target=None, tol: float = 0.01, meta: dict | None = None) -> AxiomResult:
    meta = meta if meta is not None else explainer_meta(ex)
    method = meta.get("method", "?")
    res = ex.explain(x, target)
    t = res.predicted if target is None else np.broadcast_to(np.asarray(target, np.int64), (len(x),))
    t = np.where(np.asarray(t) < 0, res.predicted, t)
    f = _target_scores(res.scores.astype(np.float64), t)
    ref, what = f, "f_c(x)"
    if method == "integrated_gradients":  # completeness: Σ IG = f(x) - f(x')
        base = float(meta.get("params", {}).get("baseline", 0.0))
        fb = _target_scores(ex.explain(np.full_like(x, base), t).scores.astype(np.float64), t)
        ref, what = f - fb, "f_c(x) - f_c(x')"
    total = res.relevance.reshape(len(x), -1).astype(np.float64).sum(axis=1)
    err = np.abs(total - ref) / np.maximum(np.abs(ref), 1e-12)
    expected = True if (method in RELEVANCE_FAMILY or method == "integrated_gradients") else (False if method != "?" else None)
    return AxiomResult("conservation", float(np.max(err)), tol, bool(np.max(err) <= tol), expected,
                       f"max over {len(x)} inputs of |sum R - {what}| / |{what}| (median {np.median(err):.3g})")


def positivity(ex: Explainer, x, target=None, tol: float = 1e-6, meta: dict | None = None) -> AxiomResult:
    meta = meta if meta is not None else explainer_meta(ex)
    method = meta.get("method", "?")
    rules = str(meta.get("params", {}).get("rules", "")).lower()
    r = ex.explain(x, target).relevance.reshape(len(x), -1).astype(np.float64)
    neg = np.minimum(r, 0).sum(axis=1)
    mass = np.abs(r).sum(axis=1)
    share = float(-neg.sum() / max(mass.sum(), 1e-30))
    expected = True if (method == "deep_taylor" or (method == "lrp" and rules in POSITIVE_RULESETS)) else None
    all_pos = float(np.mean(r.min(axis=1) >= -tol * np.maximum(np.abs(r).max(axis=1), 1e-30)))
    return AxiomResult("positivity", share, tol, bool(share <= tol), expected,
                       f"negative share of relevance mass; {all_pos:.0%} of inputs have no negative relevance")


def continuity(ex: Explainer, x, target=None, noise: float = 1e-3, tol: float = 0.1, seed: int = 0,
               meta: dict | None = None) -> AxiomResult:
    """Relative relevance change under a tiny perturbation (same target class as the clean input)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    res = ex.explain(x, target)
    t = res.predicted if target is None else np.broadcast_to(np.asarray(target, np.int64), (len(x),))
    t = np.where(np.asarray(t) < 0, res.predicted, t).astype(np.int64)
    span = (x.reshape(len(x), -1).max(axis=1) - x.reshape(len(x), -1).min(axis=1)).reshape((-1,) + (1,) * (x.ndim - 1))
    xp = (x + rng.standard_normal(x.shape).astype(np.float32) * noise * np.maximum(span, 1e-12)).astype(np.float32)
    rp = ex.explain(xp, t).relevance
    a, b = res.relevance.reshape(len(x), -1).astype(np.float64), rp.reshape(len(x), -1).astype(np.float64)
    rel = np.linalg.norm(b - a, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-30)
    med = float(np.median(rel))
    return AxiomResult("continuity", med, tol, bool(med <= tol), None,
                       f"median ||R(x+d) - R(x)|| / ||R(x)||, d ~ N(0, ({noise:g} * range)^2); max {rel.max():.3g}")


def implementation_invariance(ex_a: Explainer, ex_b: Explainer, x, target=None, tol: float = 1e-4,
                              meta: dict | None = None) -> AxiomResult:
    ra, rb = ex_a.explain(x, target), ex_b.explain(x, target)
    score_gap = float(np.abs(ra.scores - rb.scores).max() / max(np.abs(ra.scores).max(), 1e-30))
    if score_gap > 1e-3:
        raise XCompileError(f"implementation invariance: the two models are not functionally equal "
                            f"(relative score difference {score_gap:.3g})")
    d = float(np.abs(ra.relevance - rb.relevance).max() / max(np.abs(ra.relevance).max(), 1e-30))
    return AxiomResult("implementation_invariance", d, tol, bool(d <= tol), True,
                       f"max |R_a - R_b| / max |R_a| over {len(x)} inputs (scores differ by {score_gap:.1e})")


def check_axioms(explainer, x, target=None, *, equivalent=None, noise: float = 1e-3,
                 conservation_tol: float = 0.01, positivity_tol: float = 1e-6, continuity_tol: float = 0.1,
                 invariance_tol: float = 1e-4, seed: int = 0) -> list[AxiomResult]:
    """All four axioms for one explainer. ``equivalent``: an explainer of a functionally equal graph
    compiled with the same method (skip invariance when None)."""
    ex = as_explainer(explainer)
    meta = explainer_meta(ex)
    x = np.asarray(x, np.float32)
    rows = [conservation(ex, x, target, conservation_tol, meta), positivity(ex, x, target, positivity_tol, meta),
            continuity(ex, x, target, noise, continuity_tol, seed, meta)]
    if equivalent is not None:
        rows.append(implementation_invariance(ex, as_explainer(equivalent), x, target, invariance_tol, meta))
    return rows


# ------------------------------------------------------------------ functionally equal graphs
def fold_batchnorm_variant(model) -> onnx.ModelProto:
    """A functionally equal copy of ``model`` with every Conv -> BatchNormalization pair folded by hand
    (numpy), for the implementation-invariance check. Raises if the model has no such pair."""
    from onnx import numpy_helper
    m = onnx.load(model) if not isinstance(model, onnx.ModelProto) else onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)

    def val(name):
        return numpy_helper.to_array(inits[name]) if name in inits else consts.get(name)

    producer = {o: n for n in g.node for o in n.output}
    users = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    folded, drop = 0, []
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(users.get(conv.output[0], [])) != 1:
            continue
        scale, bias, mean, var = (val(bn.input[k]) for k in range(1, 5))
        w = val(conv.input[1])
        if any(v is None for v in (scale, bias, mean, var, w)):
            continue
        eps = attr(bn, "epsilon", 1e-5)
        b = val(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0], w.dtype)
        k = scale / np.sqrt(var + eps)
        wn, bnew = (w * k.reshape(-1, 1, 1, 1)).astype(w.dtype), ((b - mean) * k + bias).astype(w.dtype)
        wname, bname = f"{conv.name or conv.output[0]}_bnfolded_W", f"{conv.name or conv.output[0]}_bnfolded_B"
        g.initializer.extend([numpy_helper.from_array(wn, wname), numpy_helper.from_array(bnew, bname)])
        del conv.input[1:]
        conv.input.extend([wname, bname])
        conv.output[0] = bn.output[0]  # conv now writes the BN's output
        drop.append(bn)
        folded += 1
    if not folded:
        raise XCompileError("model has no Conv -> BatchNormalization pair to fold")
    for n in drop:
        g.node.remove(n)
    onnx.checker.check_model(m)
    return m


def identity_variant(model) -> onnx.ModelProto:
    """A functionally equal copy with an Identity node inserted after the data input."""
    from onnx import helper
    m = onnx.load(model) if not isinstance(model, onnx.ModelProto) else onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    x = g.input[0].name
    new = x + "__ident"
    for n in g.node:
        for k, i in enumerate(n.input):
            if i == x:
                n.input[k] = new
    g.node.insert(0, helper.make_node("Identity", [x], [new], name="variant/identity"))
    return m
