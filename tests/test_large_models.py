"""Models over protobuf's 2 GiB limit (vit_h_14, regnet_y_128gf) cannot be serialized to bytes: every place that
hands a ModelProto to onnxruntime or the ONNX checker, or writes it, goes through external data instead.

The limit is lowered to a few kB here so that the digits CNN takes that path; the results must be identical to
the in-memory path and the caller's model must keep its weights."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import xcompile
from xcompile import protobuf_limit
from xcompile.write.writer import save

DIGITS = Path(xcompile.__file__).parent / "data" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits():
    with np.load(Path(xcompile.__file__).parent / "data" / "digits_heldout.npz") as z:
        return z["x"][:16].astype(np.float32)


def _weights(model):
    return {t.name: onnx.numpy_helper.to_array(t).copy() for t in model.graph.initializer}


def test_compile_run_and_save_through_external_data(tmp_path, digits, monkeypatch):
    ref_model = xcompile.compile(DIGITS, "lrp", rules="epsilon-plus-flat")
    ref = xcompile.Explainer(ref_model).explain(digits)

    monkeypatch.setattr(protobuf_limit, "SERIALIZE_LIMIT", 4096)
    assert protobuf_limit.too_large(onnx.load(DIGITS))
    big = xcompile.compile(DIGITS, "lrp", rules="epsilon-plus-flat")   # probe, constant folding, checker: on disk
    before = _weights(big)
    res = xcompile.Explainer(big).explain(digits)                        # session from a temporary file
    np.testing.assert_array_equal(res.scores, ref.scores)
    np.testing.assert_array_equal(res.relevance, ref.relevance)
    after = _weights(big)                                                # nothing was emptied by onnx.save
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in big.graph.initializer)

    out = tmp_path / "explainer.onnx"
    save(big, out)
    assert (tmp_path / "explainer.onnx.data").stat().st_size > 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary left behind
    header = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    again = xcompile.Explainer(out).explain(digits)                       # a path: onnxruntime reads the sidecar
    np.testing.assert_array_equal(again.relevance, ref.relevance)


def test_cli_writes_a_loadable_explainer_with_its_data_file(tmp_path, digits):
    """The CLI in a fresh process with the limit lowered: output file + sidecar, and `xcompile run` reads them."""
    np.save(tmp_path / "x.npy", digits)
    code = ("import sys; from xcompile import protobuf_limit as p; p.SERIALIZE_LIMIT = 4096; "
            "from xcompile.cli import main; sys.argv = ['xcompile'] + sys.argv[1:]; main()")
    exp = tmp_path / "e.onnx"
    r = subprocess.run([sys.executable, "-c", code, "compile", str(DIGITS), "--method", "gradient", "-o", str(exp)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "e.onnx.data").exists()
    r = subprocess.run([sys.executable, "-m", "xcompile", "run", str(exp), "-i", str(tmp_path / "x.npy"),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref = xcompile.Explainer(xcompile.compile(DIGITS, "gradient")).explain(digits)
    for i in (0, 9, 15):   # one relevance file per row
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"x_{i}_relevance.npy"), ref.relevance[i])
