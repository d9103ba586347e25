"""Train the class-conditional MNIST diffusion U-Net on the offline 28x28 subset, on 2 CPU cores.

    python -m models.train_mnist                # the shipped recipe (about 10-14 minutes on 2 cores)
    python -m models.train_mnist --minutes 2 --out /tmp/smoke   # a quick smoke run
    python -m models.train_mnist --evaluate-only  # re-run the plaintext sample evaluation of the shipped model

eps-prediction DDPM loss, T = 1000 (linear betas by default, ``--schedule cosine`` also works), AdamW with linear
warm-up then cosine decay, an EMA of the weights (the EMA weights are what is exported), label dropout so the
model also learns the unconditional eps (the all-zero one-hot) for classifier-free guidance.

The run is a fixed number of steps (3,600 of batch 32), so the result does not depend on how busy the machine is:
the shipped run took 1,117 CPU-seconds single-threaded (``--threads 1``) on a shared, loaded machine, i.e.
about 19 minutes on one core and 10-14 minutes on two. ``--minutes`` optionally caps the wall-clock
time as well; the learning-rate schedule then follows whichever of the two is further along, so a capped run still
gets a complete (shorter) schedule. Writes to ``--out`` (models/mnist/):

- ``mnist_unet.onnx``       the EMA model, exported for ``--export-batch`` (see models/export_mnist.py)
- ``mnist_unet.npz``        the EMA weights (state_dict arrays; no pickle), to re-export without retraining
- ``recipe.json``           config, hyper-parameters, data, steps, time, final loss
- ``loss_curve.json/.png``  the training loss (raw per step, and smoothed)
- ``evaluation.json``, ``samples.png``  plaintext samples from the exported ONNX (onnxruntime): how often the
  digit classifier (models/train_classifier.py) recognises the requested digit, for DDIM-20 and strided DDPM

Intermediate checkpoints (``checkpoint.npz``) are written every few minutes and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.data.mnist_subset import SOURCE, load_split, to_model_space
from models.mnist_unet import MnistUNet, UNetConfig, count_parameters
from runtime.sampler import make_schedule

OUT = Path(__file__).resolve().parent / "mnist"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--act", choices=["silu", "mish"], default="silu")
    p.add_argument("--unconditional", action="store_true")
    p.add_argument("--schedule", choices=["linear", "cosine"], default="linear")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=3600)
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock cap (0: none)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--export-batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--eval-samples", type=int, default=200, help="per sampler (a multiple of the export batch)")
    p.add_argument("--evaluate-only", action="store_true")
    return p.parse_args(argv)


def lr_factor(progress: float, step: int, warmup: int) -> float:
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def state_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def save_npz(path: Path, model: torch.nn.Module, meta: dict) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **state_arrays(model))
    tmp.replace(path)


def smooth(values: list[float], window: int = 100) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def write_loss_curve(out: Path, losses: list[float], lrs: list[float]) -> None:
    smoothed = smooth(losses)
    (out / "loss_curve.json").write_text(json.dumps(
        {"step_loss": [round(v, 6) for v in losses], "smoothed_100": [round(v, 6) for v in smoothed],
         "lr": [float(f"{v:.4g}") for v in lrs]}))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(losses, lw=0.4, alpha=0.35, label="per step")
    ax.plot(smoothed, lw=1.5, label="mean of last 100")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("eps MSE")
    ax.set_title("MNIST diffusion U-Net training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png")
    plt.close(fig)


def evaluate(out: Path, n: int, seed: int = 0) -> dict:
    """Plaintext samples from the exported ONNX: the classifier's agreement with the requested digit."""
    import onnxruntime as ort

    from runtime import quality
    from runtime import sampler as S

    session = ort.InferenceSession(str(out / "mnist_unet.onnx"), providers=["CPUExecutionProvider"])
    batch = session.get_inputs()[0].shape[0]
    n = max(batch, n // batch * batch)
    classifier = quality.DigitClassifier.load(out / "classifier.npz")

    def eps(x, t, cond):
        return session.run(["eps"], {"sample": x, "timestep": t, "class_labels": cond})[0]

    labels = np.arange(n) % 10
    results, grids = {}, []
    for name, sampler, steps, guidance in [("ddim20", "ddim", 20, None), ("ddim20_guidance2", "ddim", 20, 2.0),
                                           ("ddpm100", "ddpm", 100, None)]:
        started = time.monotonic()
        images = []
        for i in range(0, n, batch):
            r = S.sample(eps, (batch, 1, 28, 28), sampler, steps, seed=seed + i, guidance=guidance,
                         labels=S.one_hot(labels[i:i + batch]))
            images.append(S.to_unit(r.image))
        images = np.concatenate(images)
        predicted = classifier.predict(images)
        results[name] = {"sampler": sampler, "steps": steps, "guidance": guidance, "samples": int(n),
                         "label_agreement": round(float(np.mean(predicted == labels)), 4),
                         "per_class": [round(float(np.mean(predicted[labels == c] == c)), 3) for c in range(10)],
                         "seconds": round(time.monotonic() - started, 1)}
        print(name, results[name], flush=True)
        grids.append((name, images[:30]))
    evaluation = {"model": "mnist_unet.onnx (onnxruntime, plaintext)", "seeds": f"{seed} + batch offset",
                  "classifier": "classifier.npz", "results": results}
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    quality.write_grid(out / "samples.png", grids, captions=[str(c) for c in labels[:30]], scale=2)
    return evaluation


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.evaluate_only:
        evaluate(args.out, args.eval_samples, args.seed)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    (train_x, train_y), _ = load_split()
    data = torch.from_numpy(to_model_space(train_x))
    labels = torch.from_numpy(train_y)
    num_classes = None if args.unconditional else 10

    cfg = UNetConfig(base_channels=args.base_channels, num_classes=num_classes, act=args.act)
    model = MnistUNet(cfg)
    ema = MnistUNet(cfg)
    ema.load_state_dict(model.state_dict())
    ema.eval().requires_grad_(False)
    model.train()
    # Conv-heavy on few channels: NHWC lets oneDNN skip layout reorders.
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    schedule = make_schedule(args.schedule, args.T)
    sqrt_ab = torch.from_numpy(np.sqrt(schedule.alphas_cumprod)).float()
    sqrt_1mab = torch.from_numpy(np.sqrt(1.0 - schedule.alphas_cumprod)).float()

    n_params = count_parameters(model)
    print(f"base {args.base_channels}, {n_params} parameters, {len(data)} training images, "
          f"{args.max_steps} steps", flush=True)

    losses: list[float] = []
    lrs: list[float] = []
    start = time.monotonic()
    budget = args.minutes * 60.0 if args.minutes > 0 else math.inf
    cpu_start = time.process_time()
    last_ckpt = start
    step = 0
    perm = rng.permutation(len(data))
    pos = 0
    while step < args.max_steps:
        elapsed = time.monotonic() - start
        if elapsed >= budget:
            print(f"wall-clock cap of {args.minutes} min reached", flush=True)
            break
        progress = max(step / args.max_steps, elapsed / budget)
        lr = args.lr * lr_factor(progress, step, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr

        if pos + args.batch > len(perm):
            perm, pos = rng.permutation(len(data)), 0
        idx = torch.from_numpy(perm[pos:pos + args.batch])
        pos += args.batch
        x0 = data[idx].contiguous(memory_format=torch.channels_last)
        t = torch.from_numpy(rng.integers(0, args.T, size=args.batch))
        noise = torch.randn_like(x0)
        x_t = sqrt_ab[t][:, None, None, None] * x0 + sqrt_1mab[t][:, None, None, None] * noise
        cond = None
        if num_classes:
            cond = F.one_hot(labels[idx], num_classes).float()
            keep = torch.from_numpy(rng.random(args.batch) >= args.label_dropout).float()
            cond = cond * keep[:, None]
        loss = F.mse_loss(model(x_t, t.float(), cond), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

        # EMA warms up so the early average is not dominated by the random initialisation.
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)

        losses.append(loss.item())
        lrs.append(lr)
        step += 1
        if step % 100 == 0:
            recent = sum(losses[-100:]) / 100
            print(f"step {step}  loss {recent:.4f}  lr {lr:.2e}  {time.monotonic() - start:.0f}s", flush=True)
        if time.monotonic() - last_ckpt > args.checkpoint_minutes * 60:
            save_npz(args.out / "checkpoint.npz", ema, {"config": cfg.to_json(), "step": step})
            write_loss_curve(args.out, losses, lrs)
            last_ckpt = time.monotonic()

    train_seconds = time.monotonic() - start
    cpu_seconds = time.process_time() - cpu_start
    final_loss = sum(losses[-200:]) / len(losses[-200:])
    print(f"done: {step} steps in {train_seconds:.0f}s wall, {cpu_seconds:.0f}s CPU, loss (mean of last 200) {final_loss:.4f}", flush=True)

    recipe = {
        "model": "models.mnist_unet.MnistUNet",
        "config": cfg.to_json(),
        "parameters": n_params,
        "data": {"source": SOURCE, "train_images": int(len(data)),
                 "split": "last 50 per class held out (models/data/mnist_subset.py)",
                 "scaling": "pixels / 127.5 - 1, i.e. [-1, 1]"},
        "diffusion": {"prediction": "eps", "schedule": args.schedule, "T": args.T,
                      "betas": "linspace(1e-4, 0.02, T)" if args.schedule == "linear"
                      else "cosine, s = 0.008, max beta 0.999"},
        "conditioning": None if not num_classes else {
            "input": "class_labels float32 [B, 10] one-hot; all zeros = no label (classifier-free guidance)",
            "label_dropout": args.label_dropout},
        "optimizer": {"name": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay, "betas": [0.9, 0.999],
                      "warmup_steps": args.warmup, "decay": "cosine to 0 over max(step/max_steps, time/budget)",
                      "grad_clip": 1.0},
        "batch": args.batch,
        "ema": {"decay": args.ema, "warmup": "min(decay, (1 + step) / (10 + step))"},
        "max_steps": args.max_steps,
        "wall_clock_cap_minutes": args.minutes or None,
        "steps": step,
        "epochs": round(step * args.batch / len(data), 2),
        "train_wall_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "threads": args.threads,
        "final_loss_mean_last_200": round(final_loss, 5),
        "seed": args.seed,
        "torch": torch.__version__,
    }
    save_npz(args.out / "mnist_unet.npz", ema, {"config": cfg.to_json(), "step": step})
    write_loss_curve(args.out, losses, lrs)
    (args.out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    (args.out / "checkpoint.npz").unlink(missing_ok=True)

    from models.export_mnist import export_onnx
    onnx_path = export_onnx(ema, args.out / "mnist_unet.onnx", batch=args.export_batch)
    recipe["onnx"] = {"path": onnx_path.name, "bytes": onnx_path.stat().st_size, "batch": args.export_batch}
    (args.out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"wrote {args.out}", flush=True)
    if num_classes and (args.out / "classifier.npz").exists():
        evaluate(args.out, args.eval_samples, args.seed)


if __name__ == "__main__":
    main()
