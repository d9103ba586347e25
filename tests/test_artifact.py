"""The .cdm program and the weights file: contents, roles, no weights inside, integrity and clear errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest

import secure_models
from compiler.artifact import (EXECUTABLE, MANIFEST, ONNX_GRAPH, REFERENCE_GRAPH, REPORT, STABLEHLO, ArtifactError,
                               DataError, read_artifact, read_inputs, read_weights, sha256)
from compiler.spu_compile import CompileError, compile_model
from tools.cli import main as cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model compiled by the CLI: (folder, model, inputs)."""
    folder = tmp_path_factory.mktemp("tiny")
    model, inputs = secure_models.tiny(np.random.default_rng(0))
    onnx.save(model, folder / "tiny.onnx")
    np.savez(folder / "inputs.npz", **inputs)
    assert cli(["compile", str(folder / "tiny.onnx"), "-o", str(folder / "tiny.cdm"), "--public", "t"]) == 0
    return folder, model, inputs


def test_manifest_describes_program_roles_and_digests(tiny):
    folder, model, _ = tiny
    with zipfile.ZipFile(folder / "tiny.cdm") as z:
        # reference.onnx: the float graph before the rewrites (the sampler's plaintext twin runs on it).
        assert set(z.namelist()) == {MANIFEST, EXECUTABLE, STABLEHLO, ONNX_GRAPH, REPORT, REFERENCE_GRAPH}
        manifest = json.loads(z.read(MANIFEST))
        members = {name: z.read(name) for name in z.namelist()}
    import spu
    assert manifest["format_version"] == 1 and manifest["spu_version"] == spu.__version__
    assert (manifest["protocol"], manifest["field"], manifest["fxp_bits"]) == ("ABY3", "FM64", 18)
    assert manifest["rewrites"] == "cipherdm"
    roles = {a["name"]: (a["role"], a["shape"], a["dtype"]) for a in manifest["inputs"]}
    assert roles == {"x": ("user", [2, 4], "float32"), "t": ("public", [1], "int64"),
                     "w": ("model_owner", [2, 4], "float32"), "b": ("model_owner", [4], "float32")}
    assert [(o["name"], o["shape"], o["receiver"]) for o in manifest["outputs"]] == [("y", [2, 4], "user"),
                                                                                       ("e", [2, 4], "user")]
    assert manifest["program_sha256"] == sha256(members[EXECUTABLE])
    assert all(manifest["members"][n] == sha256(members[n]) for n in (EXECUTABLE, STABLEHLO, ONNX_GRAPH, REPORT,
                                                                      REFERENCE_GRAPH))
    report = json.loads(members[REPORT])
    assert report["mode"] == "cipherdm"
    assert all({"pattern", "nodes", "protocol", "error_max"} <= set(r) for r in report["rewrites"])
    assert "stablehlo" in members[STABLEHLO].decode() or "func.func" in members[STABLEHLO].decode()


