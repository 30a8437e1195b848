"""Runtime conformance: every method's explainer of the shipped digits CNN and langid model, run on onnxruntime
(Python, the reference), onnxruntime-web (WASM) in headless Chromium, onnxruntime-node, OpenVINO (f32 hint) and
onnx's ReferenceEvaluator; max |ours - reference| / max |reference| of relevance and scores per runtime x explainer.

    python tools/conformance.py [--out docs/conformance.json] [--markdown]

Needs: chromium (/usr/bin/chromium) + playwright (Python), npm (onnxruntime-node is installed with
--ignore-scripts into ~/.cache/xcompile/node), openvino. tests/test_conformance.py runs the same matrix.
docs/deployment.md has the table and how to run an explainer from JavaScript and OpenVINO."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORT_NODE_VERSION = "1.31.1"
ROWS = 4  # inputs per model: the first held-out digits / example words, each explained at batch 1
TOL = 1e-5
# (label, method, rules, options); "@digits": patterns fitted on the held-out digits (patterns/fit.py)
DIGITS = [
    ("gradient", "gradient", None, {}),
    ("input_x_gradient", "input_x_gradient", None, {}),
    ("integrated_gradients", "integrated_gradients", None, {"steps": 16}),
    ("smoothgrad", "smoothgrad", None, {"samples": 8, "seed": 0}),
    ("guided_backprop", "guided_backprop", None, {}),
    ("deconvnet", "deconvnet", None, {}),
    ("gradcam", "gradcam", None, {}),
    ("occlusion", "occlusion", None, {"window": 2, "stride": 2}),
    ("lrp_auto", "lrp", "auto", {}),
    ("lrp_epsilon_plus_flat", "lrp", "epsilon-plus-flat", {}),
    ("lrp_epsilon_gamma_box", "lrp", "epsilon-gamma-box", {"low": 0.0, "high": 1.0}),
    ("deep_taylor", "deep_taylor", None, {"low": 0.0, "high": 1.0}),
    ("deeplift", "deeplift", None, {}),
    ("patternnet", "patternnet", None, {"patterns": "@digits"}),
    ("patternattribution", "patternattribution", None, {"patterns": "@digits"}),
]
LANGID = [
    ("gradient", "gradient", None, {}),
    ("input_x_gradient", "input_x_gradient", None, {}),
    ("integrated_gradients", "integrated_gradients", None, {"steps": 16, "baseline_token": 0}),
    ("smoothgrad", "smoothgrad", None, {"samples": 8, "seed": 0}),
    ("guided_backprop", "guided_backprop", None, {}),
    ("deconvnet", "deconvnet", None, {}),
    ("gradcam", "gradcam", None, {}),
    ("occlusion", "occlusion", None, {"window": 1, "stride": 1, "baseline_token": 0}),
    ("lrp_auto", "lrp", "auto", {}),
    ("lrp_epsilon_plus_flat", "lrp", "epsilon-plus-flat", {}),
    ("deeplift", "deeplift", None, {"baseline_token": 0}),
]
MODELS = {"digits": ("digits_cnn.onnx", DIGITS), "langid": ("langid_cnn.onnx", LANGID)}
RUNTIMES = ("onnxruntime-web", "onnxruntime-node", "openvino", "reference")


def build(folder: Path, echo=print) -> list[dict]:
    """Compile every method for both models into ``folder``; returns [{model, label, path}] (refusals listed)."""
    import xcompile
    from xcompile.commands.demo import shipped
    from xcompile.errors import XCompileError
    from xcompile.write.writer import save
    folder.mkdir(parents=True, exist_ok=True)
    from xcompile.patterns.fit import fit_file
    digits_npy = folder / "digits_heldout_x.npy"
    np.save(digits_npy, np.load(shipped("digits_heldout.npz"))["x"].astype(np.float32))
    patterns = fit_file(shipped("digits_cnn.onnx"), digits_npy, folder / "digits_patterns.npz", progress=False)
    del patterns
    out = []
    for model, (onnx_file, methods) in MODELS.items():
        for label, method, rules, opts in methods:
            opts = {k: (str(folder / "digits_patterns.npz") if v == "@digits" else v) for k, v in opts.items()}
            path = folder / f"{model}_{label}.onnx"
            try:
                save(xcompile.compile(shipped(onnx_file), method, rules=rules, **opts), path)
            except XCompileError as e:
                echo(f"{model} {label}: not compiled ({e})")
                continue
            out.append({"model": model, "label": label, "path": path})
    return out


def inputs(model: str) -> list[np.ndarray]:
    """ROWS inputs at batch 1: the first held-out digits; the langid example words (page order), encoded."""
    from xcompile.commands.demo import heldout_words, shipped
    if model == "digits":
        x = np.load(shipped("digits_heldout.npz"))["x"].astype(np.float32)
        return [x[i:i + 1] for i in range(ROWS)]
    meta, vocab, _, _ = heldout_words()
    words = [w for group in zip(*meta["examples"].values()) for w in group][:ROWS]
    ids = vocab.encode(words, int(meta["max_len"]), "examples").ids
    return [ids[i:i + 1] for i in range(ROWS)]


def _feeds(path: Path, x: np.ndarray) -> dict:
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    name = next(i.name for i in m.graph.input if i.name not in inits and i.name != "target")
    return {name: x, "target": np.full(len(x), -1, np.int64)}


def _pick(names, outs) -> dict:
    d = dict(zip(names, outs))
    return {"scores": np.asarray(outs[0], np.float64), "relevance": np.asarray(d["relevance"], np.float64)}


def run_ort(path: Path, x) -> dict:
    import onnxruntime as ort
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _pick([o.name for o in s.get_outputs()], s.run(None, _feeds(path, x)))


def run_reference(path: Path, x) -> dict:
    import onnx
    from onnx.reference import ReferenceEvaluator
    m = onnx.load(str(path))
    ev = ReferenceEvaluator(m)
    return _pick([o.name for o in m.graph.output], ev.run(None, _feeds(path, x)))


def run_openvino(path: Path, x, precision: str | None = "f32") -> dict:
    import openvino as ov
    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    compiled = core.compile_model(str(path), "CPU", cfg)
    res = compiled(_feeds(path, x))
    names = [o.get_any_name() for o in compiled.outputs]
    return _pick(names, [res[o] for o in compiled.outputs])


NODE_SCRIPT = r"""
const ort = require('onnxruntime-node');
const fs = require('fs');
(async () => {
  const jobs = JSON.parse(fs.readFileSync(process.argv[2], 'utf8')), out = [];
  for (const j of jobs) {
    const s = await ort.InferenceSession.create(j.path);
    const feeds = {};
    for (const [k, v] of Object.entries(j.feeds)) {
      feeds[k] = v.dtype === 'int64' ? new ort.Tensor('int64', BigInt64Array.from(v.data.map(BigInt)), v.dims)
                                     : new ort.Tensor('float32', Float32Array.from(v.data), v.dims);
    }
    const r = await s.run(feeds);
    out.push({scores: Array.from(r[s.outputNames[0]].data, Number), relevance: Array.from(r.relevance.data, Number)});
  }
  fs.writeFileSync(process.argv[3], JSON.stringify({version: ort.env.versions.node, results: out}));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def node_dir() -> Path:
    from xcompile.web.ortweb import cache_dir
    return cache_dir().parent / "node"


def ensure_node() -> Path:
    """onnxruntime-node in the user cache (its install script fetches GPU binaries: skipped, the CPU ones ship)."""
    d = node_dir()
    if not (d / "node_modules" / "onnxruntime-node" / "package.json").is_file():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix", str(d),
                        f"onnxruntime-node@{ORT_NODE_VERSION}"], check=True, capture_output=True, timeout=600)
    return d


