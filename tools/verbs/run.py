"""cipherdm run: run a compiled program in plaintext, in SPU's in-process simulation, or as three local parties."""

from __future__ import annotations

import time

from compiler.errors import CipherdmError

NAME = "run"
HELP = "run a compiled program (.cdm): plaintext reference, in-process simulation, or three local parties"
MODES = ("local", "sim", "plaintext")


def add_arguments(parser) -> None:
    parser.add_argument("program", help="the compiled program (.cdm)")
    parser.add_argument("--weights", required=True, help="the model owner's weights (.npz from cipherdm compile)")
    parser.add_argument("--inputs", required=True, help="inputs (.npz keyed by ONNX input names)")
    parser.add_argument("-o", "--output", required=True, help="where the outputs go (.npz keyed by output names)")
    parser.add_argument("--mode", choices=MODES, default="local",
                        help="local: three party processes on 127.0.0.1 (default); sim: SPU's in-process "
                             "three-party simulation; plaintext: the same program on the CPU, no MPC")
    parser.add_argument("--metrics", help="write the run's metrics (times, bytes, rounds, per-op cost) as JSON")
    parser.add_argument("--work-dir", help="local mode: keep parties.json and every party's logs here")


def run(args) -> int:
    from compiler.artifact import output_folder_problems, read_artifact, read_inputs, read_weights, save_npz
    from runtime.metrics import plaintext_metrics, render_table, secure_metrics, write_metrics

    start = time.perf_counter()
    artifact = read_artifact(args.program)
    # Name every problem with both files at once.
    problems = []
    weights = inputs = None
    try:
        weights = read_weights(args.weights, artifact)
    except CipherdmError as exc:
        problems.append(str(exc))
    try:
        inputs = read_inputs(args.inputs, artifact)
    except CipherdmError as exc:
        problems.append(str(exc))
    problems += output_folder_problems((("-o", args.output), ("--metrics", args.metrics)))
    if problems:
        raise CipherdmError("cannot run the program", problems)

    if args.mode == "plaintext":
        from runtime.plaintext import run_plaintext
        t = time.perf_counter()
        outputs = run_plaintext(artifact, weights, inputs)
        run_time = time.perf_counter() - t
        save_npz(args.output, outputs)
        metrics = plaintext_metrics(artifact, wall_time=time.perf_counter() - start, load_time=0.0,
                                    run_time=run_time)
    elif args.mode == "sim":
        from runtime.party import peak_rss_bytes
        from runtime.simulate import run_sim
        result = run_sim(artifact, weights, inputs)
        save_npz(args.output, result.outputs)
        parties = [{"rank": i, "roles": None, **p.to_json(), "peak_rss_bytes": peak_rss_bytes()}
                   for i, p in enumerate(result.profile.parties)]
        metrics = secure_metrics("sim", artifact, result.profile, wall_time=time.perf_counter() - start,
                                 load_time=result.load_time, run_time=result.run_time, parties=parties)
        metrics["party_order_known"] = False  # one shared log: per-party numbers are not attributed to ranks
    else:
        from runtime.local import run_local
        from runtime.party import profile_from_json
        from runtime.spu_profile import Profile
        local = run_local(args.program, args.weights, args.inputs, args.output, work_dir=args.work_dir)
        profile = Profile.combine([profile_from_json(m) for m in local.metrics])
        parties = [{"rank": m["rank"], "roles": m["roles"], **(m["link"] or {}),
                    "sharing_send_bytes": m["sharing"]["send_bytes"],
                    "sharing_send_actions": m["sharing"]["send_actions"],
                    "peak_rss_bytes": m["peak_rss_bytes"], "run_time": m["run_time"],
                    "wall_time": m["wall_time"]} for m in local.metrics]
        metrics = secure_metrics("local", artifact, profile, wall_time=time.perf_counter() - start,
                                 load_time=max(m["load_time"] for m in local.metrics),
                                 run_time=max(m["run_time"] for m in local.metrics), parties=parties)
        metrics["party_startup_time"] = max(m["wall_time"] - m["run_time"] for m in local.metrics)
    if args.metrics:
        write_metrics(args.metrics, metrics)
    print(render_table(metrics))
    return 0
