"""Protocol families: the math shared by several ops, written once against the backend op set.

* ``abs_piecewise`` (SiLU, GELU, Mish, Sigmoid, Tanh): one comparison gives the sign s = [x > 0] and |x|; a
  piecewise polynomial in w = 2|x|/B - 1 (segments chosen by comparisons of w with the breakpoints, all in one
  batched comparison together with w > 1) gives a correction V that is exactly 0 for |x| >= B; then
  - ``relu_minus``: f = relu(x) - V (SiLU: V ~ |x| sigmoid(-|x|), GELU: |x| Phi(-|x|); Mish: one polynomial per
    sign), so f is exactly 0 / x beyond -B / B;
  - ``odd_saturating``: f = s ? c + L - V : c - L + V (Sigmoid: c = L = 1/2; Tanh: c = 0, L = 1), exactly the
    asymptotes beyond B.
  The fit constrains V(1) = 0 and continuity between segments, so f is continuous everywhere.
* ``exp_square`` (Exp on x <= 0, the exp inside SoftMax): y = x / 2^k, q(y) a polynomial with q(0) = 1 and
  q(L / 2^k) = 0, set to 0 below L, then squared k times: never negative, exactly 1 at 0, exactly 0 below L.
  q is evaluated as a monic polynomial in z = gamma x (Horner: d - 1 products, no coefficient truncations);
  a softmax whose input scale was folded upstream (``prescaled``) gets z directly.
* ``softmax_max``: max-subtract, exp_square, one SPU reciprocal per row, one multiply per element.
* ``softmax_shift`` with ``clip`` "box": rows that arrive shifted below 0 and bounded (attention's scores minus a
  per-query bound on their maximum, from the keys' bounding box: passes/box_bound.py): exp_square without a clip,
  reciprocal per row, multiply. No comparison per score at all.
* ``softmax_shift``: no max tree (88 rounds for a row of 256): subtract the row mean plus a calibrated bound U
  on max - mean, exp_square clipped to [L, 0] at both ends (saturating at 1) or, with ``clip`` "low", only
  below L (one comparison per element instead of two), reciprocal per row, multiply.
  With ``clip`` "bound", no comparison per element: each row of x - mean is scaled into [-B, B] (B from the
  calibrated rows' 2-norms or 4-norms, B + U within exp's range), see :func:`bounded_rows`.
* ``newton_reciprocal`` / ``newton_rsqrt``: clamp to the calibrated interval [a, b] (the asymptote beyond),
  split it geometrically into m segments (one batched comparison), scale x into [1/r, 1] by its segment's top
  edge (a select of public constants), a polynomial initial guess fitted (minimax relative error) on
  [1/r, 1] and shared by all segments, then Newton steps.
* ``norm`` (GroupNorm, LayerNorm): mean, centred variance, an rsqrt protocol on the per-group / per-row
  variance, the scale folded into it (GroupNorm), one multiply per element.
* ``direct``: the op's plain expression (what the compiler runs without rewrites) under SPU's defaults or the
  protocol's knobs.
"""

from __future__ import annotations

import math

from runtime.protocols.base import family, op_module


# ---------------------------------------------------------------------------------------------------------------
# piecewise polynomials in |x|


def segment_bits(bk, w, breaks):
    """Bits selecting each segment of [-1, 1) and the 'outside' bit w > 1, from one batched comparison."""
    ge = bk.compare_many([(w, ">", float(b)) for b in breaks] + [(w, ">", 1.0)])
    # ge is monotone (u > b_1 >= u > b_2 ...), so XOR of neighbours is the one-hot segment indicator: free.
    segs = [bk.bit_not(ge[0])] + [bk.bit_xor(ge[j], ge[j + 1]) for j in range(len(breaks))]
    return segs, ge[-1]


def whole_multiple(bk, x, n: int):
    """n x as additions of doublings: exact, no truncation (a product with a public n would truncate)."""
    if n < 1:
        raise ValueError(f"whole_multiple needs n >= 1, got {n}")
    result, power = None, x
    while n:
        if n & 1:
            result = power if result is None else bk.add(result, power)
        n >>= 1
        if n:
            power = bk.double(power)
    return result


