import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))          # model_zoo is importable from the tests
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def zoo_dir():
    d = ROOT / "model_zoo" / "build" / "torchvision"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def torchvision_onnx(zoo_dir):
    """build(name, exporter) -> path of the exported model (built once, cached in model_zoo/build)."""
    from model_zoo.zoo import build_torchvision

    def build(name, exporter):
        return build_torchvision(name, exporter, zoo_dir)
    return build
