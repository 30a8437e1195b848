"""Hostile and careless input that is not a model (docs/deployment.md "Serving: security" and README "Bad input"):
every case exits 2 with one line, in bounded time, and writes or loses nothing."""
import functools
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirun import ENV, cli, inproc, one_line_error
from onnx import TensorProto, helper

import xcompile
from xcompile.errors import XCompileError
from xcompile.write.writer import save

DATA = Path(xcompile.__file__).parent / "data"


@pytest.fixture(scope="module")
def explainer(tmp_path_factory):
    p = tmp_path_factory.mktemp("hfiles") / "digits.onnx"
    save(xcompile.compile(DATA / "digits_cnn.onnx", "gradient"), p)
    return p


@pytest.fixture(scope="module")
def sample():
    with np.load(DATA / "digits_heldout.npz") as z:
        return z["x"][:2].astype(np.float32)


def test_fifo_input_refused(explainer, tmp_path):
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    r = cli("run", explainer, "-i", fifo, "--out", tmp_path / "o", timeout=30)
    assert "FIFO" in one_line_error(r) and r.seconds < 30 and not (tmp_path / "o").exists()


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose IHDR declares w x h 8-bit grey pixels, with one small IDAT of zeros (what a bomb looks like
    before inflating)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def test_memory_bombs_refused_before_allocating(explainer, tmp_path):
    """A .npz whose member declares 1 GB (a few kB on disk), a 121-megapixel PNG, a 16-byte vocabulary with id
    1e10: refused from their headers with a 200 MB cap, in a child whose peak memory is measured."""
    bomb = tmp_path / "bomb.npz"
    header = tmp_path / "h.npy"
    with open(header, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (250_000_000,)})
        f.write(b"\0" * 4096)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(header, "x.npy")
    png = tmp_path / "big.png"
    png.write_bytes(_png_header(11000, 11000))  # 121 megapixels declared (a decompression bomb's header)
    vocab = tmp_path / "v.json"
    vocab.write_text(json.dumps({"a": 10_000_000_000}))
    env = dict(ENV, XCOMPILE_MEMORY_CAP_MB="200")
    for args, needle in (((explainer, "-i", bomb), "GB"), ((explainer, "-i", png), "megapixels")):
        # VmHWM is the child's own peak (ru_maxrss would keep the forking pytest process's size across exec)
        probe = ("import atexit, re, sys; atexit.register(lambda: print('PEAK', re.search(r'VmHWM:\\s+(\\d+)', "
                 "open('/proc/self/status').read()).group(1), file=sys.stderr))")
        r = cli("run", *args, "--out", tmp_path / "o", timeout=60, env=env, prelude=probe)
        peak = int(r.stderr.split("PEAK")[1].split()[0])
        assert r.returncode == 2 and needle in r.stderr and peak < 600_000, (r.stderr[-800:], peak)  # kB
    from xcompile.runtime.tokens import load_vocabulary
    with pytest.raises(XCompileError, match="token id 10000000000"):
        load_vocabulary(vocab)


