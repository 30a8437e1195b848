"""Scale-out on Ray: a local Ray with 2 workers (one onnxruntime session per worker actor) gives the
same explanations, bit for bit, as a local Explainer run; shard files are written; pattern statistics
fitted per shard merge (sums + counts) to the single-process statistics."""
import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import xcompile
from xcompile.errors import XCompileError
from xcompile.write.writer import save

ray = pytest.importorskip("ray")
from xcompile.serving.ray_batch import load_shards, ray_map_shards, run_ray, run_with_ray  # noqa: E402

DATA = Path(xcompile.__file__).parent / "data"


@pytest.fixture(scope="module")
def ray_local():
    """One local 2-CPU Ray for the module (the functions reuse an initialized Ray, else start their own)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray_model")
    src = DATA / "digits_cnn.onnx"
    if src.is_file():
        with np.load(DATA / "digits_heldout.npz") as z:
            x = z["x"].astype(np.float32)
    else:
        from test_serving_triton import tiny_two_output_model
        src = tiny_two_output_model(d / "tiny.onnx")
        x = np.random.default_rng(0).random((450, 1, 8, 8), dtype=np.float32)
    p = d / "digits_gradient.onnx"
    save(xcompile.compile(src, "gradient"), p)
    return src, p, x


def test_ray_run_equals_local_run_bit_for_bit(ray_local, digits, tmp_path):
    _, explainer, x = digits
    target = np.random.default_rng(3).integers(-1, 10, len(x))
    res = run_with_ray(explainer, x, target, tmp_path / "out", workers=2, shard_size=64)
    ref = xcompile.Explainer(explainer).explain(x, target)
    assert res.scores.dtype == ref.scores.dtype and res.relevance.shape == x.shape
    np.testing.assert_array_equal(res.scores, ref.scores)
    np.testing.assert_array_equal(res.relevance, ref.relevance)
    shards = tmp_path / "out" / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    n = -(-len(x) // 64)
    assert manifest["rows"] == len(x) and len(manifest["shards"]) == n
    for i, name in enumerate(manifest["shards"]):
        with np.load(shards / name) as z:
            lo, hi = z["rows"]
            assert (lo, hi) == (64 * i, min(64 * i + 64, len(x)))
            np.testing.assert_array_equal(z["relevance"], ref.relevance[lo:hi])


def test_run_ray_from_file_default_target(ray_local, digits, tmp_path):
    _, explainer, x = digits
    np.save(tmp_path / "x.npy", x[:100])
    man = run_ray(explainer, tmp_path / "x.npy", tmp_path / "o", num_workers=2, shard_size=30)
    assert len(man["shards"]) == 4
    res = load_shards(tmp_path / "o")
    np.testing.assert_array_equal(res.relevance, xcompile.Explainer(explainer).explain(x[:100]).relevance)


def _pid_and_state(state, shard):
    return os.getpid(), id(state), shard * 2


def _state():
    return object()


def test_ray_map_shards_one_setup_per_worker(ray_local):
    import sys
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    out = ray_map_shards(_pid_and_state, range(12), setup=_state, num_workers=2)
    assert [r[2] for r in out] == [2 * i for i in range(12)]  # shard order
    per_pid = {}
    for pid, sid, _ in out:
        per_pid.setdefault(pid, set()).add(sid)
    assert 1 <= len(per_pid) <= 2 and all(len(s) == 1 for s in per_pid.values())
    assert ray_map_shards(partial(pow, 2), [1, 2, 3], num_workers=2) == [2, 4, 8]  # no setup: fn(shard)


def test_ray_errors_are_clean(ray_local, digits, tmp_path):
    _, explainer, _ = digits
    with pytest.raises(XCompileError, match=r"expects \[N, 1, 8, 8\]"):
        run_ray(explainer, np.zeros((10, 1, 9, 9), np.float32), tmp_path / "bad", shard_size=5)
    with pytest.raises(XCompileError, match="no such explainer"):
        run_ray(tmp_path / "missing.onnx", np.zeros((1, 1, 8, 8), np.float32), tmp_path / "bad2")


def test_fit_patterns_ray_merges_to_single_process_statistics(ray_local, digits, tmp_path):
    fit = pytest.importorskip("xcompile.patterns.fit")
    if not all(hasattr(fit, n) for n in ("Fitter", "fit_file", "PatternStats", "DataSource")):
        pytest.skip("xcompile.patterns.fit has not the expected API yet")
    from xcompile.serving.ray_batch import fit_patterns_ray
    model, _, x = digits
    np.save(tmp_path / "x.npy", x)
    single = fit.fit_file(model, tmp_path / "x.npy", batch_size=64, progress=False)
    sharded = fit_patterns_ray(model, tmp_path / "x.npy", num_workers=2, n_shards=3, batch_size=64)
    assert sharded.rows == single.rows == len(x)
    np.testing.assert_array_equal(sharded.n, single.n)  # counts: exact
    for a, b in zip(sharded.sums, single.sums):
        assert a.keys() == b.keys()
        for k in a:  # float64 sums: equal up to the order of the additions
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(b[k]).max())))


def test_cli_run_and_fit_patterns_with_engine_ray(ray_local, digits, tmp_path, capsys):
    """`xcompile run --engine ray` and `xcompile fit-patterns --engine ray` end to end (in-process CLI)."""
    from xcompile.cli import main
    model, explainer, x = digits
    np.save(tmp_path / "x.npy", x[:150])
    with pytest.raises(SystemExit) as e:
        main(["run", str(explainer), "-i", str(tmp_path / "x.npy"), "--out", str(tmp_path / "ray_out"),
              "--engine", "ray", "--workers", "2", "--shard-size", "64"])
    assert e.value.code == 0
    merged = load_shards(tmp_path / "ray_out" / "shards")
    ref = xcompile.Explainer(explainer).explain(x[:150])
    np.testing.assert_array_equal(merged.relevance, ref.relevance)
    assert len(json.loads((tmp_path / "ray_out" / "shards" / "manifest.json").read_text())["shards"]) == 3

    fit = pytest.importorskip("xcompile.patterns.fit")
    with pytest.raises(SystemExit) as e:
        main(["fit-patterns", str(model), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p_ray.npz"),
              "--engine", "ray", "--workers", "2", "--no-progress"])
    assert e.value.code == 0
    single = fit.fit_file(model, tmp_path / "x.npy", batch_size=64, progress=False)
    merged_stats = fit.load_stats(tmp_path / "p_ray.npz")
    assert merged_stats.rows == single.rows == 150
    np.testing.assert_array_equal(merged_stats.n, single.n)

    with pytest.raises(SystemExit) as e:
        main(["run", str(explainer), "-i", str(tmp_path / "x.npy"), "--engine", "spark"])
    assert e.value.code == 2
    assert "--engine 'spark'" in capsys.readouterr().err


def test_ray_workers_render_the_heatmaps(ray_local, digits, tmp_path):
    """With render=(names, images) each worker draws its rows' PNGs; the bytes equal a local rendering."""
    from xcompile.runtime.render import png_bytes
    _, explainer, x = digits
    names = [f"r{i}" for i in range(40)]
    res = run_with_ray(explainer, x[:40], -1, tmp_path / "out", workers=2, shard_size=16,
                       render=(names, [None] * 40))
    ref = xcompile.Explainer(explainer).explain(x[:40])
    assert len(res.rendered) == 40
    for i in (0, 17, 39):
        assert res.rendered[i] == png_bytes(ref.relevance[i], None, f"r{i}: class {int(ref.predicted[i])}")
