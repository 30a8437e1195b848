"""The explainers outside Python: `xcompile export-web` + the page in headless Chromium (onnxruntime-web, WASM)
against onnxruntime in Python for every method of the shipped digits CNN and langid model, a screenshot with
non-blank heatmaps, the page's error state, a dropped image through the page's own preprocessing; the runtime
conformance matrix (onnxruntime-node, OpenVINO with the f32 hint, onnx's ReferenceEvaluator; tools/conformance.py);
`xcompile view`. Browser tests need /usr/bin/chromium, playwright and npm (`tools/install_web_deps.sh`, run by
.ci/run); without them they FAIL, unless XCOMPILE_SKIP_BROWSER=1 says to skip them."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from clirun import inproc, one_line_error, tool

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


conformance = tool("conformance")


def need(*what):
    missing = [w for w in what if (w == "chromium" and not Path(CHROMIUM).is_file())
               or (w == "npm" and shutil.which("npm") is None)
               or (w in ("playwright", "openvino") and importlib.util.find_spec(w) is None)]
    if missing:
        msg = f"missing {missing}: run tools/install_web_deps.sh and pip install -e '.[test]'"
        if os.environ.get("XCOMPILE_SKIP_BROWSER") == "1":
            pytest.skip(msg)
        pytest.fail(msg)


@pytest.fixture(scope="module")
def explainers(tmp_path_factory):
    """Every method that applies, for both shipped models (tools/conformance.py DIGITS / LANGID)."""
    return conformance.build(tmp_path_factory.mktemp("web_explainers"), echo=lambda *a: None)


def test_every_method_compiles_for_the_shipped_models(explainers):
    got = {(e["model"], e["label"]) for e in explainers}
    assert got == {("digits", m[0]) for m in conformance.DIGITS} | {
        ("langid", m[0]) for m in conformance.LANGID if m[1] not in ("guided_backprop", "deconvnet", "gradcam")}


@pytest.fixture(scope="module")
def page(explainers, tmp_path_factory):
    """The site of every explainer, served on 127.0.0.1, with one headless Chromium page (one WASM compile)."""
    need("chromium", "playwright", "npm")
    with conformance.Site(explainers, tmp_path_factory.mktemp("site"), rows=2) as site:
        yield site.page, site.url, site.folder, site.manifest


def test_browser_equals_onnxruntime_for_every_method(page, explainers, tmp_path):
    """The page's window.xcompile.results (one example per model, at batch 1) against onnxruntime in Python on
    the input the page fed (for langid: the page's own text encoding, checked equal to runtime/tokens.py's)."""
    p, url, _, manifest = page
    web = conformance.web_results(p, url, manifest, rows=1)
    res = conformance.matrix(tmp_path, runtimes=("onnxruntime-web",), n_rows=1, explainers=explainers, web=web)
    errs = res["errors"]["onnxruntime-web"]
    assert set(errs) == {f"{e['model']}/{e['label']}" for e in explainers}
    assert res["web_inputs_equal"]
    bad = {k: v for k, v in errs.items() if not v <= conformance.TOL}
    assert not bad, bad


def test_conformance_matrix_node_openvino_reference(explainers, tmp_path):
    """Every explainer on onnxruntime-node, OpenVINO (INFERENCE_PRECISION_HINT=f32) and onnx's ReferenceEvaluator
    (OneHot's depth is a scalar, which it needs) equals onnxruntime (Python) to 1e-5 of max |reference|."""
    need("npm", "openvino")
    res = conformance.matrix(tmp_path, runtimes=("onnxruntime-node", "openvino", "reference"), n_rows=1,
                             explainers=explainers)
    for runtime, errs in res["errors"].items():
        assert len(errs) == len(explainers), runtime
        bad = {k: v for k, v in errs.items() if isinstance(v, str) or not v <= conformance.TOL}
        assert not bad, (runtime, bad)


def _colourful(png: bytes) -> float:
    """Share of pixels that are clearly coloured (not white, not grey)."""
    from PIL import Image
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int16)
    return float(((a.max(axis=2) - a.min(axis=2)) > 40).mean())


def test_screenshot_has_non_blank_heatmaps(page, tmp_path):
    p, url, _, _ = page
    shown = ["digits_gradient", "digits_integrated_gradients", "digits_lrp_epsilon_plus_flat", "digits_occlusion"]
    results = conformance.page_results(p, url + f"?example=1&ep=wasm&methods={','.join(shown)}")
    assert sorted(results) == shown
    maps = p.query_selector_all(".card canvas.map")
    assert len(maps) == 1 + len(results)  # the input, then one heatmap per method
    for m in maps[1:]:
        assert _colourful(m.screenshot()) > 0.2  # a heatmap, not a blank or grey canvas
    full = p.screenshot(full_page=True)
    assert _colourful(full) > 0.02
    facts = [c.inner_text() for c in p.query_selector_all(".card .facts")][1:]
    assert all("class" in f and "score" in f and "Σ R / score" in f for f in facts)
    lrp = results["digits_lrp_epsilon_plus_flat"]  # LRP-ε conserves (up to ε and the biases): shown, and true
    k = lrp["explained_class"][0]
    assert abs(sum(lrp["relevance"]) / lrp["scores"][k] - 1) < 0.1

    text = conformance.page_results(p, url + "?model=1&example=0&methods=langid_integrated_gradients,langid_lrp_auto")
    tokens = p.query_selector_all(".card .tokens")
    assert len(tokens) == 1 + len(text) and all(len(t.query_selector_all("span")) > 1 for t in tokens)