def test_run_never_overwrites_inputs_or_foreign_files(explainer, sample, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    np.save(d / "scores.npy", sample)
    before = (d / "scores.npy").read_bytes()
    line = one_line_error(inproc(capsys, "run", explainer, "-i", d / "scores.npy", "--out", d))
    assert "input" in line and (d / "scores.npy").read_bytes() == before
    other = tmp_path / "o"
    other.mkdir()
    (other / "x_0_relevance.npy").write_bytes(b"mine")
    np.save(tmp_path / "x.npy", sample)
    line = one_line_error(inproc(capsys, "run", explainer, "-i", tmp_path / "x.npy", "--out", other))
    assert "--overwrite" in line and (other / "x_0_relevance.npy").read_bytes() == b"mine"
    assert inproc(capsys, "run", explainer, "-i", tmp_path / "x.npy", "--out", other, "--overwrite").returncode == 0
    assert inproc(capsys, "run", explainer, "-i", tmp_path / "x.npy", "--out", other).returncode == 0  # ours now


def test_row_names_unique_and_modes_kept(explainer, sample, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", sample)
    from PIL import Image
    Image.fromarray((sample[0, 0] * 255).astype(np.uint8)).save(src / "a_0.png")
    out = tmp_path / "out"
    out.mkdir()
    r = inproc(capsys, "run", explainer, "-i", src, "--out", out)
    assert r.returncode == 0, r.stderr
    listed = (out / "_COMPLETE").read_text().split()
    assert len(listed) == len(set(listed)) and "a_0-2_relevance.npy" in listed
    os.chmod(out / "scores.npy", 0o600)
    assert inproc(capsys, "run", explainer, "-i", src, "--out", out).returncode == 0
    assert stat.S_IMODE(os.stat(out / "scores.npy").st_mode) == 0o600


def test_names_are_text_not_markup_or_terminal_codes(explainer, sample, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a$\\frac{1$.npy", sample[:1])
    np.save(src / "b\x1b[2J\x1b]0;pwned\x07\nforged.npy", sample[:1])
    r = inproc(capsys, "run", explainer, "-i", src, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout + r.stderr and "\\x1b[2J" in r.stdout
    assert all(not ln.startswith("forged") for ln in r.stdout.splitlines())
    assert (tmp_path / "out" / "a$\\frac{1$_heatmap.png").is_file()


def test_rule_regex_linear_time(tmp_path, capsys):
    m = tmp_path / "m.onnx"
    node = helper.make_node("Relu", ["x"], ["y"], name="a" * 33 + "b")
    g = helper.make_graph([helper.make_node("Gemm", ["x0", "w"], ["x"], name="a" * 40 + "!"), node], "g",
                          [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12).tolist())])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), m)
    for pattern, ok in (("^(a+)+$", True), ("a{99999999999}", None), ("(" * 100_000, False)):
        rules = tmp_path / "r.toml"
        rules.write_text(f'[[rule]]\nname_regex = "{pattern}"\nrule = "epsilon"\n[[rule]]\nrule = "zero"\n')
        # the backtracking case in a child (bounded wait)
        run = functools.partial(cli, timeout=60) if ok else functools.partial(inproc, capsys)
        r = run("compile", m, "-m", "lrp", "-r", rules, "-o", tmp_path / "e.onnx")
        assert r.seconds < 30
        if ok:
            assert r.returncode == 0, r.stderr
        elif ok is False:
            assert "name_regex" in one_line_error(r)
        else:
            assert r.returncode in (0, 2) and "Traceback" not in r.stderr


def test_api_misuse_is_one_line(explainer, sample):
    for bad in (12345, None, 1.5):
        with pytest.raises(XCompileError, match="expected a path, bytes"):
            xcompile.Explainer(bad)
    for kw in ({"threads": 1.5}, {"threads": -1}, {"threads": 100000}, {"providers": ["Nope"]}):
        with pytest.raises(XCompileError) as e:
            xcompile.Explainer(explainer, **kw)
        assert "\n" not in str(e.value)
    ex = xcompile.Explainer(explainer.read_bytes())  # bytes, as compile() accepts them
    assert ex.explain(sample).relevance.shape == sample.shape


def test_neuralized_run_and_predicted(tmp_path, capsys):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.cluster import KMeans
    from sklearn.svm import OneClassSVM
    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", X[:3])
    for est in (KMeans(3, n_init=1, random_state=0).fit(X), OneClassSVM(gamma=0.5).fit(X)):
        e = tmp_path / f"{type(est).__name__}.onnx"
        save(xcompile.compile(skl2onnx.to_onnx(est, X[:1]), "neuralized"), e)
        res = xcompile.Explainer(e).explain(X[:3])
        assert np.asarray(res.predicted).shape == (3,)
        if isinstance(est, KMeans):
            np.testing.assert_array_equal(res.predicted, est.predict(X[:3]))
        r = inproc(capsys, "run", e, "-i", tmp_path / "x.npy", "--out", tmp_path / type(est).__name__)
        assert r.returncode == 0 and (tmp_path / type(est).__name__ / "_COMPLETE").is_file(), r.stderr


def test_all_nan_input_names_the_input(explainer, sample, tmp_path, capsys):
    np.save(tmp_path / "nan.npy", np.full_like(sample, np.nan))
    line = one_line_error(inproc(capsys, "run", explainer, "-i", tmp_path / "nan.npy", "--out", tmp_path / "o"))
    assert "nan.npy" in line and "NaN" in line and not (tmp_path / "o").exists()


def test_long_set_value_and_model_output_clash(tmp_path, capsys):
    r = inproc(capsys, "compile", DATA / "digits_cnn.onnx", "-m", "smoothgrad", "--set", "noise_level=" + "9" * 300,
            "-o", tmp_path / "e.onnx")
    assert "noise_level" in one_line_error(r) and not (tmp_path / "e.onnx").exists()
    m = onnx.load(DATA / "digits_cnn.onnx")
    out = m.graph.output[0].name
    m.graph.node.append(helper.make_node("Identity", [out], ["explained_class"]))
    m.graph.output.append(helper.make_tensor_value_info("explained_class", TensorProto.FLOAT, ["N", 10]))
    onnx.save(m, tmp_path / "clash.onnx")
    assert "explained_class" in one_line_error(inproc(capsys, "compile", tmp_path / "clash.onnx", "-m", "gradient",
                                                   "-o", tmp_path / "c.onnx"))


def test_visualize_and_spray_without_scipy(tmp_path):
    """`pip install -e .` has no scipy / scikit-learn: visualize works (numpy blur, equal to scipy's), spray names its
    extra in one line."""
    block = "import sys; sys.modules['scipy'] = None; sys.modules['sklearn'] = None"
    r = cli("visualize", DATA / "digits_cnn.onnx", "--class", "7", "--set", "low=0", "--set", "high=1", "--steps", "8",
            "-o", tmp_path / "s.npy", timeout=120, prelude=block)
    assert r.returncode == 0 and (tmp_path / "s.npy").is_file(), r.stderr[-1500:]
    r = cli("spray", DATA / "digits_cnn.onnx", "--data", DATA / "digits_heldout.npz", "--class", "0",
            "--out", tmp_path / "sp", timeout=120, prelude=block)
    assert "xcompile[analysis]" in one_line_error(r)
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    from xcompile.visualize import gaussian_filter
    x = np.random.default_rng(0).normal(size=(2, 3, 17, 13)).astype(np.float32)
    for s in (0.5, 1.3, 3.0):
        ref = scipy_ndimage.gaussian_filter(x, [0, 0, s, s], mode="nearest")
        assert np.abs(gaussian_filter(x, [0, 0, s, s]) - ref).max() / np.abs(ref).max() < 1e-5


def test_compile_and_api_values_refused_in_one_line(tmp_path):
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 0])],
                          [helper.make_tensor("w", TensorProto.FLOAT, [4, 0], [])])
    zero = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    big = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**62, 2**62])
    big.raw_data = b"\0" * 16
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [big])
    huge = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    D = DATA / "digits_cnn.onnx"
    cases = [((None, "gradient"), {}, "expected a path"), ((zero, "gradient"), {}, "0 classes"),
             ((huge, "gradient"), {}, "declares dims"),
             ((D, "gradient"), {"input_shape": "1x100000x100000"}, "input_shape"),
             ((D, "smoothgrad"), {"seed": -1}, "seed"), ((D, "smoothgrad"), {"noise_level": 1e308}, "noise_level"),
             ((D, "occlusion"), {"fill": 1e39}, "fill"), ((D, "lrp"), {"low": 0, "high": 1, "std": 0}, "std"),
             ((D, "integrated_gradients"), {"baseline": np.zeros((3, 3), np.float32)}, "baseline")]
    for args, kw, needle in cases:
        with pytest.raises(XCompileError) as e:
            xcompile.compile(*args, **kw)
        assert needle in str(e.value) and "\n" not in str(e.value), (needle, str(e.value))


