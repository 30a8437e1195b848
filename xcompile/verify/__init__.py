"""The self-check every `compile` runs before writing (docs/selfcheck.md): the explainer is run on probe inputs and
refused (one XCompileError line) when what it computes is not what its method promises.

- gradient / input_x_gradient: the explainer's gradient (at the explained input; at the embedding output E for token
  ids) against central finite differences of the model's own forward along a few random directions, at two step
  sizes whose disagreement measures the finite differences' own error (float32 noise, ReLU kinks);
- relevance family (LRP, Deep Taylor, PatternAttribution): finite (refused otherwise); sum(relevance) / score against
  the rule set's conservation band where the rule set states one, reported (one warning line, metadata) but not
  refused: on probe rows biases and stabilizers legitimately move it (4 of 430 correct compiles left the band);
- deeplift: finite and complete (sum(relevance) = f(x) - f(x'));
- every other method (path methods, guided backprop / deconvnet, Grad-CAM, occlusion, PatternNet): finite.

Cost: one forward session (finite differences: 1 + 8 rows, forward only) and one explainer session (the probe rows).
`probe=FILE.npy` gives real rows; `verify=false` skips. The result goes into metadata key `xcompile.verify`;
`XCOMPILE_VERIFY_LOG=path` appends one JSON line per compile (model, method, check, error, tolerance, pass)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx

from ..errors import XCompileError, warn_once
from ..graph import TARGET
from ..metadata import ExplainerMeta
from ..sessions import session
from .fd import DIRECTIONS, FD_SAFETY, STEPS, differences  # noqa: F401
from .forward import close, forward_rows, probe_feeds

__all__ = ["prepare", "check", "close", "OPTIONS"]
OPTIONS = ("verify", "probe")  # the common options that belong to the check (not written into params)

# finite differences: directions, step sizes (relative to the probe's RMS), relative tolerance (docs/selfcheck.md)
REL_TOL = 0.03
KINK_SAFETY = 2.0  # x |forward - backward difference| (one kink within the step needs 0.5; several may cancel in it)
COMPLETENESS_TOL = 1e-2  # DeepLIFT: |gap| / max(|f(x) - f(x')|, 1e-3 sum|R|)
GRADIENT_METHODS = ("gradient", "input_x_gradient")


@dataclass
class Probe:
    """What the check measured before the explainer was written (the forward part)."""
    feeds: dict
    rows: int
    target: Optional[np.ndarray] = None
    fd: Optional[dict] = None  # gradient methods: {"point", "dirs", "class", "central", "own"}
    note: str = ""


def wanted(common: dict) -> bool:
    return common.get("verify", True) is not False


def prepare(g, m, common: dict, where: str) -> Optional[Probe]:
    """Before the explainer is assembled (the forward model is intact): probe rows and, for the gradient methods,
    the model's scores along the finite-difference directions. None when the check is switched off."""
    if not wanted(common):
        return None
    feeds, rows = probe_feeds(g, common.get("probe"), where)
    p = Probe(feeds, rows)
    fd_ok = m.name in GRADIENT_METHODS
    if fd_ok and g.virtual:
        fd_ok, p.note = False, "quantized forward: finite differences see its steps; checked finite only"
    if fd_ok and np.dtype(g.dtypes.get(g.data_input, np.float32)) != np.float32:
        fd_ok, p.note = False, "float16 forward: finite differences too coarse; checked finite only"
    if not fd_ok:  # the explainer's own run checks the rest (its scores included)
        return p
    base = forward_rows(g, {k: v[:1] for k, v in feeds.items()}, None, where)
    scores = base["explained"]
    if not np.isfinite(scores).all():
        p.note = "the model's own scores at the probe are not finite (give real rows with --set probe=FILE.npy)"
        return p
    point = base["point"][0].astype(np.float64)
    rng = np.random.default_rng(0)
    scale = float(np.sqrt(np.mean(point ** 2))) or 1.0
    dirs = []
    for _ in range(DIRECTIONS):
        u = rng.standard_normal(point.shape)
        dirs.append(point * u if m.name == "input_x_gradient" else u * scale)
    deltas = []
    for v in dirs:
        for h in STEPS:
            deltas += [h * v, -h * v]
    base1 = {k: v[:1] for k, v in feeds.items()}
    out = forward_rows(g, base1, np.stack([np.zeros_like(point)] + deltas), where)["explained"]
    if np.abs(out[0] - scores[0]).max() > 1e-5 * (1 + np.abs(scores[0]).max()):
        # rows that see each other (statistics over the batch axis): each perturbed row alone, as explained
        out = np.concatenate([forward_rows(g, base1, d[None], where)["explained"] for d in [point * 0] + deltas])
    out = out[1:]
    c = int(np.argmax(scores[0]))
    f = out[:, c].astype(np.float64).reshape(DIRECTIONS, len(STEPS), 2)  # [direction, step, sign]
    p.fd = {"point": point, "dirs": dirs, "class": c, **differences(f, float(scores[0, c]))}
    p.target = np.array([c], np.int64)
    return p


