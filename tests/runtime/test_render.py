"""`xcompile run` at dataset speed: heatmaps by a colour-map lookup + PIL (runtime/render.py) in matplotlib's
``bwr`` colours (the oracle: matplotlib's own colormap), `--outputs relevance`, one disk flush per run folder.
Throughput is measured by tools/bench_run.py, not here."""
from __future__ import annotations

import io

import numpy as np
import pytest
from clirun import inproc, one_line_error
from PIL import Image

import xcompile
from xcompile.commands.demo import shipped
from xcompile.runtime.render import heatmap_rgb, png_bytes
from xcompile.write.writer import save


def test_colours_are_matplotlib_bwr_centred_on_zero():
    import matplotlib
    r = np.random.default_rng(0).normal(size=(12, 9)).astype(np.float32)
    ours = heatmap_rgb(r).astype(np.int16)
    ref = np.round(matplotlib.colormaps["bwr"]((r / np.abs(r).max() + 1) / 2)[..., :3] * 255).astype(np.int16)
    assert np.abs(ours - ref).max() <= 2  # two 8-bit steps: matplotlib's 256-entry table vs ours of 255
    assert tuple(heatmap_rgb(np.array([[0.0, 1.0, -1.0]]))[0, 0]) == (255, 255, 255)
    assert tuple(heatmap_rgb(np.array([[0.0, 1.0, -1.0]]))[0, 1]) == (255, 0, 0)
    assert tuple(heatmap_rgb(np.array([[0.0, 1.0, -1.0]]))[0, 2]) == (0, 0, 255)
    assert heatmap_rgb(np.zeros((2, 2))).min() == 255  # an all-zero map is white, not NaN


def test_png_shows_the_map_scaled_up_pixel_exact():
    r = np.zeros((1, 8, 8), np.float32)
    r[0, 2, 3] = 5.0
    img = np.asarray(Image.open(io.BytesIO(png_bytes(r, None, "t"))).convert("RGB"))
    band = img.shape[0] - img.shape[1]  # the title band on top
    s = img.shape[1] // 8
    assert s >= 16 and tuple(img[band + 2 * s + s // 2, 3 * s + s // 2]) == (255, 0, 0)
    assert tuple(img[band + s // 2, s // 2]) == (255, 255, 255)


@pytest.fixture(scope="module")
def explainer(tmp_path_factory):
    p = tmp_path_factory.mktemp("render") / "digits_gradient.onnx"
    save(xcompile.compile(shipped("digits_cnn.onnx"), "gradient"), p)
    return p


def test_run_outputs_all_and_relevance_only(explainer, tmp_path):
    from xcompile.commands.main import app
    x = np.load(shipped("digits_heldout.npz"))["x"][:6].astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    for outputs, out in (("all", tmp_path / "all"), ("relevance", tmp_path / "rel")):
        app(args=["run", str(explainer), "-i", str(tmp_path / "d.npy"), "--out", str(out), "--outputs", outputs],
            prog_name="xcompile", standalone_mode=False)
    names = {p.name for p in (tmp_path / "all").iterdir()}
    assert {f"d_{i}_heatmap.png" for i in range(6)} <= names and {f"d_{i}_relevance.npy" for i in range(6)} <= names
    assert not list((tmp_path / "rel").glob("*.png")) and len(list((tmp_path / "rel").glob("*_relevance.npy"))) == 6
    listed = (tmp_path / "all" / "_COMPLETE").read_text().split()
    assert sorted(listed) == sorted(n for n in names if n != "_COMPLETE")
    assert not [n for n in names if n.endswith(".tmp")]
    ref = xcompile.Explainer(explainer).explain(x)
    for i in range(6):
        np.testing.assert_array_equal(np.load(tmp_path / "rel" / f"d_{i}_relevance.npy"), ref.relevance[i])
        png = (tmp_path / "all" / f"d_{i}_heatmap.png").read_bytes()
        assert png == png_bytes(ref.relevance[i], None, f"d_{i}: class {int(ref.predicted[i])}")


def test_outputs_option_is_checked(explainer, tmp_path, capfd):
    np.save(tmp_path / "d.npy", np.zeros((1, 1, 8, 8), np.float32))
    r = inproc(capfd, "run", explainer, "-i", tmp_path / "d.npy", "--out", tmp_path / "o", "--outputs", "png")
    one_line_error(r, "--outputs 'png'")
