"""Export the MNIST U-Net to ONNX for a fixed batch size.

    python -m models.export_mnist --cipherdm --batch 4     # CipherDM's exact sizes -> models/cipherdm_mnist_unet.onnx
    python -m models.export_mnist --weights models/mnist/mnist_unet.npz --batch 8 -o out.onnx   # re-export trained

Inputs ``sample`` float32 [B,1,28,28], ``timestep`` float32 [B] (public), and for conditional models
``class_labels`` float32 [B,10] one-hot (secret; see models/mnist_unet.py); output ``eps`` float32 [B,1,28,28].

The TorchScript exporter at opset 17 (dynamo=False) is the default because of what its graph says about secrecy:
every float initializer is one of the owner's weights (some reshaped or transposed by constant folding), while
the public constants (the sinusoid frequency table, InstanceNormalization's unit scale and zero bias, shapes) are
``Constant`` nodes, which cipherdm's lowering keeps as program constants. The dynamo exporter at opset 18 gives
fewer nodes (437 vs 720 for CipherDM's sizes; no Shape/Constant/Identity chains) but stores the frequency table
and the InstanceNormalization constants as float initializers, which would become secret inputs (the timestep
embedding would then be computed on secrets), and adds ~400 KB of per-node metadata. The legacy graph's runtime
shape arithmetic folds away once the input shapes are fixed. ``--dynamo`` still exports at opset 18.

Graph shapes: GroupNorm is Reshape -> InstanceNormalization -> Reshape -> Mul -> Add; SiLU is Mul(x, Sigmoid(x));
Mish is Softplus -> Tanh -> Mul; attention is MatMul -> Mul(scale) -> Softmax -> MatMul; upsampling is one
ConvTranspose (stride 2, pads 1, output_padding 1). The batch is fixed: the sampler compiles for a given batch.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from models.mnist_unet import CIPHERDM_CONFIG, MnistUNet, UNetConfig

HERE = Path(__file__).resolve().parent
CIPHERDM_ONNX = HERE / "cipherdm_mnist_unet.onnx"


def example_inputs(model: MnistUNet, batch: int):
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, cfg.image_channels, cfg.image_size, cfg.image_size, generator=g)
    timestep = torch.linspace(999, 0, batch)
    if cfg.num_classes:
        labels = torch.nn.functional.one_hot(torch.arange(batch) % cfg.num_classes, cfg.num_classes).float()
        return sample, timestep, labels
    return sample, timestep


def export_onnx(model: MnistUNet, path: Path | str, batch: int = 1, dynamo: bool = False) -> Path:
    """Export ``model`` (eval mode, fixed ``batch``) and check it against torch with onnxruntime."""
    path = Path(path)
    model = model.eval().to(memory_format=torch.contiguous_format)
    inputs = example_inputs(model, batch)
    names = ["sample", "timestep"] + (["class_labels"] if model.cfg.num_classes else [])
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            onnx_program = torch.onnx.export(model, inputs, dynamo=True, opset_version=18,
                                             input_names=names, output_names=["eps"], external_data=False)
            onnx_program.save(str(tmp), external_data=False)
        else:
            torch.onnx.export(model, inputs, str(tmp), dynamo=False, opset_version=17, input_names=names,
                              output_names=["eps"], do_constant_folding=True)
    proto = onnx.load(str(tmp))
    proto.doc_string = json.dumps({"cipherdm_mnist_unet": model.cfg.to_json(), "batch": batch})
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))
    _check_against_torch(model, tmp, inputs, names)
    tmp.replace(path)
    return path


def _check_against_torch(model, path: Path, inputs, names, tol: float = 1e-4) -> None:
    import onnxruntime as ort

    with torch.no_grad():
        expected = model(*inputs).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: v.numpy() for n, v in zip(names, inputs)})[0]
    err = float(np.max(np.abs(got - expected)))
    if not err <= tol:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {err:.3g} (> {tol})")


def load_npz_model(path: Path | str) -> MnistUNet:
    """A model from an npz written by models/train_mnist.py (config in ``__meta__``, state_dict arrays)."""
    with np.load(path) as data:
        meta = json.loads(bytes(data["__meta__"]).decode())
        state = {k: torch.from_numpy(np.array(data[k])) for k in data.files if k != "__meta__"}
    model = MnistUNet(UNetConfig.from_json(meta["config"]))
    model.load_state_dict(state)
    return model.eval()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cipherdm", action="store_true", help="CipherDM's exact sizes, random weights (seed 0)")
    src.add_argument("--weights", type=Path, help="an npz written by models/train_mnist.py")
    p.add_argument("--conditional", action="store_true", help="with --cipherdm: add 10-class conditioning")
    p.add_argument("--act", choices=["silu", "mish"], default="silu", help="with --cipherdm")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamo", action="store_true", help="torch.export at opset 18 instead of TorchScript at 17")
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args(argv)
    if args.cipherdm:
        torch.manual_seed(0)
        cfg = UNetConfig(**{**CIPHERDM_CONFIG.to_json(), "channel_mults": (1, 2), "attention_levels": (1,),
                            "num_classes": 10 if args.conditional else None, "act": args.act})
        model = MnistUNet(cfg)
        out = args.output or CIPHERDM_ONNX
    else:
        model = load_npz_model(args.weights)
        out = args.output or args.weights.with_suffix(".onnx")
    path = export_onnx(model, out, batch=args.batch, dynamo=args.dynamo)
    print(f"wrote {path} ({path.stat().st_size} bytes, batch {args.batch})")


if __name__ == "__main__":
    main()
