"""Quality and cost of secure sampling on the shipped MNIST U-Net: plaintext vs direct SPU vs cipherdm.

    python -m tools.bench_sampler                       # DDIM and DDPM, 20 steps, batch 8, local mode
    python -m tools.bench_sampler --reuse --seeds 0,1,2 --samplers ddim   # 24 DDIM samples (reuses seed 0's run)
    python -m tools.bench_sampler --samplers ddim --mode sim --error-budget 5e-3
    python -m tools.bench_sampler --state-vs-multistep 2   # only the state-in-runtime vs multi-step measurement

One command: records a calibration trajectory (a different seed than the evaluation), compiles the model with
the rewrites and with --direct, then runs ``cipherdm sample`` for every (sampler, program) pair and prints one
table: per step and per full sample, wall time in SPU, 3-party bytes and rounds (SPU's own profile), for the
plaintext float model (onnxruntime), the direct SPU program and cipherdm's, with the ratios; and the quality of
each secure sample against its plaintext twin (same x_T, noise and label): mean PSNR, SSIM, classifier agreement.
Everything lands in ``--out`` (programs, metrics JSON per run, grids, ``table.md``, ``results.json``).

Times on these shared 2-core machines are noisy (+-30-50%, other work running); bytes and rounds are exact.
This is a benchmark, not a test: a full run takes hours in local mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "mnist" / "mnist_unet.onnx"
MiB = float(1 << 20)


def cli(args: list[str]) -> None:
    from tools.cli import main
    print("$ cipherdm " + " ".join(args), flush=True)
    code = main(args)
    if code != 0:
        raise SystemExit(f"cipherdm {args[0]} failed with exit code {code}")


def prepare(out: Path, model: Path, calib_steps: int, calib_seed: int, budget: float | None, reuse: bool) -> dict:
    """Calibration trajectory + the two programs; reused when present and ``reuse``."""
    calib = out / "calib.npz"
    if not (reuse and calib.exists()):
        cli(["trajectory", str(model), "--steps", str(calib_steps), "--seed", str(calib_seed), "-o", str(calib)])
    programs = {}
    for kind in ("direct", "cipherdm"):
        path = out / f"{kind}.cdm"
        if not (reuse and path.exists()):
            args = ["compile", str(model), "-o", str(path), "--public", "timestep"]
            if kind == "direct":
                args.append("--direct")
            else:
                args += ["--calibration", str(calib)]
                if budget is not None:
                    args += ["--error-budget", repr(budget)]
            t = time.perf_counter()
            cli(args)
            (out / f"{kind}.compile_time").write_text(f"{time.perf_counter() - t:.2f}\n")
        programs[kind] = (path, out / f"{kind}.weights.npz")
    return programs


def plaintext_cost(program: Path, weights: Path, sampler: str, steps: int, seed: int) -> dict:
    """The float model (onnxruntime) on the same request: seconds per step and per sample."""
    from compiler.artifact import read_artifact, read_weights
    from runtime import secure_sampler as ss

    artifact = read_artifact(program)
    w = read_weights(weights, artifact)
    settings = ss.SamplingSettings(sampler, steps, ss.unet_signature(artifact).batch)
    signature, _ = ss.check_request(artifact, settings)
    user = ss.user_data(signature, settings, settings.plan(), seed,
                        ss.parse_labels(None, settings.batch, signature.num_classes))
    eps = ss.float_eps_fn(artifact, w, signature)
    eps(user.x_T, np.zeros(1, np.float32), user.condition)  # warm-up (session initialisation)
    t = time.perf_counter()
    ss.plaintext_sample(eps, signature, settings, user)
    total = time.perf_counter() - t
    return {"step_time": total / steps, "sample_time": total, "total_bytes": 0, "rounds": 0}


def run_sample(out: Path, kind: str, program: Path, weights: Path, sampler: str, steps: int, seed: int,
               mode: str, reuse: bool) -> dict:
    stem = f"{sampler}{steps}_{kind}" + (f"_s{seed}" if seed else "") + f".{mode}"
    metrics = out / f"{stem}.json"
    if not (reuse and metrics.exists()):
        cli(["sample", str(program), "--weights", str(weights), "--sampler", sampler, "--steps", str(steps),
             "--seed", str(seed), "--mode", mode, "-o", str(out / f"{stem}.png"), "--metrics", str(metrics),
             "--save-samples", str(out / f"{stem}.samples.npz")])
    return json.loads(metrics.read_text())


def summarize(runs: list[dict]) -> dict:
    """Cost per step and per sample (mean over the runs: bytes and rounds are the same in every run), quality
    over all samples of all runs (one run = one batch, one seed)."""
    totals = [m["totals"] for m in runs]
    psnr = [v for m in runs for v in m["quality"]["psnr_db"]]
    finite = [v for v in psnr if not isinstance(v, str)]
    ssim = [v for m in runs for v in (m["quality"].get("ssim") or [])]
    agree = [a == b for m in runs for a, b in zip(m["quality"].get("labels_a") or [],
                                                  m["quality"].get("labels_b") or [])]
    mean = lambda key: float(np.mean([t[key] for t in totals]))  # noqa: E731
    return {"step_time": mean("step_time_mean"), "sample_time": mean("step_time_total"),
            "bytes_per_step": mean("bytes_per_step"), "total_bytes": mean("total_bytes"),
            "rounds_per_step": mean("rounds_per_step"), "rounds": mean("rounds"),
            "wall_time": mean("wall_time"), "build_time": mean("step_program_build_time"),
            "mean_psnr_db": float(np.mean(finite)) if len(finite) == len(psnr) else "inf",
            "min_psnr_db": float(np.min(finite)), "mean_ssim": float(np.mean(ssim)) if ssim else None,
            "agreement": float(np.mean(agree)) if agree else None, "agree": int(sum(agree)),
            "samples": len(psnr), "seeds": [m["seed"] for m in runs]}


def render(results: dict, mode: str) -> str:
    lines = []
    for sampler, rows in results["samplers"].items():
        p, d, c = rows["plaintext"], rows["direct"], rows["cipherdm"]
        steps = results["steps"]
        lines += [f"### {sampler.upper()}, {steps} steps, batch {results['batch']}, {c['samples']} samples (seeds "
                  f"{', '.join(map(str, c['seeds']))}; {mode} mode)", "",
                  "| | s / step | MiB / step | rounds / step | s / sample | GiB / sample | rounds / sample | "
                  "PSNR mean (min) dB | SSIM | classifier agreement |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines.append(f"| plaintext (onnxruntime) | {p['step_time']:.3f} | 0 | 0 | {p['sample_time']:.2f} | 0 | 0 | "
                     "reference | 1 | 100% |")
        for name, r in (("direct SPU", d), ("cipherdm", c)):
            lines.append(f"| {name} | {r['step_time']:.1f} | {r['bytes_per_step'] / MiB:.0f} | "
                         f"{r['rounds_per_step']:.0f} | {r['sample_time']:.0f} | {r['total_bytes'] / MiB / 1024:.1f} | "
                         f"{r['rounds']:.0f} | {_db(r['mean_psnr_db'])} ({_db(r['min_psnr_db'])}) | "
                         f"{r['mean_ssim']:.3f} | {_pct(r['agreement'])} ({r['agree']}/{r['samples']}) |")
        lines.append(f"| direct / cipherdm | {d['step_time'] / c['step_time']:.2f}x | "
                     f"{d['bytes_per_step'] / c['bytes_per_step']:.2f}x | "
                     f"{d['rounds_per_step'] / c['rounds_per_step']:.2f}x | {d['sample_time'] / c['sample_time']:.2f}x |"
                     f" {d['total_bytes'] / c['total_bytes']:.2f}x | {d['rounds'] / c['rounds']:.2f}x | "
                     f"{_diff(c['mean_psnr_db'], d['mean_psnr_db'])} | | |")
        lines.append(f"| cipherdm / plaintext | {c['step_time'] / p['step_time']:.0f}x | | | "
                     f"{c['sample_time'] / p['sample_time']:.0f}x | | | | | |")
        lines.append("")
    return "\n".join(lines)


def _db(v) -> str:
    return v if isinstance(v, str) else f"{v:.1f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _diff(c, d) -> str:
    if isinstance(c, str) or isinstance(d, str):
        return "n/a"
    return f"cipherdm {c - d:+.1f} dB vs direct"


# ---------------------------------------------------------------------------------------------------------------
# State kept in the SPU runtimes between one-step runs vs one multi-step program


def state_vs_multistep(out: Path, program: Path, weights: Path, k: int, seed: int, mode: str) -> dict:
    """K DDPM steps (fresh noise each step) three ways, side by side in one process: the one-step program run K
    times with x_t kept in the runtimes, a K-step ``fori_loop`` program run once, and K steps unrolled."""
    from compiler.artifact import read_artifact, read_weights
    from runtime import secure_sampler as ss

    artifact = read_artifact(program)
    w = read_weights(weights, artifact)
    settings = ss.SamplingSettings("ddpm", k, ss.unet_signature(artifact).batch)
    signature, layout = ss.check_request(artifact, settings)
    labels = ss.parse_labels(None, settings.batch, signature.num_classes)
    user = ss.user_data(signature, settings, settings.plan(), seed, labels)
    variants = {}
    images = {}
    for name, steps_per_run, loop in (("state (1-step program, K runs)", 1, "fori"),
                                      (f"fori_loop ({k}-step program, 1 run)", k, "fori"),
                                      (f"unrolled ({k}-step program, 1 run)", k, "unroll")):
        print(f"[state-vs-multistep] {name}: building", flush=True)
        t = time.perf_counter()
        step = ss.build_step_program(artifact, signature, layout, True, steps_per_run, loop)
        build = time.perf_counter() - t
        t = time.perf_counter()
        if mode == "local":
            run = ss.sample_local(program, weights, settings, step, seed=seed, work_dir=None)
            records, image = run.records, run.image
            share = max(sum(r["share_time"] for r in p["records"]) for p in run.parties)
        else:
            backend = ss.SimBackend(artifact.config)
            res = ss.run_secure_sampling(backend, step, signature, settings, user=user, weights=w)
            records, image = res.records, res.image
            share = sum(r.share_time for r in records)
        wall = time.perf_counter() - t
        images[name] = image
        variants[name] = {"steps_per_run": steps_per_run, "loop": loop, "build_time": build,
                          "spu_lower_time": step.timings["lower"], "spu_compile_time": step.timings["spu_compile"],
                          "runs": len(records), "spu_run_time": sum(r.run_time for r in records),
                          "share_time": share, "wall_time": wall,
                          "total_bytes": sum(r.total_bytes for r in records),
                          "rounds": sum(r.rounds for r in records)}
        print(f"[state-vs-multistep] {name}: {json.dumps(variants[name])}", flush=True)
    first = next(iter(images.values()))
    for name, image in images.items():
        variants[name]["max_abs_diff_vs_state"] = float(np.abs(image - first).max())
    result = {"k": k, "mode": mode, "program": str(program), "batch": settings.batch, "variants": variants}
    (out / f"state_vs_multistep_k{k}.{mode}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def paired_state_vs_multistep(out: Path, program: Path, weights: Path, k: int, seed: int, repeats: int) -> dict:
    """The same comparison as interleaved repeats in ONE simulation session (weights shared once, profiling
    off so only execution is timed): per repeat, K runs of the one-step program (x_t renamed between runs), one
    run of the K-step fori_loop program and one of the unrolled K-step program, in rotating order, each from the
    same x_T, so that load changes on the shared machine hit every variant alike."""
    from compiler.artifact import read_artifact, read_weights
    from runtime import secure_sampler as ss
    from runtime.simulate import SimSession

    artifact = read_artifact(program)
    w = read_weights(weights, artifact)
    settings = ss.SamplingSettings("ddpm", k, ss.unet_signature(artifact).batch)
    signature, layout = ss.check_request(artifact, settings)
    plan = settings.plan()
    user = ss.user_data(signature, settings, plan, seed, ss.parse_labels(None, settings.batch, signature.num_classes))
    builds = {}
    programs = {}
    for name, steps_per_run, loop in (("state", 1, "fori"), ("fori", k, "fori"), ("unroll", k, "unroll")):
        t = time.perf_counter()
        programs[name] = ss.build_step_program(artifact, signature, layout, True, steps_per_run, loop)
        builds[name] = time.perf_counter() - t
    exes = {name: p.executable() for name, p in programs.items()}
    sim = SimSession(artifact.config, profile=False)
    for spec in signature.weights:
        sim.set_secret(ss.WEIGHT_PREFIX + spec.name, w[spec.name])
    if signature.condition is not None:
        sim.set_secret(ss.COND, user.condition)
    names = list(programs)
    times: dict[str, list[float]] = {n: [] for n in names}
    images = {}
    for r in range(repeats):
        for name in names[r % 3:] + names[:r % 3]:
            sim.set_secret(ss.STATE, user.x_T)
            start = time.perf_counter()
            if name == "state":
                for i in range(k):
                    for key, value in ss.public_step_values(signature, plan, i, 1, layout).items():
                        sim.set_public(key, value)
                    sim.set_secret(ss.NOISE, user.noise[i])
                    sim.run(exes[name])
                    sim.rename(ss.NEXT, ss.STATE)
            else:
                for key, value in ss.public_step_values(signature, plan, 0, k, layout).items():
                    sim.set_public(key, value)
                sim.set_secret(ss.NOISE, np.stack(user.noise[:k]))
                sim.run(exes[name])
                sim.rename(ss.NEXT, ss.STATE)
            times[name].append(time.perf_counter() - start)
            print(f"[paired] repeat {r}: {name} {times[name][-1]:.1f} s", flush=True)
            if r == 0:
                images[name] = sim.reveal([ss.STATE])[ss.STATE]
    result = {"k": k, "repeats": repeats, "batch": settings.batch, "program": str(program), "build_time": builds,
              "spu_compile_time": {n: p.timings["spu_compile"] for n, p in programs.items()},
              "times": times, "mean": {n: float(np.mean(v)) for n, v in times.items()},
              "max_abs_diff_vs_state": {n: float(np.abs(images[n] - images["state"]).max()) for n in names}}
    (out / f"state_vs_multistep_paired_k{k}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def render_state(result: dict) -> str:
    lines = [f"K = {result['k']} DDPM steps, batch {result['batch']}, {result['mode']} mode, program "
             f"{Path(result['program']).name}", "",
             "| variant | build s (lower + SPU compile) | runs | SPU run s | s / step | noise sharing s | "
             "wall s | MiB | rounds |", "|---|---|---|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        lines.append(f"| {name} | {v['build_time']:.1f} ({v['spu_lower_time']:.1f} + {v['spu_compile_time']:.1f}) |"
                     f" {v['runs']} | {v['spu_run_time']:.1f} | {v['spu_run_time'] / result['k']:.1f} | "
                     f"{v['share_time']:.2f} | {v['wall_time']:.1f} | {v['total_bytes'] / MiB:.0f} | "
                     f"{v['rounds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_sampler")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samplers", default="ddim,ddpm")
    parser.add_argument("--seeds", default="0", help="evaluation seeds, one batch each (x_T and noise), e.g. 0,1,2")
    parser.add_argument("--direct-seeds", help="seeds for the direct-SPU baseline (default: the same as --seeds; "
                                               "a direct sample costs ~1.5x a cipherdm one)")
    parser.add_argument("--calibration-seed", type=int, default=1000, help="seed of the calibration trajectory")
    parser.add_argument("--calibration-steps", type=int, default=20)
    parser.add_argument("--error-budget", type=float, help="cipherdm's per-node error budget (default: passes')")
    parser.add_argument("--mode", choices=("local", "sim"), default="local")
    parser.add_argument("--reuse", action="store_true", help="reuse programs and run metrics already in --out")
    parser.add_argument("--state-vs-multistep", type=int, metavar="K",
                        help="only measure K steps kept in the runtime vs a K-step program (fori / unrolled)")
    parser.add_argument("--multistep-program", choices=("direct", "cipherdm"), default="cipherdm")
    parser.add_argument("--paired", type=int, metavar="R",
                        help="with --state-vs-multistep: R alternating A/B repeats in one simulation session")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    programs = prepare(out, args.model, args.calibration_steps, args.calibration_seed, args.error_budget, args.reuse)

    if args.state_vs_multistep and args.paired:
        program, weights = programs[args.multistep_program]
        result = paired_state_vs_multistep(out, program, weights, args.state_vs_multistep, int(args.seeds.split(",")[0]),
                                           args.paired)
        print(json.dumps({k: result[k] for k in ("mean", "times", "build_time", "max_abs_diff_vs_state")}))
        return 0
    if args.state_vs_multistep:
        program, weights = programs[args.multistep_program]
        result = state_vs_multistep(out, program, weights, args.state_vs_multistep, int(args.seeds.split(",")[0]),
                                    args.mode)
        text = render_state(result)
        (out / f"state_vs_multistep_k{args.state_vs_multistep}.{args.mode}.md").write_text(text + "\n")
        print(text)
        return 0

    from compiler.artifact import read_artifact
    from runtime.secure_sampler import unet_signature
    batch = unet_signature(read_artifact(programs["cipherdm"][0])).batch
    seeds = [int(v) for v in args.seeds.split(",")]
    results = {"model": str(args.model), "steps": args.steps, "batch": batch, "seeds": seeds, "mode": args.mode,
               "error_budget": args.error_budget, "samplers": {}}
    start = time.perf_counter()
    for sampler in [s.strip() for s in args.samplers.split(",") if s.strip()]:
        rows = {"plaintext": plaintext_cost(*programs["direct"], sampler, args.steps, seeds[0])}
        direct_seeds = [int(v) for v in args.direct_seeds.split(",")] if args.direct_seeds else seeds
        for kind, kind_seeds in (("cipherdm", seeds), ("direct", direct_seeds)):
            rows[kind] = summarize([run_sample(out, kind, *programs[kind], sampler, args.steps, seed, args.mode,
                                               args.reuse) for seed in kind_seeds])
        results["samplers"][sampler] = rows
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    results["bench_wall_time"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render(results, args.mode)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
