"""ONNX import: errors name every problem at once, opsets are upgraded, local functions inlined, shapes fixed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
from tools.cli import main as cli


def _model(nodes, inputs, outputs, initializers=(), opset=18, functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)] +
                             ([helper.make_opsetid("local", 1)] if functions else []), functions=list(functions))


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.fixture
def good_model(tmp_path):
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    model = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add0"),
                    helper.make_node("Exp", ["y"], ["z"], name="exp0")],
                   [_vi("x", [2, 3])], [_vi("z", [2, 3])], [w])
    path = tmp_path / "good.onnx"
    onnx.save(model, path)
    return path


def run_cli(capsys, *argv):
    status = cli(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_inspect_good_model_json(good_model, capsys):
    status, out, _ = run_cli(capsys, "inspect", str(good_model), "--json")
    info = json.loads(out)
    assert status == 0
    assert info["inputs"] == [{"name": "x", "shape": [2, 3], "dtype": "float32"}]
    assert info["outputs"][0]["name"] == "z"
    assert info["opset"] == 18
    assert info["ops"] == {"Add": 1, "Exp": 1}
    assert info["initializers"] == {"count": 1, "bytes": 24}
    assert info["unsupported"] == []


def test_inspect_text_lists_inputs_and_ops(good_model, capsys):
    status, out, _ = run_cli(capsys, "inspect", str(good_model))
    assert status == 0
    assert "x: float32 [2, 3]" in out and "Exp" in out and "can be compiled" in out


def test_unsupported_ops_are_all_named_at_once(tmp_path, capsys):
    # Real ONNX ops that a diffusion model never needs, so the checker passes and only cipherdm objects.
    model = _model([helper.make_node("Det", ["x"], ["d"], name="det_a"),
                    helper.make_node("Det", ["x"], ["e"], name="det_b"),
                    helper.make_node("Add", ["d", "e"], ["s"], name="add"),
                    helper.make_node("TopK", ["x", "k"], ["y", "yi"], name="topk_1")],
                   [_vi("x", [3, 3])], [_vi("s", []), _vi("y", [3, 2]), _vi("yi", [3, 2], TensorProto.INT64)],
                   [numpy_helper.from_array(np.array([2], np.int64), "k")])
    path = tmp_path / "unsupported.onnx"
    onnx.save(model, path)
    status, out, _ = run_cli(capsys, "inspect", str(path), "--json")
    info = json.loads(out)
    assert status != 0
    by_op = {u["op"]: u for u in info["unsupported"]}
    assert set(by_op) == {"Det", "TopK"}
    assert by_op["Det"]["nodes"] == ["det_a", "det_b"]
    assert by_op["TopK"]["nodes"] == ["topk_1"]
    with pytest.raises(compiler.UnsupportedOpsError) as err:
        compiler.load_model(path)
    assert "det_a" in str(err.value) and "topk_1" in str(err.value)


def test_corrupt_file_is_one_paragraph_without_traceback(good_model, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(good_model.read_bytes()[:40])
    status, out, err = run_cli(capsys, "inspect", str(corrupt))
    assert status == 2
    assert "Traceback" not in err and "corrupt.onnx" in err
    assert len(err.strip().splitlines()) == 1


def test_non_onnx_and_missing_files(tmp_path, capsys):
    text = tmp_path / "notes.onnx"
    text.write_text("this is a text file, not a model\n" * 20)
    for path in (text, tmp_path / "missing.onnx"):
        status, _, err = run_cli(capsys, "inspect", str(path))
        assert status == 2 and str(path) in err and "Traceback" not in err


def test_model_without_outputs_is_refused(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [])
    with pytest.raises(compiler.ModelLoadError, match="no graph outputs"):
        compiler.load_model(model)


def test_failed_checker_is_reported(tmp_path):
    model = _model([helper.make_node("Add", ["x", "undefined"], ["y"], name="bad_add")],
                   [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(compiler.ModelLoadError, match="checker"):
        compiler.load_model(model)


def test_dynamic_inputs_are_all_named_and_fixed_by_input_shape(tmp_path, capsys):
    model = _model([helper.make_node("Add", ["a", "b"], ["y"])],
                   [_vi("a", ["N", 3]), _vi("b", ["N", "C"])], [_vi("y", ["N", 3])])
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    with pytest.raises(compiler.DynamicShapeError) as err:
        compiler.load_model(path)
    assert "a [N, 3]" in str(err.value) and "b [N, C]" in str(err.value)

    status, out, _ = run_cli(capsys, "inspect", str(path), "--json",
                             "--input-shape", "a=4,3", "--input-shape", "b=4,3")
    assert status == 0
    assert [i["shape"] for i in json.loads(out)["inputs"]] == [[4, 3], [4, 3]]

    fixed = compiler.load_model(path, {"a": (4, 3), "b": (4, 3)})
    lowered = compiler.lower(fixed)
    a, b = np.ones((4, 3), np.float32), np.full((4, 3), 2, np.float32)
    np.testing.assert_allclose(lowered({"a": a, "b": b})["y"], a + b)


def test_bad_input_shape_arguments_are_reported_together(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    with pytest.raises(compiler.DynamicShapeError) as err:
        compiler.load_model(model, {"x": (5, 3), "nope": (1,)})
    assert "nope" in str(err.value) and "conflicts" in str(err.value)
    with pytest.raises(compiler.DynamicShapeError) as err:
        compiler.parse_input_shapes(["x=2,a", "justaname", "y=0,3"])
    assert len(err.value.problems) == 3


def test_old_opset_is_upgraded_and_too_new_refused():
    model = _model([helper.make_node("Unsqueeze", ["x"], ["y"], axes=[0])],
                   [_vi("x", [2, 3])], [_vi("y", [1, 2, 3])], opset=11)
    upgraded = compiler.load_model(model, check_support=False)
    assert next(o.version for o in upgraded.opset_import if o.domain == "") == 17
    too_new = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [_vi("y", [2])], opset=24)
    with pytest.raises(compiler.ModelLoadError, match="opsets 17 to 23"):
        compiler.load_model(too_new)


def test_model_local_functions_are_inlined_and_evaluated():
    # f(a) = exp(a) + a, as the dynamo exporter would emit a module function.
    func = helper.make_function("local", "ExpPlus", ["a"], ["b"],
                                [helper.make_node("Exp", ["a"], ["e"]), helper.make_node("Add", ["e", "a"], ["b"])],
                                [helper.make_opsetid("", 18)])
    model = _model([helper.make_node("ExpPlus", ["x"], ["y"], domain="local", name="call")],
                   [_vi("x", [2, 3])], [_vi("y", [2, 3])], functions=[func])
    loaded = compiler.load_model(model)
    assert [n.op_type for n in loaded.graph.node] == ["Exp", "Add"]
    x = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(compiler.lower(loaded)({"x": x})["y"], expected, rtol=1e-6)


def test_float_initializers_become_weights_and_shape_constants_fold(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    target = numpy_helper.from_array(np.array([3, 2], np.int64), "target")
    model = _model([helper.make_node("Mul", ["x", "w"], ["m"]),
                    helper.make_node("Shape", ["m"], ["s"]),
                    helper.make_node("Reshape", ["m", "target"], ["y"])],
                   [_vi("x", [2, 3])], [_vi("y", [3, 2])], [w, target])
    lowered = compiler.lower(compiler.load_model(model))
    assert [s.name for s in lowered.weight_specs] == ["w"]
    assert lowered.arg_names == ["x", "w"]
    assert set(lowered.weights) == {"w"}
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = lowered({"x": x}, {"w": np.full((2, 3), 2, np.float32)})["y"]
    np.testing.assert_allclose(out, (2 * x).reshape(3, 2))