def run_node(jobs: list) -> tuple[str, list]:
    """[(path, x)] -> (version, [outputs]) in one node process."""
    d = ensure_node()
    with tempfile.TemporaryDirectory() as tmp:
        spec = []
        for path, x in jobs:
            f = _feeds(path, x)
            spec.append({"path": str(path), "feeds": {k: {"dtype": "int64" if v.dtype.kind == "i" else "float32",
                                                          "dims": list(v.shape), "data": v.reshape(-1).tolist()}
                                                      for k, v in f.items()}})
        (Path(tmp) / "jobs.json").write_text(json.dumps(spec))
        (Path(tmp) / "run.js").write_text(NODE_SCRIPT)
        env = {**os.environ, "NODE_PATH": str(d / "node_modules")}
        subprocess.run(["node", str(Path(tmp) / "run.js"), str(Path(tmp) / "jobs.json"), str(Path(tmp) / "out.json")],
                       check=True, capture_output=True, timeout=600, env=env)
        data = json.loads((Path(tmp) / "out.json").read_text())
    return data["version"], [{k: np.asarray(v, np.float64) for k, v in r.items()} for r in data["results"]]


def browser(chromium: str = "/usr/bin/chromium"):
    """A playwright Chromium (headless) on the system's chromium; a context manager yielding the browser."""
    from playwright.sync_api import sync_playwright

    class _B:
        def __enter__(self):
            self.pw = sync_playwright().start()
            self.b = self.pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            return self.b

        def __exit__(self, *exc):
            self.b.close()
            self.pw.stop()
    return _B()


