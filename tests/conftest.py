import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))          # model_zoo is importable from the tests
sys.path.insert(0, str(Path(__file__).parent))
# the stage folders (load/, lrp/, ...): tests import each other by module name (test_tokens, test_cuda_ops)
sys.path[1:1] = [str(d) for d in sorted(Path(__file__).parent.iterdir()) if d.is_dir() and not d.name.startswith(("_", "."))]
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def zoo_build(tmp_path_factory):
    """Where the tests export zoo models: a folder of this session's pytest temporary directory (removed after a
    green run: tmp_path_retention_policy in pyproject.toml), so a run leaves nothing in the clone; or the folder
    named by XCOMPILE_ZOO_CACHE (e.g. model_zoo/build), kept between runs to skip the exports next time."""
    cache = os.environ.get("XCOMPILE_ZOO_CACHE")
    d = Path(cache).resolve() if cache else tmp_path_factory.mktemp("model_zoo")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def zoo_dir(zoo_build):
    d = zoo_build / "torchvision"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def torchvision_onnx(zoo_dir):
    """build(name, exporter) -> path of the exported model (built once per session, see zoo_build)."""
    from model_zoo.zoo import build_torchvision

    def build(name, exporter):
        return build_torchvision(name, exporter, zoo_dir)
    return build


# ---------------------------------------------------------------------------------------- memory ledger
# XCOMPILE_TEST_MEMORY=FILE: after every test, one JSON line with the process's resident memory now (what the
# session still holds: module-level caches, fixtures alive) and its peak so far (ru_maxrss), both in MB, so that
# a full run shows which test raises the peak and which module keeps memory after it ends.
_MEMORY_LOG = os.environ.get("XCOMPILE_TEST_MEMORY")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _trim() -> None:
    """Collect garbage and hand the freed heap back to the OS (glibc keeps it otherwise: a module's models and
    sessions, freed at its end, would stay in the process's resident memory for the rest of the session)."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@pytest.fixture(scope="module", autouse=True)
def _release_module_memory():
    yield
    _trim()


@pytest.fixture(autouse=True)
def _release_test_memory():
    """Within a module of whole models (tests/models/test_models.py) each test's explainers and float64 copies are
    garbage once it ends: trimming then keeps them from raising the next test's base (reading statm is cheap; the
    collection runs only above 2 GB)."""
    yield
    if _rss_mb() > 2048:
        _trim()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if not _MEMORY_LOG:
        return
    import json
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(_MEMORY_LOG, "a") as f:
        f.write(json.dumps({"test": item.nodeid, "rss_mb": round(_rss_mb()), "peak_mb": round(peak)}) + "\n")
