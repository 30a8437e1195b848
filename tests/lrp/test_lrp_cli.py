"""The CLI rejects an unknown rule set or a malformed rule file with one clear line (exit 2)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    W = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["scores"], name="fc")], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
                          initializer=[numpy_helper.from_array(W, "W")])
    p = tmp_path_factory.mktemp("cli") / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    return p


def run(*args):
    return subprocess.run([sys.executable, "-m", "xcompile.cli", *map(str, args)], capture_output=True, text=True)


def _one_line(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_unknown_ruleset(model, tmp_path):
    out = tmp_path / "e.onnx"
    _one_line(run("compile", model, "--method", "lrp", "--rules", "no-such-set", "-o", out), "no-such-set", "unknown rule set")
    assert not out.exists()


@pytest.mark.parametrize("text,word", [
    ("[[rule]\nrule = 'epsilon'\n", "TOML"),
    ("[[rule]]\nrule = 'epsilonn'\n", "unknown rule"),
    ("[[rule]]\nkind = 'conv2'\nrule = 'epsilon'\n", "kind"),
    ("[[rule]]\nrule = 'epsilon'\nparams = { gamma = 1 }\n", "gamma"),
    ("[[rule]]\nkind = 'conv'\nrule = 'epsilon'\n", "no [[rule]] entry matches"),
    ("name = 'x'\n", "at least one"),
])
def test_malformed_rule_file(model, tmp_path, text, word):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    out = tmp_path / "e.onnx"
    _one_line(run("compile", model, "--method", "lrp", "--rules", f, "-o", out), word)
    assert not out.exists()


def test_inspect_lists_rules(model):
    r = run("inspect", model, "--method", "lrp", "--rules", "epsilon")
    assert r.returncode == 0, r.stderr
    assert "fc" in r.stdout and "epsilon" in r.stdout


def test_compile_builtin(model, tmp_path):
    out = tmp_path / "e.onnx"
    r = run("compile", model, "--method", "lrp", "--rules", "epsilon-plus-flat", "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.exists()
