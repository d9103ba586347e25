"""cipherdm compile: ONNX model -> three-party SPU program (.cdm) + the model owner's weights (.weights.npz)."""

from __future__ import annotations

from pathlib import Path

NAME = "compile"
HELP = "compile an ONNX model to a three-party secure program (.cdm) and a separate private weights file"


def add_arguments(parser) -> None:
    from runtime.spu_config import DEFAULT_FIELD, DEFAULT_FXP_BITS, DEFAULT_PROTOCOL, FIELDS, PROTOCOLS

    parser.add_argument("model", help="path to the .onnx file (external data is read from its folder)")
    parser.add_argument("-o", "--output", required=True, metavar="PROGRAM.cdm", help="the program to write")
    parser.add_argument("--weights-out", metavar="PATH",
                        help="where the model owner's weights go (default: next to the program, "
                             "PROGRAM.weights.npz)")
    parser.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                        help="fix the shape of a dynamic input (repeat for several inputs)")
    parser.add_argument("--public", action="append", default=[], metavar="NAME",
                        help="an input known to every party, not secret-shared (diffusion: the timestep)")
    parser.add_argument("--direct", action="store_true",
                        help="compile the graph as it is, without MPC-friendly rewrites (the baseline)")
    parser.add_argument("--calibration", metavar="CALIB.npz",
                        help="inputs to calibrate the rewrites on, keyed by input name, each of the input's shape "
                             "or with a leading axis of cases (diffusion: inputs along a sampling trajectory)")
    parser.add_argument("--validation", metavar="VALID.npz",
                        help="held-out inputs (same layout as --calibration, e.g. another sampling trajectory): the "
                             "report gives the rewritten model's float error on them, which the choice never saw")
    parser.add_argument("--error-budget", type=float, default=None, metavar="E",
                        help="max abs error per rewritten node on its calibrated inputs (default 1e-2)")
    parser.add_argument("--model-error", type=float, default=None, metavar="R",
                        help="with --calibration: bound on the rewritten model's float error, max abs output "
                             "error / output std on the calibration cases; the budgets of the nodes that cause a "
                             "larger error are tightened (default 5e-2; 0 turns the check off)")
    parser.add_argument("--network", metavar="BANDWIDTH,LATENCY",
                        help="rank the protocols by their estimated time on this network (per-party bandwidth, "
                             "one-way latency per round: 1gbit,10ms; or lan = 10gbit,0.1ms, wan = 100mbit,20ms) "
                             "instead of by bytes (default): over a WAN a round can cost more than megabytes")
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOLS, help="SPU protocol")
    parser.add_argument("--field", default=DEFAULT_FIELD, choices=sorted(FIELDS), help="SPU ring")
    parser.add_argument("--fxp-bits", default="auto", metavar="N|auto",
                        help="fixed-point fraction bits; auto (default): with --calibration, the most the calibrated "
                             f"value range allows (at most 22), else SPU's default {DEFAULT_FXP_BITS}")


def default_weights_path(program: str) -> Path:
    path = Path(program)
    stem = path.name[:-4] if path.name.endswith(".cdm") else path.name
    return path.with_name(f"{stem}.weights.npz")


def run(args) -> int:
    from compiler.artifact import output_folder_problems, write_artifact, write_weights
    from compiler.errors import CipherdmError
    from compiler.loader import parse_input_shapes
    from compiler.spu_compile import compile_model
    from runtime.spu_config import DEFAULT_FXP_BITS, SecureConfig

    from compiler.artifact import load_npz

    weights_out = Path(args.weights_out) if args.weights_out else default_weights_path(args.output)
    problems = []
    if weights_out.resolve() == Path(args.output).resolve():
        problems.append("--weights-out must differ from the program path: the weights never go into it")
    if args.direct and (args.calibration or args.validation or args.error_budget is not None
                        or args.model_error is not None):
        problems.append("--direct compiles without rewrites: --calibration, --validation, --error-budget and "
                        "--model-error do not apply")
    if args.error_budget is not None and not args.error_budget > 0:
        problems.append(f"--error-budget must be positive, got {args.error_budget}")
    if args.model_error is not None and not args.model_error >= 0:
        problems.append(f"--model-error must be 0 (no check) or positive, got {args.model_error}")
    network = None
    if args.network is not None:
        from passes.network import NetworkError, parse
        if args.direct:
            problems.append("--direct compiles without rewrites: --network does not apply")
        try:
            network = parse(args.network)
        except NetworkError as exc:
            problems.append(str(exc))
    auto_bits = args.fxp_bits == "auto"
    if not auto_bits and not str(args.fxp_bits).isdigit():
        problems.append(f"--fxp-bits must be a number of bits or auto, got {args.fxp_bits!r}")
    problems += output_folder_problems((("-o", args.output), ("--weights-out", weights_out)))
    if problems:
        raise CipherdmError("bad compile options", problems)
    calibration = load_npz(args.calibration, "calibration data") if args.calibration else None
    validation = load_npz(args.validation, "validation data") if args.validation else None
    config = SecureConfig(args.protocol, args.field, DEFAULT_FXP_BITS if auto_bits else int(args.fxp_bits))
    program = compile_model(args.model, input_shapes=parse_input_shapes(args.input_shape), public=args.public,
                            rewrites="direct" if args.direct else "cipherdm", config=config,
                            calibration=calibration, budget=args.error_budget, calibration_source=args.calibration,
                            model_error=args.model_error, auto_fraction_bits=auto_bits and not args.direct,
                            network=network, validation=validation, validation_source=args.validation)
    # Weights first: a program without its weights is useless to the owner, the reverse is harmless.
    write_weights(program.weights, weights_out)
    artifact = write_artifact(program, args.output)
    t = program.timings
    roles = {}
    for a in program.args:
        roles.setdefault(a.role, []).append(a.name)
    print(f"compiled {args.model} -> {args.output} ({config.protocol}, {config.field}, "
          f"{program.config.fxp_bits} fraction bits, rewrites: {program.rewrites}) in {t['total']:.2f} s "
          f"(SPU compile {t['spu_compile']:.2f} s)")
    print(f"  user inputs: {', '.join(roles.get('user', [])) or '-'}; public: "
          f"{', '.join(roles.get('public', [])) or '-'}; weights: {len(roles.get('model_owner', []))} tensors, "
          f"{sum(v.size for v in program.weights.values())} values -> {weights_out}")
    print(f"  outputs: {', '.join(o.name for o in program.outputs)}; program digest {artifact.digest[:16]}")
    totals = program.report.get("totals") or {}
    if program.rewrites != "direct" and totals:
        print(f"  rewrites: {totals['rewritten']} nodes rewritten, {totals['declined']} declined; estimated "
              f"nonlinear traffic {totals['est_bytes_before'] / 2**20:.1f} -> {totals['est_bytes_after'] / 2**20:.1f}"
              f" MiB; see `cipherdm report {args.output}`")
    check = program.report.get("model_check") or {}
    if check.get("checked"):
        held = check.get("validation")
        print(f"  whole-model float error: {check['error']:.3g} x output std on the calibration cases"
              + (f", {held['error']:.3g} on the {held['cases']} validation case(s) (worst: case {held['worst_case']})"
                 + ("" if held.get("met", True) else ": above the target") if held else ""))
    return 0
