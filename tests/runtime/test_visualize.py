"""`xcompile visualize` (activation maximization) on the shipped digits CNN: every class is reached with
softmax >= 0.9, a seed makes it reproducible, bad options give one line on stderr and exit code 2."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from clirun import cli, inproc, one_line_error

import xcompile
from xcompile.visualize import maximize

DIGITS = Path(xcompile.__file__).parent / "data" / "digits_cnn.onnx"
BOUNDS = {"low": "0", "high": "1"}  # digits pixels lie in [0, 1]


@pytest.fixture(scope="module")
def all_classes():
    return maximize(DIGITS, list(range(10)), values=BOUNDS)


def test_every_digits_class_is_reached(all_classes):
    r = all_classes
    margins = {int(c): round(float(p), 4) for c, p in zip(r.classes, r.probability)}
    print("softmax of K per class:", margins)
    assert (r.predicted == np.arange(10)).all(), r.predicted
    assert (r.probability >= 0.9).all(), margins
    assert r.x.shape == (10, 1, 8, 8) and r.x.dtype == np.float32
    assert r.x.min() >= 0.0 and r.x.max() <= 1.0  # the pixel bounds hold


def test_seed_makes_it_deterministic(all_classes):
    again = maximize(DIGITS, list(range(10)), values=BOUNDS)
    assert np.array_equal(again.x, all_classes.x)
    other = maximize(DIGITS, [3], values=BOUNDS, seed=1, steps=20)
    same = maximize(DIGITS, [3], values=BOUNDS, seed=1, steps=20)
    different = maximize(DIGITS, [3], values=BOUNDS, seed=2, steps=20)
    assert np.array_equal(other.x, same.x) and not np.array_equal(other.x, different.x)


def test_mean_std_bounds_map_to_model_space():
    # a model that expects (pixel - 0.5) / 0.25 would get inputs in [-2, 2] for pixels in [0, 1]
    r = maximize(DIGITS, [0], values={**BOUNDS, "mean": "0.5", "std": "0.25"}, steps=10)
    assert r.x.min() >= -2.0 - 1e-6 and r.x.max() <= 2.0 + 1e-6


def test_cli_single_class_and_grid(tmp_path):
    out = tmp_path / "seven.npy"
    rc, stdout, err = cli("visualize", DIGITS, "--class", 7, "--set", "low=0", "--set", "high=1", "-o", out)
    assert rc == 0, err
    x = np.load(out)
    assert x.shape == (1, 1, 8, 8) and out.with_suffix(".png").is_file()
    assert "class 7: score" in stdout and "softmax" in stdout
    rc, stdout, err = cli("visualize", DIGITS, "--classes", "0,1,2", "--steps", 50, "--grid", tmp_path / "grid.png")
    assert rc == 0, err
    assert (tmp_path / "grid.png").is_file() and stdout.count("softmax") == 3


@pytest.mark.parametrize("args, fragment", [
    (["--class", 10], "class 10"),
    (["--classes", "1,x"], "--classes"),
    (["--class", 1, "--classes", "1,2"], "exactly one"),
    (["--class", 1, "--lr", -1], "--lr"),
    (["--class", 1, "--steps", 0], "--steps"),
    (["--class", 1, "--l2", 1.5], "--l2"),
    (["--class", 1, "--set", "low=0"], "low="),
    (["--class", 1, "--set", "low=1", "--set", "high=0"], "low="),
    (["--class", 1, "--set", "nope=1"], "nope"),
    (["--class", 1, "--set", "mean=0.1,0.2"], "mean"),
])
def test_bad_options_one_line_exit_2(args, fragment, tmp_path, capsys):
    out = tmp_path / "x.npy"
    one_line_error(inproc(capsys, "visualize", DIGITS, *args, "-o", out), fragment)
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_bad_model_path_one_line(tmp_path):
    one_line_error(cli("visualize", tmp_path / "missing.onnx", "--class", 1, "-o", tmp_path / "x.npy"))
