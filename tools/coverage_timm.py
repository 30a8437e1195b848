"""``tools/coverage.py --source timm``: the timm classification sweep and its section of docs/coverage.md.

Models: ``model_zoo/timm_zoo.py`` (the smallest variant of every timm family first, then further variants up to
``--n``; seeded random weights, small inputs). Each (model, exporter) pair is exported on demand (its own subprocess,
``model_zoo.timm_zoo.run_limited``: wall-clock and resident-memory limit) and measured by the worker of
tools/coverage.py (gradient vs PyTorch autograd, LRP-epsilon vs Zennit where a like-for-like canonization exists,
else its conservation). Order: round 1 (a family's smallest variant) with the legacy exporter, round 1 with dynamo,
then the other variants, legacy then dynamo. Results go to docs/coverage.json under keys ``timm:{model}/{exporter}``
(``--skip-done`` continues a partial sweep: a pair with an export record and every asked family is done, timeouts
and crashes are retried; ``--retry-exports`` also exports the pairs whose export failed again). ``--keep-exports`` keeps the .onnx files (default: removed after measuring; the
.json / .npz records stay).
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "timm:"
RETRY = ("timeout", "crash", "memory")


def key(name: str, exporter: str) -> str:
    return f"{PREFIX}{name}/{exporter}"


def sweep_order(models: list[str], round1: int, exporters: list[str]) -> list[tuple[str, str]]:
    first, rest = models[:round1], models[round1:]
    pairs = [(m, e) for e in exporters for m in first]
    pairs += [(m, e) for m in rest for e in exporters]
    return pairs


def run_pair_limited(name, exporter, families, build: Path, timeout: float):
    """tools/coverage.py's worker in a subprocess under the memory / time limit of model_zoo.timm_zoo."""
    from model_zoo.timm_zoo import run_limited

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        tmp = Path(f.name)
    t0 = time.perf_counter()
    try:
        rc, tail = run_limited([sys.executable, str(Path(__file__).with_name("coverage.py")), "--worker", name,
                                exporter, ",".join(families), str(build), str(tmp)], timeout, env=env)
        if rc == 0 and tmp.stat().st_size:
            res = json.loads(tmp.read_text())
        elif rc in ("timeout", "memory"):
            res = {fam: {"status": rc, "error": tail} for fam in families}
        else:
            res = {fam: {"status": "crash", "error": f"worker rc={rc}: {tail}"} for fam in families}
    finally:
        tmp.unlink(missing_ok=True)
    return res, round(time.perf_counter() - t0, 1)


def sweep(a, db: dict, families: list[str], exporters: list[str], save, report, _export_info) -> int:
    from model_zoo.timm_zoo import BUILD_TIMM, export_pair, selection
    from model_zoo.timm_zoo import families as timm_families

    build = Path(a.build) if a.build else BUILD_TIMM
    build.mkdir(parents=True, exist_ok=True)
    order, skipped = selection(a.n)
    round1 = len(timm_families()) - len(skipped)
    if a.models:
        order, round1 = [m for m in a.models.split(",") if m], 0
    results = db.setdefault("results", {})
    t_start, done = time.perf_counter(), 0
    for name, exporter in sweep_order(order, round1, exporters):
        k = key(name, exporter)
        entry = results.get(k)
        rec_path = build / f"{name}_{exporter}.json"
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
        if a.skip_done and entry:
            if entry.get("export", {}).get("status") != "ok":
                if not a.retry_exports:
                    continue
                rec = None  # export again
            have = entry.get("families", {})
            fams = [f for f in families if f not in have or have[f].get("status") in RETRY]
        else:
            fams = list(families)
        if rec and rec.get("status") == "ok" and "attnlrp" in fams and "LayerNormalization" not in rec.get("op_types", []):
            fams.remove("attnlrp")
        if not fams:
            continue
        onnx_path = build / f"{name}_{exporter}.onnx"
        if not (rec and rec.get("status") == "ok" and onnx_path.exists()):
            rec = export_pair(name, exporter, build, a.timeout)
        base = {"model": name, "exporter": exporter, "source": "timm", "family": rec.get("family"),
                "params": rec.get("params"), "build": rec.get("build"), "export": _export_info(rec)}
        if rec.get("status") != "ok":
            results[k] = {**base, "families": {}, "measured": time.strftime("%Y-%m-%d")}
            print(f"{name:40s} {exporter:6s} export failed: {str(rec.get('error'))[:150]}", flush=True)
        else:
            res, secs = run_pair_limited(name, exporter, fams, build, a.timeout)
            for fr in res.values():
                fr["measured"] = time.strftime("%Y-%m-%d")
            entry = entry if entry and entry.get("export", {}).get("status") == "ok" else {"families": {}}
            entry.update(base, seconds=secs)
            entry.setdefault("families", {}).update(res)
            results[k] = entry
            print(f"{name:40s} {exporter:6s} {secs:6.1f}s  "
                  + " ".join(f"{f}={res[f]['status']}" for f in fams if f in res), flush=True)
            if not a.keep_exports:
                onnx_path.unlink(missing_ok=True)
                Path(str(onnx_path) + ".data").unlink(missing_ok=True)
        done += 1
        save(db)
        report(db)
    print(f"timm: {done} pairs in {time.perf_counter() - t_start:.0f}s")
    return 0


