"""ONNX import: read, upgrade, inline, fix shapes, check, and find what cipherdm cannot lower.

Every step collects all problems it finds before raising, so one error names every dynamic input or every
unsupported op at once.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import onnx
from onnx import shape_inference, version_converter

from compiler.errors import DynamicShapeError, ModelLoadError, UnsupportedOpsError
from compiler.registry import CIPHERDM_DOMAIN, lookup

MIN_OPSET = 17
MAX_OPSET = 23
# Above this the checker must read the model from its path (protobuf's 2 GB limit).
_IN_MEMORY_CHECK_LIMIT = 1 << 30

InputShapes = dict[str, tuple[int, ...]]


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse an ONNX file (with external data) or raise one ModelLoadError that says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ValueError... depending on the damage
        raise ModelLoadError(
            f"{path} is not a readable ONNX model (the protobuf could not be parsed: {_short(exc)}); "
            "check that the file is a complete .onnx export and not truncated or another format"
        ) from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(f"{path} parsed, but holds no ONNX graph; it is probably not an ONNX model")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(f"{path}: its external weight data could not be read: {_short(exc)}") from exc
    return model


def prepare_model(model: onnx.ModelProto, input_shapes: InputShapes | None = None,
                  source: str = "model") -> onnx.ModelProto:
    """Upgrade to a supported opset, inline local functions, fix input shapes, run checker and shape inference."""
    if not model.graph.output:
        raise ModelLoadError(f"{source} has no graph outputs, so there is nothing to compute")
    model = _upgrade_opset(model, source)
    model = _inline_local_functions(model)
    model = fix_input_shapes(model, input_shapes or {}, source)
    _check(model, source)
    try:
        model = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ModelLoadError(f"{source} failed ONNX shape inference: {_short(exc)}") from exc
    return model


def load_model(path, input_shapes: InputShapes | None = None, *, check_support: bool = True) -> onnx.ModelProto:
    """Load an ONNX model ready for lowering: static shapes, opset 17-23, checked, shape-inferred.

    ``path`` may also be an in-memory ``onnx.ModelProto``. With ``check_support`` every op without a lowering is
    reported in one UnsupportedOpsError.
    """
    if isinstance(path, onnx.ModelProto):
        model, source = path, "model"
    else:
        model, source = read_model(path), str(path)
    model = prepare_model(model, input_shapes, source)
    model = _constants_for_compile_time_inputs(model)
    if check_support:
        unsupported = find_unsupported(model)
        if unsupported:
            raise UnsupportedOpsError(
                f"{source} uses operators cipherdm cannot lower",
                [f"{u['domain'] or 'ai.onnx'}::{u['op']} (opset {u['opset']}) used by {_names(u['nodes'])}"
                 for u in unsupported],
            )
    return model


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _constants_for_compile_time_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Float initializers that a lowering needs at compile time (Resize's roi and scales, see ``static_inputs``)
    become Constant nodes: they are graph structure, not the owner's weights, and must not become arguments."""
    opsets = {imp.domain or "": imp.version for imp in model.opset_import}
    default = opsets.get("", opsets.get("ai.onnx", MAX_OPSET))
    wanted = set()
    for node in iter_nodes(model.graph):
        lowering = lookup(node.domain or "", node.op_type, opsets.get(node.domain or "", default))
        if lowering is not None:
            wanted.update(node.input[i] for i in lowering.static_inputs if i < len(node.input) and node.input[i])
    moved = [init for init in model.graph.initializer if init.name in wanted and init.data_type in _FLOAT_TYPES]
    if not moved:
        return model
    names = {init.name for init in moved}
    result = onnx.ModelProto()
    result.CopyFrom(model)
    kept = [init for init in result.graph.initializer if init.name not in names]
    result.graph.ClearField("initializer")
    result.graph.initializer.extend(kept)
    inputs = [i for i in result.graph.input if i.name not in names]
    result.graph.ClearField("input")
    result.graph.input.extend(inputs)
    constants = [onnx.helper.make_node("Constant", [], [init.name], name=f"{init.name}_constant", value=init)
                 for init in moved]
    nodes = constants + list(result.graph.node)
    result.graph.ClearField("node")
    result.graph.node.extend(nodes)
    return result


def find_unsupported(model: onnx.ModelProto) -> list[dict]:
    """Every (domain, op, opset) that has no lowering, with the names of the nodes using it."""
    opsets = {imp.domain or "": imp.version for imp in model.opset_import}
    default = opsets.get("", opsets.get("ai.onnx", MAX_OPSET))
    users: dict[tuple[str, str, int], list[str]] = defaultdict(list)
    for node in iter_nodes(model.graph):
        domain = node.domain or ""
        opset = opsets.get(domain, default)
        if lookup(domain, node.op_type, opset) is None:
            users[(domain, node.op_type, opset)].append(node.name or f"<unnamed {node.op_type}>")
    return [{"domain": d, "op": op, "opset": v, "nodes": names} for (d, op, v), names in sorted(users.items())]


