"""Quality metrics against known properties, the shipped classifier on held-out digits, and the shipped model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runtime import quality as Q
from runtime import sampler as S
from tests.conftest import REPO

MNIST_DIR = REPO / "models" / "mnist"
MODEL = MNIST_DIR / "mnist_unet.onnx"


def _held_out():
    from models.data.mnist_subset import load_held_out

    images, labels = load_held_out()
    return images.astype(np.float64) / 255.0, labels


# ---- PSNR ----------------------------------------------------------------------------------------------------

def test_psnr_of_identical_images_is_infinite(rng):
    a = rng.random((4, 1, 28, 28))
    assert np.all(np.isinf(Q.psnr(a, a.copy())))


@pytest.mark.parametrize("d", [0.1, 0.01, 0.003])
def test_psnr_of_a_constant_offset_is_analytic(rng, d):
    a = 0.25 + 0.5 * rng.random((3, 28, 28))
    np.testing.assert_allclose(Q.psnr(a, a + d), 20 * math.log10(1 / d), rtol=1e-9)


@pytest.mark.parametrize("sigma", [0.05, 0.01])
def test_psnr_of_gaussian_noise_matches_its_level(rng, sigma):
    a = np.full((2, 256, 256), 0.5)
    got = Q.psnr(a, a + sigma * rng.standard_normal(a.shape))
    np.testing.assert_allclose(got, -20 * math.log10(sigma), atol=0.05)  # MSE ~ sigma^2 on 65k pixels


def test_psnr_respects_data_range_and_shapes(rng):
    a = rng.random((28, 28))
    assert Q.psnr(255 * a, 255 * a + 2.55, data_range=255.0)[0] == pytest.approx(40.0)
    with pytest.raises(ValueError, match="shapes differ"):
        Q.psnr(a, a[:27])
    with pytest.raises(ValueError, match="single-channel"):
        Q.psnr(np.zeros((1, 3, 28, 28)), np.zeros((1, 3, 28, 28)))


# ---- SSIM ----------------------------------------------------------------------------------------------------

def test_ssim_of_identical_images_is_one(rng):
    a = rng.random((3, 28, 28))
    np.testing.assert_allclose(Q.ssim(a, a.copy()), 1.0, rtol=0, atol=1e-12)


def test_ssim_of_constant_images_is_the_luminance_term():
    # No variance: SSIM reduces to (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) at every window.
    a, b = np.full((1, 20, 20), 0.3), np.full((1, 20, 20), 0.6)
    c1 = (0.01 * 1.0) ** 2
    assert Q.ssim(a, b)[0] == pytest.approx((2 * 0.3 * 0.6 + c1) / (0.09 + 0.36 + c1), rel=1e-9)


def test_ssim_is_symmetric_bounded_and_falls_with_noise(rng):
    a = rng.random((2, 28, 28))
    values = [Q.ssim(a, np.clip(a + s * rng.standard_normal(a.shape), 0, 1)) for s in (0.01, 0.05, 0.2)]
    assert np.all(values[0] > values[1]) and np.all(values[1] > values[2])
    b = rng.random((2, 28, 28))
    np.testing.assert_allclose(Q.ssim(a, b), Q.ssim(b, a), rtol=1e-12)
    assert np.all(np.abs(Q.ssim(a, b)) <= 1)
    np.testing.assert_allclose(Q.ssim(a, 1 - a), Q.ssim(1 - a, a))
    assert np.all(Q.ssim(a, 1 - a) < 0)  # anti-correlated structure


# ---- classifier ----------------------------------------------------------------------------------------------

def test_shipped_classifier_recognises_held_out_digits():
    images, labels = _held_out()
    clf = Q.DigitClassifier.load()
    accuracy = float(np.mean(clf.predict(images) == labels))
    assert accuracy >= 0.95
    info = json.loads((MNIST_DIR / "classifier.json").read_text())
    assert info["held_out_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert clf.held_out_accuracy == pytest.approx(accuracy, abs=1e-4)


def test_classifier_agreement_counts_matching_predictions():
    images, labels = _held_out()
    a = images[labels == 3][:20]
    same = Q.classifier_agreement(a, a.copy())
    assert same["agreement"] == 1.0
    shuffled = Q.classifier_agreement(a, images[np.random.default_rng(0).permutation(len(images))[:20]])
    want = np.mean(np.array(shuffled["labels_a"]) == np.array(shuffled["labels_b"]))
    assert shuffled["agreement"] == pytest.approx(want) and shuffled["agreement"] < 1.0


def test_compare_reports_per_image_metrics():
    images, _ = _held_out()
    a = images[:4]
    b = np.clip(a + 0.01, 0, 1)
    report = Q.compare(a, b)
    json.dumps(report)
    assert len(report["psnr_db"]) == 4 and report["mean_ssim"] > 0.9 and report["agreement"] == 1.0
    assert Q.compare(a, a)["mean_psnr_db"] == "inf"


# ---- grid ----------------------------------------------------------------------------------------------------

def test_grid_puts_each_sample_above_its_twin(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    top, bottom = rng.random((5, 1, 28, 28)), rng.random((5, 1, 28, 28))
    path = Q.write_grid(tmp_path / "g.png", [("MPC", top), ("plain", bottom)],
                        captions=[f"{d}" for d in range(5)], scale=2)
    img = np.asarray(Image.open(path))
    assert img.ndim == 2 and img.shape[0] >= 2 * 56 and img.shape[1] >= 5 * 56
    with pytest.raises(ValueError, match="same number"):
        Q.write_grid(tmp_path / "bad.png", [("a", top), ("b", bottom[:4])])


def test_grid_draws_three_channels_in_colour_and_others_as_their_mean(tmp_path):
    from PIL import Image

    colours = np.zeros((2, 3, 8, 8))
    colours[0, 0] = 1.0                        # red
    colours[1, 2] = 1.0                        # blue
    latents = np.full((2, 4, 8, 8), 0.5)
    latents[:, 0] = 0.1                        # channel mean 0.4
    path = Q.write_grid(tmp_path / "rgb.png", [("MPC", colours), ("z", latents)], scale=2, pad=4)
    img = np.asarray(Image.open(path))
    assert img.ndim == 3 and img.shape[2] == 3
    label_w = 8 + 7 * 3
    x0, x1, y0, y1 = label_w + 4 + 1, label_w + 4 + (16 + 4) + 1, 4 + 1, 4 + 16 + 4 + 1
    assert tuple(img[y0, x0]) == (255, 0, 0) and tuple(img[y0, x1]) == (0, 0, 255)
    assert tuple(img[y1, x0]) == (102, 102, 102)   # round(0.4 * 255), grey
    grey = np.asarray(Image.open(Q.write_grid(tmp_path / "grey.png", [("a", latents)])))
    assert grey.ndim == 2


def test_sampler_quality_of_colour_images_counts_every_channel():
    from runtime.secure_sampler import quality

    rng = np.random.default_rng(2)
    a = rng.random((2, 3, 16, 16))
    b = a.copy()
    b[:, 1] = np.clip(b[:, 1] + 0.1, 0, 1)     # one channel off
    q = quality(a, b)
    mse = ((a - b) ** 2).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(q["psnr_db"], 10 * np.log10(1.0 / mse), rtol=1e-9)
    per_channel = Q.ssim(a.reshape(6, 16, 16), b.reshape(6, 16, 16)).reshape(2, 3).mean(axis=1)
    np.testing.assert_allclose(q["ssim"], per_channel, rtol=1e-12)
    assert q["agreement"] is None and "3x16x16" in q["agreement_note"]


# ---- the shipped diffusion model ------------------------------------------------------------------------------

def _session():
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])


def _feeds(session, batch_seed=0):
    rng = np.random.default_rng(batch_seed)
    shapes = {i.name: i.shape for i in session.get_inputs()}
    b = shapes["sample"][0]
    return {"sample": rng.standard_normal(shapes["sample"]).astype(np.float32),
            "timestep": np.linspace(999, 0, b).astype(np.float32),
            "class_labels": S.one_hot(np.arange(b) % 10)}


def test_shipped_model_has_the_documented_interface():
    session = _session()
    inputs = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    b = inputs["sample"][0][0]
    assert inputs == {"sample": ([b, 1, 28, 28], "tensor(float)"), "timestep": ([b], "tensor(float)"),
                      "class_labels": ([b, 10], "tensor(float)")}
    out = session.get_outputs()[0]
    assert out.name == "eps" and out.shape == [b, 1, 28, 28]
    recipe = json.loads((MNIST_DIR / "recipe.json").read_text())
    assert recipe["diffusion"]["T"] == 1000 and recipe["onnx"]["batch"] == b


def test_lowered_shipped_model_matches_onnxruntime():
    import compiler

    model = compiler.load_model(MODEL, check_support=False)
    missing = compiler.find_unsupported(model)
    if missing:
        pytest.skip("compiler has no lowering yet for " + ", ".join(u["op"] for u in missing))
    session = _session()
    feeds = _feeds(session)
    want = session.run(["eps"], feeds)[0]
    got = compiler.lower(model)(feeds)["eps"]
    assert np.max(np.abs(got - want)) <= 1e-4


def test_shipped_model_makes_the_requested_digits():
    """DDIM-20 with guidance 2 in plaintext: the classifier recognises the requested digit in most samples
    (90% of 200 samples in models/mnist/evaluation.json; 7 of these 8)."""
    session = _session()
    b = session.get_inputs()[0].shape[0]

    def eps(x, t, cond):
        return session.run(["eps"], {"sample": x, "timestep": t, "class_labels": cond})[0]

    labels = np.arange(b) % 10
    result = S.sample(eps, (b, 1, 28, 28), "ddim", 20, seed=0, labels=S.one_hot(labels), guidance=2.0)
    assert Q.label_accuracy(S.to_unit(result.image), labels) >= 0.75