def check(g, m, explainer: onnx.ModelProto, p: Optional[Probe], where: str, common: dict) -> onnx.ModelProto:
    """Run the explainer on the probe rows, compare, record the result in metadata `xcompile.verify`; refuse a
    failure with one line."""
    if p is None:
        result = {"check": "skipped", "pass": True, "note": "verify=false"}
        return _record(explainer, result, where, m)
    if p.note.startswith("the model's own scores"):
        return _record(explainer, {"check": "skipped", "pass": True, "note": p.note}, where, m)
    feeds = dict(p.feeds)
    n = p.rows if p.fd is None else 1
    feeds = {k: v[:n] for k, v in feeds.items()}
    feeds[TARGET] = p.target if p.fd is not None else np.full(n, -1, np.int64)
    sess = session(explainer, optimization="disable")
    names = [o.name for o in sess.get_outputs()]
    try:
        out = dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})))
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{where}: self-check: onnxruntime fails running the explainer of method {m.name!r} on "
                            f"the probe rows: {str(e).splitlines()[0]}") from None
    if g.score_output in out and not np.isfinite(np.asarray(out[g.score_output], np.float64)).all():
        p.note = "the model's own scores at the probe are not finite (give real rows with --set probe=FILE.npy)"
        return _record(explainer, {"check": "skipped", "pass": True, "note": p.note}, where, m)
    rel = out.get("embedding_relevance", out["relevance"]) if g.token is not None else out["relevance"]
    result = {"rows": int(n)}
    bad = [k for k in ("relevance", "embedding_relevance", "completeness_gap") if k in out
           and not np.isfinite(np.asarray(out[k], np.float64)).all()]
    if bad:
        result.update(check="finite", error=float("inf"), tolerance=0.0, **{"pass": False})
        _record(explainer, result, where, m)
        raise XCompileError(f"{where}: self-check failed for method {m.name!r}: output {bad[0]!r} holds NaN/Inf on "
                            f"the probe rows (compile with --set verify=false to skip the check)")
    if p.fd is not None:
        result.update(_gradient(p, np.asarray(rel[0], np.float64), m.name))
    elif m.name == "deeplift":
        result.update(_completeness(rel, out["completeness_gap"]))
    elif "conservation" in out and getattr(m, "uses_rules", False):
        result.update(_conservation(m, out["conservation"]))
        if not result["pass"]:  # a band miss on probe rows is reported, never refused: biases and stabilizers
            # legitimately absorb relevance on rows a model never saw (one-node graphs, GELU with a bias, loops)
            warn_once(f"verify:{where}", f"{where}: self-check: {result['message']} on the probe rows (reported, "
                                         "not refused: biases and epsilon absorb relevance; docs/selfcheck.md)")
            result.update(**{"pass": True, "warning": result.pop("message")})
    else:
        result.update(check="finite", error=0.0, tolerance=0.0, **{"pass": True})
    if p.note:
        result["note"] = p.note
    if not result["pass"] and p.fd is not None:
        from .locate import locate
        result["located"] = locate(g, m, explainer, feeds, p.fd["class"], compare)
    _record(explainer, result, where, m)
    if not result["pass"]:
        raise XCompileError(f"{where}: self-check failed for method {m.name!r}: {result['message']}"
                            + (f"; {result['located']}" if result.get("located") else "")
                            + " (compile with --set verify=false to skip the check)")
    return explainer