# ------------------------------------------------------------------------------------------------ report
def _reason(stage: str, err: str) -> str:
    """A failure's group: the missing operator, the exporter's own failure class, or the status."""
    err = err or ""
    m = re.findall(r"\((\w+)\): .*? is not supported", err)
    if m:
        return "missing op " + ", ".join(sorted(set(m)))
    if stage == "export":
        m = re.search(r"(\w+(?:Error|Exception)): ?(.{0,90})", err)
        head = f"{m.group(1)}: {m.group(2)}" if m else err[:90]
        head = re.sub(r"0x[0-9a-f]+|\d+", "N", head)
        return "exporter failure: " + head
    return stage


def timm_section(db: dict, cell, ops, grad_tol: float) -> list[str]:
    from model_zoo.timm_zoo import families as timm_families
    from model_zoo.timm_zoo import selection

    rows = sorted((r for k, r in db.get("results", {}).items() if k.startswith(PREFIX)),
                  key=lambda r: (r["model"], r["exporter"]))
    if not rows:
        return []
    try:
        order, skipped = selection()
        all_fams = timm_families()
    except Exception:  # noqa: BLE001 - no timm here: report what was measured
        order, skipped, all_fams = [], {}, {}
    exporters = ("legacy", "dynamo")
    st = {e: {"attempted": 0, "exported": 0, "compiled": 0, "grad_match": 0, "lrp_run": 0, "lrp_oracle": 0,
              "lrp_match": 0, "measured": 0} for e in exporters}
    worst = {"gradient": (0.0, ""), "lrp": (0.0, "")}
    table = ["| model (family) | exporter | ops | gradient | lrp (epsilon) | lrp (attnlrp) | worst err | compile s |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[str, list[str]] = {}
    fams_measured = set()
    for r in rows:
        e, exp, fams = r["exporter"], r.get("export", {}), r.get("families", {})
        s = st[e]
        s["attempted"] += 1
        label = f"{r['model']} ({e})"
        if exp.get("status") != "ok":
            groups.setdefault(_reason("export", exp.get("error") or ""), []).append(label)
            table.append(f"| {r['model']} ({r.get('family')}) | {e} | - | ❌ export failed | - | - | - | - |")
            continue
        s["exported"] += 1
        if fams:
            s["measured"] += 1
            fams_measured.add(r.get("family"))
        g, lr = fams.get("gradient") or {}, fams.get("lrp") or {}
        if g and g.get("status") not in ("compile-fail", "timeout", "crash", "memory"):
            s["compiled"] += 1
        s["grad_match"] += g.get("status") == "match"
        s["lrp_run"] += lr.get("status") in ("match", "mismatch", "runs (no oracle)")
        s["lrp_oracle"] += bool(lr.get("oracle"))
        s["lrp_match"] += lr.get("status") == "match"
        errs = []
        for f, fr in fams.items():
            if "err" in fr and fr["err"] == fr["err"]:
                errs.append(fr["err"])
                if f in worst and fr["err"] > worst[f][0]:
                    worst[f] = (fr["err"], label)
            if fr.get("status") not in ("match", "runs (no oracle)"):
                why = fr.get("status", "?")
                if why == "mismatch" and fr.get("f32_noise") is not None:
                    why = ("mismatch within 3x PyTorch's own float32-vs-float64 deviation (float32 conditioning of"
                           " the random-weight model)" if fr["err"] <= 3 * fr["f32_noise"]
                           else "mismatch beyond PyTorch's own float32 deviation")
                    if fr.get("tie_error"):
                        why += ", against plain float64 autograd (the tie-aware oracle could not pair the kinked units)"
                if why in ("compile-fail", "run-fail", "crash", "oracle-fail"):
                    why = _reason(why, fr.get("error") or "")
                    if not why.startswith("missing op"):
                        why = f"{fr.get('status')}: {re.sub(r'[0-9]+', 'N', (fr.get('error') or '')[:100])}"
                groups.setdefault(f"{f}: {why}", []).append(label)
        comp = " / ".join(f"{fams[f]['compile_s']:.1f}" if fams.get(f, {}).get("compile_s") is not None else "-"
                          for f in ("gradient", "lrp", "attnlrp") if f != "attnlrp" or f in fams)
        table.append(f"| {r['model']} ({r.get('family')}) | {e} | {ops(exp)} | {cell(fams.get('gradient'))} | "
                     f"{cell(fams.get('lrp'))} | {cell(fams.get('attnlrp'))} | "
                     f"{f'{max(errs):.1e}' if errs else '-'} | {comp} |")
    models = sorted({r["model"] for r in rows})
    fam_tried = {r.get("family") for r in rows}
    lines = ["", "# timm models", "",
             "Generated by `OMP_NUM_THREADS=1 python tools/coverage.py --source timm --skip-done` (same worker, oracles"
             " and columns as the torchvision table). Models: `model_zoo/timm_zoo.py` (timm "
             f"{db.get('env', {}).get('timm', '?')}): every timm family (one module of `timm.models` = one family) with"
             " its smallest variant first, then further variants; `pretrained=False`, `torch.manual_seed(0)`,"
             " zero-initialised parameters redrawn at random, BatchNorm statistics calibrated on seeded images;"
             " 10 classes; input 64x64 (`img_size=64` where the constructor takes it), else the model's default size."
             " The gradient oracle is float64 autograd ('f32 autograd' where the model's forward cannot run in float64),"
             " tie-aware as above. LRP-epsilon is compared with Zennit where `timm_zennit_plan` in tools/coverage.py"
             " gives a like-for-like canonization, elsewhere its conservation sum(R) / score is shown.", "",
             "## timm summary", "",
             f"- **families**: {len(fams_measured)} measured of {len(all_fams) or '?'} timm families"
             f" ({len(fam_tried)} attempted); **models**: {len(models)} attempted of the {len(order)} selected",
             ]
    for e in exporters:
        s = st[e]
        lines.append(f"- **{e}**: {s['attempted']} attempted, {s['exported']} exported, {s['compiled']} compile"
                     f" (gradient), {s['grad_match']}/{s['measured']} gradient match autograd, LRP-epsilon runs on"
                     f" {s['lrp_run']}, {s['lrp_match']}/{s['lrp_oracle']} match Zennit")
    for f, (v, where) in worst.items():
        if where:
            lines.append(f"- **worst {f} error**: {v:.1e} ({where})")
    if skipped:
        lines.append("- **families left out** (memory): " + "; ".join(f"{f}: {w}" for f, w in skipped.items()))
    todo = [m for m in order if m not in set(models)]
    if todo:
        lines.append(f"- **not reached yet** ({len(todo)} of the selection; continue with `--skip-done`): "
                     + ", ".join(todo))
    lines += ["", "## timm failures by reason", ""]
    for why, labels in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"- **{why}** ({len(labels)}): " + ", ".join(labels))
    if not groups:
        lines.append("- none")
    lines += ["", "## timm results", ""] + table
    return lines
