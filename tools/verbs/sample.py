"""cipherdm sample: DDPM/DDIM sampling under three-party computation, next to its plaintext twin.

The state x_t stays secret-shared from x_T to x_0; only the final images are revealed, to the user. See
runtime/secure_sampler.py for the protocol and docs/sampler.md for costs and quality.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

NAME = "sample"
HELP = "sample images from a compiled diffusion U-Net under MPC (DDPM/DDIM), with the plaintext twin and metrics"
MODES = ("local", "sim", "plaintext", "party")


def add_arguments(parser) -> None:
    parser.add_argument("program", help="the compiled U-Net (.cdm from cipherdm compile; --direct for the baseline)")
    parser.add_argument("--weights", help="the model owner's weights (.npz from cipherdm compile)")
    parser.add_argument("--sampler", default="ddim", help="ddim (default) or ddpm")
    parser.add_argument("--steps", type=int, default=20, help="model calls (strided timesteps; default 20)")
    parser.add_argument("--batch", type=int, help="images per run (default: the program's batch)")
    parser.add_argument("--seed", type=int, help="the user's seed for x_T and every step's noise (default 0)")
    parser.add_argument("--label", help="class label(s) of a class-conditional model: one class for all, a comma "
                                        "list with one per image, or 'none' (default: 0, 1, 2, ...)")
    parser.add_argument("--condition", metavar="COND.npy|.npz",
                        help="the user's condition of a model conditioned on an embedding (a prompt's text embedding): "
                             "[batch, ...] like the model's condition input, or without the batch axis for every "
                             "image; secret-shared like the noise (default: zeros, the null condition)")
    parser.add_argument("--null-condition", metavar="NULL.npy|.npz",
                        help="with --guidance on a model conditioned on an embedding: the unconditional input (what "
                             "diffusers pipelines take from the empty prompt), read like --condition and "
                             "secret-shared like it (default: zeros)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (public; default: none)")
    parser.add_argument("--eta", type=float, help="DDIM eta (default 0; ddpm is eta = 1)")
    parser.add_argument("--schedule", default="linear", help="beta schedule: linear (default) or cosine")
    parser.add_argument("--train-timesteps", dest="T", type=int, default=1000, metavar="T",
                        help="length T of the training noise schedule (default 1000)")
    parser.add_argument("--mode", default="local", help="local: three party processes on 127.0.0.1 (default); "
                        "sim: SPU's in-process three-party simulation; plaintext: the step program on the CPU, no "
                        "MPC; party: one party of a real deployment (--rank, --parties)")
    parser.add_argument("-o", "--output", metavar="GRID.png",
                        help="the PNG grid (MPC samples above their plaintext twins); in party mode, the user's "
                             "samples (.npz or .png)")
    parser.add_argument("--metrics", help="write per-step time, 3-party bytes and rounds, totals and quality as JSON")
    parser.add_argument("--work-dir", help="local mode: keep parties.json, the step program and every party's logs")
    parser.add_argument("--save-samples", metavar="SAMPLES.npz",
                        help="also write the samples in model space: secure (x0), plaintext twin (x0_plaintext), "
                             "labels")
    party = parser.add_argument_group("party mode")
    party.add_argument("--rank", type=int, choices=(0, 1, 2), help="this party's rank")
    party.add_argument("--parties", metavar="PARTIES.json", help="addresses and roles (see cipherdm party)")
    party.add_argument("--step-program", help="a step program built by the supervisor (default: compile it here)")
    party.add_argument("--spu-log", help="file for SPU's log and profile")
    party.add_argument("--status-out", help=argparse.SUPPRESS)
    party.add_argument("--progress-out", help=argparse.SUPPRESS)


def run(args) -> int:
    if args.mode == "party":
        return _party(args)
    return _sample(args)


# ---------------------------------------------------------------------------------------------------------------


def _settings(args, program_batch: int | None):
    from runtime.secure_sampler import SamplingSettings
    return SamplingSettings(sampler=args.sampler, steps=args.steps,
                            batch=args.batch if args.batch is not None else (program_batch or 1),
                            schedule=args.schedule, T=args.T, eta=args.eta, guidance=args.guidance)


def _prepare(args):
    """Read and check everything first: one error naming every problem, before anything runs."""
    from compiler.artifact import output_folder_problems, read_artifact, read_weights
    from compiler.errors import CipherdmError
    from runtime.secure_sampler import (MODES as RUN_MODES, SamplerError, check_request, parse_labels,
                                        read_condition, read_null_condition)

    problems = []
    if args.mode not in RUN_MODES:
        problems.append(f"unknown --mode '{args.mode}' (choose {', '.join(MODES)})")
    artifact = weights = None
    try:
        artifact = read_artifact(args.program)
    except CipherdmError as exc:
        problems.append(str(exc))
    if not args.weights:
        problems.append("--weights is missing: the model owner's weights file (PROGRAM.weights.npz from "
                        "cipherdm compile)")
    elif artifact is not None:
        try:
            weights = read_weights(args.weights, artifact)
        except CipherdmError as exc:
            problems.append(str(exc))
    elif not Path(args.weights).exists():
        problems.append(f"weights file {args.weights} does not exist")
    if not args.output:
        problems.append("-o/--output is missing: the PNG grid to write")
    problems += output_folder_problems((("-o", args.output), ("--metrics", args.metrics),
                                        ("--save-samples", args.save_samples)))
    program_batch = None
    signature = layout = labels = None
    if artifact is not None:
        try:
            from runtime.secure_sampler import unet_signature
            program_batch = unet_signature(artifact).batch
        except SamplerError:
            pass
    settings = _settings(args, program_batch)
    if artifact is not None:
        try:
            signature, layout = check_request(artifact, settings)
        except SamplerError as exc:
            problems += exc.problems
    else:
        problems += settings.problems()
    condition = null = None
    if signature is not None:
        try:
            labels = parse_labels(args.label, settings.batch, signature.num_classes)
        except SamplerError as exc:
            problems.append(str(exc))
        if args.condition:
            try:
                condition = read_condition(args.condition, settings.batch, signature)
            except CipherdmError as exc:   # a SamplerError, or load_npz's DataError
                problems.append(str(exc))
        if args.null_condition:
            try:
                null = read_null_condition(args.null_condition, settings, signature)
            except CipherdmError as exc:
                problems.append(str(exc))
    if args.seed is not None and args.seed < 0:
        problems.append(f"--seed must be >= 0, got {args.seed}")
    if problems:
        raise SamplerError("cannot sample", problems)
    return artifact, weights, settings, signature, layout, labels, (condition, null)


def _sample(args) -> int:
    import numpy as np

    from runtime import secure_sampler as ss
    from runtime.quality import write_grid
    from runtime.sampler import to_unit

    wall_start = time.perf_counter()
    artifact, weights, settings, signature, layout, labels, conditions = _prepare(args)
    seed = 0 if args.seed is None else args.seed
    plan = settings.plan()
    user = ss.user_data(signature, settings, plan, seed, labels, *conditions)
    noise = any(plan.needs_noise)
    progress = ss.Progress(len(plan.steps), f"{args.mode}")

    program = None
    build_time = 0.0
    if args.mode != "plaintext":
        progress.message(f"building the step program (SPU compile; guidance layout {layout}) ...")
        t = time.perf_counter()
        program = ss.build_step_program(artifact, signature, layout, noise)
        build_time = time.perf_counter() - t

    parties = None
    setup_time = reveal_time = 0.0
    revealed: list[str] = []
    sharing_bytes = None
    t = time.perf_counter()
    if args.mode == "plaintext":
        records = []
        image = ss.run_step_plaintext(artifact, signature, settings, user, weights, layout)
        progress.update(len(plan.steps))
    elif args.mode == "sim":
        backend = ss.SimBackend(artifact.config)
        run = ss.run_secure_sampling(backend, program, signature, settings, user=user, weights=weights,
                                     progress=lambda d, n, r: progress.update(d, r.t[-1], r.run_time))
        image, records, revealed = run.image, run.records, run.revealed
        setup_time, reveal_time = run.setup_time, run.reveal_time
    else:
        image, records, parties = _local(args, artifact, settings, program, seed, progress)
        revealed = sorted({name for p in parties for name in p["revealed"]})
        setup_time = max(p["setup_time"] for p in parties)
        reveal_time = max(p["reveal_time"] for p in parties)
        sharing_bytes = sum(p["cipherdm_traffic"]["send_bytes"] for p in parties)
    sampling_time = time.perf_counter() - t

    t = time.perf_counter()
    eps_fn = ss.float_eps_fn(artifact, weights, signature)
    plain = ss.plaintext_sample(eps_fn, signature, settings, user)
    twin_time = time.perf_counter() - t

    secure_u, plain_u = to_unit(image), to_unit(plain)
    quality = ss.quality(secure_u, plain_u)
    captions = [f"{lab if lab is not None else ''} {p if isinstance(p, str) else f'{p:.0f}'}dB".strip()
                for lab, p in zip(labels or [None] * settings.batch, quality["psnr_db"])]

    per_step = [_record_json(r) for r in records]
    totals = {
        "wall_time": time.perf_counter() - wall_start,
        "step_program_build_time": build_time,
        "sampling_time": sampling_time,
        "setup_time": setup_time,
        "reveal_time": reveal_time,
        "plaintext_twin_time": twin_time,
        "steps": len(plan.steps),
        "step_time_mean": (sum(r.run_time for r in records) / len(plan.steps)) if records else None,
        "step_time_total": sum(r.run_time for r in records) if records else None,
        "total_bytes": sum(r.total_bytes or 0 for r in records) if records else None,
        "rounds": sum(r.rounds or 0 for r in records) if records else None,
        "bytes_per_step": (sum(r.total_bytes or 0 for r in records) / len(plan.steps)) if records else None,
        "rounds_per_step": (sum(r.rounds or 0 for r in records) / len(plan.steps)) if records else None,
        "sharing_bytes": sharing_bytes,
    }
    metrics = {
        "mode": args.mode, "program": str(args.program), "name": artifact.name,
        "rewrites": artifact.manifest["rewrites"], "config": artifact.manifest["config"],
        "settings": settings.to_json(), "seed": seed, "labels": labels, "guidance_layout": layout,
        "steps_per_run": program.steps_per_run if program else 1, "plan": plan.to_json(),
        "step_program": {"sha256": program.sha256, "timings": program.timings} if program else None,
        "plaintext_twin": ("the float model before the MPC rewrites (reference.onnx in the program) in "
                           "onnxruntime" if artifact.reference_graph is not None else
                           "the program's float graph (compiled without rewrites) in onnxruntime")
        + ", same x_T, noise and label",
        "secure_row": {"local": "three local party processes", "sim": "SPU in-process simulation",
                       "plaintext": "the step program's JAX function on the CPU (rewrites, no MPC)"}[args.mode],
        "revealed": revealed,
        "per_step": per_step,
        "totals": totals,
        "quality": quality,
        "parties": [_party_summary(p) for p in parties] if parties else None,
        "outputs": {"grid": str(args.output), "metrics": args.metrics},
    }
    if args.metrics:
        from runtime.metrics import write_metrics
        write_metrics(args.metrics, metrics)
    if args.save_samples:
        from compiler.artifact import save_npz
        save_npz(args.save_samples, {"x0": image, "x0_plaintext": plain,
                                     "labels": np.asarray(labels if labels is not None else [], np.int64)})
    # the picture last: the samples and the metrics are the run's results, kept whatever happens to it
    row = {"local": "MPC", "sim": "MPC (sim)", "plaintext": "program"}[args.mode]
    write_grid(args.output, [(row, secure_u), ("plaintext", plain_u)], captions)
    print(render_summary(metrics))
    return 0


def _local(args, artifact, settings, program, seed, progress):
    from runtime.secure_sampler import sample_local
    run = sample_local(args.program, args.weights, settings, program, seed=seed, labels_text=args.label,
                       condition_path=args.condition, null_condition_path=args.null_condition,
                       work_dir=args.work_dir, progress=progress)
    return run.image, run.records, run.parties


def _record_json(r) -> dict:
    return {"step": r.index, "steps": r.steps, "t": r.t, "time_s": r.run_time, "share_time_s": r.share_time,
            "total_bytes": r.total_bytes, "rounds": r.rounds}


def _party_summary(p: dict) -> dict:
    return {k: p[k] for k in ("rank", "roles", "load_time", "connect_time", "handshake_time", "setup_time",
                              "reveal_time", "run_time", "wall_time", "peak_rss_bytes", "cipherdm_traffic",
                              "revealed", "step_program_sha256")}


def render_summary(m: dict) -> str:
    s, t, q = m["settings"], m["totals"], m["quality"]
    mib = float(1 << 20)
    lines = [f"{m['mode']} sampling with {m['name']} ({m['rewrites']}): {s['sampler']}, {s['steps']} steps, batch "
             f"{s['batch']}, {s['schedule']} schedule, guidance {s['guidance'] if s['guidance'] is not None else '-'}"
             f", seed {m['seed']}"]
    if t["step_time_mean"] is not None:
        lines.append(f"  per step: {t['step_time_mean']:.2f} s, {t['bytes_per_step'] / mib:.1f} MiB (3 parties), "
                     f"{t['rounds_per_step']:.0f} rounds")
        lines.append(f"  whole sample: {t['step_time_total']:.1f} s in SPU, {t['total_bytes'] / mib:.1f} MiB, "
                     f"{t['rounds']} rounds; wall {t['wall_time']:.1f} s (step program build "
                     f"{t['step_program_build_time']:.1f} s)")
    agreement = q.get("agreement")
    mean_psnr = q["mean_psnr_db"]
    ssim = f"{q['mean_ssim']:.3f}" if q.get("mean_ssim") is not None else "n/a"
    lines.append(f"  vs plaintext twin: PSNR mean {_db(mean_psnr)} (min {_db(q['min_psnr_db'])}), SSIM mean "
                 f"{ssim}, classifier agreement " + (f"{agreement:.0%}" if agreement is not None else "n/a"))
    if m["revealed"]:
        lines.append(f"  revealed to the user: {', '.join(m['revealed'])} (final image only)")
    lines.append(f"  wrote {m['outputs']['grid']}" + (f" and {m['outputs']['metrics']}" if m["outputs"]["metrics"]
                                                       else ""))
    return "\n".join(lines)


def _db(v) -> str:
    return v if isinstance(v, str) else f"{v:.1f} dB"


# ---------------------------------------------------------------------------------------------------------------
# Party mode


def _party(args) -> int:
    """One party; leaves with os._exit like ``cipherdm party`` (brpc threads may still be running)."""
    code = _party_run(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _party_run(args) -> int:
    from compiler.errors import CipherdmError
    from runtime.party import PartiesConfig
    from runtime.secure_sampler import run_sampler_party
    from tools.verbs.party import _die_with_supervisor, _exit_on_signals, party_reporters

    write_status, peer_failed = party_reporters("sample", args.rank, args.status_out)
    _exit_on_signals(args.rank if args.rank is not None else -1, write_status)
    _die_with_supervisor()
    try:
        problems = [f"--mode party needs {flag}" for flag, v in (("--rank", args.rank), ("--parties", args.parties))
                    if v is None]
        if problems:
            raise CipherdmError("cannot run a sampling party", problems)
        parties = PartiesConfig.load(args.parties)
        from compiler.artifact import read_artifact
        from runtime.secure_sampler import unet_signature
        settings = _settings(args, unet_signature(read_artifact(args.program)).batch)
        metrics = run_sampler_party(
            args.rank, parties, args.program, settings, step_path=args.step_program, weights_path=args.weights,
            seed=args.seed, labels_text=args.label, condition_path=args.condition,
            null_condition_path=args.null_condition, output_path=args.output,
            progress_path=args.progress_out,
            log_path=args.spu_log or f"{args.program}.party{args.rank}.log", on_peer_failure=peer_failed)
    except CipherdmError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"cipherdm sample: party {args.rank}: error: {exc}", file=sys.stderr)
        write_status({"rank": args.rank, "ok": False, "error": str(exc), "kind": type(exc).__name__})
        return 2
    except BaseException as exc:  # noqa: BLE001 - a bug: report it with its traceback, still leave cleanly
        traceback.print_exc()
        write_status({"rank": args.rank, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()})
        return 1
    write_status({"rank": args.rank, "ok": True, "metrics": metrics})
    print(f"party {args.rank} ({', '.join(metrics['roles']) or 'compute'}): {len(metrics['records'])} step runs, "
          f"{metrics['run_time']:.1f} s in SPU" + (f", wrote {args.output}" if metrics["wrote_output"] else ""),
          flush=True)
    return 0