@family("abs_piecewise")
def abs_piecewise(bk, protocol, inputs, **kw):
    p = protocol.params
    x = inputs[0]
    bound = float(p["bound"])
    form = p["form"]
    # ``prescaled``: the input is x / B (passes/prescale_activation.py folded 1/B into the GroupNorm before), so
    # w needs no truncation and relu(x) = B relu(x / B) is a sum of doublings (B is a whole number)
    prescaled = bool(p.get("prescaled"))
    sign = bk.greater(x, 0.0)
    if form == "relu_minus":
        relu = bk.where(sign, x)
        magnitude = bk.sub(bk.double(relu), x)        # |x| = 2 relu(x) - x, no extra select
    else:
        magnitude = bk.where(sign, x, bk.neg(x))
    # w = 2|x|/B - 1 in [-1, 1] on the fitted range (polynomials in w have small coefficients); breaks are
    # given in u = |x|/B.
    w = bk.add_const(bk.double(magnitude) if prescaled else bk.scale(magnitude, 2.0 / bound), -1.0)
    if prescaled:
        relu = whole_multiple(bk, relu, int(bound))
    segs, _ = segment_bits(bk, w, [2.0 * float(b) - 1.0 for b in p["breaks"]])
    # one polynomial per segment, or per segment and sign (Mish: selected with seg & s and seg & not s)
    keys = ("pos", "neg") if "pos" in p["segments"][0] else ("coeffs",)
    values = iter(bk.poly_many(w, [seg[k] for seg in p["segments"] for k in keys]))
    picks = []
    for bit, seg in zip(segs, p["segments"]):
        if keys == ("pos", "neg"):
            pos, neg = next(values), next(values)
            picks += [(bk.bit_and(bit, sign), pos, None), (bk.bit_and(bit, bk.bit_not(sign)), neg, None)]
        else:
            picks.append((bit, next(values), None))
    chosen = bk.select_many(picks)
    correction = chosen[0]
    for c in chosen[1:]:
        correction = bk.add(correction, c)
    if form == "relu_minus":
        return bk.sub(relu, correction)
    center, level = float(p["center"]), float(p["level"])
    high = bk.add_const(bk.neg(correction), center + level)
    low = bk.add_const(correction, center - level)
    return bk.where(sign, high, low)


# ---------------------------------------------------------------------------------------------------------------
# exp for x <= 0


# Horner on the monic form takes d - 1 products and nothing else; from degree 4 on, baby-step/giant-step with
# public dots needs fewer bytes (d4: 2 products + 2 truncations against 3 products + the scale).
MONIC_MAX_DEGREE = 3


def monic_applies(p) -> bool:
    return len(p["coeffs"]) - 1 <= MONIC_MAX_DEGREE


def monic_form(p) -> tuple[float, float, list[float]]:
    """``(gamma, sign, b)`` with q(x / 2^k) = sign * Q(gamma x), Q(z) = z^d + b[d-1] z^(d-1) + ... + b[0] monic
    and gamma > 0. In z = gamma x the polynomial needs no coefficient multiplies: Horner's d - 1 products and
    additions of public constants (free). The one scale left, gamma x, can be folded into whatever produced x
    (``prescaled``: passes/prescale.py moves it onto the query of attention)."""
    coeffs = [float(c) for c in p["coeffs"]]
    degree = len(coeffs) - 1
    folded = [c * 2.0 ** (-int(p["squarings"]) * i) for i, c in enumerate(coeffs)]
    lead = folded[-1]
    gamma = abs(lead) ** (1.0 / degree)
    sign = 1.0 if lead > 0 else -1.0
    return gamma, sign, [sign * a / gamma ** i for i, a in enumerate(folded[:-1])]


def exp_square_eval(bk, p, x, saturate: bool = False, prescaled: bool = False):
    """exp(x) for x in [L, 0]: 0 below L; with ``saturate`` also 1 above 0 (both clips from one comparison).
    ``prescaled``: the input is already z = gamma x (gamma from :func:`monic_form`)."""
    squarings = int(p["squarings"])
    if monic_applies(p):
        gamma, sign, b = monic_form(p)
        z = x if prescaled else bk.scale(x, gamma)
        q = bk.add_const(z, b[-1])
        for c in reversed(b[:-1]):
            q = bk.add_const(bk.mul(q, z), c)
        if sign < 0 and squarings == 0:
            q = bk.neg(q)      # squaring drops the sign
    else:
        if prescaled:
            raise ValueError(f"degree {len(p['coeffs']) - 1}: exp_square takes a prescaled input up to degree "
                             f"{MONIC_MAX_DEGREE}")
        # q(x / 2^k) with 2^-k folded into the coefficients: baby-step/giant-step products of x and dots with
        # public vectors (fewer truncations than Horner from degree 4 on)
        gamma, z = 1.0, x
        q = bk.poly_many(x, [[float(c) * 2.0 ** (-squarings * i) for i, c in enumerate(p["coeffs"])]])[0]
    lower = gamma * float(p["lower"])
    if saturate:
        above_low, above_zero = bk.compare_many([(z, ">", lower), (z, ">", 0.0)])
        inside = bk.bit_xor(above_low, above_zero)
        # two ops, not one batch: a batch mixing a secret and a public branch is charged as secret by SPU
        q = bk.add(bk.where(inside, q), bk.where(above_zero, bk.const(1.0, q)))
    elif p.get("clip", True):
        q = bk.where(bk.greater(z, lower), q)
    for _ in range(squarings):
        q = bk.mul(q, q)
    return q


