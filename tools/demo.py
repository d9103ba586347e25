"""`make demo`: the main job end to end on the shipped MNIST U-Net, with three local party processes.

1. record a calibration trajectory (plaintext DDIM in onnxruntime, another seed than the samples');
2. compile the U-Net with the MPC rewrites, calibrated on it (timestep public);
3. write the HTML rewrite report;
4. sample a grid of digits with DDIM under three-party computation (three local party processes: the model
   owner shares the weights, the user its noise and labels, x_t stays secret-shared between steps, only the
   final images are revealed, to the user), next to the plaintext twins from the same noise;
5. print where everything is and a short table.

Sizes: the shipped model is exported at batch 8 (8 digits, labels 0-7); DDIM with DEMO_STEPS steps keeps the
whole demo within 10 minutes on 2 cores (see docs/sampler.md for the measurements behind the choice).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "mnist" / "mnist_unet.onnx"
DEMO_STEPS = 6
DEMO_SEED = 0
CALIBRATION_SEED = 1000
CALIBRATION_STEPS = 20
MiB = float(1 << 20)


def _run(stage: str, args: list[str], timings: dict) -> None:
    from tools.cli import main
    print(f"\n== {stage}: cipherdm {' '.join(args)}", flush=True)
    t = time.perf_counter()
    code = main(args)
    timings[stage] = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"demo: `cipherdm {args[0]}` failed (exit code {code}); see the message above")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"DDIM steps (default {DEMO_STEPS})")
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--error-budget", type=float, help="the rewrites' per-node error budget (default: passes')")
    parser.add_argument("--mode", choices=("local", "sim"), default="local")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    calib, program, weights = out / "calibration.npz", out / "mnist_unet.cdm", out / "mnist_unet.weights.npz"
    report, grid, metrics = out / "report.html", out / "samples.png", out / "metrics.json"
    timings: dict[str, float] = {}

    _run("trajectory", ["trajectory", str(MODEL), "--steps", str(CALIBRATION_STEPS), "--seed", str(CALIBRATION_SEED),
                        "-o", str(calib)], timings)
    compile_args = ["compile", str(MODEL), "-o", str(program), "--weights-out", str(weights), "--public", "timestep",
                    "--calibration", str(calib)]
    if args.error_budget is not None:
        compile_args += ["--error-budget", repr(args.error_budget)]
    _run("compile", compile_args, timings)
    _run("report", ["report", str(program), "--format", "html", "-o", str(report)], timings)
    _run("sample", ["sample", str(program), "--weights", str(weights), "--sampler", "ddim", "--steps",
                    str(args.steps), "--seed", str(args.seed), "--mode", args.mode, "-o", str(grid), "--metrics",
                    str(metrics)], timings)
    total = time.perf_counter() - start

    m = json.loads(metrics.read_text())
    t, q = m["totals"], m["quality"]
    summary = {"wall_time": total, "stages": timings, "steps": args.steps, "seed": args.seed, "mode": args.mode,
               "batch": m["settings"]["batch"], "labels": m["labels"]}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    agreement = q.get("agreement")
    rows = [
        ("samples", f"{m['settings']['batch']} digits (labels {', '.join(map(str, m['labels'] or []))}), DDIM "
                    f"{args.steps} steps, three local party processes" if args.mode == "local" else "simulation"),
        ("per step", f"{t['step_time_mean']:.1f} s, {t['bytes_per_step'] / MiB:.0f} MiB between the 3 parties, "
                     f"{t['rounds_per_step']:.0f} rounds"),
        ("whole sample", f"{t['step_time_total']:.0f} s in SPU, {t['total_bytes'] / MiB / 1024:.2f} GiB, "
                         f"{t['rounds']} rounds"),
        ("vs plaintext", f"PSNR mean {_db(q['mean_psnr_db'])} (min {_db(q['min_psnr_db'])}), SSIM "
                         f"{q['mean_ssim']:.3f}, classifier agreement "
                         + ("n/a" if agreement is None else f"{agreement:.0%}")),
        ("revealed", "only the final images, to the user (x_t stayed secret-shared between steps)"),
        ("time", f"{total / 60:.1f} min total: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n== cipherdm demo: private MNIST sampling under 3-party computation (ABY3 on SPU)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"\n  samples (MPC row above the plaintext twins): {grid}")
    print(f"  metrics (per step time, bytes, rounds; PSNR, SSIM, agreement): {metrics}")
    print(f"  rewrite report: {report}")
    print(f"  program and weights: {program}, {weights}; calibration: {calib}")
    return 0


def _db(v) -> str:
    return v if isinstance(v, str) else f"{v:.1f} dB"


if __name__ == "__main__":
    sys.exit(main())