def test_page_error_state_and_message(page):
    p, url, _, _ = page
    p.goto(url + "?example=99")
    p.wait_for_function("['done', 'error'].includes(document.body.dataset.state)")
    assert p.evaluate("document.body.dataset.state") == "error"
    assert "?example=99" in p.inner_text("#error")


def test_dropped_image_goes_through_the_page_preprocessing(page, explainers, tmp_path):
    """A dark digit on white (8x8 PNG) through the page's file input: grey = (299 R + 587 G + 114 B) / 1000 / 255,
    inverted (digits_cnn.json preprocess), fed; the relevance equals onnxruntime's on that input."""
    from PIL import Image
    p, url, _, _ = page
    x = np.load(ROOT / "xcompile" / "data" / "digits_heldout.npz")["x"][5, 0]
    img = np.round(255 * (1 - x)).astype(np.uint8)  # dark strokes on light paper
    Image.fromarray(img, "L").convert("RGB").save(tmp_path / "digit.png")
    p.goto(url + "?ep=wasm&methods=digits_gradient")
    p.wait_for_function("document.body.dataset.state === 'ready'")
    p.set_input_files("#file", str(tmp_path / "digit.png"))
    p.wait_for_function("['done', 'error'].includes(document.body.dataset.state)")
    assert p.evaluate("document.body.dataset.state") == "done", p.inner_text("#error")
    results = p.evaluate("window.xcompile.results")
    fed = np.asarray(results["digits_gradient"]["input"], np.float32)
    np.testing.assert_allclose(fed, 1 - img.reshape(-1) / 255.0, atol=1e-6)
    path = next(e["path"] for e in explainers if (e["model"], e["label"]) == ("digits", "gradient"))
    ref = conformance.run_ort(path, fed.reshape(1, 1, 8, 8))
    assert conformance.rel_err({k: np.asarray(results["digits_gradient"][k]) for k in ("scores", "relevance")},
                               ref) <= conformance.TOL


def test_site_is_static_and_self_contained(page):
    """No URL outside the site in the page or the manifest; the runtime files and their license are there."""
    _, _, site, _ = page
    from xcompile.web.ortweb import FILES, LICENSE_NAME
    for f in ("index.html", "app.js", "manifest.json"):
        text = (site / f).read_text(encoding="utf-8")
        assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text, f
    assert all((site / "ort" / f).is_file() for f in FILES)
    assert "MIT License" in (site / LICENSE_NAME).read_text()
    manifest = json.loads((site / "manifest.json").read_text())
    assert [m["input"]["name"] for m in manifest["models"]] == ["input", "chars"]
    assert manifest["models"][0]["classes"] == [str(k) for k in range(10)]
    assert manifest["models"][1]["tokenizer"]["level"] == "char"


def test_view_serves_the_site_on_localhost(explainers):
    need("npm")
    from xcompile.web.serve import view
    lines, seen = [], {}

    def visit():
        url = lines[-1].split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        for path in ("", "manifest.json", "ort/ort-wasm-simd-threaded.asyncify.wasm"):
            with urllib.request.urlopen(url + path, timeout=30) as r:
                seen[path] = (r.status, r.headers["Content-Type"], r.headers["Cross-Origin-Opener-Policy"])
    view([explainers[0]["path"]], port=0, open_browser=False, echo=lines.append, wait=visit)
    assert seen[""][0] == 200 and seen[""][1].startswith("text/html")
    assert seen["ort/ort-wasm-simd-threaded.asyncify.wasm"][1] == "application/wasm"
    assert seen["manifest.json"][2] == "same-origin"


def test_export_web_errors_are_one_line(explainers, tmp_path, monkeypatch, capfd):
    ex = explainers[0]["path"]
    one_line_error(inproc(capfd, "export-web", ROOT / "xcompile" / "data" / "digits_cnn.onnx", "-o", tmp_path / "a"),
                   "not an xcompile explainer")
    monkeypatch.setenv("XCOMPILE_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "no_bin"))
    one_line_error(inproc(capfd, "export-web", ex, "-o", tmp_path / "b"), "npm is not installed", "--ort-web")
    assert not (tmp_path / "b").exists()  # nothing written
    r = inproc(capfd, "export-web", ex, "-o", tmp_path / "c", "--ort-web", tmp_path)
    assert r.returncode == 2 and "--ort-web" in r.stderr and not (tmp_path / "c").exists()