@family("exp_square")
def exp_square(bk, protocol, inputs, **kw):
    return exp_square_eval(bk, protocol.params, inputs[0])


@family("softmax_max")
def softmax_max(bk, protocol, inputs, axis=-1, **kw):
    x = inputs[0]
    shifted = bk.sub(x, bk.reduce_max(x, axis))    # max(gamma x) = gamma max(x): prescaling commutes
    e = exp_square_eval(bk, protocol.params["exp"], shifted, prescaled=bool(protocol.params.get("prescaled")))
    return normalized(bk, protocol, e, axis)   # (the row sum is >= 1: the row maximum contributes exactly 1)


def normalized(bk, protocol, e, axis):
    """e / rowsum(e): one reciprocal per row, one multiply per element; e itself when the protocol is normalised
    after the value MatMul (``normalize`` false: passes/fuse_attention.py). With ``lift`` c, e comes as e^c exp(x)
    (softmax.box, for precision in fixed point): the row sum and the result drop e^c again, so the reciprocal is
    taken of a sum of at most n and the result keeps its precision."""
    if not protocol.params.get("normalize", True):
        return e
    lift = float(protocol.params.get("lift", 0.0))
    total = bk.reduce_sum(e, axis)
    if not lift:
        return bk.mul(e, bk.native("reciprocal", total))
    return bk.scale(bk.mul(e, bk.native("reciprocal", bk.scale(total, math.exp(-lift)))), math.exp(-lift))


@family("softmax_shift")
def softmax_shift(bk, protocol, inputs, axis=-1, **kw):
    """No max: shift by the row mean plus a calibrated bound U on max - mean, clip exp's argument to [L, 0]
    (one batched comparison, both clips). max >= mean, so the row sum is at least exp(-U): never 0."""
    x = inputs[0]
    upper = float(protocol.params["upper"])
    clip = protocol.params.get("clip", "both")
    prescaled = bool(protocol.params.get("prescaled"))
    gamma = monic_form(protocol.params["exp"])[0] if prescaled else 1.0
    if clip == "box":
        # the rows arrive shifted by an upper bound on their maximum and within [-bound, 0] (passes/box_bound.py
        # computed both from the queries and keys): exp's polynomial needs neither the mean nor a clip. With
        # ``lift`` c its coefficients carry e^(c / 2^k), so e = e^c exp(x): a row whose maximum sits far below 0
        # keeps its precision in fixed point (``normalized`` drops e^c again).
        return normalized(bk, protocol, exp_square_eval(bk, protocol.params["exp"], x, prescaled=prescaled), axis)
    centered = bk.sub(x, bk.mean(x, axis))
    if clip == "bound":
        norm = int(protocol.params.get("norm", 2))
        # (in x's units like the bound, so a prescaled node computes exactly what the unscaled one does; the
        # fixed-point limit is on the values computed, which a prescale of gamma < 1 only makes smaller)
        limit = gamma * gamma * float(protocol.params["square_limit"]) if norm == 4 else None
        centered = bounded_rows(bk, centered, gamma * float(protocol.params["bound"]), axis, norm, limit)
    shifted = bk.add_const(centered, -gamma * upper)
    # clip "low": only exp's lower clip; a row whose max - mean exceeds U gets exp's polynomial extrapolated
    # above 0 (positive and increasing, so still a distribution) instead of a second comparison per element.
    # clip "bound": no comparison per element at all (bounded_rows keeps every argument above L); "prebound":
    # the rows come bounded already (passes/query_bounds.py scaled the queries).
    saturate = clip == "both"
    e = exp_square_eval(bk, protocol.params["exp"], shifted, saturate=saturate, prescaled=prescaled)
    return normalized(bk, protocol, e, axis)


def zero_row_guard(bound: float) -> float:
    """Added to a row's sum of squares before its rsqrt: a constant row's sum is 0 and has none. Its factor is not
    used, but must not be infinite in float; relative to the bound, so a prescaled input gives the same factor."""
    return (bound * 2.0 ** -20) ** 2


