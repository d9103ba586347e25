"""cipherdm trajectory: the U-Net inputs along a plaintext sampling run, for ``cipherdm compile --calibration``.

The float model runs in onnxruntime with the plaintext sampler (runtime/sampler.py); every model call's inputs
are recorded with a leading cases axis (one case per model call: ``steps`` cases, twice that with guidance,
whose null-label calls are cases too), which is the format passes/calibrate.split_cases reads.
"""

from __future__ import annotations

import time

NAME = "trajectory"
HELP = "record a diffusion U-Net's inputs along a plaintext sampling run (calibration data for compile)"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the U-Net (.onnx) to sample with")
    parser.add_argument("-o", "--output", required=True, metavar="CALIB.npz",
                        help="where the inputs go (.npz keyed by input name, leading axis = cases)")
    parser.add_argument("--steps", type=int, default=20, help="model calls (default 20)")
    parser.add_argument("--batch", type=int, help="the model's batch (default: read from the model)")
    parser.add_argument("--seed", type=int, default=0, help="seed for x_T and the noise (default 0)")
    parser.add_argument("--label", help="class label(s): one for all, a comma list, or 'none' "
                                        "(default: 0, 1, 2, ...)")
    parser.add_argument("--sampler", default="ddim", help="ddim (default) or ddpm")
    parser.add_argument("--eta", type=float, help="DDIM eta (default 0)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: none)")
    parser.add_argument("--schedule", default="linear", help="linear (default) or cosine")
    parser.add_argument("--train-timesteps", dest="T", type=int, default=1000, metavar="T",
                        help="length T of the training noise schedule (default 1000)")
    parser.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                        help="fix the shape of a dynamic input (as in cipherdm compile)")


def run(args) -> int:
    import numpy as np
    from onnx import numpy_helper

    from compiler.artifact import output_folder_problems, save_npz
    from compiler.loader import graph_inputs, load_model, parse_input_shapes
    from compiler.lowering import is_weight, spec_of
    from compiler.spu_compile import MODEL_OWNER, USER, ArgSpec
    from runtime.sampler import Randomness, make_schedule, sample
    from runtime.secure_sampler import (SamplerError, SamplingSettings, float_eps_fn, guidance_layout,
                                        parse_labels, signature_of, user_data)

    start = time.perf_counter()
    model = load_model(args.model, parse_input_shapes(args.input_shape))
    specs = [spec_of(vi) for vi in graph_inputs(model)]
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
               if is_weight(i)}
    arg_specs = [ArgSpec(s.name, tuple(s.shape), s.dtype, _program_dtype(s.dtype), USER) for s in specs]
    arg_specs += [ArgSpec(n, tuple(w.shape), w.dtype.name, w.dtype.name, MODEL_OWNER) for n, w in weights.items()]
    outputs = [spec_of(o) for o in model.graph.output]
    signature = signature_of(arg_specs, outputs)
    settings = SamplingSettings(args.sampler, args.steps, args.batch if args.batch is not None else signature.batch,
                                args.schedule, args.T, args.eta, args.guidance)
    problems = settings.problems()
    if not problems:
        try:
            guidance_layout(signature, settings)
        except SamplerError as exc:
            problems.append(exc.summary)
    problems += output_folder_problems((("-o", args.output),))
    if problems:
        raise SamplerError("cannot record a trajectory", problems)
    labels = parse_labels(args.label, settings.batch, signature.num_classes)
    plan = settings.plan()
    user = user_data(signature, settings, plan, args.seed, labels)
    eps_fn = float_eps_fn(None, {}, signature, graph=model.SerializeToString())

    cases: dict[str, list] = {s.name: [] for s in specs}

    def recording(x, t, cond=None):
        model_batch = signature.batch
        b = x.shape[0]
        pad = model_batch - b
        cases[signature.sample.name].append(
            np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x)
        cases[signature.timestep.name].append(
            np.full(signature.timestep.shape, np.asarray(t).ravel()[0], signature.timestep.dtype))
        if signature.condition is not None:
            c = cond if cond is not None else np.zeros((b,) + tuple(signature.condition.shape[1:]), np.float32)
            cases[signature.condition.name].append(
                np.concatenate([c, np.zeros((pad,) + c.shape[1:], c.dtype)]) if pad else c)
        return eps_fn(x, t, cond)

    conditional = signature.condition is not None
    shape = (settings.batch,) + tuple(signature.sample.shape[1:])
    result = sample(recording if conditional else (lambda x, t: recording(x, t)), shape, settings.sampler,
                    settings.steps, schedule=make_schedule(settings.schedule, settings.T), eta=settings.eta,
                    labels=user.condition if conditional else None,
                    guidance=settings.guidance if conditional else None,
                    randomness=Randomness(user.x_T, user.noise))
    arrays = {name: np.stack(values).astype(next(s.dtype for s in specs if s.name == name))
              for name, values in cases.items()}
    save_npz(args.output, arrays)
    count = len(next(iter(arrays.values())))
    x0 = result.image
    print(f"recorded {count} model calls ({settings.sampler}, {settings.steps} steps, batch {settings.batch}, "
          f"seed {args.seed}{', guidance ' + str(settings.guidance) if settings.guidance is not None else ''}) "
          f"of {args.model} in {time.perf_counter() - start:.1f} s -> {args.output}")
    print("  " + ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
          + f"; x_T range [{user.x_T.min():.2f}, {user.x_T.max():.2f}], x_0 range [{x0.min():.2f}, {x0.max():.2f}]")
    return 0


def _program_dtype(dtype: str) -> str:
    import jax
    import numpy as np
    return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype))).name
