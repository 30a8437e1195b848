"""The self-check every compile runs (docs/selfcheck.md): a broken backward (test doubles that zero one path, flip a
sign or double a node's vector-Jacobian product) is refused in one line naming the node; a correct explainer passes;
verify=false, probe=FILE.npy, the metadata, `inspect` and the opt-in log."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from clirun import ENV, cli, one_line_error
from onnx import TensorProto, helper, numpy_helper

import xcompile
from xcompile.backward import table
from xcompile.backward.table import Backward
from xcompile.errors import XCompileError


def _two_path_model():
    """x [N, 6] -> (Relu(x W1) + x W2) W3 -> scores [N, 3]: two paths of comparable size into one Add."""
    rng = np.random.default_rng(3)
    w = {k: rng.standard_normal(s).astype(np.float32) for k, s in (("W1", (6, 8)), ("W2", (6, 8)), ("W3", (8, 3)))}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"], name="mm1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["x", "W2"], ["b"], name="mm2"),
             helper.make_node("Add", ["r", "b"], ["s"], name="add"),
             helper.make_node("MatMul", ["s", "W3"], ["scores"], name="head")]
    graph = helper.make_graph(nodes, "two_paths", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _patched(monkeypatch, op, change):
    orig = table.TABLE[op]

    def fn(ctx, gy):
        return change(ctx, orig.fn(ctx, gy))
    monkeypatch.setitem(table.TABLE, op, Backward(fn, orig.inputs))


def _scaled(k, factor):
    def change(ctx, grads):
        out = list(grads)
        if out[k] is not None:
            out[k] = ctx.b.mul(out[k], ctx.b.f32(factor))
        return out
    return change


def _verify(model):
    return json.loads({p.key: p.value for p in model.metadata_props}["xcompile.verify"])


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_correct_explainer_passes_and_is_recorded(method):
    v = _verify(xcompile.compile(_two_path_model(), method))
    assert v["check"] == "gradient-fd" and v["pass"] and v["error"] <= v["tolerance"]
    assert v["error"] < 1e-3  # float32 finite differences of a piecewise-linear model: nearly exact here
    assert v["directions"] == 2 and v["steps"] == [2e-3, 5e-4]


@pytest.mark.parametrize("op, slot, factor, node", [
    ("Add", 1, 0.0, "add"),      # a zeroed path (the residual branch's share dropped)
    ("Relu", 0, -1.0, "relu"),   # a wrong sign
    ("MatMul", 0, 2.0, None),    # a factor 2 (every MatMul: the head is the first met walking back)
])
@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_broken_backward_is_refused_and_located(monkeypatch, op, slot, factor, node, method):
    _patched(monkeypatch, op, _scaled(slot, factor))
    with pytest.raises(XCompileError) as e:
        xcompile.compile(_two_path_model(), method)
    msg = str(e.value)
    assert "\n" not in msg and "self-check failed" in msg and method in msg and "finite differences" in msg
    assert f"({op})" in msg  # the first wrong backward, located by bisection over the intermediate gradients
    if node:
        assert f"node {node!r}" in msg


def test_deeplift_incompleteness_is_refused(monkeypatch):
    _patched(monkeypatch, "MatMul", _scaled(0, 2.0))  # DeepLIFT's linear layers pass the op table's gradient
    with pytest.raises(XCompileError, match=r"self-check failed for method 'deeplift': sum\(relevance\) misses"):
        xcompile.compile(_two_path_model(), "deeplift")
    assert _verify(xcompile.compile(_two_path_model(), "deeplift", verify="false"))["check"] == "skipped"


def test_deeplift_and_lrp_record_their_checks():
    d = _verify(xcompile.compile(_two_path_model(), "deeplift"))
    assert d["check"] == "completeness" and d["pass"] and d["error"] < 1e-5
    r = _verify(xcompile.compile(_two_path_model(), "lrp"))
    assert r["check"] == "conservation" and r["pass"] and r["band"] == [-1.0, 2.0]
    o = _verify(xcompile.compile(_two_path_model(), "smoothgrad"))
    assert o["check"] == "finite" and o["pass"]


def test_verify_false_skips(monkeypatch):
    _patched(monkeypatch, "Relu", _scaled(0, -1.0))
    v = _verify(xcompile.compile(_two_path_model(), "gradient", verify=False))
    assert v == {"check": "skipped", "note": "verify=false", "pass": True}


def test_probe_file_rows_and_bad_probe(tmp_path):
    rows = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    v = _verify(xcompile.compile(_two_path_model(), "lrp", probe=str(tmp_path / "rows.npy")))
    assert v["rows"] == 3 and v["pass"]
    np.save(tmp_path / "bad.npy", rows[:, :4])
    with pytest.raises(XCompileError, match=r"option probe=.*shape \[3, 4\]"):
        xcompile.compile(_two_path_model(), "gradient", probe=str(tmp_path / "bad.npy"))


def test_log_cli_exit_code_and_inspect(tmp_path, monkeypatch):
    model = tmp_path / "m.onnx"
    onnx.save(_two_path_model(), model)
    log = tmp_path / "verify.jsonl"
    out = tmp_path / "x.onnx"
    r = cli("compile", model, "-m", "gradient", "-o", out, env=dict(ENV, XCOMPILE_VERIFY_LOG=str(log)))
    assert r.returncode == 0, r.stderr
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["method"] == "gradient" and line["pass"] and {"error", "tolerance", "model"} <= set(line)
    r = cli("inspect", out)
    assert r.returncode == 0 and "self-check: passed (check gradient-fd" in r.stdout


def test_cli_refusal_is_one_line_exit_2(tmp_path):
    """A broken op table in a child process (the test double installed by a sitecustomize-like -c prelude)."""
    model = tmp_path / "m.onnx"
    onnx.save(_two_path_model(), model)
    code = ("from xcompile.backward import table; from xcompile.backward.table import Backward;"
            "o = table.TABLE['Relu'];"
            "table.TABLE['Relu'] = Backward(lambda ctx, gy: [ctx.b.mul(o.fn(ctx, gy)[0], ctx.b.f32(-1.0))], o.inputs)")
    out = tmp_path / "x.onnx"
    one_line_error(cli("compile", model, "-m", "gradient", "-o", out, prelude=code),
                   "self-check failed", "'relu' (Relu)")
    assert not out.exists()
