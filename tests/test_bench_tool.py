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


def test_bench_floor_accounts_for_every_linear_layer(tmp_path):
    """tools/bench_floor.py splits an explainer's kernel time into the model's own linear layers, the adjoints the
    backward pass adds and LRP's modified forwards (z+ = W+ a): on the digits CNN (3 Conv + 2 Gemm) the gradient has
    exactly one adjoint per linear layer and no modified forward; z+ LRP adds one modified forward per z+ layer."""
    import xcompile
    from xcompile.write.writer import save
    floor = tool("bench_floor")
    model = ROOT / "xcompile" / "data" / "digits_cnn.onnx"
    grad, lrp, js = tmp_path / "gradient.onnx", tmp_path / "lrp.onnx", tmp_path / "floor.json"
    save(xcompile.compile(str(model), "gradient"), grad)
    save(xcompile.compile(str(model), "lrp", rules="epsilon-plus-flat"), lrp)
    rc = floor.main([str(model), str(grad), str(lrp), "--batch", "2", "--runs", "2", "--warmup", "1",
                     "--threads", "1", "--json", str(js)])
    assert rc == 0
    data = json.loads(js.read_text())
    assert data["forward_kernel_ms"] > 0 and data["forward_linear_ms"] > 0
    g = data["explainers"][str(grad)]
    assert g["categories"]["forward linear"][1] == 5, g["categories"]
    assert g["categories"]["adjoint linear"][1] == 5, g["categories"]
    assert "modified forward" not in g["categories"]
    assert 0 < g["linear_floor_ratio"] <= g["ratio"]
    assert data["forward_alone_kernel_ms"] > 0 and 0 < g["linear_floor_ratio_alone"] <= g["ratio_alone"]
    cats = data["explainers"][str(lrp)]["categories"]
    # epsilon-plus-flat: z+ on the two inner convolutions (the first is flat, the dense layers epsilon on z itself)
    assert cats["forward linear"][1] == 5 and cats["modified forward"][1] == 2, cats


def test_bench_floor_refuses_a_file_that_is_no_model(tmp_path, capsys):
    floor = tool("bench_floor")
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    assert floor.main([str(ROOT / "xcompile" / "data" / "digits_cnn.onnx"), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bench_floor: {bad}: not an ONNX model file"]