def bounded_rows(bk, centered, bound: float, axis, norm: int = 2, square_limit: float | None = None):
    """Rows of x - mean(x) scaled so that every entry lies in [-bound, bound], with comparisons per row only.

    Every entry's magnitude is at most the row's p-norm N (p = ``norm``, 2 or 4): a row with N <= bound is left
    exactly as it is, and a row beyond is multiplied by a factor f with f N <= bound, a lower temperature for that
    row: its softmax stays a distribution. This replaces exp's per-element lower clip (a comparison and a select)
    by one multiply per element and one (p = 2) or two (p = 4) squares.

    p = 2: f = bound / N (SPU's rsqrt of the sum of squares S, right on its range). Past that range SPU's rsqrt
    gives 0 (measured: S >= 2^17 at 18 fraction bits, between 1e6 and 1e7 at 22; with attention's prescale of
    ~0.05 a row norm of ~4e4 against B ~ 10): the row becomes uniform, still a distribution.

    p = 4: r = sum(x^4) / bound^4 is compared with 1 and f = rsqrt(r) = (bound / N)^2, so f N = bound^2 / N <
    bound (more than needed, and still one rsqrt per row). The 4-norm is far tighter on long rows: n Gaussian
    entries have N_2 ~ sqrt(n) sigma, N_4 ~ (3n)^(1/4) sigma (16 against 5.3 sigma at n = 256, the largest entry
    ~2.9 sigma), so a shorter exp range serves. A fourth power is a product of products: before its truncation
    it must stay below 2^(62 - 2f), which every entry of a row with S < ``square_limit`` = 2^(30 - f) does
    (x^4 <= S^2). A row past that limit (far outside any calibrated row: the chooser takes the variant only where
    the calibrated S stays well inside it) is scaled by its 2-norm instead, bound / sqrt(S), from the same
    per-row rsqrt."""
    square = bk.mul(centered, centered)
    square_sum = bk.reduce_sum(square, axis)
    if norm == 4:
        # (the weight goes into the sum's product with a column, scaled up by 2^s and back: a plain product with
        # 1 / B^4 ~ 1e-4 would be encoded with a few percent's error at 18 fraction bits)
        ratio = bk.reduce_sum(bk.mul(square, square), axis, bound ** -4.0)
        beyond, huge = bk.compare_many([(ratio, ">", 1.0), (square_sum, ">", float(square_limit))])
        ratio = bk.where(huge, bk.scale(square_sum, bound ** -2.0), ratio)
        outside = bk.bit_not(bk.bit_and(bk.bit_not(beyond), bk.bit_not(huge)))
        # (+2^-20: a constant row's sum is 0 and has no rsqrt; its factor is not used, but must be finite in float)
        shrink = bk.add_const(bk.native("rsqrt", bk.add_const(ratio, 2.0 ** -20)), -1.0)
        return bk.mul(centered, bk.add_const(bk.where(outside, shrink), 1.0))
    beyond = bk.greater(square_sum, bound * bound)
    shrink = bk.add_const(bk.scale(bk.native("rsqrt", bk.add_const(square_sum, zero_row_guard(bound))), bound), -1.0)
    return bk.mul(centered, bk.add_const(bk.where(beyond, shrink), 1.0))


# ---------------------------------------------------------------------------------------------------------------
# reciprocal and rsqrt by Newton's method from a fitted initial guess


def _clamped_segments(bk, x, p):
    """Clamp x to [a, b] and find its segment of the geometric split of [a, b] into m pieces, all with one
    batched comparison. Returns (x clamped to [a, b] for the initial guess, x clamped to b only for Newton's steps,
    one-hot segment bits, segment top edges).

    Below a, Newton's steps run on x itself: from the guess at a, which lies below the true value, they rise towards
    it and never overshoot, so an x somewhat below the range (a group's variance on a trajectory the calibration did
    not see) still gets its own rsqrt or reciprocal, not a's. Above b the guess would lie above the true value,
    where the steps diverge once x exceeds 3b (rsqrt) or 2b (reciprocal): there x stays clamped."""
    low, high = (float(v) for v in p["interval"])
    m = int(p.get("segments", 1))
    ratio = (high / low) ** (1.0 / m)
    inner = [low * ratio ** j for j in range(1, m)]
    clamp = p.get("clamp", True)
    items = ([(x, "<", low), (x, ">", high)] if clamp else []) + [(x, ">", t) for t in inner]
    bits = bk.compare_many(items)
    newton_x = x
    if clamp:
        below, above, ge = bits[0], bits[1], bits[2:]
        lift, cut = bk.select_many([(below, bk.add_const(bk.neg(x), low), None),
                                    (above, bk.add_const(bk.neg(x), high), None)])
        newton_x = bk.add(x, cut)
        x = bk.add(newton_x, lift)
    else:
        ge = bits
    if m == 1:
        return x, newton_x, [None], [high]
    segs = [bk.bit_not(ge[0])] + [bk.bit_xor(ge[j], ge[j + 1]) for j in range(m - 2)] + [ge[-1]]
    return x, newton_x, segs, [low * ratio ** (j + 1) for j in range(m)]


