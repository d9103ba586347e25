"""One protocol, four readings: numpy float64, JAX for SPU, an ONNX function body, and a cost count.

A protocol's math is written once against the small op set of :class:`Backend` (add, scale by a public
constant, secret multiply, compare with a public constant, select, polynomial with public coefficients, ...).
The same function then

* computes in float64 with :class:`NumpyBackend` (the plaintext emulation used to measure approximation error),
* traces to jnp ops with :class:`JaxBackend` (what SPU runs; batches independent comparisons, selects and
  multiplications into one op each, so they share communication rounds),
* emits ONNX nodes with :class:`OnnxBackend` (the function body onnxruntime runs for the rewritten graph),
* counts bytes and rounds with :class:`CostBackend` (ABY3/FM64 primitives measured by tools/measure_protocols.py).

So the plaintext emulation, the SPU program, the ONNX body and the cost estimate cannot drift apart.

Values are arrays (numpy / jax), tensor names (ONNX) or :class:`Sym` shapes (cost). Bits (comparison results)
are boolean arrays. Runtime attributes of a node (softmax axis, epsilon, number of groups) arrive as plain
Python numbers, except in the ONNX backend where they are :class:`AttrRef` (a reference to the function's
attribute, ``ref_attr_name`` in the body).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from runtime import fxp_scale


@dataclass(frozen=True)
class AttrRef:
    """A node attribute seen from inside an ONNX function body (``ref_attr_name``)."""
    name: str
    type: str  # "int" | "float"


def power_plan(degree: int) -> list[list[tuple[int, int, int]]]:
    """Products computing t^2..t^degree in log depth: levels of (k, a, b) with t^k = t^a * t^b.

    Level L computes the powers 2^(L-1)+1 .. 2^L from those below, so every product of a level is independent of
    the others in it and a batched backend does each level in one multiplication round.
    """
    levels, top = [], 1
    while top < degree:
        hi = min(2 * top, degree)
        levels.append([(k, top, k - top) for k in range(top + 1, hi + 1)])
        top = hi
    return levels


def giant_step(degree: int, count: int) -> int | None:
    """Baby-step/giant-step (Paterson-Stockmeyer) split for ``count`` polynomials of ``degree`` in one secret t:
    p = P0(t) + t^m P1(t) with m = ceil(degree / 2) needs the powers up to t^m (m - 1 products), one product per
    polynomial and two public dots per polynomial, instead of the powers up to t^degree and one dot each. Returns
    m when that costs fewer bytes (degree 7, one polynomial: 4 products instead of 6), else None. Rounds stay
    about equal: one fewer level of powers, one product after the dot."""
    if degree < 4:
        return None
    from runtime.protocols.cost_model import load_table
    table = load_table()
    mul_bytes, dot_bytes = table.primitive("mul")[0], table.primitive("dot")[0]
    m = (degree + 1) // 2
    plain = (degree - 1) * mul_bytes + count * dot_bytes
    split = (m - 1) * mul_bytes + count * (mul_bytes + 2 * dot_bytes)
    return m if split < plain else None


class Backend:
    """The op set protocols are written in. Subclasses implement the primitive methods."""

    name = "abstract"

    # --- primitives every backend implements -------------------------------------------------------------
    def const(self, value: float, like=None): raise NotImplementedError
    def add(self, a, b): raise NotImplementedError
    def sub(self, a, b): raise NotImplementedError
    def neg(self, a): raise NotImplementedError
    def add_const(self, a, c): raise NotImplementedError
    def scale(self, a, c): raise NotImplementedError          # secret * public constant (one truncation)
    def double(self, a): return self.add(a, a)                 # exact, no truncation
    def mul(self, a, b): raise NotImplementedError            # secret * secret (one mul + truncation)
    def greater(self, a, c): raise NotImplementedError        # bit a > c for a public constant c
    def less(self, a, c): raise NotImplementedError           # bit a < c
    def where(self, bit, a, b=None): raise NotImplementedError  # b None means 0
    def bit_xor(self, a, b): raise NotImplementedError
    def bit_not(self, a): raise NotImplementedError
    def bit_and(self, a, b): raise NotImplementedError
    def poly(self, powers: Sequence, coeffs: Sequence[float]): raise NotImplementedError  # c0 + sum c_k t^k
    def reduce_max(self, x, axis): raise NotImplementedError  # keepdims
    def reduce_sum(self, x, axis, weight: float = 1.0): raise NotImplementedError  # weight * sum, keepdims
    def mean(self, x, axis): raise NotImplementedError        # keepdims
    def native(self, fn: str, x): raise NotImplementedError    # SPU's own exp / reciprocal / rsqrt / ...
    def divide(self, a, b): raise NotImplementedError         # secret / secret (SPU's division)

    # --- batched forms (one op, one set of rounds, in JaxBackend) -----------------------------------------
    def compare_many(self, items: Sequence[tuple[Any, str, float]]) -> list:
        """Bits for several ``(value, '>' | '<', constant)`` comparisons."""
        return [self.greater(a, c) if op == ">" else self.less(a, c) for a, op, c in items]

    def select_many(self, items: Sequence[tuple]) -> list:
        """``where(bit, a, b)`` for several ``(bit, a, b_or_None)``."""
        return [self.where(bit, a, b) for bit, a, b in items]

    def mul_many(self, pairs: Sequence[tuple]) -> list:
        return [self.mul(a, b) for a, b in pairs]

    def powers(self, t, degree: int) -> list:
        """[t, t^2, ..., t^degree] with the products of :func:`power_plan`."""
        p = {1: t}
        for level in power_plan(degree):
            products = self.mul_many([(p[a], p[b]) for _, a, b in level])
            p.update({k: v for (k, _, _), v in zip(level, products)})
        return [p[k] for k in range(1, degree + 1)]

    def poly_many(self, t, coeff_lists: Sequence[Sequence[float]]) -> list:
        """Several polynomials c0 + c1 t + ... of one secret t (each of degree >= 1), sharing the powers of t,
        split by :func:`giant_step` when that needs fewer secret products."""
        degree = max(len(c) for c in coeff_lists) - 1
        m = giant_step(degree, len(coeff_lists))
        if m is None:
            powers = self.powers(t, degree)
            return [self.poly(powers[:len(c) - 1], c) for c in coeff_lists]
        powers = self.powers(t, m)
        outs, highs, split = [], [], []
        for i, c in enumerate(coeff_lists):
            if len(c) - 1 <= m:
                outs.append(self.poly(powers[:len(c) - 1], c))
                continue
            outs.append(self.poly(powers[:m - 1], c[:m]))
            highs.append(self.poly(powers[:len(c) - 1 - m], c[m:]))
            split.append(i)
        for i, product in zip(split, self.mul_many([(powers[m - 1], h) for h in highs])):
            outs[i] = self.add(outs[i], product)
        return outs

    # --- norm helpers (shape handling differs a lot between backends) --------------------------------------
    def to_groups(self, x, num_groups):
        """[N, C, *S] -> [N, G, C/G * prod(S)]."""
        raise NotImplementedError

    def group_square_mean(self, centered, shift: int):
        """mean(centered^2) over axis 2 of [N, G, L] as one product: the diagonal of the Gram product of the
        [N*G, L] rows, so SPU exchanges (N*G)^2 products instead of N*G*L squares; one operand is scaled by
        2^-shift first so the sums stay inside the ring. In real arithmetic the plain mean of squares, which is
        what this default computes."""
        return self.mean(self.mul(centered, centered), 2)

    def channel_fold(self, per_group, scale, num_groups, like):
        """Per-(sample, channel) factor: per_group [N, G, 1] repeated over the C/G channels of each group and
        multiplied by the per-channel ``scale`` [C]; returns [N, C, 1]."""
        raise NotImplementedError

    def group_apply(self, grouped_centered, factor, bias, like):
        """[N, G, L] centred values -> [N, C, L'] * factor [N, C, 1] + bias, reshaped like ``like``."""
        raise NotImplementedError

    def channel_vector(self, scale):
        """A per-channel vector [C] as [1, C, 1] (to multiply [N, C, L])."""
        raise NotImplementedError

    def to_rows(self, x, axis):
        """x flattened to [outer, inner] with the normalised axes (axis..rank-1) inner."""
        raise NotImplementedError

    def rows_apply(self, normalized, scale, bias, like):
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# numpy float64


class NumpyBackend(Backend):
    """float64. ``knobs`` ({"runtime": {...}}) select the emulation of SPU's exp: (1 + x/2^n)^(2^n) with
    n = fxp_exp_iters (default 8) unless fxp_exp_mode is EXP_PADE; SPU's other natives (reciprocal, rsqrt,
    tanh, log) are computed exactly here, their SPU error is measured by tools/measure_protocols.py."""

    name = "numpy"

    def __init__(self, knobs: dict | None = None):
        self.knobs = knobs or {}

    def const(self, value, like=None):
        return np.float64(value) if like is None else np.full(np.shape(like), value, np.float64)

    def add(self, a, b): return np.add(a, b)
    def sub(self, a, b): return np.subtract(a, b)
    def neg(self, a): return np.negative(a)
    def add_const(self, a, c): return np.add(a, c)
    def scale(self, a, c): return np.multiply(a, c)
    def mul(self, a, b): return np.multiply(a, b)
    def greater(self, a, c): return np.greater(a, c)
    def less(self, a, c): return np.less(a, c)
    def where(self, bit, a, b=None): return np.where(bit, a, 0.0 if b is None else b)
    def bit_xor(self, a, b): return np.logical_xor(a, b)
    def bit_not(self, a): return np.logical_not(a)
    def bit_and(self, a, b): return np.logical_and(a, b)

    def poly(self, powers, coeffs):
        out = np.full(np.shape(powers[0]), float(coeffs[0])) if powers else np.float64(coeffs[0])
        for p, c in zip(powers, coeffs[1:]):
            out = out + float(c) * p
        return out

    def reduce_max(self, x, axis): return np.max(x, axis=axis, keepdims=True)
    def reduce_sum(self, x, axis, weight=1.0): return weight * np.sum(x, axis=axis, keepdims=True)
    def mean(self, x, axis): return np.mean(x, axis=axis, keepdims=True)

    def _exp(self, x):
        runtime = self.knobs.get("runtime", {})
        mode = runtime.get("fxp_exp_mode", "EXP_DEFAULT")
        mode = getattr(mode, "name", mode)
        if mode not in ("EXP_DEFAULT", "EXP_TAYLOR"):
            return np.exp(x)
        n = 2 ** int(runtime.get("fxp_exp_iters", 8) or 8)
        return (1.0 + x / n) ** n

    def native(self, fn, x):
        x = np.asarray(x, np.float64)
        if fn == "exp":
            return self._exp(x)
        if fn == "sigmoid":
            return 1.0 / (1.0 + self._exp(-x))
        return NATIVE_NUMPY[fn](x)

    def divide(self, a, b): return np.divide(a, b)

    def to_groups(self, x, num_groups):
        return np.reshape(x, (x.shape[0], int(num_groups), -1))

    def channel_fold(self, per_group, scale, num_groups, like):
        channels = like.shape[1]
        return np.repeat(per_group, channels // int(num_groups), axis=1) * np.reshape(scale, (1, -1, 1))

    def group_apply(self, grouped_centered, factor, bias, like):
        x3 = np.reshape(grouped_centered, (like.shape[0], like.shape[1], -1))
        return np.reshape(x3 * factor + np.reshape(bias, (1, -1, 1)), like.shape)

    def channel_vector(self, scale):
        return np.reshape(scale, (1, -1, 1))

    def to_rows(self, x, axis):
        axis = axis % np.ndim(x)
        return np.reshape(x, (int(np.prod(x.shape[:axis], dtype=np.int64)), -1))

    def rows_apply(self, normalized, scale, bias, like):
        y = normalized * np.reshape(scale, (1, -1))
        if bias is not None:
            y = y + np.reshape(bias, (1, -1))
        return np.reshape(y, like.shape)


def _np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _np_erf(x):
    from scipy.special import erf
    return erf(x)


def _compiler_erf(x):
    # The compiler's own Erf lowering (an explicit formula: chlo.erf does not reach SPU), so 'direct' is
    # exactly what an unrewritten graph runs.
    from compiler.ops.elementwise import erf
    return erf(x)


def _compiler_softplus(x):
    from compiler.ops.activation import softplus
    return softplus(x)


NATIVE_NUMPY = {
    "softplus": lambda x: np.logaddexp(0.0, x),
    "exp": np.exp,
    "reciprocal": lambda x: 1.0 / x,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "sqrt": np.sqrt,
    "tanh": np.tanh,
    "log": np.log,
    "erf": _np_erf,
    "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
}


# ---------------------------------------------------------------------------------------------------------------
# jax.numpy, for SPU


class JaxBackend(Backend):
    """jnp ops only; comparisons, selects and products that do not depend on each other go out as one op."""

    name = "jax"

    def __init__(self):
        import jax.numpy as jnp
        self.jnp = jnp

    def _dtype(self, like):
        return like.dtype if hasattr(like, "dtype") and self.jnp.issubdtype(like.dtype, self.jnp.floating) \
            else self.jnp.float32

    def const(self, value, like=None):
        if like is None:
            return self.jnp.float32(value)
        return self.jnp.full(self.jnp.shape(like), value, self._dtype(like))

    def _c(self, c, like):
        return self.jnp.asarray(c, self._dtype(like))

    def add(self, a, b): return a + b
    def sub(self, a, b): return a - b
    def neg(self, a): return -a
    def add_const(self, a, c): return a + self._c(c, a)
    def scale(self, a, c): return a * self._c(c, a)
    def mul(self, a, b): return a * b
    def greater(self, a, c): return a > self._c(c, a)
    def less(self, a, c): return a < self._c(c, a)

    def where(self, bit, a, b=None):
        return self.jnp.where(bit, a, self._c(0.0, a) if b is None else b)

    def bit_xor(self, a, b): return self.jnp.logical_xor(a, b)
    def bit_not(self, a): return self.jnp.logical_not(a)
    def bit_and(self, a, b): return self.jnp.logical_and(a, b)

    def poly(self, powers, coeffs):
        jnp = self.jnp
        if not powers:
            raise ValueError("a polynomial needs at least degree 1 here")
        dtype = self._dtype(powers[0])
        # One dot with a public vector: SPU multiplies locally and truncates once (a sum of public*secret
        # products would truncate once per term).
        encoded = jnp.asarray(np.asarray([fxp_scale.nearest(float(c)) for c in coeffs[1:]], np.float64), dtype)
        shape = jnp.shape(powers[0])
        if len(powers) > 1 and len(shape) >= 1 and all(jnp.shape(p) == shape for p in powers):
            # the powers joined along their first axis and viewed as [k, n]: two reshapes, where stacking them on
            # a new last axis takes one per power (every op costs parse time on every run)
            rows = jnp.reshape(jnp.concatenate(powers, axis=0), (len(powers), -1))
            return jnp.reshape(encoded @ rows, shape) + jnp.asarray(coeffs[0], dtype)
        stacked = jnp.stack(powers, axis=-1)
        return stacked @ encoded + jnp.asarray(coeffs[0], dtype)

    def reduce_max(self, x, axis): return self.jnp.max(x, axis=axis, keepdims=True)
    def reduce_sum(self, x, axis, weight=1.0): return fxp_scale.weighted_sum(x, axis, True, weight)

    def mean(self, x, axis):
        return fxp_scale.mean(x, axis)

    def native(self, fn, x):
        import jax
        jnp = self.jnp
        table = {
            "exp": jnp.exp,
            "reciprocal": lambda v: 1.0 / v,
            "rsqrt": jax.lax.rsqrt,
            "sqrt": jnp.sqrt,
            "tanh": jnp.tanh,
            "log": jnp.log,
            "sigmoid": jax.nn.sigmoid,      # jax lowers it to 1 / (1 + exp(-x))
            "erf": _compiler_erf,
            "softplus": _compiler_softplus,
        }
        if fn not in table:
            raise ValueError(f"no SPU-safe jnp form of {fn} (erf lowers to chlo.erf, which StableHLO text "
                             "cannot carry)")
        return table[fn](x)

    def divide(self, a, b): return a / b

    # batched ops: join, one op, split back. Parts of one shape are joined along their first axis; others are
    # flattened first. SPU parses and verifies every op of a program on every run (~0.9 us per byte of its text,
    # compiler/deallocation.py), and the flattening costs two reshapes per part.
    @staticmethod
    def _along_first_axis(shapes) -> bool:
        return len({tuple(s) for s in shapes}) == 1 and len(shapes[0]) >= 1

    def _join(self, parts, shapes):
        jnp = self.jnp
        parts = [p if tuple(jnp.shape(p)) == tuple(s) else jnp.broadcast_to(p, s) for p, s in zip(parts, shapes)]
        if self._along_first_axis(shapes):
            return jnp.concatenate(parts, axis=0)
        return jnp.concatenate([jnp.reshape(p, (-1,)) for p in parts])

    def _split(self, joined, shapes):
        out, start = [], 0
        if self._along_first_axis(shapes):
            rows = int(shapes[0][0])
            return [joined[i * rows:(i + 1) * rows] for i in range(len(shapes))]
        for shape in shapes:
            size = int(np.prod(shape, dtype=np.int64))
            out.append(self.jnp.reshape(joined[start:start + size], shape))
            start += size
        return out

    def compare_many(self, items):
        if len(items) <= 1:
            return super().compare_many(items)
        jnp = self.jnp
        diffs = [(a - self._c(c, a)) if op == ">" else (self._c(c, a) - a) for a, op, c in items]
        shapes = [jnp.shape(d) for d in diffs]
        joined = self._join(diffs, shapes)
        return self._split(joined > self._c(0.0, joined), shapes)

    def select_many(self, items):
        if len(items) <= 1:
            return super().select_many(items)
        jnp = self.jnp
        shapes = [jnp.broadcast_shapes(jnp.shape(bit), jnp.shape(a)) for bit, a, _ in items]
        bits = self._join([bit for bit, _, _ in items], shapes)
        ones = self._join([a for _, a, _ in items], shapes)
        zeros = self._join([self._c(0.0, a) if b is None else b for _, a, b in items], shapes)
        return self._split(jnp.where(bits, ones, zeros), shapes)

    def mul_many(self, pairs):
        if len(pairs) <= 1:
            return super().mul_many(pairs)
        jnp = self.jnp
        shapes = [jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b)) for a, b in pairs]
        left = self._join([a for a, _ in pairs], shapes)
        right = self._join([b for _, b in pairs], shapes)
        return self._split(left * right, shapes)

    def to_groups(self, x, num_groups):
        return self.jnp.reshape(x, (x.shape[0], int(num_groups), -1))

    def group_square_mean(self, centered, shift: int):
        jnp = self.jnp
        n, g, length = centered.shape
        rows = jnp.reshape(centered, (n * g, length))
        left = rows * self._c(2.0 ** -shift, rows) if shift else rows
        # The Gram product's diagonal holds the groups' sums of squares: N*G*N*G products exchanged instead of
        # N*G*L squares, and the diagonal is a strided slice (free). With SPU's OpenMP limited per party
        # (runtime/threads.py) [16, 4704] x [4704, 16] takes ~10 ms; the earlier [1, N*G*L] x block-diagonal
        # form needed N*G pads and a concatenation of a mostly-zero [N*G*L, N*G] secret (~4x slower).
        gram = left @ rows.T
        sums = jnp.reshape(jnp.reshape(gram, (-1,))[:: n * g + 1], (n, g, 1))
        return fxp_scale.scale(sums, 2.0 ** shift / length)

    def channel_fold(self, per_group, scale, num_groups, like):
        channels = like.shape[1]
        repeated = self.jnp.repeat(per_group, channels // int(num_groups), axis=1)
        return repeated * self.jnp.reshape(scale, (1, -1, 1))

    def group_apply(self, grouped_centered, factor, bias, like):
        jnp = self.jnp
        x3 = jnp.reshape(grouped_centered, (like.shape[0], like.shape[1], -1))
        return jnp.reshape(x3 * factor + jnp.reshape(bias, (1, -1, 1)), like.shape)

    def channel_vector(self, scale):
        return self.jnp.reshape(scale, (1, -1, 1))

    def to_rows(self, x, axis):
        axis = axis % x.ndim
        return self.jnp.reshape(x, (int(np.prod(x.shape[:axis], dtype=np.int64)), -1))

    def rows_apply(self, normalized, scale, bias, like):
        jnp = self.jnp
        y = normalized * jnp.reshape(scale, (1, -1))
        if bias is not None:
            y = y + jnp.reshape(bias, (1, -1))
        return jnp.reshape(y, like.shape)


# ---------------------------------------------------------------------------------------------------------------
# ONNX function bodies


class OnnxBackend(Backend):
    """Emits the nodes of an ONNX function body; values are tensor names (float32 tensors, bool bits)."""

    name = "onnx"

    def __init__(self, opset: int = 18):
        if opset < 13:
            raise ValueError("cipherdm function bodies need opset >= 13")
        self.opset = opset
        self.nodes: list = []
        self._counter = 0
        self._consts: dict = {}

    def _name(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def node(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attrs) -> str:
        from onnx import helper
        out = self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def _scalar(self, value) -> str:
        """A float32 scalar constant (or a reference to a float attribute)."""
        from onnx import AttributeProto, helper, TensorProto
        if isinstance(value, AttrRef):
            key = ("attr", value.name)
            if key not in self._consts:
                out = self._name(f"attr_{value.name}")
                node = helper.make_node("Constant", [], [out])
                attr = AttributeProto(name="value_float" if value.type == "float" else "value_int",
                                      ref_attr_name=value.name,
                                      type=AttributeProto.FLOAT if value.type == "float" else AttributeProto.INT)
                node.attribute.append(attr)
                self.nodes.append(node)
                if value.type == "int":
                    out = self.node("Cast", [out], "attr_float", to=TensorProto.FLOAT)
                self._consts[key] = out
            return self._consts[key]
        key = ("f", float(np.float32(value)))
        if key not in self._consts:
            out = self._name("const")
            self.nodes.append(helper.make_node("Constant", [], [out],
                                               value=helper.make_tensor(out, TensorProto.FLOAT, [], [float(value)])))
            self._consts[key] = out
        return self._consts[key]

    def _ints(self, values, hint="shape") -> str:
        from onnx import helper, TensorProto
        key = ("i", tuple(values))
        if key not in self._consts:
            out = self._name(hint)
            self.nodes.append(helper.make_node("Constant", [], [out],
                                               value=helper.make_tensor(out, TensorProto.INT64, [len(values)],
                                                                        list(values))))
            self._consts[key] = out
        return self._consts[key]

    def _int_attr(self, ref: AttrRef | int) -> str:
        """A 1-element int64 tensor holding an int attribute (or a constant)."""
        from onnx import AttributeProto, helper
        if not isinstance(ref, AttrRef):
            return self._ints([int(ref)])
        key = ("attr_ints", ref.name)
        if key not in self._consts:
            scalar = self._name(f"attr_{ref.name}")
            node = helper.make_node("Constant", [], [scalar])
            node.attribute.append(AttributeProto(name="value_int", ref_attr_name=ref.name,
                                                 type=AttributeProto.INT))
            self.nodes.append(node)
            self._consts[key] = self.node("Reshape", [scalar, self._ints([1])], f"attr_{ref.name}_1d")
        return self._consts[key]

    def const(self, value, like=None):
        c = self._scalar(value)
        if like is None:
            return c
        return self.node("Expand", [c, self.node("Shape", [like])], "full")

    def add(self, a, b): return self.node("Add", [a, b])
    def sub(self, a, b): return self.node("Sub", [a, b])
    def neg(self, a): return self.node("Neg", [a])
    def add_const(self, a, c): return self.node("Add", [a, self._scalar(c)])
    def scale(self, a, c): return self.node("Mul", [a, self._scalar(c)])
    def double(self, a): return self.node("Add", [a, a])
    def mul(self, a, b): return self.node("Mul", [a, b])
    def greater(self, a, c): return self.node("Greater", [a, self._scalar(c)])
    def less(self, a, c): return self.node("Less", [a, self._scalar(c)])

    def where(self, bit, a, b=None):
        return self.node("Where", [bit, a, self._scalar(0.0) if b is None else b])

    def bit_xor(self, a, b): return self.node("Xor", [a, b])
    def bit_not(self, a): return self.node("Not", [a])
    def bit_and(self, a, b): return self.node("And", [a, b])

    def poly(self, powers, coeffs):
        out = None
        for p, c in zip(powers, coeffs[1:]):
            term = self.node("Mul", [p, self._scalar(c)], "term")
            out = term if out is None else self.node("Add", [out, term], "acc")
        return self.node("Add", [out, self._scalar(coeffs[0])], "poly")

    def _axes(self, axis) -> str:
        if isinstance(axis, AttrRef):
            return self._int_attr(axis)
        axes = axis if isinstance(axis, (tuple, list)) else (axis,)
        return self._ints([int(a) for a in axes], "axes")

    def reduce_max(self, x, axis):
        # TopK(k=1) takes the axis as an INT attribute in every opset (ReduceMax moved axes to an input at 18),
        # so one body serves models of any opset and the node's own `axis` attribute.
        from onnx import AttributeProto, helper
        values, indices = self._name("max"), self._name("argmax")
        node = helper.make_node("TopK", [x, self._ints([1], "k")], [values, indices], largest=1, sorted=1)
        if isinstance(axis, AttrRef):
            node.attribute.append(AttributeProto(name="axis", ref_attr_name=axis.name, type=AttributeProto.INT))
        else:
            node.attribute.append(helper.make_attribute("axis", int(axis)))
        self.nodes.append(node)
        return values

    def reduce_sum(self, x, axis, weight=1.0):
        total = self.node("ReduceSum", [x, self._axes(axis)], keepdims=1)
        return total if weight == 1.0 else self.scale(total, weight)

    def mean(self, x, axis):
        if self.opset < 18 and not isinstance(axis, AttrRef):
            axes = list(axis) if isinstance(axis, (tuple, list)) else [int(axis)]
            return self.node("ReduceMean", [x], axes=axes, keepdims=1)
        return self.node("ReduceMean", [x, self._axes(axis)], keepdims=1)

    def native(self, fn, x):
        if fn == "rsqrt":
            return self.node("Reciprocal", [self.node("Sqrt", [x])], "rsqrt")
        simple = {"exp": "Exp", "reciprocal": "Reciprocal", "sqrt": "Sqrt", "tanh": "Tanh", "log": "Log",
                  "erf": "Erf", "sigmoid": "Sigmoid", "softplus": "Softplus"}
        return self.node(simple[fn], [x])

    def divide(self, a, b): return self.node("Div", [a, b])

    # norms -------------------------------------------------------------------------------------------------
    def to_groups(self, x, num_groups):
        shape = self.node("Concat", [self._ints([0]), self._int_attr(num_groups), self._ints([-1])], "gshape",
                          axis=0)
        return self.node("Reshape", [x, shape], "grouped")

    def channel_fold(self, per_group, scale, num_groups, like):
        # channels per group = C / G, from the scale's length; Expand [N, G, 1] -> [N, G, C/G] -> [N, C, 1]
        channels = self.node("Shape", [scale], "channels")
        per = self.node("Div", [channels, self._int_attr(num_groups)], "per_group")
        expand_to = self.node("Concat", [self._ints([1]), self._ints([1]), per], "expand_shape", axis=0)
        expanded = self.node("Expand", [per_group, expand_to], "expanded")
        folded = self.node("Reshape", [expanded, self._ints([0, -1, 1])], "per_channel")
        return self.node("Mul", [folded, self.node("Reshape", [scale, self._ints([-1, 1])], "scale_c1")], "factor")

    def group_apply(self, grouped_centered, factor, bias, like):
        x3_shape = self.node("Slice", [self.node("Shape", [like]), self._ints([0]), self._ints([2])], "nc")
        x3_shape = self.node("Concat", [x3_shape, self._ints([-1])], "x3shape", axis=0)
        x3 = self.node("Reshape", [grouped_centered, x3_shape], "x3")
        y = self.node("Add", [self.node("Mul", [x3, factor]), self.node("Reshape", [bias, self._ints([-1, 1])])])
        return self.node("Reshape", [y, self.node("Shape", [like])], "y")

    def channel_vector(self, scale):
        return self.node("Reshape", [scale, self._ints([1, -1, 1])], "scale_1c1")

    def to_rows(self, x, axis):
        from onnx import AttributeProto, helper
        out = self._name("rows")
        node = helper.make_node("Flatten", [x], [out])
        if isinstance(axis, AttrRef):
            node.attribute.append(AttributeProto(name="axis", ref_attr_name=axis.name, type=AttributeProto.INT))
        else:
            node.attribute.append(helper.make_attribute("axis", int(axis)))
        self.nodes.append(node)
        return out

    def rows_apply(self, normalized, scale, bias, like):
        y = self.node("Mul", [normalized, self.node("Reshape", [scale, self._ints([1, -1])], "scale_row")])
        if bias is not None:
            y = self.node("Add", [y, self.node("Reshape", [bias, self._ints([1, -1])], "bias_row")])
        return self.node("Reshape", [y, self.node("Shape", [like])], "y")


# ---------------------------------------------------------------------------------------------------------------
# cost counting


@dataclass
class Sym:
    """A secret tensor of a known shape (the cost backend's values)."""
    shape: tuple
    public: bool = False

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class CostTally:
    bytes: float = 0.0
    rounds: int = 0
    comparisons: int = 0      # compared elements
    breakdown: dict = field(default_factory=dict)  # primitive -> bytes

    def charge(self, what: str, nbytes: float, rounds: int):
        self.bytes += nbytes
        self.rounds += rounds
        self.breakdown[what] = self.breakdown.get(what, 0.0) + nbytes


class CostBackend(Backend):
    """Counts 3-party bytes and rounds of the JaxBackend program from measured per-element primitive costs.

    ``table`` is :func:`runtime.protocols.costs.primitive_table` (bytes per element and rounds per op for
    mul, trunc, compare, select, ... and SPU's native nonlinear functions under the active knobs).
    """

    name = "cost"

    def __init__(self, table, knobs=None):
        self.table = table
        self.knobs = knobs
        self.tally = CostTally()
        self._bit_uses: dict = {}

    def _charge(self, prim: str, elements: int):
        b, r = self.table.primitive(prim)
        self.tally.charge(prim, b * elements, r)

    def _shape(self, *values):
        shapes = [v.shape for v in values if isinstance(v, Sym)]
        return tuple(np.broadcast_shapes(*shapes)) if shapes else ()

    def const(self, value, like=None):
        return Sym(like.shape if isinstance(like, Sym) else (), public=True)

    def _lin(self, *values):
        return Sym(self._shape(*values), public=all(getattr(v, "public", True) for v in values))

    def add(self, a, b): return self._lin(a, b)
    def sub(self, a, b): return self._lin(a, b)
    def neg(self, a): return self._lin(a)
    def add_const(self, a, c): return self._lin(a)
    def double(self, a): return self._lin(a)

    def scale(self, a, c):
        out = self._lin(a)
        if not out.public:
            self._charge("trunc", out.size)
        return out

    def mul(self, a, b):
        return self.mul_many([(a, b)])[0]

    def mul_many(self, pairs):
        outs = [self._lin(a, b) for a, b in pairs]
        secret = [o for (a, b), o in zip(pairs, outs) if not (a.public or b.public)]
        scaled = [o for (a, b), o in zip(pairs, outs) if (a.public != b.public)]
        if secret:
            self._charge("mul", sum(o.size for o in secret))
        if scaled:
            self._charge("trunc", sum(o.size for o in scaled))
        return outs

    def greater(self, a, c): return self.compare_many([(a, ">", c)])[0]
    def less(self, a, c): return self.compare_many([(a, "<", c)])[0]

    def compare_many(self, items):
        outs = [Sym(a.shape, a.public) for a, _, _ in items]
        n = sum(o.size for o in outs if not o.public)
        if n:
            self._charge("compare", n)
            self.tally.comparisons += n
        return outs

    def where(self, bit, a, b=None): return self.select_many([(bit, a, b)])[0]

    def select_many(self, items):
        outs = [self._lin(bit, a, *([] if b is None else [b])) for bit, a, b in items]
        if len(items) == 1:
            bit, a, b = items[0]
            if not bit.public and b is not None and not (a.public or b.public):
                return [self._shared_select(bit, outs[0])]
        secret = public = 0
        all_public = all(a.public and (b is None or b.public) for bit, a, b in items if not bit.public)
        for (bit, a, b), o in zip(items, outs):
            if bit.public:
                continue
            if all_public:
                public += o.size        # public branches: no multiplication of shares
            else:
                secret += o.size        # (a batch mixing public and secret branches is secret as a whole)
        rounds = 0
        for prim, n in (("select", secret), ("select_public", public)):
            if n:
                b, r = self.table.primitive(prim)
                self.tally.bytes += b * n
                self.tally.breakdown[prim] = self.tally.breakdown.get(prim, 0.0) + b * n
                rounds = max(rounds, r)
        self.tally.rounds += rounds
        return outs

    def _shared_select(self, bit, out):
        """where(bit, a, b) with two secret branches: SPU converts a predicate used by several such selects to
        arithmetic once (b2a) and multiplies (mul_aa) per select, instead of mul_a1b each time."""
        uses = self._bit_uses.setdefault(id(bit), [bit, 0])
        uses[1] += 1
        if uses[1] == 1:
            b, r = self.table.primitive("select")
            self.tally.charge("select", b * out.size, r)
        else:
            first = self.table.primitive("select_shared_first") if uses[1] == 2 else (0.0, 0)
            sel = self.table.primitive("select")
            again = self.table.primitive("select_shared")
            extra = (first[0] - sel[0] if uses[1] == 2 else 0.0) + again[0]
            self.tally.charge("select", extra * out.size, again[1])
        return out

    def bit_xor(self, a, b): return self._lin(a, b)
    def bit_not(self, a): return self._lin(a)

    def bit_and(self, a, b):
        out = self._lin(a, b)
        if not out.public:
            self._charge("bit_and", out.size)
        return out

    def poly(self, powers, coeffs):
        out = self._lin(*powers)
        if not out.public:
            self._charge("dot", out.size)
        return out

    def _reduced(self, x, axis):
        axes = axis if isinstance(axis, (tuple, list)) else (axis,)
        axes = {a % len(x.shape) for a in axes}
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape)), \
            int(np.prod([x.shape[a] for a in axes], dtype=np.int64))

    def reduce_max(self, x, axis):
        shape, n = self._reduced(x, axis)
        out = Sym(shape, x.public)
        if not x.public and n > 1:
            b, r = self.table.reduce_max(n)
            self.tally.charge("reduce_max", b * out.size, r)
            self.tally.comparisons += (n - 1) * out.size
        return out

    def reduce_sum(self, x, axis, weight=1.0):
        shape, count = self._reduced(x, axis)
        out = Sym(shape, x.public)
        if not x.public and (count > 1 or weight != 1.0):
            # a product with a column of weights (fxp_scale.weighted_sum), 2^-s after it for a small weight
            self._charge("trunc", out.size * fxp_scale.truncations(weight))
        return out

    def mean(self, x, axis):
        shape, count = self._reduced(x, axis)
        out = Sym(shape, x.public)
        if not x.public:
            self._charge("trunc", out.size * fxp_scale.truncations(1.0 / max(count, 1)))
        return out

    def native(self, fn, x):
        out = Sym(x.shape, x.public)
        if not x.public:
            b, r = self.table.native(fn, self.knobs)
            self.tally.charge(f"native:{fn}", b * out.size, r)
        return out

    def divide(self, a, b):
        out = self._lin(a, b)
        if not out.public:
            if b.shape != out.shape and self.table.knob(
                    self.knobs, "compiler", "enable_optimize_denominator_with_broadcast", False):
                # SPU hoists the reciprocal to the un-broadcast denominator and multiplies.
                self.native("reciprocal", Sym(b.shape))
                self._charge("mul", out.size)
            else:
                bb, r = self.table.native("divide", self.knobs)
                self.tally.charge("native:divide", bb * out.size, r)
        return out

    def to_groups(self, x, num_groups):
        n, c = x.shape[0], x.shape[1]
        return Sym((n, int(num_groups), x.size // (n * int(num_groups))), x.public)

    def group_square_mean(self, centered, shift: int):
        n, g, length = centered.shape
        out = Sym((n, g, 1), centered.public)
        if not centered.public:
            if shift:
                self._charge("trunc", centered.size)
            # the Gram product's (N*G)^2 outputs: a product and a truncation each
            self._charge("mul", out.size * out.size)
            self._charge("trunc", out.size * fxp_scale.truncations(2.0 ** shift / length))
        return out

    def channel_fold(self, per_group, scale, num_groups, like):
        folded = Sym((like.shape[0], like.shape[1], 1), per_group.public)
        return self.mul(folded, Sym((1, like.shape[1], 1), scale.public))

    def group_apply(self, grouped_centered, factor, bias, like):
        x3 = Sym((like.shape[0], like.shape[1], like.size // (like.shape[0] * like.shape[1])),
                 grouped_centered.public)
        y = self.mul(x3, factor)
        return Sym(like.shape, y.public and bias.public)

    def channel_vector(self, scale):
        return Sym((1, scale.shape[0], 1), scale.public)

    def to_rows(self, x, axis):
        axis = axis % len(x.shape)
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        return Sym((outer, x.size // max(outer, 1)), x.public)

    def rows_apply(self, normalized, scale, bias, like):
        y = self.mul(normalized, Sym((1, normalized.shape[1]), scale.public))
        return Sym(like.shape, y.public)
