"""docs/img/web_digits.png: the export-web page on explainers of the shipped digits CNN (headless Chromium).

    python tools/web_screenshot.py [--out docs/img/web_digits.png] [--example 1]"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
METHODS = ("gradient", "integrated_gradients", "lrp_epsilon_plus_flat", "occlusion")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "web_digits.png")
    p.add_argument("--example", type=int, default=1)
    a = p.parse_args(argv)
    spec = importlib.util.spec_from_file_location("xc_conformance", Path(__file__).with_name("conformance.py"))
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    conf.DIGITS = [m for m in conf.DIGITS if m[0] in METHODS]
    conf.MODELS = {"digits": ("digits_cnn.onnx", conf.DIGITS)}
    with tempfile.TemporaryDirectory() as tmp:
        explainers = conf.build(Path(tmp), echo=lambda *x: None)
        with conf.Site(explainers, Path(tmp), rows=4) as site:
            site.page.set_viewport_size({"width": 1240, "height": 600})
            conf.page_results(site.page, f"{site.url}?example={a.example}&ep=wasm")
            site.page.screenshot(path=str(a.out), full_page=True)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
