"""Hypothesis strategies for the float input side of a format, and named hard cases.

Every strategy takes the spec first, so the values it draws are the ones where
that format is easiest to get wrong:

* ties: exact midpoints between adjacent representable magnitudes (and the
  overflow threshold max + ulp(max)/2), times the block scale;
* neighbours of ties one ulp away in the input dtype (and in float32 for float64
  input), and float64 values that round onto a tie in float32, which catch
  double rounding through float32;
* signed zeros, subnormals, the largest finite values, +-Inf and NaN of the
  input dtype;
* for block formats, whole blocks of one kind: ties under a known scale (the
  block holds ``element max * scale``, so the scale is forced), block maxima at
  and one ulp either side of powers of two and of ``element max * 2^k``
  (where floor/ceil/even/rceil disagree), all-zero blocks, blocks holding a NaN
  or an Inf, tiny blocks (around 2^-127 and the dtype's subnormals) and huge
  blocks. For a two-level format one block pins the tensor scale to a power of
  two, so the ties of the other blocks stay exact.

Arrays are 2-D (rows, n) with the block axis last. ``bfloat16`` arrays are
``ml_dtypes.bfloat16`` numpy arrays (ml_dtypes is a test extra, like Hypothesis).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

from lowbit.formats.spec import BLOCK_SPECS, BlockFormat, ExpScaleFormat, FloatFormat, IntFormat, decode_exact

DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")

#: Kinds of blocks :func:`arrays` draws (and :func:`examples` names).
BLOCK_KINDS: tuple[str, ...] = ("ties", "near_ties", "amax_edge", "zeros", "nan", "inf", "tiny", "huge", "random")

_MAX_POOL = 512  # ties or magnitudes kept per format (16-bit integer formats have 2^15)


# ---------------------------------------------------------------------------
# dtypes


def np_dtype(kind: str) -> np.dtype:
    """The numpy dtype called ``kind`` (bfloat16 from ml_dtypes)."""
    if kind not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {kind!r}")
    if kind == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(kind)


@functools.lru_cache(maxsize=None)
def _limits(kind: str) -> tuple[int, int, int]:
    """(exponent of the smallest subnormal, of the smallest normal, of the largest finite)."""
    nmant, minexp = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126), "float64": (52, -1022)}[kind]
    return minexp - nmant, minexp, -minexp + 1


def cast(values: Any, kind: str) -> np.ndarray:
    """float64 values as an array of ``kind`` (overflow gives Inf, as the cast does)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return np.asarray(values, np.float64).astype(np_dtype(kind))


def neighbours(a: np.ndarray) -> np.ndarray:
    """The values one ulp below and above each finite non-zero element of ``a`` (its dtype)."""
    a = np.asarray(a).ravel()
    a = a[np.isfinite(a.astype(np.float64)) & (a.astype(np.float64) != 0)]
    bits = a.view(f"u{a.dtype.itemsize}")
    return np.concatenate([(bits - 1).view(a.dtype), (bits + 1).view(a.dtype)])


def special_values(kind: str) -> list[float]:
    """Signed zeros, subnormals, the extremes, +-Inf and NaN of dtype ``kind``."""
    sub, norm, top = _limits(kind)
    nmant = norm - sub
    largest = (2 - 2.0**-nmant) * 2.0**top
    mags = [0.0, 2.0**sub, 3 * 2.0**sub, (1 - 2.0**-nmant) * 2.0**norm, 2.0**norm, largest, np.inf]
    return [*mags, *(-m for m in mags), np.nan]


# ---------------------------------------------------------------------------
# what a format can represent


def element_of(spec: Any) -> Any:
    """The element format of ``spec`` (the spec itself for element formats)."""
    return spec.element if isinstance(spec, BLOCK_SPECS) else spec


@functools.lru_cache(maxsize=None)
def magnitudes(fmt: Any) -> tuple[Fraction, ...]:
    """Every finite non-negative value of element format ``fmt``, ascending (by decode_exact)."""
    found = set()
    for code in range(1 << fmt.bits):
        v = decode_exact(fmt, code)
        if isinstance(v, Fraction):
            found.add(abs(v))
    return tuple(sorted(found | {Fraction(0)}))


