"""The conformance check a format author runs on a new format: ``check(spec)``.

What it asserts, through the public API (``lowbit.quantize`` / ``dequantize`` /
``fake_quant``), on named hard cases (each a Hypothesis ``@example``: every tie,
zero, subnormal, huge, Inf and NaN blocks) and on arrays Hypothesis draws from
:mod:`lowbit.testing.strategies`:

backends
    every listed backend equals the ``reference`` backend bit for bit (rtol=0,
    atol=0; NaN compared as NaN, signed zeros compared) on codes, scale codes,
    scale values, tensor scale, NaN mask and (formatbooks) dialect ids, and on dequantized values in every
    output dtype; inputs in every dtype the spec takes (float16, bfloat16,
    float32, float64; float32 and bfloat16 for ``arithmetic="torchao"``).
fake_quant
    ``fake_quant(x) == dequantize(quantize(x))`` on every backend.
codes (element formats of 8 bits or fewer, and the element of a block format)
    decoding any code and quantizing the value gives the code back, up to the
    canonical form: every NaN code gives one NaN code; a code without NaN code
    gives the NaN mask; Inf codes follow the overflow policy; flushed subnormals
    give the zero of their sign (plain zero where the format has no -0).
idempotence
    ``fake_quant(fake_quant(x)) == fake_quant(x)`` on float64 results: for element
    formats with any rounding (a representable value never rounds, stochastically
    or not), and for block formats with minifloat elements, power-of-two scales,
    deterministic rounding and exact arithmetic. Elsewhere a second pass may
    rightly pick another scale: torchao's arithmetic shrinks tiny blocks on every
    pass (a documented deviation); a subnormal E4M3 scale rounded to nearest can
    grow by half (amax / 6 = 1.5 * 2^-9 gives s = 2^-8, the block maximum becomes
    4 and the next pass clips it with s = 2^-9); two's complement's extra negative
    value raises the next block maximum; a codebook's coarse top lowers it.
sign symmetry (exact arithmetic)
    ``fake_quant(-x) == -fake_quant(x)`` for signed elements, stochastic rounding
    included (the random bits depend on the position only); torchao's arithmetic
    is not symmetric where its tensor scale underflows to 0. Zeros compare
    without sign where the element has no -0 (fnuz, integers); for two's
    complement integers without ``symmetric`` the positions that reach the
    extra negative code are left out.
monotonicity (element formats, nearest and toward-zero rounding)
    ``x <= y`` implies ``fake_quant(x) <= fake_quant(y)`` among results that are
    not NaN (``overflow="nan"`` makes large values NaN).

A failure raises ``AssertionError`` naming the format, the property, the case,
the input dtype and the first failing position with its input and both results.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.formats import resolve
from lowbit.formats.spec import BLOCK_SPECS, CodebookFormat, ExpScaleFormat, FloatFormat, IntFormat, decode_exact
from lowbit.testing import strategies

OUT_DTYPES = strategies.DTYPES
_EXAMPLE_SEED = 20240611


def input_dtypes(spec: Any) -> tuple[str, ...]:
    """The input dtypes ``spec`` takes: torchao's arithmetic takes float32 and bfloat16 only."""
    if getattr(spec, "arithmetic", "exact") == "torchao":
        return ("float32", "bfloat16")
    return strategies.DTYPES


def check(spec: Any, *, backends: Iterable[str] = ("numba",), examples: int = 25) -> None:
    """Assert every property above for ``spec`` (a spec or a registered name).

    ``backends``: the backends to diff against ``reference``; ``examples``: how
    many arrays Hypothesis draws on top of the named hard cases.
    """
    spec = resolve(spec)
    backends = tuple(backends)
    _check_codes_round_trip(spec, ("reference", *backends))
    dtypes = input_dtypes(spec)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(
        case=st.sampled_from(dtypes).flatmap(lambda kind: strategies.arrays(spec, kind).map(lambda x: ("drawn", x))),
        seed=st.integers(0, 2**32 - 1),
    )
    def properties(case: tuple[str, np.ndarray], seed: int) -> None:
        _check_case(spec, backends, case[0], case[1], seed)

    for kind in dtypes:
        for name, x in strategies.examples(spec, kind).items():
            properties = example(case=(name, x), seed=_EXAMPLE_SEED)(properties)
    properties()