def test_weights_live_only_in_the_weights_file(tiny):
    folder, model, _ = tiny
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    with np.load(folder / "tiny.weights.npz", allow_pickle=False) as stored:
        assert set(stored.files) == set(weights)
        for name, value in weights.items():
            np.testing.assert_array_equal(stored[name], value)
    blob = (folder / "tiny.cdm").read_bytes()
    with zipfile.ZipFile(folder / "tiny.cdm") as z:
        contents = b"".join(z.read(n) for n in z.namelist())
        graph = onnx.load_from_string(z.read(ONNX_GRAPH))
    for value in weights.values():
        assert value.astype(np.float32).tobytes() not in contents + blob
    assert not [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert {"w", "b"} <= {i.name for i in graph.graph.input}


def test_direct_flag_and_settings_are_recorded(tmp_path, tiny):
    folder, _, _ = tiny
    out = tmp_path / "direct.cdm"
    assert cli(["compile", str(folder / "tiny.onnx"), "-o", str(out), "--direct", "--fxp-bits", "16",
                "--weights-out", str(tmp_path / "w.npz")]) == 0
    artifact = read_artifact(out)
    assert artifact.manifest["rewrites"] == "direct" and artifact.config.fxp_bits == 16
    assert [a.role for a in artifact.args if a.name == "t"] == ["user"]
    assert (tmp_path / "w.npz").exists() and not (tmp_path / "direct.weights.npz").exists()


def test_bad_public_names_are_all_reported(tiny):
    _, model, _ = tiny
    with pytest.raises(CompileError) as err:
        compile_model(model, public=["nope", "w"])
    assert "nope" in str(err.value) and "weight" in str(err.value) and "2 problems" in str(err.value)


def _rewrite_zip(src, dst, change):
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    change(members)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_corrupt_artifacts_are_refused_clearly(tmp_path, tiny, capsys):
    folder, _, _ = tiny
    src = folder / "tiny.cdm"
    truncated = tmp_path / "truncated.cdm"
    truncated.write_bytes(src.read_bytes()[: len(src.read_bytes()) // 2])
    with pytest.raises(ArtifactError, match="not a zip archive or it is truncated"):
        read_artifact(truncated)

    not_zip = tmp_path / "model.cdm"
    not_zip.write_text("hello")
    with pytest.raises(ArtifactError, match="not a cipherdm program"):
        read_artifact(not_zip)

    tampered = tmp_path / "tampered.cdm"
    _rewrite_zip(src, tampered, lambda m: m.__setitem__(STABLEHLO, m[STABLEHLO] + b"\n// changed"))
    with pytest.raises(ArtifactError, match="digest mismatch") as err:
        read_artifact(tampered)
    assert STABLEHLO in str(err.value)

    missing = tmp_path / "missing.cdm"
    _rewrite_zip(src, missing, lambda m: (m.pop(EXECUTABLE), m.pop(REPORT)))
    with pytest.raises(ArtifactError) as err:
        read_artifact(missing)
    assert EXECUTABLE in str(err.value) and REPORT in str(err.value)

    with pytest.raises(ArtifactError, match="does not exist"):
        read_artifact(tmp_path / "nowhere.cdm")

    # The CLI prints one paragraph, no traceback.
    assert cli(["run", str(tampered), "--weights", str(folder / "tiny.weights.npz"), "--inputs",
                str(folder / "inputs.npz"), "-o", str(tmp_path / "o.npz"), "--mode", "plaintext"]) == 2
    err_text = capsys.readouterr().err
    assert "digest mismatch" in err_text and "Traceback" not in err_text
    assert not (tmp_path / "o.npz").exists()


def test_missing_weights_and_bad_inputs_name_every_problem(tmp_path, tiny, capsys):
    folder, _, inputs = tiny
    artifact = read_artifact(folder / "tiny.cdm")
    with pytest.raises(DataError, match="does not exist"):
        read_weights(tmp_path / "no.weights.npz", artifact)
    np.savez(tmp_path / "partial.npz", w=np.zeros((2, 4), np.float32))
    with pytest.raises(DataError, match="'b' is missing"):
        read_weights(tmp_path / "partial.npz", artifact)
    np.savez(tmp_path / "bad_inputs.npz", x=np.zeros((4, 2), np.float32))
    with pytest.raises(DataError) as err:
        read_inputs(tmp_path / "bad_inputs.npz", artifact)
    assert "'x' has shape [4, 2]" in str(err.value) and "'t' is missing" in str(err.value)

    # Both files' problems in one message, nothing written.
    status = cli(["run", str(folder / "tiny.cdm"), "--weights", str(tmp_path / "no.weights.npz"), "--inputs",
                  str(tmp_path / "bad_inputs.npz"), "-o", str(tmp_path / "o.npz"), "--mode", "sim"])
    text = capsys.readouterr().err
    assert status == 2 and "no.weights.npz does not exist" in text and "'t' is missing" in text
    assert not (tmp_path / "o.npz").exists()


def test_other_spu_version_is_recompiled_from_stablehlo(tmp_path, tiny):
    folder, _, inputs = tiny
    old = tmp_path / "old.cdm"

    def pretend_old(members):
        manifest = json.loads(members[MANIFEST])
        manifest["spu_version"] = "0.0.1"
        members[MANIFEST] = json.dumps(manifest).encode()

    _rewrite_zip(folder / "tiny.cdm", old, pretend_old)
    artifact = read_artifact(old)
    exe, recompiled = artifact.load_executable()
    assert recompiled and list(exe.input_names) == ["x", "t", "w", "b"]
    current, again = read_artifact(folder / "tiny.cdm").load_executable()
    assert not again and exe.code == current.code

    broken = tmp_path / "broken.cdm"

    def old_and_bad_stablehlo(members):
        pretend_old(members)
        members[STABLEHLO] = b"not mlir"
        manifest = json.loads(members[MANIFEST])
        manifest["members"][STABLEHLO] = sha256(b"not mlir")
        members[MANIFEST] = json.dumps(manifest).encode()

    _rewrite_zip(folder / "tiny.cdm", broken, old_and_bad_stablehlo)
    with pytest.raises(ArtifactError, match="compiled with SPU 0.0.1.*recompil"):
        read_artifact(broken).load_executable()


def test_failed_compile_leaves_no_files(tmp_path, tiny):
    folder, _, _ = tiny
    out = tmp_path / "x.cdm"
    assert cli(["compile", str(folder / "tiny.onnx"), "-o", str(out), "--public", "nope"]) == 2
    assert list(tmp_path.iterdir()) == []
    assert cli(["compile", str(folder / "tiny.onnx"), "-o", str(tmp_path / "missing_dir" / "x.cdm")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folders_are_named_before_any_work(tmp_path, tiny, capsys, monkeypatch):
    folder, _, _ = tiny
    import compiler.spu_compile as spu_compile

    def must_not_compile(*args, **kwargs):
        raise AssertionError("compiled although the output folders do not exist")

    monkeypatch.setattr(spu_compile, "compile_model", must_not_compile)
    status = cli(["compile", str(folder / "tiny.onnx"), "-o", str(tmp_path / "a" / "x.cdm"),
                  "--weights-out", str(tmp_path / "b" / "x.npz")])
    text = capsys.readouterr().err
    assert status == 2 and f"folder {tmp_path / 'a'} does not exist" in text
    assert f"folder {tmp_path / 'b'} does not exist" in text

    status = cli(["run", str(folder / "tiny.cdm"), "--weights", str(folder / "tiny.weights.npz"), "--inputs",
                  str(folder / "inputs.npz"), "-o", str(tmp_path / "c" / "o.npz"), "--metrics",
                  str(tmp_path / "d" / "m.json"), "--mode", "sim"])
    text = capsys.readouterr().err
    assert status == 2 and f"folder {tmp_path / 'c'} does not exist" in text
    assert f"folder {tmp_path / 'd'} does not exist" in text
    assert list(tmp_path.iterdir()) == []