def compare(grad: np.ndarray, dirs, fd: dict) -> tuple[float, float]:
    """(error, tolerance) of the directional derivatives a = <grad, v> against the central differences c along the
    same directions: error = |a - c| / max(|c|, |a|) (2-norms over the directions); tolerance = REL_TOL + the finite
    differences' own error estimate (`differences`) / the same scale."""
    a = np.array([float(np.sum(grad * u)) for u in dirs])
    scale = max(float(np.linalg.norm(fd["central"])), float(np.linalg.norm(a)), 1e-30)
    if scale < 1e-12:  # a flat score at the probe: nothing to compare
        return 0.0, REL_TOL
    return float(np.linalg.norm(a - fd["central"])) / scale, REL_TOL + KINK_SAFETY * float(np.linalg.norm(fd["own"])) / scale


def _gradient(p: Probe, grad: np.ndarray, method: str) -> dict:
    """input_x_gradient: <x * grad, u> = <grad, x * u>, so its directions are divided by x again."""
    fd = p.fd
    us = [v / np.where(fd["point"] == 0, 1.0, fd["point"]) for v in fd["dirs"]] if method == "input_x_gradient" \
        else fd["dirs"]
    err, tol = compare(grad, us, fd)
    a = np.array([float(np.sum(grad * u)) for u in us])
    return {"check": "gradient-fd", "directions": DIRECTIONS, "steps": list(STEPS), "class": fd["class"],
            "error": err, "tolerance": tol, "pass": bool(err <= tol), "explainer": a.tolist(),
            "finite_differences": fd["central"].tolist(),
            "message": (f"its gradient differs from central finite differences of the model by {err:.3g} (relative, "
                        f"tolerance {tol:.3g}) along {DIRECTIONS} random directions: explainer {_fmt(a)}, "
                        f"finite differences {_fmt(fd['central'])}")}


def _completeness(rel, gap) -> dict:
    rows = np.asarray(rel, np.float64).reshape(len(rel), -1)
    gap = np.asarray(gap, np.float64)
    delta = rows.sum(1) - gap  # f(x) - f(x')
    denom = np.maximum(np.maximum(np.abs(delta), 1e-3 * np.abs(rows).sum(1)), 1e-6)
    err = float(np.max(np.abs(gap) / denom))
    ok = err <= COMPLETENESS_TOL
    return {"check": "completeness", "error": err, "tolerance": COMPLETENESS_TOL, "pass": bool(ok),
            "message": (f"sum(relevance) misses f(x) - f(x') by {err:.3g} of it (tolerance {COMPLETENESS_TOL:g}): "
                        f"sum {_fmt(rows.sum(1))}, f(x) - f(x') {_fmt(delta)}")}


def _conservation(m, cons) -> dict:
    c = np.asarray(cons, np.float64)
    band = m.ruleset().band if hasattr(m, "ruleset") else None
    if band is None:
        return {"check": "finite", "error": 0.0, "tolerance": 0.0, "pass": True, "conservation": _fmt(c)}
    lo, hi = band
    out = np.where(np.isfinite(c), np.maximum(lo - c, c - hi), 0.0).clip(0)
    err = float(out.max()) if out.size else 0.0
    return {"check": "conservation", "band": [lo, hi], "error": err, "tolerance": 0.0, "pass": err <= 0,
            "conservation": _fmt(c),
            "message": f"sum(relevance) / score = {_fmt(c)} leaves the rule set's band [{lo:g}, {hi:g}]"}


def _fmt(a) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in np.ravel(a)) + "]"


def _record(model: onnx.ModelProto, result: dict, where: str, m) -> onnx.ModelProto:
    result = {k: v for k, v in result.items() if k != "message" or not result.get("pass", True)}
    ExplainerMeta.record(model, verify=result)
    log = os.environ.get("XCOMPILE_VERIFY_LOG")
    if log:
        line = {"model": where, "method": m.name, "rules": getattr(m, "ruleset_name", None), **result}
        with open(log, "a") as f:  # an opt-in measurement log, one JSON line per compile
            f.write(json.dumps(line, sort_keys=True, default=str) + "\n")
    return model