# ---------------------------------------------------------------------------
# comparing bit patterns


def bits(a: Any) -> np.ndarray:
    """Bit patterns of a float array or tensor, every NaN made the same positive NaN;
    -0.0 and +0.0 stay different. Other dtypes come back unchanged (as numpy)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().clone()
        if not a.is_floating_point():
            return a.numpy()
        a[torch.isnan(a)] = math.nan
        return a.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]).numpy()
    a = np.array(a, copy=True)
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        a[np.isnan(a.astype(np.float64))] = np.nan
        return a.view(f"u{a.dtype.itemsize}")
    return a


def assert_same_bits(expected: Any, got: Any) -> None:
    """rtol=0, atol=0: same dtype and shape, identical bits (NaN equals NaN, -0.0 is not +0.0)."""
    if type(expected) is not type(got) or expected.dtype != got.dtype or tuple(expected.shape) != tuple(got.shape):
        raise AssertionError(
            f"expected a {type(expected).__name__} of {expected.dtype} {tuple(expected.shape)}, "
            f"got a {type(got).__name__} of {got.dtype} {tuple(got.shape)}"
        )
    where = np.argwhere(bits(expected) != bits(got))
    if len(where):
        at = tuple(int(i) for i in where[0])
        raise AssertionError(
            f"{len(where)} of {bits(got).size} values differ; first at {at}: "
            f"expected {float(expected[at])!r}, got {float(got[at])!r}"
        )


def _fmt(v: Any) -> str:
    f = float(v)
    return f"{f!r} ({f.hex()})" if math.isfinite(f) and f != int(f) else repr(f)


class _Case:
    """One input of one property check, for error messages."""

    def __init__(self, spec: Any, label: str, x: np.ndarray) -> None:
        self.spec, self.label, self.x = spec, label, x

    def fail(self, what: str, detail: str = "") -> None:
        raise AssertionError(
            f"format {self.spec.name!r}: {what} (case {self.label!r}, input dtype {self.x.dtype.name}, "
            f"shape {self.x.shape}){detail}"
        )

    def same(self, what: str, expected: Any, got: Any, *, per_block: bool = False) -> None:
        """Bit-identical arrays, else a failure naming the first differing position and its input."""
        expected, got = np.asarray(expected), np.asarray(got)
        if expected.shape != got.shape:
            self.fail(what, f": shapes differ, expected {expected.shape}, got {got.shape}")
        where = np.argwhere(bits(expected) != bits(got))
        if not len(where):
            return
        at = tuple(int(i) for i in where[0])
        detail = f": first at index {at}: expected {_fmt(expected[at])}, got {_fmt(got[at])}"
        if per_block:
            bs = self.spec.block_size
            block = self.x[at[0], at[1] * bs : (at[1] + 1) * bs].astype(np.float64)
            detail += f"; input block {block.tolist()}"
        elif got.shape == self.x.shape:
            detail += f"; input {_fmt(self.x[at])}"
        self.fail(what, detail)


# ---------------------------------------------------------------------------
# the properties on one input


def raises_on_nan(spec: Any) -> bool:
    """Whether ``spec`` refuses NaN input (an element format with nan="raise" and no NaN code)."""
    return not isinstance(spec, BLOCK_SPECS) and not getattr(spec, "has_nan", False) and spec.nan == "raise"


def _check_case(spec: Any, backends: tuple[str, ...], label: str, x: np.ndarray, seed: int) -> None:
    case = _Case(spec, label, x)
    nan = np.isnan(x.astype(np.float64))
    if raises_on_nan(spec) and nan.any():
        for b in ("reference", *backends):
            try:
                lowbit.quantize(x, spec, backend=b, seed=seed, axis=-1)
            except ValueError:
                continue
            case.fail(f"{b} accepted a NaN although the format has nan='raise'")
        x = np.where(nan, 0, x).astype(x.dtype)
        case = _Case(spec, label + " (NaN replaced by 0)", x)
    _check_backends(spec, backends, case, seed)
    for b in backends:
        _check_idempotent(spec, b, case, seed)
        _check_symmetric(spec, b, case, seed)
        _check_monotonic(spec, b, case)


def _fq(spec: Any, x: np.ndarray, backend: str, seed: int) -> np.ndarray:
    return lowbit.fake_quant(x, spec, backend=backend, seed=seed, axis=-1)


def _check_backends(spec: Any, backends: tuple[str, ...], case: _Case, seed: int) -> None:
    x = case.x
    ref = lowbit.quantize(x, spec, backend="reference", seed=seed, axis=-1)
    ref_out = {kind: lowbit.dequantize(ref, backend="reference", dtype=kind) for kind in OUT_DTYPES}
    for b in backends:
        got = lowbit.quantize(x, spec, backend=b, seed=seed, axis=-1)
        case.same(f"{b} codes differ from reference", ref.unpacked_codes(), got.unpacked_codes())
        case.same(f"{b} packed codes differ from reference", ref.codes, got.codes)
        for field in ("scale_codes", "scales", "nan_mask", "dialect_ids"):
            r, g = getattr(ref, field), getattr(got, field)
            if (r is None) != (g is None):
                case.fail(f"{b} gives {field}={'None' if g is None else 'an array'}, reference does not")
            if r is not None:
                case.same(f"{b} {field} differ from reference", r, g, per_block=field != "nan_mask")
        r_ts, g_ts = ref.tensor_scale, got.tensor_scale
        if (r_ts is None) != (g_ts is None) or (r_ts is not None and bits(r_ts) != bits(g_ts)):
            case.fail(f"{b} tensor scale {g_ts!r} differs from reference's {r_ts!r}")
        for kind in OUT_DTYPES:
            y = lowbit.dequantize(got, backend=b, dtype=kind)
            case.same(f"{b} dequantize to {kind} differs from reference", ref_out[kind], y)
        fq = _fq(spec, x, b, seed)
        case.same(f"{b} fake_quant differs from reference dequantize(quantize)", ref_out[x.dtype.name], fq)
        case.same(f"{b} fake_quant differs from its own dequantize(quantize)", lowbit.dequantize(got, backend=b), fq)


def _check_idempotent(spec: Any, backend: str, case: _Case, seed: int) -> None:
    """On float64 values: a narrow output dtype may round a result to Inf (65536 in
    float16), which is that dtype's rounding, not the format's."""
    if isinstance(spec, BLOCK_SPECS) and (
        spec.rounding == "stochastic"
        or spec.arithmetic != "exact"
        or not isinstance(spec.scale, ExpScaleFormat)
        or not isinstance(spec.element, FloatFormat)
    ):
        return
    q = lowbit.quantize(case.x, spec, backend=backend, seed=seed, axis=-1)
    y = lowbit.dequantize(q, backend=backend, dtype="float64")
    again = _Case(spec, case.label + ", after one fake_quant", y)
    again.same(f"{backend} fake_quant is not idempotent", y, _fq(spec, y, backend, seed))


def _check_symmetric(spec: Any, backend: str, case: _Case, seed: int) -> None:
    elem = strategies.element_of(spec)
    if not elem.signed or getattr(spec, "arithmetic", "exact") != "exact":
        return
    x = case.x
    expected = -_fq(spec, x, backend, seed).astype(np.float64)
    got = _fq(spec, -x, backend, seed).astype(np.float64)
    if isinstance(elem, IntFormat) or (isinstance(elem, FloatFormat) and elem.special == "fnuz"):
        expected, got = expected + 0.0, got + 0.0  # no -0 code: compare zeros without sign
    if isinstance(elem, IntFormat) and not elem.symmetric:
        extra = (1 << elem.bits) + elem.min_int  # the negative code with no positive twin
        codes = [lowbit.quantize(v, spec, backend=backend, seed=seed, axis=-1).unpacked_codes() for v in (x, -x)]
        keep = (codes[0] != extra) & (codes[1] != extra)
        expected, got = np.where(keep, expected, 0.0), np.where(keep, got, 0.0)
    case.same(f"{backend} fake_quant(-x) differs from -fake_quant(x)", expected, got)


def _check_monotonic(spec: Any, backend: str, case: _Case) -> None:
    if isinstance(spec, BLOCK_SPECS) or spec.rounding == "stochastic":
        return
    flat = case.x.ravel()
    flat = flat[~np.isnan(flat.astype(np.float64))]
    xs = flat[np.argsort(flat.astype(np.float64), kind="stable")]
    ys = _fq(spec, xs.reshape(1, -1), backend, 0).astype(np.float64).ravel()
    xs, ys = xs[~np.isnan(ys)], ys[~np.isnan(ys)]
    drops = np.nonzero(ys[1:] < ys[:-1])[0]
    if len(drops):
        i = int(drops[0])
        case.fail(
            f"{backend} fake_quant is not monotonic",
            f": x = {_fmt(xs[i])} <= {_fmt(xs[i + 1])} but fake_quant gives {_fmt(ys[i])} > {_fmt(ys[i + 1])}",
        )


# ---------------------------------------------------------------------------
# every code round-trips

_ONE_NAN = -1  # canonical_code's answer for "the format's one NaN code"


def canonical_code(elem: Any, code: int) -> int | None:
    """The code that quantizing ``decode_exact(elem, code)`` must give.

    ``-1`` stands for the format's single NaN code (NaN codes, and Inf under
    ``overflow="nan"``); ``None`` for a NaN the format has no code for (the
    dropped code of a symmetric integer format): the NaN mask carries it.
    """
    v = decode_exact(elem, code)
    sign = 1 << (elem.bits - 1) if elem.signed else 0
    if isinstance(v, float) and math.isnan(v):
        return _ONE_NAN if getattr(elem, "has_nan", False) else None
    neg = math.copysign(1.0, float(v)) < 0
    if isinstance(v, float) and math.isinf(v):
        if elem.overflow == "saturate":
            return elem.max_code | (sign if neg else 0)
        return _ONE_NAN if elem.overflow == "nan" else code
    if v == 0:
        has_neg_zero = isinstance(elem, CodebookFormat) or (isinstance(elem, FloatFormat) and elem.special != "fnuz")
        return sign if neg and has_neg_zero else 0
    return code


def _check_codes_round_trip(spec: Any, backends: tuple[str, ...]) -> None:
    elem = strategies.element_of(spec)
    if elem.bits > 8:
        return
    codes = list(range(1 << elem.bits))
    expected = [canonical_code(elem, c) for c in codes]
    if raises_on_nan(elem):  # a NaN without a code is an error there, not a value
        codes = [c for c, e in zip(codes, expected) if e is not None]
        expected = [e for e in expected if e is not None]
    x = np.array([[float(decode_exact(elem, c)) for c in codes]], np.float64)
    case = _Case(elem, f"every code of {elem.name} (element of {spec.name})", x)
    no_code = np.array([[e is None for e in expected]])
    for b in backends:
        q = lowbit.quantize(x, elem, backend=b, seed=_EXAMPLE_SEED, axis=-1)
        got = q.unpacked_codes().astype(np.int64)
        nan_codes = {int(g) for g, e in zip(got[0], expected) if e == _ONE_NAN}
        if len(nan_codes) > 1:
            case.fail(f"{b}: NaN codes do not map to one canonical NaN code: {sorted(nan_codes)}")
        nan_code = nan_codes.pop() if nan_codes else None
        if nan_code is not None and not math.isnan(float(decode_exact(elem, nan_code))):
            case.fail(f"{b}: NaN gives code {nan_code}, which is not a NaN")
        want = np.array([[nan_code if e == _ONE_NAN else (0 if e is None else e) for e in expected]])
        case.same(f"{b}: decode then quantize does not give the canonical code", want, got)
        mask = np.zeros_like(no_code) if q.nan_mask is None else np.unpackbits(q.nan_mask, axis=-1, count=len(codes))
        case.same(f"{b}: NaN mask of the decoded codes", no_code, mask.astype(bool))
        values = [np.nan if e is None else float(decode_exact(elem, int(c))) for c, e in zip(want[0], expected)]
        y = lowbit.dequantize(q, backend=b, dtype="float64")
        case.same(f"{b}: dequantize of the round-tripped codes", np.array([values]), y)