def _overflow_threshold(fmt: Any) -> Fraction:
    """max + ulp(max) / 2: the tie between the largest value and the first value beyond it."""
    top = Fraction(fmt.max_value)
    if isinstance(fmt, FloatFormat):
        return top + Fraction(2) ** (fmt.emax - fmt.mbits) / 2
    if isinstance(fmt, IntFormat):
        return top + Fraction(1, 2)
    return top * Fraction(3, 2)


@functools.lru_cache(maxsize=None)
def ties(fmt: Any) -> tuple[Fraction, ...]:
    """Midpoints between adjacent magnitudes of ``fmt``, and its overflow threshold."""
    m = magnitudes(fmt)
    return tuple((a + b) / 2 for a, b in zip(m, m[1:])) + (_overflow_threshold(fmt),)


def _thin(values: tuple[Fraction, ...]) -> tuple[Fraction, ...]:
    """At most _MAX_POOL values spread evenly, the first and last kept."""
    if len(values) <= _MAX_POOL:
        return values
    idx = np.unique(np.linspace(0, len(values) - 1, _MAX_POOL).round().astype(int))
    return tuple(values[i] for i in idx)


def scale_values(spec: BlockFormat) -> tuple[Fraction, ...]:
    """Positive block scale values of a float scale format within [scale_min, scale_max]."""
    lo, hi = Fraction(spec.scale_min), Fraction(spec.scale_max)
    return tuple(v for v in magnitudes(spec.scale) if lo <= v <= hi and v > 0)


def _tensor_anchor(spec: BlockFormat, j: int) -> float:
    """An amax that makes the tensor scale exactly 2^j: elem max * scale max * 2^j."""
    return float(spec.element.max_value) * float(spec.scale_max) * 2.0**j


# ---------------------------------------------------------------------------
# values for element formats


def tie_values(spec: Any, kind: str) -> np.ndarray:
    """Every (or, for wide formats, an even spread of) tie and magnitude of ``spec``'s
    element, both signs, with their neighbours, as an array of ``kind``."""
    elem = element_of(spec)
    base = [float(v) for v in _thin(ties(elem)) + _thin(magnitudes(elem))]
    vals = cast(base + [-v for v in base], kind)
    parts = [vals, neighbours(vals)]
    if kind == "float64":
        f32 = cast(vals, "float32")
        parts.append(neighbours(f32).astype(np.float64))
        # one float64 ulp of float32 precision away: float32 rounding lands on the tie
        t = np.asarray([float(v) for v in _thin(ties(elem))])
        parts.append(np.concatenate([t * (1 + 2.0**-40), t * (1 - 2.0**-40), -t * (1 + 2.0**-40)]))
    return np.concatenate([np.asarray(p, np_dtype(kind)) for p in parts])


def element_floats(spec: Any, kind: str = "float32") -> st.SearchStrategy[float]:
    """Scalars for an element format: ties and their neighbours, representable values,
    specials of dtype ``kind``, and any float of that width."""
    pool = tie_values(spec, kind).astype(np.float64).tolist()
    width = {"float16": 16, "bfloat16": 32, "float32": 32, "float64": 64}[kind]
    bound = min(4 * float(element_of(spec).max_value), special_values(kind)[5])
    return st.one_of(
        st.sampled_from(pool),
        st.sampled_from(special_values(kind)),
        st.floats(width=width),
        st.floats(-bound, bound, width=width),
    )


# ---------------------------------------------------------------------------
# blocks


def _scale_exponents(spec: BlockFormat, kind: str) -> tuple[int, int]:
    """Range of k such that element values times 2^k stay normal in ``kind``."""
    _, norm, top = _limits(kind)
    return norm + 2, min(top - element_of(spec).emax - 1, top)