def _initial_guess(bk, x, p, power):
    """g(x / T_j) * T_j^(-power) with T_j the top of x's segment: the fitted guess on [1/ratio, 1]. Returns the x
    Newton's steps run on (see _clamped_segments) and the guess."""
    x, newton_x, segs, tops = _clamped_segments(bk, x, p)
    coeffs = p["coeffs"]
    if segs[0] is None:
        v = bk.scale(x, 1.0 / tops[0])
        return newton_x, bk.scale(bk.poly_many(v, [coeffs])[0], tops[0] ** -power)
    inv_top, out_scale = _segment_constants_pair(bk, segs, tops, power, x)
    v = bk.mul(x, inv_top)
    return newton_x, bk.mul(bk.poly_many(v, [coeffs])[0], out_scale)


def _segment_constants_pair(bk, segs, tops, power, like):
    picks = bk.select_many([(bit, bk.const(1.0 / t, like), None) for bit, t in zip(segs, tops)] +
                           [(bit, bk.const(t ** -power, like), None) for bit, t in zip(segs, tops)])
    m = len(segs)
    inv_top, out_scale = picks[0], picks[m]
    for j in range(1, m):
        inv_top = bk.add(inv_top, picks[j])
        out_scale = bk.add(out_scale, picks[m + j])
    return inv_top, out_scale


def reciprocal_eval(bk, p, x):
    x, y = _initial_guess(bk, x, p, 1.0)
    for _ in range(int(p["newton_steps"])):
        # y <- y (2 - x y)
        y = bk.mul(y, bk.add_const(bk.neg(bk.mul(x, y)), 2.0))
    return y


def rsqrt_eval(bk, p, x):
    x, y = _initial_guess(bk, x, p, 0.5)
    steps = int(p["newton_steps"])
    if steps:
        half_x = bk.scale(x, 0.5)
        for _ in range(steps):
            # y <- y (3/2 - (x/2) y^2)
            y = bk.mul(y, bk.add_const(bk.neg(bk.mul(half_x, bk.mul(y, y))), 1.5))
    return y


@family("newton_reciprocal")
def newton_reciprocal(bk, protocol, inputs, **kw):
    return reciprocal_eval(bk, protocol.params, inputs[0])


@family("newton_rsqrt")
def newton_rsqrt(bk, protocol, inputs, **kw):
    return rsqrt_eval(bk, protocol.params, inputs[0])


def rsqrt_of(bk, spec: dict, v):
    """rsqrt by a nested spec {"family": "newton_rsqrt" | "direct", "params": {...}}."""
    if spec.get("family", "direct") == "newton_rsqrt":
        return rsqrt_eval(bk, spec["params"], v)
    return bk.native("rsqrt", v)


# ---------------------------------------------------------------------------------------------------------------
# GroupNorm / LayerNorm


@family("norm")
def norm(bk, protocol, inputs, epsilon=1e-5, num_groups=None, axis=-1, **kw):
    x, scale, bias = (list(inputs) + [None, None])[:3]
    spec = protocol.params["rsqrt"]
    if protocol.op == "group_norm":
        grouped = bk.to_groups(x, num_groups)
        centered = bk.sub(grouped, bk.mean(grouped, 2))
        square_sum = protocol.params.get("square_sum")    # set per node where the sums fit the ring
        var = bk.mean(bk.mul(centered, centered), 2) if square_sum is None else \
            bk.group_square_mean(centered, int(square_sum["shift"]))
        inv_std = rsqrt_of(bk, spec, bk.add_const(var, epsilon))           # [N, G, 1]
        factor = bk.channel_fold(inv_std, scale, num_groups, x)             # [N, C, 1]: scale * inv_std
        return bk.group_apply(centered, factor, bias, x)
    rows = bk.to_rows(x, axis)
    centered = bk.sub(rows, bk.mean(rows, 1))
    var = bk.mean(bk.mul(centered, centered), 1)
    inv_std = rsqrt_of(bk, spec, bk.add_const(var, epsilon))              # one per row
    return bk.rows_apply(bk.mul(centered, inv_std), scale, bias, x)


# ---------------------------------------------------------------------------------------------------------------
# the plain expression


@family("direct")
def direct(bk, protocol, inputs, **kw):
    return op_module(protocol.op).direct_expression(bk, protocol, inputs, **kw)
