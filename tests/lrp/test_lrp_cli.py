"""The CLI rejects an unknown rule set or a malformed rule file with one clear line (exit 2)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from clirun import cli, one_line_error
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


def test_unknown_ruleset(model, tmp_path):
    out = tmp_path / "e.onnx"
    one_line_error(cli("compile", model, "--method", "lrp", "--rules", "no-such-set", "-o", out), "no-such-set",
                   "unknown rule set")
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
    one_line_error(cli("compile", model, "--method", "lrp", "--rules", f, "-o", out), word)
    assert not out.exists()


def test_inspect_lists_rules(model):
    r = cli("inspect", model, "--method", "lrp", "--rules", "epsilon")
    assert r.returncode == 0, r.stderr
    assert "fc" in r.stdout and "epsilon" in r.stdout


def test_compile_builtin(model, tmp_path):
    out = tmp_path / "e.onnx"
    r = cli("compile", model, "--method", "lrp", "--rules", "epsilon-plus-flat", "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.exists()
