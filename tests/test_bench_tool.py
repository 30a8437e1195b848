"""Smoke test of tools/bench.py on the shipped digits CNN (onnxruntime forward + two compiled explainers)."""
from __future__ import annotations

import json
from pathlib import Path

from clirun import tool

ROOT = Path(__file__).resolve().parent.parent


def test_bench_digits_cnn(tmp_path):
    bench = tool("bench")
    model = ROOT / "xcompile" / "data" / "digits_cnn.onnx"
    md, png, js = tmp_path / "bench.md", tmp_path / "bench.png", tmp_path / "r.json"
    rc = bench.main(["--models", f"digits_cnn={model}", "--frameworks", "ort,xcompile", "--batches", "2",
                     "--methods", "gradient,lrp-epsilon-gamma-box", "--threads", "1", "--repeats", "1",
                     "--out", str(tmp_path), "--json", str(js), "--md", str(md), "--plot", str(png)])
    assert rc == 0
    data = json.loads(js.read_text())
    runs = {(r["method"], r["framework"]): r for r in data["runs"]}
    assert set(runs) == {("forward", "ort"), ("gradient", "xcompile"), ("lrp-epsilon-gamma-box", "xcompile")}
    for r in runs.values():
        assert r["status"] == "ok", r
        assert r["images_per_s"] > 0 and r["peak_rss_mib"] > 0
    ex = data["models"]["digits_cnn"]["explainers"]
    assert ex["gradient"]["explainer_bytes"] > 0 and ex["gradient"]["compile_s"] >= 0
    text = md.read_text()
    assert "| digits_cnn | 2 | gradient |" in text and "Compile time" in text
    assert png.stat().st_size > 1000
