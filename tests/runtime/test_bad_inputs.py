"""Bad input as an attacker or a careless user gives it (issue 16): every case is ONE line on stderr, exit code 2,
no traceback, and no file left behind. The command line runs in this process (``commands.main.main``), so the
corpus is fast; the atomic-write and concurrency tests run real ``python -m xcompile`` processes."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirun import inproc, one_line_error
from onnx import TensorProto, helper

import xcompile
from xcompile.errors import XCompileError

DATA = Path(xcompile.__file__).parent / "data"
DIGITS = DATA / "digits_cnn.onnx"
ROOT = Path(xcompile.__file__).resolve().parent.parent


def _rule(body: str) -> str:
    return "[[rule]]\n" + body + "\n"


RULE_FILES = {
    "gamma_str.toml": _rule('rule = "gamma"\nparams = { gamma = "big" }'),
    "eps_list.toml": _rule('rule = "epsilon"\nparams = { epsilon = [1, 2] }'),
    "regex_int.toml": _rule('name_regex = 5\nrule = "epsilon"'),
    "gamma_huge.toml": _rule('rule = "gamma"\nparams = { gamma = 1e300 }'),
    "gamma_inf.toml": _rule('rule = "gamma"\nparams = { gamma = inf }'),
    "gamma_neg.toml": _rule('rule = "gamma"\nparams = { gamma = -5 }'),
    "eps_nan.toml": _rule('rule = "epsilon"\nparams = { epsilon = nan }'),
    "bias_str.toml": _rule('rule = "wsquare"\nparams = { bias = "yes" }'),
    "stab_neg.toml": _rule('rule = "zplus"\nparams = { stabilizer = -1 }'),
    "unknown_rule.toml": _rule('rule = "magic"'),
    "not_toml.toml": "[[rule]\nrule = ",
    "ok.toml": _rule('rule = "epsilon"'),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Inputs shared by every case: the digits model, an explainer, arrays, rule files, broken models."""
    d = tmp_path_factory.mktemp("bad_inputs")
    shutil.copy(DIGITS, d / "model.onnx")
    from xcompile.write.writer import save
    save(xcompile.compile(DIGITS, "gradient"), d / "explainer.onnx")
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.random((2, 1, 8, 8), dtype=np.float32))
    np.save(d / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    np.save(d / "wrong.npy", np.zeros((2, 1, 9, 9), np.float32))
    np.save(d / "strings.npy", np.array([["a", "b"]]))
    np.savez(d / "objects.npz", x=np.array([1, "a", None], dtype=object))
    (d / "zero.onnx").write_bytes(b"")
    (d / "garbage.onnx").write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    add = helper.make_node("Add", ["x", "b"], ["a"], name="add_a")
    relu = helper.make_node("Relu", ["a"], ["b"], name="relu_b")
    g = helper.make_graph([add, relu], "cycle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), d / "cycle.onnx")
    nodes, t = [], "x"
    for i, op in enumerate(("Tan", "Atan", "Asinh")):  # three unsupported nodes: every one is named, by both commands
        nodes.append(helper.make_node(op, [t], [f"p{i}"], name=f"op{i}"))
        t = f"p{i}"
    nodes += [helper.make_node("Flatten", [t], ["f"], name="flat"), helper.make_node("MatMul", ["f", "W"], ["y"], name="mm")]
    inits = [onnx.numpy_helper.from_array(np.ones((8 * 8, 3), np.float32), "W")]
    g = helper.make_graph(nodes, "pads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), d / "pads.onnx")
    (d / "rules").mkdir()
    for name, text in RULE_FILES.items():
        (d / "rules" / name).write_text(text)
    (d / "afile").write_text("a file, not a folder")
    return d


def listing(d: Path) -> set:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


M, E, X, R, D = "{d}/model.onnx", "{d}/explainer.onnx", "{d}/x.npy", "{d}/rules", "{d}"
O = "{d}/out/ex.onnx"  # noqa: E741 - the output path of a compile case
PADS = "3 unsupported operator node(s): op0 (Tan), op1 (Atan), op2 (Asinh)"

# id -> (argv, expected exit code, fragment of the one stderr line)
CASES = {
    # usage errors (click/typer, vendored or not) -> one line, exit 2
    "unknown command": (["frobnicate"], 2, "No such command 'frobnicate'"),
    "compile without arguments": (["compile"], 2, "Missing argument"),
    "compile without --method": (["compile", M, "-o", O], 2, "Missing option"),
    "unknown option": (["compile", M, "-m", "gradient", "-o", O, "--bogus"], 2, "No such option: --bogus"),
    "bad option type": (["run", E, "-i", X, "--target", "abc"], 2, "Invalid value for '--target'"),
    "float batch size": (["run", E, "-i", X, "--batch-size", "1.5"], 2, "Invalid value for '--batch-size'"),
    "inspect without model": (["inspect"], 2, "Missing argument"),
    "serve bad port": (["serve", E, "--port", "http"], 2, "Invalid value for '--port'"),
    "export-triton without --repo": (["export-triton", E], 2, "Missing option"),
    # outputs: never onto an input, a folder, below a file, /dev/null or an unwritable place
    "compile -o onto its input": (["compile", M, "-m", "gradient", "-o", M], 2, "is an input of this command"),
    "compile -o onto the rule file": (["compile", M, "-m", "lrp", "-r", "{d}/rules/ok.toml", "-o", "{d}/rules/ok.toml"], 2, "is an input"),
    "compile -o onto a --set file": (["compile", M, "-m", "deeplift", "--set", "baseline=" + X, "-o", X], 2, "is an input"),
    "compile -o at a folder": (["compile", M, "-m", "gradient", "-o", D], 2, "is a folder"),
    "compile -o below a file": (["compile", M, "-m", "gradient", "-o", "{d}/afile/ex.onnx"], 2, "is a file, not a folder"),
    "compile -o under /proc": (["compile", M, "-m", "gradient", "-o", "/proc/xcompile_ex.onnx"], 2, "is not writable"),
    "compile -o /dev/null": (["compile", M, "-m", "gradient", "-o", "/dev/null"], 2, "not a regular file"),
    "run --out at a file": (["run", E, "-i", X, "--out", "{d}/afile"], 2, "is not a folder"),
    "run --out /dev/null": (["run", E, "-i", X, "--out", "/dev/null"], 2, "is not a folder"),
    "run --out under /proc": (["run", E, "-i", X, "--out", "/proc/xcompile_out"], 2, "is not writable"),
    # names that become folders and URL parts
    "export-triton --name ..": (["export-triton", E, "--repo", "{d}/repo", "--name", ".."], 2, "--name '..'"),
    "export-triton --name .": (["export-triton", E, "--repo", "{d}/repo", "--name", "."], 2, "--name '.'"),
    "export-triton --name a/b": (["export-triton", E, "--repo", "{d}/repo", "--name", "a/b"], 2, "--name 'a/b'"),
    "export-triton --name ../x": (["export-triton", E, "--repo", "{d}/repo", "--name", "../x"], 2, "--name '../x'"),
    "export-triton --name .hidden": (["export-triton", E, "--repo", "{d}/repo", "--name", ".hidden"], 2, "--name"),
    "serve --name ..": (["serve", E, "--dir", "{d}/srv", "--name", ".."], 2, "--name '..'"),
    "export-triton --instances 0": (["export-triton", E, "--repo", "{d}/repo", "--instances", "0"], 2, "--instances 0"),
    "export-triton --max-batch -1": (["export-triton", E, "--repo", "{d}/repo", "--max-batch", "-1"], 2, "--max-batch -1"),
    "export-triton --repo at a file": (["export-triton", E, "--repo", "{d}/afile"], 2, "not a folder"),
    "serve --max-request-mb 0": (["serve", E, "--dir", "{d}/srv", "--max-request-mb", "0"], 2, "--max-request-mb"),
    "serve --max-rows 0": (["serve", E, "--dir", "{d}/srv", "--max-rows", "0"], 2, "--max-rows"),
    "serve --device tpu": (["serve", E, "--device", "tpu"], 2, "--device 'tpu'"),
    "serve missing explainer": (["serve", "{d}/nope.onnx"], 2, "no such explainer file"),
    "serve --port 0": (["serve", E, "--dir", "{d}/srv", "--port", "0"], 2, "--port 0"),
    "serve --port 70000": (["serve", E, "--dir", "{d}/srv", "--port", "70000"], 2, "--port 70000"),
    "serve --threads -1": (["serve", E, "--dir", "{d}/srv", "--threads", "-1"], 2, "--threads -1"),
    "serve --max-batch-time nan": (["serve", E, "--dir", "{d}/srv", "--max-batch-time", "nan"], 2, "--max-batch-time"),
    "serve --workers -1": (["serve", E, "--dir", "{d}/srv", "--workers", "-1"], 2, "--workers"),
    "demo --n 0": (["demo", "--n", "0", "--out", "{d}/demo"], 2, "--n 0"),
    "demo --out at a file": (["demo", "--out", "{d}/afile"], 2, "not a folder"),
    # option values: types, finiteness, ranges, memory bound
    "steps=0": (["compile", M, "-m", "integrated_gradients", "--set", "steps=0", "-o", O], 2, "steps='0'"),
    "steps=abc": (["compile", M, "-m", "integrated_gradients", "--set", "steps=abc", "-o", O], 2, "steps='abc'"),
    "steps=2.5": (["compile", M, "-m", "integrated_gradients", "--set", "steps=2.5", "-o", O], 2, "not an integer"),
    "steps=1e9": (["compile", M, "-m", "integrated_gradients", "--set", "steps=1000000000", "-o", O], 2, "GB for one input row"),
    "steps=1e9 chunk=1": (["compile", M, "-m", "integrated_gradients", "--set", "steps=1000000000", "--set", "chunk=1", "-o", O], 2, "GB for one input row"),
    "samples=1e9": (["compile", M, "-m", "smoothgrad", "--set", "samples=1e9", "-o", O], 2, "GB for one input row"),
    "samples=many": (["compile", M, "-m", "smoothgrad", "--set", "samples=many", "-o", O], 2, "samples='many'"),
    "noise_level=-1": (["compile", M, "-m", "smoothgrad", "--set", "noise_level=-1", "-o", O], 2, "noise_level='-1'"),
    "baseline=nan": (["compile", M, "-m", "integrated_gradients", "--set", "baseline=nan", "-o", O], 2, "not a finite number"),
    "baseline=inf": (["compile", M, "-m", "integrated_gradients", "--set", "baseline=inf", "-o", O], 2, "not a finite number"),
    "chunk=-1": (["compile", M, "-m", "integrated_gradients", "--set", "chunk=-1", "-o", O], 2, "chunk='-1'"),
    "occlusion fill=nan": (["compile", M, "-m", "occlusion", "--set", "fill=nan", "-o", O], 2, "fill='nan'"),
    "--set without =": (["compile", M, "-m", "gradient", "--set", "steps", "-o", O], 2, "expected key=value"),
    "unknown --set key": (["compile", M, "-m", "gradient", "--set", "steps=4", "-o", O], 2, "is not known for"),
    "unknown method": (["compile", M, "-m", "magic", "-o", O], 2, "unknown method 'magic'"),
    "--rules with gradient": (["compile", M, "-m", "gradient", "-r", "epsilon", "-o", O], 2, "applies to rule-based methods"),
    # rule-file values
    "rule gamma = 'big'": (["compile", M, "-m", "lrp", "-r", "{d}/rules/gamma_str.toml", "-o", O], 2, "gamma = 'big'"),
    "rule epsilon = [1,2]": (["compile", M, "-m", "lrp", "-r", "{d}/rules/eps_list.toml", "-o", O], 2, "epsilon = [1, 2]"),
    "rule name_regex = 5": (["compile", M, "-m", "lrp", "-r", "{d}/rules/regex_int.toml", "-o", O], 2, "name_regex must be a string"),
    "rule gamma = 1e300": (["compile", M, "-m", "lrp", "-r", "{d}/rules/gamma_huge.toml", "-o", O], 2, "gamma = 1e+300"),
    "rule gamma = inf": (["compile", M, "-m", "lrp", "-r", "{d}/rules/gamma_inf.toml", "-o", O], 2, "gamma = inf"),
    "rule gamma = -5": (["compile", M, "-m", "lrp", "-r", "{d}/rules/gamma_neg.toml", "-o", O], 2, "gamma = -5"),
    "rule epsilon = nan": (["compile", M, "-m", "lrp", "-r", "{d}/rules/eps_nan.toml", "-o", O], 2, "epsilon = nan"),
    "rule bias = 'yes'": (["compile", M, "-m", "lrp", "-r", "{d}/rules/bias_str.toml", "-o", O], 2, "expected true or false"),
    "rule stabilizer < 0": (["compile", M, "-m", "lrp", "-r", "{d}/rules/stab_neg.toml", "-o", O], 2, "stabilizer = -1"),
    "rule unknown": (["compile", M, "-m", "lrp", "-r", "{d}/rules/unknown_rule.toml", "-o", O], 2, "unknown rule 'magic'"),
    "rule file not TOML": (["compile", M, "-m", "lrp", "-r", "{d}/rules/not_toml.toml", "-o", O], 2, "not valid TOML"),
    "--rules at a folder": (["compile", M, "-m", "lrp", "-r", R, "-o", O], 2, "is a folder"),
    "--rules missing file": (["compile", M, "-m", "lrp", "-r", "{d}/rules/nope.toml", "-o", O], 2, "no such file"),
    "--rules unknown name": (["compile", M, "-m", "lrp", "-r", "nonesuch", "-o", O], 2, "unknown rule set"),
    # models
    "missing model": (["compile", "{d}/nope.onnx", "-m", "gradient", "-o", O], 2, "no such model file"),
    "0-byte model": (["compile", "{d}/zero.onnx", "-m", "gradient", "-o", O], 2, "empty file (0 bytes)"),
    "0-byte model inspect": (["inspect", "{d}/zero.onnx"], 2, "empty file (0 bytes)"),
    "garbage model": (["compile", "{d}/garbage.onnx", "-m", "gradient", "-o", O], 2, "not a readable ONNX model"),
    "model is a folder": (["compile", R, "-m", "gradient", "-o", O], 2, "is a folder, not an ONNX model"),
    "graph cycle names the node": (["compile", "{d}/cycle.onnx", "-m", "gradient", "-o", O], 2, "add_a"),
    "wrong input_shape, no onnxruntime log": (["compile", M, "-m", "gradient", "--set", "input_shape=3x9x9", "-o", O], 2, "onnxruntime fails on an input of shape (1, 3, 9, 9)"),
    "input_shape=abc": (["compile", M, "-m", "gradient", "--set", "input_shape=abc", "-o", O], 2, "input_shape"),
    "three unsupported nodes: compile names all": (["compile", "{d}/pads.onnx", "-m", "gradient", "-o", O], 2, PADS),
    "three unsupported nodes: lrp names all": (["compile", "{d}/pads.onnx", "-m", "lrp", "-o", O], 2, PADS),
    "three unsupported nodes: inspect agrees": (["inspect", "{d}/pads.onnx"], 2, PADS),
    "three unsupported nodes: inspect lrp agrees": (["inspect", "{d}/pads.onnx", "-m", "lrp"], 2, PADS),
    # pattern statistics
    "fit-patterns -o onto the data": (["fit-patterns", M, "--data", X, "-o", X], 2, "is an input"),
    "fit-patterns -o onto the model": (["fit-patterns", M, "--data", X, "-o", M], 2, "is an input"),
    "fit-patterns -o at a folder": (["fit-patterns", M, "--data", X, "-o", D], 2, "is a folder"),
    "fit-patterns --batch-size 0": (["fit-patterns", M, "--data", X, "-o", "{d}/out/p.npz", "--batch-size", "0"], 2, "--batch-size 0"),
    "merge-patterns -o onto a shard": (["merge-patterns", X, "-o", X], 2, "is an input"),
    "evaluate-signal --out at a file": (["evaluate-signal", M, "-p", X, "-d", X, "--out", "{d}/afile"], 2, "not a folder"),
    # evaluation reports
    "evaluate --out at a file": (["evaluate", M, "-m", "gradient", "-d", X, "--out", "{d}/afile"], 2, "not a folder"),
    "axioms --json onto the data": (["axioms", E, "-d", X, "--json", X], 2, "is an input"),
    "spray --out at a file": (["spray", E, "-d", X, "-c", "1", "--out", "{d}/afile"], 2, "not a folder"),
    # run inputs
    "run missing explainer": (["run", "{d}/nope.onnx", "-i", X, "--out", "{d}/r"], 2, "no such explainer file"),
    "run a plain model": (["run", M, "-i", X, "--out", "{d}/r"], 2, "not an xcompile explainer"),
    "run missing input": (["run", E, "-i", "{d}/nope.npy", "--out", "{d}/r"], 2, "no such input"),
    "run empty batch": (["run", E, "-i", "{d}/empty.npy", "--out", "{d}/r"], 2, "0 rows"),
    "run empty batch with ray": (["run", E, "-i", "{d}/empty.npy", "--out", "{d}/r", "--engine", "ray"], 2, "0 rows"),
    "run object .npz": (["run", E, "-i", "{d}/objects.npz", "--out", "{d}/r"], 2, "object arrays are refused"),
    "run string array": (["run", E, "-i", "{d}/strings.npy", "--out", "{d}/r"], 2, "expected numbers"),
    "run wrong shape": (["run", E, "-i", "{d}/wrong.npy", "--out", "{d}/r"], 2, "expects [N, 1, 8, 8]"),
    "run --preprocess resize=0": (["run", E, "-i", X, "--out", "{d}/r", "--preprocess", "resize=0"], 2, "resize='0'"),
    "run --preprocess resize=-3": (["run", E, "-i", X, "--out", "{d}/r", "--preprocess", "resize=-3"], 2, "resize='-3'"),
    "run --preprocess std=0": (["run", E, "-i", X, "--out", "{d}/r", "--preprocess", "std=0"], 2, "std must be > 0"),
    "run --preprocess std=nan": (["run", E, "-i", X, "--out", "{d}/r", "--preprocess", "std=nan"], 2, "std='nan'"),
    "run --preprocess unknown key": (["run", E, "-i", X, "--out", "{d}/r", "--preprocess", "gamma=2"], 2, "unknown key"),
    "run --batch-size 0": (["run", E, "-i", X, "--out", "{d}/r", "--batch-size", "0"], 2, "--batch-size"),
    "run --engine foo": (["run", E, "-i", X, "--out", "{d}/r", "--engine", "foo"], 2, "--engine 'foo'"),
    "run --target 99": (["run", E, "-i", X, "--out", "{d}/r", "--target", "99"], 2, "target 99 is out of range"),
    "run --target 2**70": (["run", E, "-i", X, "--out", "{d}/r", "--target", str(2**70)], 2, "is out of range"),
    "run --device tpu": (["run", E, "-i", X, "--out", "{d}/r", "--device", "tpu"], 2, "unknown device 'tpu'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, env, capfd):
    argv, code, fragment = CASES[case]
    before = listing(env)
    # capfd: stderr at the file-descriptor level, so onnxruntime's own log lines count too
    assert code == 2
    one_line_error(inproc(capfd, *(a.format(d=env) for a in argv)), fragment)
    assert listing(env) == before, listing(env) ^ before          # no file left (no partial output, no temp file)


def test_the_corpus_is_large_enough():
    assert len(CASES) + len(API_CASES) >= 60


# ------------------------------------------------------------------ the Python API: XCompileError, not ValueError
API_CASES = {
    "empty numpy batch": (lambda ex, torch: ex.explain(np.zeros((0, 1, 8, 8), np.float32)), "0 rows"),
    "empty torch batch": (lambda ex, torch: ex.explain(torch.zeros(0, 1, 8, 8)), "0 rows"),
    "batch_size=-1": (lambda ex, torch: ex.explain(np.zeros((2, 1, 8, 8), np.float32), batch_size=-1), "batch_size=-1"),
    "batch_size=0": (lambda ex, torch: ex.explain(np.zeros((2, 1, 8, 8), np.float32), batch_size=0), "batch_size=0"),
    "batch_size=1.5": (lambda ex, torch: ex.explain(np.zeros((2, 1, 8, 8), np.float32), batch_size=1.5), "batch_size=1.5"),
    "ragged list": (lambda ex, torch: ex.explain([[1.0, 2.0], [3.0]]), "not a rectangular array"),
    "uint64 target 2**64-1": (lambda ex, torch: ex.explain(np.zeros((1, 1, 8, 8), np.float32), target=np.uint64(2**64 - 1)), "out of range"),
    "python int target 2**70": (lambda ex, torch: ex.explain(np.zeros((1, 1, 8, 8), np.float32), target=2**70), "out of range"),
    "float target": (lambda ex, torch: ex.explain(np.zeros((1, 1, 8, 8), np.float32), target=1.5), "integer class indices"),
    "torch wrong shape names its shape": (lambda ex, torch: ex.explain(torch.zeros(2, 1, 9, 9)), "[2, 1, 9, 9]"),
    "integer input": (lambda ex, torch: ex.explain(np.zeros((1, 1, 8, 8), np.int64)), "dtype int64"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_python_api_raises_xcompile_error(case, env):
    torch = pytest.importorskip("torch")
    ex = xcompile.Explainer(env / "explainer.onnx")
    fn, fragment = API_CASES[case]
    with pytest.raises(XCompileError) as e:
        fn(ex, torch)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_non_finite_input_warns_once(env, capsys):
    from xcompile import errors
    errors._WARNED.discard("input")
    ex = xcompile.Explainer(env / "explainer.onnx")
    x = np.full((2, 1, 8, 8), np.nan, np.float32)
    ex.explain(x)
    ex.explain(x)
    err = capsys.readouterr().err
    assert err.count("xcompile: warning: input has") == 1 and len(err.strip().splitlines()) == 1, err


def test_non_finite_weights_warn_once(env, tmp_path, capsys):
    m = onnx.load(env / "model.onnx")
    w = next(t for t in m.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) > 1)
    a = onnx.numpy_helper.to_array(w).copy()
    a.flat[0] = np.nan
    w.CopyFrom(onnx.numpy_helper.from_array(a, w.name))
    onnx.save(m, tmp_path / "nan.onnx")
    rc, _, err = inproc(capsys, "compile", tmp_path / "nan.onnx", "-m", "gradient", "-o", tmp_path / "ex.onnx")
    assert rc == 0 and err.count("xcompile: warning:") == 1 and "NaN or Inf" in err and w.name in err, err


def test_infinite_mask_constant_does_not_warn_but_infinite_weight_does(tmp_path, capsys):
    """-inf added before a softmax (an attention mask) is a legitimate constant; +inf in a MatMul weight is not."""
    rng = np.random.default_rng(0)

    def model(w1):
        inits = [onnx.numpy_helper.from_array(w1, "w1"),
                 onnx.numpy_helper.from_array(np.array([[-np.inf, 0, 0, 0]], np.float32), "mask"),
                 onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w2")]
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "mask"], ["m"]),
                 helper.make_node("Softmax", ["m"], ["p"], axis=1), helper.make_node("MatMul", ["p", "w2"], ["y"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    w1 = rng.standard_normal((4, 4)).astype(np.float32)
    onnx.save(model(w1), tmp_path / "mask.onnx")
    rc, _, err = inproc(capsys, "compile", tmp_path / "mask.onnx", "-m", "gradient", "-o", tmp_path / "ex.onnx")
    assert rc == 0 and "warning" not in err, err
    out = xcompile.Explainer(tmp_path / "ex.onnx").explain(rng.standard_normal((2, 4)).astype(np.float32))
    assert np.isfinite(out.relevance).all() and np.isfinite(out.scores).all()
    w1[0, 0] = np.inf
    onnx.save(model(w1), tmp_path / "inf.onnx")
    rc, _, err = inproc(capsys, "compile", tmp_path / "inf.onnx", "-m", "gradient", "-o", tmp_path / "ex2.onnx")
    assert rc == 0 and err.count("xcompile: warning:") == 1 and "'w1'" in err, err


def test_python_api_compile_and_options(env):
    with pytest.raises(XCompileError, match="not a finite number"):
        xcompile.compile(env / "model.onnx", "integrated_gradients", baseline=float("nan"))
    with pytest.raises(XCompileError, match="GB for one input row"):
        xcompile.compile(env / "model.onnx", "smoothgrad", samples=10**9)


def test_occlusion_memory_bound_and_inspect(env, monkeypatch, capsys):
    rc, out, err = inproc(capsys, "inspect", env / "model.onnx", "-m", "occlusion")   # the shared support check
    assert rc == 0 and "/fc2/Gemm" in out, err
    monkeypatch.setenv("XCOMPILE_MEMORY_CAP_MB", "0.001")
    with pytest.raises(XCompileError, match="occlusion with 64 windows: needs about"):
        xcompile.compile(env / "model.onnx", "occlusion", window=1, stride=1)


def test_memory_cap_is_overridable(env, monkeypatch):
    monkeypatch.setenv("XCOMPILE_MEMORY_CAP_MB", "0.001")
    with pytest.raises(XCompileError, match=r"over the cap of 1e-06 GB .*XCOMPILE_MEMORY_CAP_MB"):
        xcompile.compile(env / "model.onnx", "integrated_gradients", steps=4)
    monkeypatch.setenv("XCOMPILE_MEMORY_CAP_MB", "many")
    with pytest.raises(XCompileError, match="XCOMPILE_MEMORY_CAP_MB"):
        xcompile.compile(env / "model.onnx", "integrated_gradients", steps=4)


# ------------------------------------------------------------------ atomic writes (real processes)
def _cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "xcompile", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temps(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_compile_keeps_the_old_file_and_no_temp_file(sig, tmp_path):
    out = tmp_path / "ex.onnx"
    out.write_bytes(b"the old explainer")
    flag = tmp_path / "paused"
    p = _cli("compile", DIGITS, "-m", "gradient", "-o", out, env=dict(os.environ, XCOMPILE_TEST_PAUSE_BEFORE_RENAME=str(flag)))
    t0 = time.monotonic()
    while not flag.exists():                      # the hook writes the temp path, then sleeps before the rename
        assert p.poll() is None and time.monotonic() - t0 < 120, p.communicate()
        time.sleep(0.05)
    tmp = Path(flag.read_text())
    assert tmp.parent == tmp_path and tmp.is_file() and tmp.stat().st_size > 1000
    p.send_signal(sig)
    p.communicate(timeout=60)
    flag.unlink()
    assert out.read_bytes() == b"the old explainer"
    if sig == signal.SIGTERM:                     # a terminated compile removes its temp file itself
        assert _temps(tmp_path) == []
    else:                                         # SIGKILL cannot be caught: the next write to -o removes it
        assert _temps(tmp_path) == [tmp.name]
        q = _cli("compile", DIGITS, "-m", "gradient", "-o", out)
        assert q.wait(120) == 0, q.communicate()
        assert _temps(tmp_path) == []
        onnx.checker.check_model(onnx.load(out), full_check=True)


def test_three_concurrent_compiles_to_one_output(tmp_path):
    out = tmp_path / "ex.onnx"
    procs = [_cli("compile", DIGITS, "-m", m, "-o", out) for m in ("gradient", "input_x_gradient", "gradient")]
    results = [(p.wait(180), *p.communicate()) for p in procs]
    for rc, so, se in results:
        assert rc == 0 and "Traceback" not in se, se
    assert _temps(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ex.onnx"]
    model = onnx.load(out)                        # one complete explainer, whichever rename came last
    onnx.checker.check_model(model, full_check=True)
    ex = xcompile.Explainer(out)
    assert ex.explain(np.zeros((1, 1, 8, 8), np.float32)).relevance.shape == (1, 1, 8, 8)


def test_run_out_folder_is_marked_complete(env, tmp_path, capfd):
    out = tmp_path / "r"
    rc, _, err = inproc(capfd, "run", env / "explainer.onnx", "-i", env / "x.npy", "--out", out)
    assert rc == 0, err
    listed = (out / "_COMPLETE").read_text().split()
    assert sorted(listed) == sorted(p.name for p in out.iterdir() if p.name != "_COMPLETE")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # an interrupted run leaves no marker: the writer removes it first and writes it last
    from xcompile.files import completed_folder
    with pytest.raises(RuntimeError), completed_folder(out):
        raise RuntimeError("killed")
    assert not (out / "_COMPLETE").exists()


def test_predicted_is_the_explained_class_on_a_softmax_tie(tmp_path):
    """Logits that differ by 1e-9 give ten equal float32 probabilities: the explainer explains the argmax of the
    logits (class 8) and `predicted` must report that class, not the argmax of the tied probabilities (0)."""
    bias = np.zeros(10, np.float32)
    bias[8] = 1e-9
    w = np.zeros((4, 10), np.float32)
    w[:, 8] = 1e-12
    inits = [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(bias, "B")]
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["logits"], name="fc"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1)]
    g = helper.make_graph(nodes, "tie", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ex = xcompile.Explainer(xcompile.compile(model, "gradient"))
    res = ex.explain(np.zeros((3, 4), np.float32))
    assert (np.asarray(res.scores) == np.float32(0.1)).all()       # a float32 tie in the probabilities
    assert res.predicted.tolist() == [8, 8, 8]
    np.testing.assert_allclose(res.relevance, np.broadcast_to(w[:, 8], (3, 4)), rtol=1e-6)  # d logit_8 / dx
    assert ex.explain(np.zeros((2, 4), np.float32), target=[3, 5]).predicted.tolist() == [3, 5]


# ------------------------------------------------------------------ the handler does not depend on click's layout
def _raise(exc):
    def app(*args, **kwargs):
        raise exc
    return app


def test_usage_errors_are_found_by_class_name_not_import_path(monkeypatch, capsys):
    from xcompile.commands import main as cli_main

    class UsageError(Exception):                 # neither click's nor typer._click's class: the same name and API
        def format_message(self):
            return "No such option: --frob"

    class ClickException(Exception):
        def format_message(self):
            return "something\nover two lines"

    errors = [UsageError(), ClickException()]
    try:
        import click
        errors.append(click.UsageError("plain click"))
    except ImportError:  # pragma: no cover
        pass
    for exc in errors:
        monkeypatch.setattr(cli_main, "app", _raise(exc))
        one_line_error(inproc(capsys, "anything"))
    monkeypatch.setattr(cli_main, "app", _raise(RuntimeError("a bug")))   # a real bug still shows its traceback
    with pytest.raises(RuntimeError):
        cli_main.main(["anything"])


@pytest.mark.parametrize("name,ok", [("digits", True), ("resnet-50.v2", True), ("a_b", True), (".", False),
                                     ("..", False), ("../x", False), ("a/b", False), ("a\\b", False), ("", False),
                                     (".hidden", False), ("-rf", False), ("x" * 129, False), ("é", False)])
def test_safe_name(name, ok):
    from xcompile.files import safe_name
    if ok:
        assert safe_name(name) == name
    else:
        with pytest.raises(XCompileError, match="--name"):
            safe_name(name)
