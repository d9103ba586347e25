"""The compiled program file (``.cdm``) and the model owner's weights file (``.weights.npz``).

A ``.cdm`` is a zip that every party gets; it never holds weight values:

==========================  ==========================================================================
``manifest.json``           format version, SPU/jax versions, protocol, field, fxp bits (and any other SPU
                            knobs under ``config``), ``rewrites`` ("direct" or "cipherdm"), every argument
                            (``inputs``: name, shape, dtype, program dtype, role: user / public /
                            model_owner), every output (name, shape, dtype, receiver), the SHA-256 of the
                            SPU executable (``program_sha256``) and of every other member (``members``)
``program.spu``             the serialized ``libspu.Executable``
``program.stablehlo.mlir``  the StableHLO it was compiled from (recompiled when the SPU version differs)
``model.onnx``              the ONNX graph that was lowered, weights turned into graph inputs
``report.json``             the rewrite report (``rewrites`` list: one entry per MPC rewrite decision)
``reference.onnx``          optional: the float graph before the MPC rewrites, weights turned into graph
                            inputs (present when rewrites changed the graph; the plaintext twin of a
                            secure sample runs on it)
==========================  ==========================================================================

The artifact's identity, compared by the parties before they run, is :attr:`Artifact.digest`, the SHA-256 of
``manifest.json`` (which pins every other member by its hash). No pickle anywhere: JSON, npz read with
``allow_pickle=False``, ONNX and SPU's own serialization. Files are written to a temporary name in the target
folder and renamed into place, so an error never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.errors import CipherdmError
from compiler.spu_compile import (MODEL_OWNER, PUBLIC, USER, ArgSpec, CompiledProgram, OutputSpec,
                                  build_executable, compile_stablehlo)
from runtime.spu_config import SecureConfig

FORMAT = "cipherdm-program"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXECUTABLE = "program.spu"
STABLEHLO = "program.stablehlo.mlir"
ONNX_GRAPH = "model.onnx"
REPORT = "report.json"
MEMBERS = (EXECUTABLE, STABLEHLO, ONNX_GRAPH, REPORT)
REFERENCE_GRAPH = "reference.onnx"
OPTIONAL_MEMBERS = (REFERENCE_GRAPH,)


class ArtifactError(CipherdmError):
    """A program file is missing, corrupt, of another format, or does not match what is run with it."""


class DataError(CipherdmError):
    """A weights or inputs file is missing or does not match the program."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def output_folder_problems(outputs) -> list[str]:
    """One problem per ``(flag, path)`` whose folder does not exist (a None path is an output not asked for), so a
    command names them before its work starts instead of failing at the end."""
    return [f"{flag} {path}: folder {Path(path).parent} does not exist" for flag, path in outputs
            if path and not Path(path).resolve().parent.exists()]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to ``path``; it is renamed to ``path`` only if the block succeeds."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise CipherdmError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write an npz atomically (numpy would append ``.npz`` to a temporary name, so write through a handle)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def load_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise DataError(f"{what} file {path} is not a readable .npz archive of arrays: {_short(exc)}") from exc


@dataclass
class Artifact:
    manifest: dict
    executable: bytes
    stablehlo: str
    onnx_graph: bytes
    report: dict
    digest: str
    path: str | None = None
    reference_graph: bytes | None = None  # the float graph before rewrites, if they changed it

    @property
    def float_graph(self) -> bytes:
        """The model's float graph as exported (before any MPC rewrite), weights as graph inputs."""
        return self.reference_graph if self.reference_graph is not None else self.onnx_graph

    @property
    def args(self) -> list[ArgSpec]:
        return [ArgSpec.from_json(a) for a in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec.from_json(o) for o in self.manifest["outputs"]]

    @property
    def config(self) -> SecureConfig:
        return SecureConfig.from_json(self.manifest["config"])

    def args_of(self, *roles: str) -> list[ArgSpec]:
        return [a for a in self.args if a.role in roles]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    def load_executable(self):
        """``(libspu.Executable, recompiled)``: recompiled from the StableHLO when SPU's version differs."""
        import spu
        from spu import libspu

        if self.manifest["spu_version"] == spu.__version__:
            exe = libspu.Executable()
            exe.ParseFromString(self.executable)
            return exe, False
        try:
            code = compile_stablehlo(self.stablehlo, self.args, self.config)
        except CipherdmError as exc:
            raise ArtifactError(
                f"{self.path or 'the program'} was compiled with SPU {self.manifest['spu_version']} and this is "
                f"SPU {spu.__version__}; recompiling its StableHLO failed: {exc}; recompile the model with "
                "`cipherdm compile`") from exc
        return build_executable(self.name, [a.name for a in self.args], [o.name for o in self.outputs], code), True