def page_results(page, url: str, timeout_ms: int = 300_000) -> dict:
    """Open ``url`` (with ?example=K), wait for the page's state, return window.xcompile.results."""
    page.goto(url)
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=timeout_ms)
    if page.evaluate("document.body.dataset.state") == "error":
        raise RuntimeError(f"{url}: " + page.evaluate("document.getElementById('error').textContent"))
    return page.evaluate("window.xcompile.results")


def web_results(page, url: str, manifest: dict, rows: int = ROWS) -> dict:
    """{(model, label, row): outputs + the fed input + ms} from the site at ``url`` in ``page`` (WASM): example 0
    through ?example=0, the others through the page's window.xcompile.example(k, model) (one page load)."""
    out = {}
    first = page_results(page, f"{url}?model=0&example=0&ep=wasm")
    for m_index, m in enumerate(manifest["models"]):
        for k in range(min(rows, len(m["examples"]))):
            got = first if k == m_index == 0 else page.evaluate(f"window.xcompile.example({k}, {m_index})")
            for name, r in got.items():
                model, label = name.split("_", 1)
                out[(model, label, k)] = {"scores": np.asarray(r["scores"], np.float64),
                                          "relevance": np.asarray(r["relevance"], np.float64),
                                          "input": r["input"], "ms": r["ms"]}
    return out


class Site:
    """The export-web site of ``explainers`` served on 127.0.0.1 with one headless Chromium page open on it."""

    def __init__(self, explainers: list, folder: Path, rows: int = ROWS):
        from xcompile.web.serve import serve_folder
        from xcompile.web.site import export_site
        self.folder = folder / "site"
        export_site([e["path"] for e in explainers], self.folder, n_examples=rows)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        self.server = serve_folder(self.folder)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self):
        self.browser = browser()
        self.page = self.browser.__enter__().new_page(viewport={"width": 1100, "height": 760})
        self.page.set_default_timeout(300_000)  # a loaded 2-core machine compiles the 29 MB WASM slowly
        return self

    def __exit__(self, *exc):
        self.browser.__exit__(*exc)
        self.server.shutdown()
        self.server.server_close()


def run_web(explainers: list, folder: Path, rows: int = ROWS) -> dict:
    with Site(explainers, folder, rows) as site:
        return web_results(site.page, site.url, site.manifest, rows)


def rel_err(a: dict, ref: dict) -> float:
    worst = 0.0
    for key in ("relevance", "scores"):
        x, y = np.asarray(a[key], np.float64).reshape(-1), np.asarray(ref[key], np.float64).reshape(-1)
        if x.shape != y.shape:
            return float("inf")
        worst = max(worst, float(np.abs(x - y).max() / (np.abs(y).max() or 1.0)))
    return worst


def versions() -> dict:
    import onnx
    import onnxruntime

    from xcompile.web.ortweb import ORT_WEB_VERSION
    v = {"onnxruntime": onnxruntime.__version__, "onnxruntime-web": ORT_WEB_VERSION,
         "onnxruntime-node": ORT_NODE_VERSION, "reference": f"onnx {onnx.__version__}"}
    try:
        import openvino
        v["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        pass
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
        out = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True).stdout
        v["chromium"] = " ".join(out.split()[:2])
    except (ImportError, OSError):
        pass
    return v