@st.composite
def _block(draw: Callable[..., Any], spec: BlockFormat, kind: str, tensor_exp: int | None, size: int) -> list[float]:
    """One block of ``size`` float64 values (not yet cast to ``kind``)."""
    elem = spec.element
    block_kind = draw(st.sampled_from(BLOCK_KINDS))
    lo, hi = _scale_exponents(spec, kind)
    if isinstance(spec.scale, ExpScaleFormat):
        scale = 2.0 ** draw(st.integers(max(lo, -20), min(hi, 20)) if draw(st.booleans()) else st.integers(lo, hi))
    else:
        scale = float(draw(st.sampled_from(scale_values(spec)))) * 2.0 ** (tensor_exp or 0)
    emax_val = float(elem.max_value)
    signs = st.sampled_from((1.0, -1.0))
    pos = draw(st.integers(0, size - 1))
    if block_kind in ("ties", "near_ties"):
        pool = [float(v) for v in _thin(ties(elem)) + _thin(magnitudes(elem))]
        vals = [draw(signs) * draw(st.sampled_from(pool)) * scale for _ in range(size)]
        if block_kind == "near_ties":
            vals = [float(draw(st.sampled_from(neighbours(cast([v], kind)).tolist() or [v]))) for v in vals]
        vals[pos] = draw(signs) * emax_val * scale
        return vals
    if block_kind == "zeros":
        return [draw(signs) * 0.0 for _ in range(size)]
    if block_kind == "tiny":
        sub, norm, _ = _limits(kind)
        k = draw(st.sampled_from([sub, sub + 1, norm - 2, norm, -127, -130, -124, -150]))
        return [draw(signs) * draw(st.floats(0, 8)) * 2.0**k for _ in range(size)]
    if block_kind == "huge":
        k = draw(st.integers(hi - 4, min(hi + 3, 1023)))  # past hi the cast may give Inf
        return [draw(signs) * draw(st.floats(0, 8)) * 2.0**k for _ in range(size)]
    vals = [draw(signs) * draw(st.floats(0, 1)) * emax_val * scale for _ in range(size)]
    if block_kind == "amax_edge":
        edge = draw(st.sampled_from([1.0, emax_val])) * 2.0 ** draw(st.integers(max(lo, -8), min(hi, 8)))
        step = draw(st.sampled_from([-1, 0, 1]))
        edge_bits = cast([edge], kind)
        edge_val = float(neighbours(edge_bits)[0 if step < 0 else 1]) if step else float(edge_bits[0])
        vals = [v * edge / (emax_val * scale) for v in vals]
        vals[pos] = draw(signs) * edge_val
    elif block_kind == "nan":
        vals[pos] = np.nan
    elif block_kind == "inf":
        vals[pos] = draw(signs) * np.inf
    return vals


