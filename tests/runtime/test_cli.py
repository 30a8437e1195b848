"""The command line as a user meets it: the demo, compile -> run -> inspect, deterministic output, and bad input
answered by ONE line naming the file/node/option at fault, exit code 2, no traceback, no partial output."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirun import cli, one_line_error
from onnx import TensorProto, helper, numpy_helper

import xcompile

DATA = Path(xcompile.__file__).parent / "data"
DIGITS = DATA / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def unsupported_model(tmp_path_factory):
    """x -> Tan -> Atan -> Asinh -> MatMul: three operators without a backward, on the relevance path."""
    w = numpy_helper.from_array(np.random.default_rng(0).random((4, 3), dtype=np.float32), "W")
    nodes = [helper.make_node("Tan", ["x"], ["a"], name="tan0"), helper.make_node("Atan", ["a"], ["b"], name="atan0"),
             helper.make_node("Asinh", ["b"], ["c"], name="asinh0"), helper.make_node("MatMul", ["c", "W"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    path = tmp_path_factory.mktemp("unsup") / "unsupported.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_demo_runs_and_writes_the_grid(tmp_path):
    rc, out, err = cli("demo", "--out", tmp_path / "demo", "--n", "4")
    assert rc == 0, err
    assert (tmp_path / "demo" / "demo_grid.png").stat().st_size > 10_000
    explainers = sorted((tmp_path / "demo").glob("*.onnx"))
    assert len(explainers) >= 8
    acc = [float(line.rsplit("accuracy", 1)[1]) for line in out.splitlines() if "accuracy" in line]
    assert acc and min(acc) > 0.9          # the shipped CNN classifies held-out digits


def test_compile_run_inspect_round_trip(tmp_path):
    ex = tmp_path / "ig.onnx"
    rc, out, err = cli("compile", DIGITS, "-m", "integrated_gradients", "--set", "steps=8", "-o", ex)
    assert rc == 0 and ex.is_file(), err
    model = onnx.load(ex)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input][-1] == "target"
    assert [o.name for o in model.graph.output][:2] == ["scores", "relevance"]
    with np.load(DATA / "digits_heldout.npz") as z:
        x = z["x"][:5].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rc, out, err = cli("run", ex, "-i", tmp_path / "x.npy", "--out", tmp_path / "res", "-t", "3")
    assert rc == 0, err
    rel = np.load(tmp_path / "res" / "x_0_relevance.npy")
    ref = xcompile.Explainer(ex).explain(x, np.full(5, 3)).relevance[0]     # same batch as the CLI run
    np.testing.assert_array_equal(rel, ref)
    assert len(list((tmp_path / "res").glob("*_heatmap.png"))) == 5
    rc, out, err = cli("inspect", DIGITS, "-m", "lrp", "-r", "epsilon-plus-flat")
    assert rc == 0, err
    assert "Conv" in out and "Gemm" in out or "MatMul" in out


def test_compiling_twice_gives_identical_bytes(tmp_path):
    for name in ("a", "b"):
        rc, _, err = cli("compile", DIGITS, "-m", "lrp", "-r", "epsilon-gamma-box", "--set", "low=0", "--set", "high=1",
                         "-o", tmp_path / f"{name}.onnx")
        assert rc == 0, err
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_unsupported_operators_are_listed_all_at_once(unsupported_model, tmp_path):
    for method in ("gradient", "lrp"):
        out = tmp_path / f"{method}.onnx"
        one_line_error(cli("compile", unsupported_model, "-m", method, "-o", out),
                       str(unsupported_model), "3 unsupported", "tan0 (Tan)", "atan0 (Atan)", "asinh0 (Asinh)")
        assert not out.exists()
    rc, out, _ = cli("inspect", unsupported_model)
    assert "unsupported: tan0 (Tan)" in out and "unsupported: asinh0 (Asinh)" in out


@pytest.mark.parametrize("args,fragments", [
    (["compile", "/no/such/model.onnx", "-m", "gradient"], ["/no/such/model.onnx", "no such model file"]),
    (["compile", DATA / "digits_heldout.npz", "-m", "gradient"], ["digits_heldout.npz", "not a readable ONNX model"]),
    (["compile", DIGITS, "-m", "saliency_maps"], ["unknown method 'saliency_maps'", "gradient"]),
    (["compile", DIGITS, "-m", "smoothgrad", "--set", "sigma=1"], ["option 'sigma'", "smoothgrad", "noise_level"]),
    (["compile", DIGITS, "-m", "smoothgrad", "--set", "samples=many"], ["samples='many'"]),
    (["compile", DIGITS, "-m", "smoothgrad", "--set", "samples"], ["--set 'samples'", "key=value"]),
    (["compile", DIGITS, "-m", "lrp", "-r", "no-such-rules"], ["--rules 'no-such-rules'", "epsilon-plus-flat"]),
    (["compile", DIGITS, "-m", "gradient", "--set", "input=pixels"], ["digits_cnn.onnx", "input='pixels'"]),
    (["compile", DIGITS, "-m", "gradient", "--set", "output=logits2"], ["digits_cnn.onnx", "logits2"]),
])
def test_bad_compile_input_is_one_line_exit_2_and_writes_nothing(args, fragments, tmp_path):
    out = tmp_path / "never.onnx"
    one_line_error(cli(*args, "-o", out), *fragments)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_malformed_rule_file_names_the_file(tmp_path):
    rules = tmp_path / "mine.toml"
    rules.write_text('[[rule]]\nselect = { op = "Conv" }\nrule = "no-such-rule"\n')
    one_line_error(cli("compile", DIGITS, "-m", "lrp", "-r", rules, "-o", tmp_path / "x.onnx"), "mine.toml")
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def gradient_explainer(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "g.onnx"
    assert cli("compile", DIGITS, "-m", "gradient", "-o", path)[0] == 0
    return path


@pytest.mark.parametrize("array,extra,fragments", [
    (np.zeros((2, 3, 5, 5), np.float32), [], ["bad.npy", "[2, 3, 5, 5]", "[N, 1, 8, 8]"]),
    (np.zeros((2, 1, 8, 8), np.float32), ["-t", "12"], ["target 12", "0..9"]),
    (np.zeros((2, 1, 8, 8), np.float32), ["--device", "tpu"], ["tpu"]),
    (np.zeros((2, 1, 8, 8), np.float32), ["--engine", "spark"], ["--engine 'spark'"]),
])
def test_bad_run_input_is_one_line_exit_2(gradient_explainer, array, extra, fragments, tmp_path):
    np.save(tmp_path / "bad.npy", array)
    one_line_error(cli("run", gradient_explainer, "-i", tmp_path / "bad.npy", "--out", tmp_path / "res", *extra),
                   *fragments)
    assert not (tmp_path / "res").exists()


def test_run_missing_explainer_and_missing_input(gradient_explainer, tmp_path):
    one_line_error(cli("run", tmp_path / "none.onnx", "-i", tmp_path / "x.npy"), "none.onnx", "no such explainer file")
    one_line_error(cli("run", gradient_explainer, "-i", tmp_path / "missing.npy", "--out", tmp_path / "res"), "missing.npy")


def test_python_api_validates_inputs(gradient_explainer):
    ex = xcompile.Explainer(gradient_explainer)
    with pytest.raises(xcompile.XCompileError, match=r"\[N, 1, 8, 8\]"):
        ex.explain(np.zeros((2, 1, 8, 9), np.float32))
    one = ex.explain(np.zeros((1, 8, 8), np.float32))            # a single sample without its batch axis
    assert one.relevance.shape == (1, 1, 8, 8)
    with pytest.raises(xcompile.XCompileError, match="target"):
        ex.explain(np.zeros((2, 1, 8, 8), np.float32), np.array([1, 2, 3]))
    res = ex.explain(np.zeros((2, 1, 8, 8), np.float32), 4)     # one class for every row
    assert res.relevance.shape == (2, 1, 8, 8)