def matrix(folder: Path, runtimes=RUNTIMES, echo=print, n_rows: int = ROWS, explainers: list | None = None,
           web: dict | None = None) -> dict:
    """{"errors": {runtime: {model/label: max relative error over n_rows inputs}}, "versions", "web_ms", ...};
    ``web``: results of `web_results` already gathered (else a site is exported and opened here)."""
    explainers = explainers if explainers is not None else build(folder, echo)
    rows = {m: inputs(m)[:n_rows] for m in MODELS}
    ref = {(e["model"], e["label"], k): run_ort(e["path"], x) for e in explainers
           for k, x in enumerate(rows[e["model"]])}
    errors: dict = {r: {} for r in runtimes}
    extra: dict = {"web_ms": {}, "web_inputs_equal": True, "openvino_default": {}}

    def record(runtime, e, k, got):
        key = f"{e['model']}/{e['label']}"
        errors[runtime][key] = max(errors[runtime].get(key, 0.0), rel_err(got, ref[(e["model"], e["label"], k)]))

    if "onnxruntime-web" in runtimes:
        web = web if web is not None else run_web(explainers, folder, n_rows)
        for e in explainers:
            for k, x in enumerate(rows[e["model"]]):
                got = web.get((e["model"], e["label"], k))
                if got is None:
                    errors["onnxruntime-web"][f"{e['model']}/{e['label']}"] = float("inf")
                    continue
                extra["web_inputs_equal"] &= bool(np.array_equal(np.asarray(got["input"]), x.reshape(-1)))
                extra["web_ms"].setdefault(f"{e['model']}/{e['label']}", []).append(round(got["ms"], 2))
                record("onnxruntime-web", e, k, got)
    if "onnxruntime-node" in runtimes:
        jobs = [(e, k, x) for e in explainers for k, x in enumerate(rows[e["model"]])]
        _, outs = run_node([(e["path"], x) for e, _, x in jobs])
        for (e, k, _), got in zip(jobs, outs):
            record("onnxruntime-node", e, k, got)
    for runtime, fn in (("openvino", run_openvino), ("reference", run_reference)):
        if runtime in runtimes:
            for e in explainers:
                for k, x in enumerate(rows[e["model"]]):
                    try:
                        record(runtime, e, k, fn(e["path"], x))
                    except Exception as err:  # noqa: BLE001 - a runtime that cannot run it: recorded, not fatal
                        errors[runtime][f"{e['model']}/{e['label']}"] = f"{type(err).__name__}: {str(err)[:120]}"
    if "openvino" in runtimes:  # the CPU plugin's default precision (bf16 on CPUs with AMX / avx512_bf16)
        for e in explainers:
            x = rows[e["model"]][0]
            extra["openvino_default"][f"{e['model']}/{e['label']}"] = rel_err(run_openvino(e["path"], x, None),
                                                                              ref[(e["model"], e["label"], 0)])
    extra["web_ms"] = {k: float(np.median(v)) for k, v in extra["web_ms"].items()}  # median over the inputs
    return {"errors": errors, "versions": versions(), "rows": n_rows, "tolerance": TOL, **extra}


def markdown(result: dict) -> str:
    errs, v = result["errors"], result["versions"]
    runtimes = list(errs)
    keys = sorted({k for r in errs.values() for k in r}, key=lambda k: (k.split("/")[0] != "digits", k))
    head = "| model / method | " + " | ".join(f"{r} {v.get(r, '')}".strip() for r in runtimes) + " |"
    lines = [head, "|" + "---|" * (len(runtimes) + 1)]
    for k in keys:
        cells = []
        for r in runtimes:
            e = errs[r].get(k)
            cells.append("—" if e is None else (e if isinstance(e, str) else f"{e:.1e}"))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--keep", type=Path, default=None, help="keep the explainers and the site in this folder")
    a = p.parse_args(argv)
    folder = a.keep or Path(tempfile.mkdtemp(prefix="xc_conformance_"))
    t0 = time.perf_counter()
    try:
        result = matrix(folder)
    finally:
        if a.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "errors"}, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
