"""Train the small digit classifier used for the classifier-agreement quality metric.

    python -m models.train_classifier      # about a minute on one core

A two-hidden-layer ReLU MLP (784 -> 256 -> 128 -> 10) on the same training split as the diffusion model
(models/data/mnist_subset.py), with random shifts of up to 2 pixels so that it is not thrown by slightly
off-centre generated digits. Inference is numpy only (runtime/quality.py: DigitClassifier); the weights go to
models/mnist/classifier.npz as float16 (half the size; the accuracy is measured with the stored float16 weights)
together with the held-out accuracy (also in classifier.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.data.mnist_subset import SOURCE, load_split
from runtime.quality import DigitClassifier

OUT = Path(__file__).resolve().parent / "mnist"


def shift_batch(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translations (zero fill) of [B, 28, 28] images."""
    b = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(28)[None, :])  # [B, 28]
    cols = (dx[:, None] + torch.arange(28)[None, :])
    return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--hidden", type=int, nargs=2, default=[256, 128])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-shift", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    (train_x, train_y), (test_x, test_y) = load_split()
    xs = torch.from_numpy(train_x.astype(np.float32) / 255.0)
    ys = torch.from_numpy(train_y)
    h1, h2 = args.hidden
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, h1), nn.ReLU(), nn.Dropout(0.2),
                        nn.Linear(h1, h2), nn.ReLU(), nn.Dropout(0.2), nn.Linear(h2, 10))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-3)
    steps_per_epoch = (len(xs) + 127) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch)
    start = time.monotonic()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), 128):
            idx = perm[i:i + 128]
            xb = shift_batch(xs[idx], args.max_shift, gen) if args.max_shift else xs[idx]
            loss = F.cross_entropy(net(xb), ys[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.monotonic() - start

    linears = [m for m in net if isinstance(m, nn.Linear)]
    weights = {}
    for i, layer in enumerate(linears):
        weights[f"w{i}"] = layer.weight.detach().numpy().T.astype(np.float16)  # [in, out]
        weights[f"b{i}"] = layer.bias.detach().numpy().astype(np.float16)
    clf = DigitClassifier(weights)
    test_acc = float(np.mean(clf.predict(test_x.astype(np.float32) / 255.0) == test_y))
    train_acc = float(np.mean(clf.predict(train_x.astype(np.float32) / 255.0) == train_y))
    info = {"architecture": f"MLP 784 -> {h1} -> {h2} -> 10, ReLU (numpy inference: runtime/quality.py)",
            "input": "images in [0, 1], shape [N, 28, 28] or [N, 784]",
            "data": SOURCE, "train_images": int(len(xs)), "held_out_images": int(len(test_y)),
            "held_out_accuracy": round(test_acc, 4), "train_accuracy": round(train_acc, 4),
            "epochs": args.epochs, "max_shift_augmentation": args.max_shift, "seconds": round(seconds, 1),
            "seed": args.seed}
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "classifier.npz", **weights,
                        held_out_accuracy=np.float64(test_acc))
    (args.out / "classifier.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