def iter_nodes(graph: onnx.GraphProto):
    """All nodes of a graph, including those in subgraphs (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def parse_input_shapes(specs: list[str] | None) -> InputShapes:
    """Parse CLI ``NAME=D0,D1,...`` strings; all malformed ones are reported together."""
    shapes: InputShapes = {}
    problems = []
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
            if any(d <= 0 for d in shape):
                raise ValueError
            shapes[name] = shape
        except ValueError:
            problems.append(f"'{spec}' is not NAME=D0,D1,... with positive integer dimensions")
    if problems:
        raise DynamicShapeError("bad --input-shape", problems)
    return shapes


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (IR < 4 lists initializers as inputs too)."""
    initializers = {init.name for init in model.graph.initializer}
    return [inp for inp in model.graph.input if inp.name not in initializers]


def fix_input_shapes(model: onnx.ModelProto, input_shapes: InputShapes, source: str = "model") -> onnx.ModelProto:
    inputs = {inp.name: inp for inp in graph_inputs(model)}
    problems = [f"--input-shape names '{name}', which is not an input (inputs: {', '.join(inputs)})"
                for name in input_shapes if name not in inputs]
    dynamic = []
    model_copy = None
    for name, inp in inputs.items():
        dims = inp.type.tensor_type.shape.dim
        has_shape = inp.type.tensor_type.HasField("shape")
        described = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        if name in input_shapes:
            wanted = input_shapes[name]
            if has_shape and len(wanted) != len(dims):
                problems.append(f"--input-shape {name} has rank {len(wanted)} but the input has rank {len(dims)} "
                                f"{_fmt_shape(described)}")
                continue
            conflicts = [i for i, d in enumerate(dims) if d.HasField("dim_value") and d.dim_value != wanted[i]]
            if conflicts:
                problems.append(f"--input-shape {name}={','.join(map(str, wanted))} conflicts with its static "
                                f"shape {_fmt_shape(described)}")
                continue
            if model_copy is None:
                model_copy = onnx.ModelProto()
                model_copy.CopyFrom(model)
            target = next(i for i in model_copy.graph.input if i.name == name)
            shape = target.type.tensor_type.shape
            shape.ClearField("dim")
            for d in wanted:
                shape.dim.add().dim_value = d
        elif not has_shape or any(not d.HasField("dim_value") for d in dims):
            dynamic.append(f"{name} {_fmt_shape(described) if has_shape else '(unknown rank)'}")
    if dynamic:
        problems.append("dynamic inputs need a static shape, give one with --input-shape NAME=D0,D1,... for: "
                        + ", ".join(dynamic))
    if problems:
        raise DynamicShapeError(f"{source}: input shapes are not static", problems)
    if model_copy is not None:
        # Stale symbolic shapes of intermediate values would contradict the fixed ones.
        model_copy.graph.ClearField("value_info")
        return model_copy
    return model


def _upgrade_opset(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    opset = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelLoadError(f"{source} imports no ai.onnx opset")
    if opset > MAX_OPSET:
        raise ModelLoadError(f"{source} uses opset {opset}; cipherdm supports opsets {MIN_OPSET} to {MAX_OPSET}: "
                             f"re-export with opset_version={MAX_OPSET}")
    if opset < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise ModelLoadError(f"{source} uses opset {opset} and onnx's version converter could not upgrade it "
                                 f"to {MIN_OPSET}: {_short(exc)}; re-export with opset_version>={MIN_OPSET}") from exc
    return model


def _inline_local_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    # cipherdm's own protocol functions stay as nodes: they are lowered to protocols, not to their bodies.
    inlinable = [(f.domain, f.name) for f in model.functions if f.domain != CIPHERDM_DOMAIN]
    if not inlinable:
        return model
    from onnx import inliner
    return inliner.inline_selected_functions(model, inlinable, exclude=False)


def _check(model: onnx.ModelProto, source: str) -> None:
    try:
        if model.ByteSize() < _IN_MEMORY_CHECK_LIMIT:
            onnx.checker.check_model(model, full_check=True)
        elif source != "model":
            onnx.checker.check_model(source, full_check=True)
    except Exception as exc:
        problems = [_short(exc)] + [
            f"unsupported {u['domain'] or 'ai.onnx'}::{u['op']} (opset {u['opset']}) used by {_names(u['nodes'])}"
            for u in find_unsupported(model)]
        raise ModelLoadError(f"{source} failed the ONNX checker", problems) from exc


def _fmt_shape(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _names(nodes: list[str], limit: int = 8) -> str:
    shown = ", ".join(nodes[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")


def _short(exc: Exception, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."