def test_evaluate_bad_values_and_telemetry(explainer, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    (tmp_path / "empty.npy").write_bytes(b"")
    r = inproc(capsys, "evaluate", DATA / "digits_cnn.onnx", "--data", tmp_path / "x.npy", "--methods", "gradient",
            "--batch-size", "0", "--out", tmp_path / "ev")
    assert "--batch-size" in one_line_error(r)
    for boxes in (tmp_path / "missing.npy", tmp_path / "empty.npy"):
        r = inproc(capsys, "pool-relevance", explainer, "--data", tmp_path / "x.npy", "--boxes", boxes)
        assert "--boxes" in one_line_error(r) or "numpy" in one_line_error(r)
    home = tmp_path / "home"
    home.write_text("a file, not a folder: onnxruntime cannot persist its telemetry id here")
    r = cli("run", explainer, "-i", tmp_path / "x.npy", "--out", tmp_path / "o", timeout=60,
            env=dict(ENV, HOME=str(home)))
    assert r.returncode == 0 and "telemetry" not in r.stderr and r.stderr.strip() == "", r.stderr


def test_run_prints_class_names_from_metadata(tmp_path, capsys):
    m = onnx.load(DATA / "digits_cnn.onnx")
    names = [f"digit-{k}" for k in range(10)]
    m.metadata_props.add(key="class_names", value=json.dumps(names))
    e = tmp_path / "e.onnx"
    save(xcompile.compile(m, "gradient"), e)
    with np.load(DATA / "digits_heldout.npz") as z:
        np.save(tmp_path / "x.npy", z["x"][:2])
    r = inproc(capsys, "run", e, "-i", tmp_path / "x.npy", "--out", tmp_path / "o")
    assert r.returncode == 0 and "(digit-" in r.stdout, r.stdout


def test_triton_export_ranges_and_atomic_folder(explainer, tmp_path, capsys):
    line = one_line_error(inproc(capsys, "export-triton", explainer, "--repo", tmp_path / "repo", "--max-batch", 2**40))
    assert "--max-batch" in line and not (tmp_path / "repo" / "digits").exists()
    assert inproc(capsys, "export-triton", explainer, "--repo", tmp_path / "repo").returncode == 0
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["digits"]  # no temporary folder left
    assert (tmp_path / "repo" / "digits" / "1" / "model.onnx").is_file()


def test_node_names_escaped_in_listings_and_errors(tmp_path, capsys):
    evil = "relu\x1b[2J\x1b]0;pwned\x07\nforged line"
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["h"], name="gemm"),
                           helper.make_node("Relu", ["h"], ["y"], name=evil)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12).tolist())])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    r = inproc(capsys, "inspect", tmp_path / "m.onnx", "-m", "lrp")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "\\x1b[2J" in r.stdout, r.stdout
    assert not any(ln.startswith("forged") for ln in r.stdout.splitlines())
    e = XCompileError(f"node {evil!s}: bad")
    assert "\n" not in str(e) and "\x1b" not in str(e) and "\\x1b]0;pwned\\x07" in str(e)
