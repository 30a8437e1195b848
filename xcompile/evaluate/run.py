"""`xcompile evaluate`: compile several methods from one model, explain the same inputs with each, and
score pixel-flipping / region-perturbation curves for all of them (batched onnxruntime calls), then
write a plot PNG, a JSON and a CSV of the numbers.

Method specs: comma-separated ``method[:rules][{key=value,key=value}]``, e.g.
``gradient,integrated_gradients{steps=16},lrp:epsilon-plus-flat,occlusion{window=2,stride=1}``."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import XCompileError
from ..files import csv_text, write_text
from . import flipping


@dataclass
class MethodSpec:
    method: str
    rules: str | None = None
    params: dict = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        if not self.label:
            extra = ",".join(f"{k}={v}" for k, v in self.params.items())
            self.label = self.method + (f":{self.rules}" if self.rules else "") + (f"{{{extra}}}" if extra else "")


def split_top(text: str, sep: str = ",") -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out if s.strip()]


def parse_specs(text) -> list[MethodSpec]:
    if isinstance(text, (list, tuple)):
        items = [s for t in text for s in split_top(t)]
    else:
        items = split_top(str(text))
    specs = []
    for item in items:
        m = re.fullmatch(r"([A-Za-z_][\w]*)(?::([^{}]+))?(?:\{(.*)\})?", item)
        if not m:
            raise XCompileError(f"--methods: cannot read {item!r} (expected method[:rules][{{key=value,...}}])")
        params = {}
        for kv in split_top(m.group(3) or "", ","):
            if "=" not in kv:
                raise XCompileError(f"--methods {item!r}: option {kv!r} is not key=value")
            k, v = kv.split("=", 1)
            params[k.strip()] = v.strip()
        specs.append(MethodSpec(m.group(1), m.group(2).strip() if m.group(2) else None, params))
    if not specs:
        raise XCompileError("--methods: no method given")
    return specs


def compile_specs(model, specs: list[MethodSpec], out_dir: Path | None = None, echo=None) -> dict:
    """-> {label: Explainer}; a method that cannot be compiled here is reported and skipped."""
    from .. import compiler
    from ..runtime.explainer import Explainer
    from ..write.writer import save
    explainers = {}
    for s in specs:
        try:
            m = compiler.compile(model, s.method, rules=s.rules, **s.params)
        except XCompileError as e:
            if echo:
                echo(f"skipped {s.label}: {e}")
            continue
        if out_dir is not None:
            p = Path(out_dir) / f"explainer_{re.sub(r'[^A-Za-z0-9_.-]+', '_', s.label)}.onnx"
            save(m, p)
        explainers[s.label] = Explainer(m)
    return explainers


def explain_all(explainers: dict, x: np.ndarray, target, batch_size: int = 32, progress=None) -> dict:
    """-> {label: (relevance, seconds)}."""
    out = {}
    task = progress.add_task("explaining", total=len(explainers) * len(x)) if progress else None
    for label, ex in explainers.items():
        t0 = time.perf_counter()
        parts = []
        for i in range(0, len(x), batch_size):
            parts.append(ex.explain(x[i:i + batch_size], None if target is None else target[i:i + batch_size]).relevance)
            if progress:
                progress.advance(task, len(parts[-1]))
        out[label] = (np.concatenate(parts), time.perf_counter() - t0)
    return out


def flip_all(model, relevances: dict, x, target, metric: str, *, score: str = "softmax", batch_size: int = 256,
             progress=None, **kw) -> dict:
    """-> {label: Curves}; the same inputs and the same scorer for every method."""
    scorer = flipping.Scorer(model, score=score, batch_size=batch_size)
    total = flipping.total_copies(metric, len(x), x.shape[1:], **kw) * len(relevances)
    task = progress.add_task(metric.replace("_", " "), total=total) if progress else None
    adv = (lambda n: progress.advance(task, n)) if progress else None
    fn = flipping.pixel_flipping if metric == "pixel_flipping" else flipping.region_perturbation
    res = {}
    for label, r in relevances.items():
        res[label] = fn(scorer, x, r, target, advance=adv, **kw)
    if progress:
        progress.update(task, completed=total)
    return res


def write_outputs(out: Path, metric: str, results: dict, timings: dict | None = None, title: str = "",
                  prefix: str = "") -> list[Path]:
    from .plots import plot_curves
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}{metric}"
    png = plot_curves(out / f"{stem}.png", results, metric, title)
    data = {label: {**c.as_dict(), "explain_seconds": (timings or {}).get(label)} for label, c in results.items()}
    js = out / f"{stem}.json"
    write_text(js, json.dumps(data, indent=1, sort_keys=True))
    cs = out / f"{stem}.csv"
    steps = max(c.curves.shape[1] for c in results.values()) if results else 0
    write_text(cs, csv_text(["method", "mean_auc", "std_auc", "n_inputs", "steps"] + [f"step_{k + 1}" for k in range(steps)],
                            [[label, f"{c.mean_auc:.6g}", f"{c.auc.std():.6g}", len(c.auc), c.curves.shape[1]]
                             + [f"{v:.6g}" for v in c.mean_curve] for label, c in results.items()]))
    return [png, js, cs]


def evaluate(model, specs, x: np.ndarray, target=None, *, metrics=("pixel_flipping",), out=None,
             score: str = "softmax", explain_batch: int = 32, score_batch: int = 256, progress=None,
             echo=None, flip_kw: dict | None = None, region_kw: dict | None = None, title: str = "",
             prefix: str = "") -> dict:
    """Compile, explain, flip. Returns {metric: {label: Curves}} (and writes files when ``out``)."""
    specs = parse_specs(specs) if not isinstance(specs, list) or (specs and isinstance(specs[0], str)) else specs
    x = np.asarray(x, np.float32)
    explainers = compile_specs(model, specs, echo=echo)
    if not explainers:
        raise XCompileError("none of the requested methods could be compiled for this model")
    rel = explain_all(explainers, x, target, explain_batch, progress)
    relevances = {k: v[0] for k, v in rel.items()}
    timings = {k: v[1] for k, v in rel.items()}
    results = {}
    for metric in metrics:
        kw = dict(flip_kw or {}) if metric == "pixel_flipping" else dict(region_kw or {})
        results[metric] = flip_all(model, relevances, x, target, metric, score=score, batch_size=score_batch,
                                   progress=progress, **kw)
        if out is not None:
            write_outputs(out, metric, results[metric], timings, title, prefix)
    results["_timings"] = timings
    results["_relevance"] = relevances
    return results
