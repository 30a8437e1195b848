"""The runtime: torch tensors (and any DLPack tensor) are bound in place with IOBinding and come back as tensors on
their own device, identical to the numpy path; batches are split on request."""
from pathlib import Path

import numpy as np
import pytest

import xcompile

torch = pytest.importorskip("torch")
DIGITS = Path(xcompile.__file__).parent / "data" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def explainer():
    return xcompile.Explainer(xcompile.compile(DIGITS, "gradcam"))   # scores, relevance and an extra output


@pytest.fixture(scope="module")
def digits():
    with np.load(Path(xcompile.__file__).parent / "data" / "digits_heldout.npz") as z:
        return z["x"][:40].astype(np.float32)


def test_torch_tensors_are_bound_in_place_and_returned_as_tensors(explainer, digits):
    ref = explainer.explain(digits, 3)
    res = explainer.explain(torch.from_numpy(digits), torch.tensor(3))
    assert isinstance(res.relevance, torch.Tensor) and res.relevance.device.type == "cpu"
    np.testing.assert_array_equal(res.scores.numpy(), ref.scores)
    np.testing.assert_array_equal(res.relevance.numpy(), ref.relevance)
    assert set(res.extras) == set(ref.extras) == {"gradcam_map", "explained_class"}
    np.testing.assert_array_equal(res.extras["gradcam_map"].numpy(), ref.extras["gradcam_map"])


def test_bound_path_splits_batches_and_accepts_other_dtypes(explainer, digits):
    ref = explainer.explain(digits)
    res = explainer.explain(torch.from_numpy(digits).double(), batch_size=7)   # 6 calls, float64 input
    np.testing.assert_allclose(res.relevance.numpy(), ref.relevance, rtol=1e-5, atol=1e-6)
    with pytest.raises(xcompile.XCompileError, match="expects"):
        explainer.explain(torch.zeros(2, 1, 8, 9))
    with pytest.raises(xcompile.XCompileError, match="float32"):
        explainer.explain(torch.zeros(2, 1, 8, 8, dtype=torch.int64))


def test_numpy_batches_are_split(explainer, digits):
    whole = explainer.explain(digits, 5)
    split = explainer.explain(digits, 5, batch_size=16)
    np.testing.assert_allclose(split.relevance, whole.relevance, rtol=1e-5, atol=1e-7)


def test_cuda_device_without_cuda_ep_is_one_clear_error():
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP")
    with pytest.raises(xcompile.XCompileError, match="onnxruntime-gpu"):
        xcompile.Explainer(xcompile.compile(DIGITS, "gradient"), device="cuda")
