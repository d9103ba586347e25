"""The one place where SPU runtime and compiler configurations are built.

A :class:`SecureConfig` is plain data (JSON in the artifact manifest): protocol, field, fraction bits, and any
per-model knobs the rewrite passes choose (``runtime`` overrides fields of ``libspu.RuntimeConfig``, ``compiler``
fields of ``libspu.CompilerOptions``). Everything that runs SPU builds its configs from it with
:func:`runtime_config` / :func:`compiler_options`, so a knob recorded at compile time reaches every party.

Defaults: ABY3 over the 64-bit ring (FM64) with 18 fraction bits, the honest-majority three-party setting of
the CipherDM paper. 18 bits is SPU's FM64 default: enough headroom (64 - 2*18 bits) for products before
truncation, and 2^-18 ~ 3.8e-6 resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from compiler.errors import CipherdmError

# Three-party protocols only: the runners are built for three compute parties (CHEETAH is two-party).
PROTOCOLS = ("ABY3", "SEMI2K", "REF2K")
FIELDS = {"FM32": 32, "FM64": 64, "FM128": 128}
WORLD_SIZES = {"ABY3": 3, "SEMI2K": 3, "REF2K": 3}

DEFAULT_PROTOCOL = "ABY3"
DEFAULT_FIELD = "FM64"
DEFAULT_FXP_BITS = 18


class ConfigError(CipherdmError):
    """An SPU setting is unknown or out of range."""


@dataclass(frozen=True)
class SecureConfig:
    protocol: str = DEFAULT_PROTOCOL
    field: str = DEFAULT_FIELD
    fxp_bits: int = DEFAULT_FXP_BITS
    # Extra libspu.RuntimeConfig fields, e.g. {"fxp_exp_iters": 10, "enable_lower_accuracy_rsqrt": True}.
    runtime: dict = dataclasses.field(default_factory=dict)
    # Extra libspu.CompilerOptions fields, e.g. {"enable_optimize_denominator_with_broadcast": True}.
    compiler: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        problems = []
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol '{self.protocol}' is not one of {', '.join(PROTOCOLS)}")
        if self.field not in FIELDS:
            problems.append(f"field '{self.field}' is not one of {', '.join(FIELDS)}")
        elif not 1 <= int(self.fxp_bits) < FIELDS[self.field] // 2:
            problems.append(f"--fxp-bits {self.fxp_bits} must be between 1 and {FIELDS[self.field] // 2 - 1} "
                            f"for {self.field}")
        problems += _unknown_fields(self.runtime, _runtime_fields(), "runtime option")
        problems += _unknown_fields(self.compiler, _compiler_fields(), "compiler option")
        if problems:
            raise ConfigError("bad SPU configuration", problems)

    @property
    def world_size(self) -> int:
        return WORLD_SIZES[self.protocol]

    def with_runtime(self, **options) -> "SecureConfig":
        return replace(self, runtime={**self.runtime, **options})

    def with_compiler(self, **options) -> "SecureConfig":
        return replace(self, compiler={**self.compiler, **options})

    def to_json(self) -> dict:
        return {"protocol": self.protocol, "field": self.field, "fxp_bits": int(self.fxp_bits),
                "runtime": dict(self.runtime), "compiler": dict(self.compiler)}

    @classmethod
    def from_json(cls, data: dict) -> "SecureConfig":
        return cls(protocol=data.get("protocol", DEFAULT_PROTOCOL), field=data.get("field", DEFAULT_FIELD),
                   fxp_bits=int(data.get("fxp_bits", DEFAULT_FXP_BITS)), runtime=dict(data.get("runtime", {})),
                   compiler=dict(data.get("compiler", {})))


def runtime_config(config: SecureConfig | None = None, *, profile: bool = False):
    """A fresh ``libspu.RuntimeConfig``; ``profile`` turns on SPU's per-op (pphlo + HAL/MPC) profile."""
    from spu import libspu

    config = config or SecureConfig()
    rc = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, config.protocol),
                              field=getattr(libspu.FieldType, config.field))
    rc.fxp_fraction_bits = int(config.fxp_bits)
    for name, value in config.runtime.items():
        setattr(rc, name, _enum_value(libspu.RuntimeConfig, name, value))
    if profile:
        rc.enable_pphlo_profile = True
        rc.enable_hal_profile = True
    return rc


def compiler_options(config: SecureConfig | None = None):
    from spu import libspu

    config = config or SecureConfig()
    opts = libspu.CompilerOptions()
    for name, value in config.compiler.items():
        setattr(opts, name, value)
    return opts


def _enum_value(owner, name, value):
    # Enum-valued options (fxp_exp_mode, sigmoid_mode, ...) are stored in JSON by member name, e.g. "EXP_PADE".
    if isinstance(value, str) and hasattr(owner, value):
        return getattr(owner, value)
    return value


def _runtime_fields() -> set[str]:
    from spu import libspu
    return {n for n in dir(libspu.RuntimeConfig) if not n.startswith("_") and n[0].islower()}


def _compiler_fields() -> set[str]:
    from spu import libspu
    return {n for n in dir(libspu.CompilerOptions) if not n.startswith("_") and n[0].islower()}


def _unknown_fields(options: dict, known: set[str], what: str) -> list[str]:
    return [f"unknown SPU {what} '{name}'" for name in options if name not in known]