@st.composite
def arrays(draw: Callable[..., Any], spec: Any, kind: str = "float32", *, max_rows: int = 2, max_n: int = 48) -> np.ndarray:
    """2-D arrays of dtype ``kind`` for ``spec`` (block axis last).

    Element formats: up to ``max_n`` values per row from :func:`element_floats`.
    Block formats: rows of up to three blocks, each of a kind in BLOCK_KINDS, the
    last block partial unless the spec refuses padding; two-level formats may get
    an extra row that pins the tensor scale to a power of two.
    """
    rows = draw(st.integers(1, max_rows))
    if not isinstance(spec, BLOCK_SPECS):
        n = draw(st.integers(1, max_n))
        values = draw(st.lists(element_floats(spec, kind), min_size=rows * n, max_size=rows * n))
        return cast(values, kind).reshape(rows, n)
    bs = spec.block_size
    nblocks = draw(st.integers(1, 3))
    tail = 0 if spec.padding == "error" else draw(st.sampled_from([0, 0, 1, bs // 2]))
    tensor_exp = None
    if spec.tensor_scale is not None:
        tensor_exp = draw(st.integers(-6, 6) if kind != "float16" else st.integers(-12, -8))
    out = []
    for _ in range(rows):
        row = [v for _ in range(nblocks) for v in draw(_block(spec, kind, tensor_exp, bs))]
        if tail:
            row += draw(_block(spec, kind, tensor_exp, tail))
        out.append(row)
    if tensor_exp is not None and draw(st.booleans()):
        out.append([_tensor_anchor(spec, tensor_exp)] + [0.0] * (len(out[0]) - 1))
    return cast(out, kind)


# ---------------------------------------------------------------------------
# named hard cases (the conformance check runs each as a Hypothesis @example)


def examples(spec: Any, kind: str = "float32") -> dict[str, np.ndarray]:
    """Named 2-D arrays of dtype ``kind``: every tie, zeros, subnormals, huge values,
    Inf and NaN; for block formats each as whole blocks."""
    if not isinstance(spec, BLOCK_SPECS):
        return {"ties": tie_values(spec, kind).reshape(1, -1), "specials": cast([special_values(kind)], kind)}
    return {name: cast(rows, kind) for name, rows in _block_examples(spec, kind).items()}


def _rows_of_blocks(blocks: list[list[float]], bs: int) -> list[list[float]]:
    """Blocks (each ``bs`` values) laid out as rows of up to four blocks, zero padded."""
    per_row = 4
    rows = [sum(blocks[i : i + per_row], []) for i in range(0, len(blocks), per_row)]
    width = max(len(r) for r in rows)
    return [r + [0.0] * (width - len(r)) for r in rows]


def _tie_blocks(spec: BlockFormat, scale: float, bs: int, kind: str) -> list[list[float]]:
    """Blocks holding every tie and magnitude (both signs) under ``scale``, each with
    the anchor element max * scale in its first slot."""
    elem = spec.element
    vals = [float(v) * scale for v in _thin(ties(elem)) + _thin(magnitudes(elem))]
    vals += [-v for v in vals]
    if kind == "float64":
        vals += [v * (1 + 2.0**-40) for v in vals[: len(vals) // 2]]
    else:
        vals += neighbours(cast(vals, kind)).astype(np.float64).tolist()
    anchor = float(elem.max_value) * scale
    if bs == 1:  # no room for an anchor: each value sets its own scale
        return [[v] for v in [anchor, *vals]]
    per = bs - 1
    return [[anchor] + vals[i : i + per] + [0.0] * (per - len(vals[i : i + per])) for i in range(0, len(vals), per)]


def _block_examples(spec: BlockFormat, kind: str) -> dict[str, list[list[float]]]:
    bs = spec.block_size
    elem = spec.element
    emax_val = float(elem.max_value)
    sub, norm, top = _limits(kind)
    lo, hi = _scale_exponents(spec, kind)
    pow2 = isinstance(spec.scale, ExpScaleFormat)
    # a row of moderate values, the context the special blocks sit in
    ramp = [emax_val * (i + 1) / bs * (-1) ** i for i in range(bs)]
    cases: dict[str, list[list[float]]] = {}
    tensor, anchor_row = 1.0, []
    if spec.tensor_scale is not None:  # pin the tensor scale to 2^j (float16 has little range)
        j = -10 if kind == "float16" else -3
        tensor, anchor_row = 2.0**j, [[_tensor_anchor(spec, j)] + [0.0] * (bs - 1)]
    float_scales = scale_values(spec) if not pow2 else ()
    scales = [1.0, 2.0 ** max(lo, -5)] if pow2 else [float(float_scales[len(float_scales) // 2]), float(float_scales[0])]
    for i, s in enumerate(scales):
        cases[f"ties_scale{i}"] = _rows_of_blocks(_tie_blocks(spec, s * tensor, bs, kind) + anchor_row, bs)
    edges = []
    for k in (0, 3, -3, min(hi, 30), max(lo, -30)):
        for base in (1.0, emax_val):
            edge = cast([base * 2.0**k], kind)
            for v in [float(edge[0]), *neighbours(edge).astype(np.float64).tolist()]:
                edges.append([v] + [x * v / emax_val for x in ramp[1:]])
    cases["amax_edges"] = _rows_of_blocks(edges, bs)
    zero = [[0.0] * bs, [-0.0] * bs, [(-1) ** i * 0.0 for i in range(bs)]]
    cases["zero_blocks"] = _rows_of_blocks(zero + [ramp], bs)
    nan_block = list(ramp)
    nan_block[bs // 2] = np.nan
    cases["nan_block"] = _rows_of_blocks([nan_block, ramp, [np.nan] * bs], bs)
    inf_blocks = []
    for inf in (np.inf, -np.inf):
        b = list(ramp)
        b[bs - 1] = inf
        inf_blocks.append(b)
    cases["inf_blocks"] = _rows_of_blocks(inf_blocks + [[np.inf] + [0.0] * (bs - 1), ramp], bs)
    tiny = []
    for k in sorted({sub, sub + 3, norm - 3, norm, -127, -124, -130, -149}):
        if k >= sub:
            tiny.append([x * 2.0**k for x in ramp])
    cases["tiny_blocks"] = _rows_of_blocks(tiny, bs)  # no anchor: a tensor scale may underflow
    largest = float(special_values(kind)[5])
    cases["huge_blocks"] = _rows_of_blocks(
        [[x / emax_val * largest for x in ramp], [x * 2.0 ** (top - 4) for x in ramp], [largest] * bs], bs
    )
    if spec.padding != "error" and bs > 1:
        cases["partial_block"] = [ramp + ramp[: max(1, bs // 2)]]
    return cases