def build_manifest(program: CompiledProgram, members: dict[str, bytes]) -> dict:
    import jax
    import spu

    config = program.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": program.name,
        "spu_version": spu.__version__,
        "jax_version": jax.__version__,
        "protocol": config.protocol,
        "field": config.field,
        "fxp_bits": int(config.fxp_bits),
        "config": config.to_json(),
        "rewrites": program.rewrites,
        "inputs": [a.to_json() for a in program.args],
        "outputs": [o.to_json() for o in program.outputs],
        "program_sha256": sha256(members[EXECUTABLE]),
        "members": {name: sha256(data) for name, data in members.items()},
    }


def write_artifact(program: CompiledProgram, path: str | os.PathLike) -> Artifact:
    members = {
        EXECUTABLE: program.executable,
        STABLEHLO: program.stablehlo.encode("utf-8"),
        ONNX_GRAPH: program.onnx_graph,
        REPORT: _json_bytes(program.report),
    }
    if program.reference_graph is not None:
        members[REFERENCE_GRAPH] = program.reference_graph
    manifest = build_manifest(program, members)
    manifest_bytes = _json_bytes(manifest)
    with atomic_output(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(MANIFEST, manifest_bytes)
            for name, data in members.items():
                z.writestr(name, data)
    return Artifact(manifest, program.executable, program.stablehlo, program.onnx_graph, program.report,
                    sha256(manifest_bytes), str(path), program.reference_graph)


def write_weights(weights: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    save_npz(path, weights)


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Read and verify a ``.cdm``; every problem found is named in one ArtifactError."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"program file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            data = {name: z.read(name) for name in (MANIFEST,) + MEMBERS + OPTIONAL_MEMBERS if name in names}
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{path} is not a cipherdm program: it is not a zip archive or it is truncated "
                            f"({exc})") from exc
    except (OSError, EOFError, ValueError, RuntimeError, zlib.error) as exc:
        raise ArtifactError(f"{path} is corrupt: {_short(exc)}") from exc
    missing = [m for m in (MANIFEST,) + MEMBERS if m not in data]
    if missing:
        raise ArtifactError(f"{path} is not a complete cipherdm program", [f"member {m} is missing" for m in missing])

    try:
        manifest = json.loads(data[MANIFEST])
    except ValueError as exc:
        raise ArtifactError(f"{path}: manifest.json is not valid JSON ({exc})") from exc
    problems = _manifest_problems(manifest)
    if problems:
        raise ArtifactError(f"{path}: unusable manifest", problems)
    problems = [f"member {name} has SHA-256 {sha256(data[name])[:16]}..., the manifest says "
                f"{manifest['members'][name][:16]}..." for name in MEMBERS
                if sha256(data[name]) != manifest["members"].get(name)]
    for name in OPTIONAL_MEMBERS:
        if (name in data) != (name in manifest["members"]):
            problems.append(f"member {name} is {'present' if name in data else 'missing'} but the manifest "
                            f"{'does not list it' if name in data else 'lists it'}")
        elif name in data and sha256(data[name]) != manifest["members"][name]:
            problems.append(f"member {name} has SHA-256 {sha256(data[name])[:16]}..., the manifest says "
                            f"{manifest['members'][name][:16]}...")
    if sha256(data[EXECUTABLE]) != manifest["program_sha256"]:
        problems.append("the SPU executable does not match program_sha256")
    if problems:
        raise ArtifactError(f"{path} is corrupt or was modified (digest mismatch)", problems)
    try:
        report = json.loads(data[REPORT])
    except ValueError as exc:
        raise ArtifactError(f"{path}: report.json is not valid JSON ({exc})") from exc
    return Artifact(manifest, data[EXECUTABLE], data[STABLEHLO].decode("utf-8"), data[ONNX_GRAPH], report,
                    sha256(data[MANIFEST]), str(path), data.get(REFERENCE_GRAPH))


def _manifest_problems(manifest) -> list[str]:
    if not isinstance(manifest, dict):
        return ["manifest.json is not a JSON object"]
    if manifest.get("format") != FORMAT:
        return [f"format is {manifest.get('format')!r}, not {FORMAT!r}: this is not a cipherdm program"]
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        return [f"format_version {version!r} is newer than this cipherdm reads ({FORMAT_VERSION}); "
                "upgrade cipherdm"]
    problems = [f"missing key '{k}'" for k in ("name", "spu_version", "config", "inputs", "outputs",
                                                "program_sha256", "members", "rewrites")
                if k not in manifest]
    if problems:
        return problems
    try:
        args = [ArgSpec.from_json(a) for a in manifest["inputs"]]
        [OutputSpec.from_json(o) for o in manifest["outputs"]]
        SecureConfig.from_json(manifest["config"])
    except CipherdmError as exc:
        return [str(exc)]
    except (KeyError, TypeError, ValueError) as exc:
        return [f"malformed input/output/config entry ({_short(exc)})"]
    problems += [f"input {a.name} has unknown role '{a.role}'" for a in args
                 if a.role not in (USER, PUBLIC, MODEL_OWNER)]
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Checking data against the program


def check_arrays(arrays: dict[str, np.ndarray], specs: list[ArgSpec], what: str, source: str) -> dict:
    """Arrays for ``specs``, cast to the program dtypes; every missing or mis-shaped one named at once."""
    problems = []
    checked = {}
    for spec in specs:
        if spec.name not in arrays:
            problems.append(f"'{spec.name}' is missing (expected shape {list(spec.shape)}, {spec.dtype})")
            continue
        value = np.asarray(arrays[spec.name])
        if tuple(value.shape) != tuple(spec.shape):
            problems.append(f"'{spec.name}' has shape {list(value.shape)}, the program expects {list(spec.shape)}")
            continue
        if value.dtype.kind not in "biuf":
            problems.append(f"'{spec.name}' has dtype {value.dtype}, not a number type")
            continue
        wanted = np.dtype(spec.program_dtype)
        if wanted.kind in "iu" and value.dtype.kind == "f" and not np.all(np.round(value) == value):
            problems.append(f"'{spec.name}' holds non-integer values but is {spec.dtype}")
            continue
        checked[spec.name] = value.astype(wanted, copy=False)
    if problems:
        raise DataError(f"{what} {source} does not match the program", problems)
    return checked


def read_weights(path: str | os.PathLike, artifact: Artifact) -> dict[str, np.ndarray]:
    return check_arrays(load_npz(path, "weights"), artifact.args_of(MODEL_OWNER), "weights file", str(path))


def read_inputs(path: str | os.PathLike, artifact: Artifact, roles=(USER, PUBLIC)) -> dict[str, np.ndarray]:
    return check_arrays(load_npz(path, "inputs"), artifact.args_of(*roles), "inputs file", str(path))


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _short(exc: Exception, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["Artifact", "ArtifactError", "DataError", "read_artifact", "write_artifact", "write_weights",
           "read_weights", "read_inputs", "check_arrays", "save_npz", "load_npz", "atomic_output", "sha256"]
