"""Sample-quality metrics (numpy only): PSNR, SSIM, classifier agreement, and a side-by-side PNG grid.

Images are in [0, 1]; arrays are [H, W], [N, H, W] or [N, 1, H, W] (a single channel axis is dropped).
SSIM uses a 7x7 Gaussian window (sigma 1.5) over valid positions: the usual 11x11 window would leave only 18x18
positions of a 28x28 digit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

CLASSIFIER_NPZ = Path(__file__).resolve().parents[1] / "models" / "mnist" / "classifier.npz"


def _as_images(x: np.ndarray) -> np.ndarray:
    """-> float64 [N, H, W]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected single-channel images [N, 1, H, W], got shape {x.shape}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images [H, W], [N, H, W] or [N, 1, H, W], got shape {x.shape}")
    return x


def _pair(a, b):
    a, b = _as_images(a), _as_images(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-image PSNR in dB, 10 log10(range^2 / MSE); identical images give inf."""
    a, b = _pair(a, b)
    mse = np.mean((a - b) ** 2, axis=(1, 2))
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10.0 * np.log10(data_range ** 2 / np.maximum(mse, 1e-300)))


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of [N, H, W] with the 1-D window ``w`` along H and W."""
    k = w.size
    h = sum(w[i] * x[:, i:x.shape[1] - k + 1 + i, :] for i in range(k))
    return sum(w[i] * h[:, :, i:h.shape[2] - k + 1 + i] for i in range(k))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, window: int = 7, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Per-image mean SSIM (Wang et al. 2004) with a Gaussian window over valid positions; identical -> 1."""
    a, b = _pair(a, b)
    if min(a.shape[1:]) < window:
        raise ValueError(f"images {a.shape[1:]} are smaller than the SSIM window {window}")
    w = _gaussian_window(window, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    var_a = _filter_valid(a * a, w) - mu_a ** 2
    var_b = _filter_valid(b * b, w) - mu_b ** 2
    cov = _filter_valid(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2))


class DigitClassifier:
    """ReLU MLP with weights ``w0, b0, w1, b1, ...`` (``w`` as [in, out]); numpy inference on [0, 1] digits."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        n = sum(1 for k in weights if k.startswith("w") and k[1:].isdigit())
        if n == 0:
            raise ValueError("classifier weights hold no layers (expected w0, b0, w1, b1, ...)")
        self.layers = [(np.asarray(weights[f"w{i}"], np.float64), np.asarray(weights[f"b{i}"], np.float64))
                       for i in range(n)]
        self.held_out_accuracy = float(weights["held_out_accuracy"]) if "held_out_accuracy" in weights else None

    @classmethod
    def load(cls, path: str | Path = CLASSIFIER_NPZ) -> "DigitClassifier":
        with np.load(path) as data:
            return cls({k: data[k] for k in data.files})

    def logits(self, images: np.ndarray) -> np.ndarray:
        x = _as_images(images)
        h = x.reshape(x.shape[0], -1)
        if h.shape[1] != self.layers[0][0].shape[0]:
            raise ValueError(f"classifier expects {self.layers[0][0].shape[0]} pixels, got {h.shape[1]}")
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(images), axis=1)


def classifier_agreement(a: np.ndarray, b: np.ndarray, classifier: DigitClassifier | None = None) -> dict:
    """How often the classifier gives the same digit for each MPC sample and its plaintext twin."""
    classifier = classifier or DigitClassifier.load()
    pa, pb = classifier.predict(a), classifier.predict(b)
    if pa.shape != pb.shape:
        raise ValueError(f"different numbers of images: {pa.size} vs {pb.size}")
    return {"agreement": float(np.mean(pa == pb)), "labels_a": pa.tolist(), "labels_b": pb.tolist()}


def label_accuracy(images: np.ndarray, labels: Sequence[int], classifier: DigitClassifier | None = None) -> float:
    """Fraction of images the classifier assigns to the requested label."""
    classifier = classifier or DigitClassifier.load()
    return float(np.mean(classifier.predict(images) == np.asarray(labels)))


def compare(secure: np.ndarray, plain: np.ndarray, classifier: DigitClassifier | None = None) -> dict:
    """PSNR, SSIM and classifier agreement of secure samples vs their plaintext twins (JSON-ready)."""
    p, s = psnr(secure, plain), ssim(secure, plain)
    out = {"psnr_db": [_finite_or_str(v) for v in p], "ssim": [float(v) for v in s],
           "mean_psnr_db": _finite_or_str(float(np.mean(p))), "min_psnr_db": _finite_or_str(float(np.min(p))),
           "mean_ssim": float(np.mean(s))}
    try:
        out.update(classifier_agreement(secure, plain, classifier))
    except FileNotFoundError:
        out["agreement"] = None
    return out


def _finite_or_str(v: float):
    return float(v) if math.isfinite(v) else "inf"


def _as_tiles(x: np.ndarray) -> tuple[np.ndarray, str]:
    """Images for a grid -> ([N, H, W] grey or [N, H, W, 3] colour, PIL mode). [N, 3, H, W] is RGB; any other
    channel count (a latent's 4, say) is drawn as the mean of its channels."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4 and x.shape[1] == 3:
        return np.moveaxis(x, 1, -1), "RGB"
    if x.ndim == 4 and x.shape[1] != 1:
        x = x.mean(axis=1)
    return _as_images(x), "L"


def write_grid(path: str | Path, rows: Sequence[tuple[str, np.ndarray]], captions: Sequence[str] | None = None,
               scale: int = 3, pad: int = 4) -> Path:
    """A PNG with one labelled row per image set, e.g. ``[("MPC", secure), ("plaintext", plain)]``.

    Column ``j`` of every row shows image ``j`` of that set, so each MPC sample sits above its plaintext twin;
    ``captions`` (one per column, e.g. requested label and PSNR) go under the columns. Images are [N, H, W] or
    [N, C, H, W]: one channel grey, three RGB, others the mean of their channels.
    """
    from PIL import Image, ImageDraw

    sets = [(name, *_as_tiles(images)) for name, images in rows]
    if not sets:
        raise ValueError("no image rows to draw")
    n, h, w = sets[0][1].shape[:3]
    if any(images.shape[:3] != (n, h, w) for _, images, _ in sets):
        raise ValueError("every row must have the same number and size of images")
    colour = any(mode == "RGB" for _, _, mode in sets)
    cell_w, cell_h = w * scale, h * scale
    label_w = 8 + 7 * max(len(name) for name, _, _ in sets)
    caption_h = 14 if captions else 0
    width = label_w + n * (cell_w + pad) + pad
    height = len(sets) * (cell_h + pad) + pad + caption_h
    canvas = Image.new("RGB" if colour else "L", (width, height), (255, 255, 255) if colour else 255)
    ink = (0, 0, 0) if colour else 0
    draw = ImageDraw.Draw(canvas)
    for r, (name, images, mode) in enumerate(sets):
        y = pad + r * (cell_h + pad)
        draw.text((4, y + cell_h // 2 - 5), name, fill=ink)
        for j in range(n):
            pixels = np.round(np.clip(images[j], 0.0, 1.0) * 255).astype(np.uint8)
            tile = Image.fromarray(pixels, mode).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile.convert(canvas.mode), (label_w + pad + j * (cell_w + pad), y))
    if captions:
        y = pad + len(sets) * (cell_h + pad)
        for j, caption in enumerate(captions):
            draw.text((label_w + pad + j * (cell_w + pad), y - 2), str(caption)[: max(1, cell_w // 6)], fill=ink)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def write_metrics(path: str | Path, metrics: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path
