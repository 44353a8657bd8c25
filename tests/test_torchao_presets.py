"""The ``@torchao`` presets reproduce torchao 0.18 bit for bit; the exact presets do not.

The oracle is torchao 0.18 itself, called the way its users call it: ``to_mx`` and
``to_dtype`` for MX (``ScaleCalculationMode`` FLOOR and RCEIL), and
``NVFP4Tensor.to_nvfp4`` / ``dequantize`` for NVFP4, single level (no per-tensor
scale) and two level (``per_tensor_amax_to_scale(max |x|)``). Compared bit for bit
(NaN canonicalised, signed zeros distinguished): element codes as torchao stores
them (fp4 packed two per byte, element 2i in the low nibble; fp6 unpacked codes;
fp8 codes), scale codes (E8M0 biased exponents, E4M3 bits), the per-tensor scale,
and the dequantized float32 and bfloat16 values, for float32 and bfloat16 inputs,
with the ``numba`` and the ``reference`` backend.

Inputs: Gaussian and heavy-tailed data over a wide dynamic range, and adversarial
blocks: every element tie (and its float neighbours) times every block scale,
block maxima a few ulps around powers of two (the floor rule, and the rceil
float32-log2 quirk), tiny blocks, zero blocks and signed zeros, Inf and NaN.
The reference backend is slow, so it gets a fixed subset of each input.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3
from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

import lowbit
from lowbit.emulate import numba_backend, reference
from lowbit.formats import ExpScaleFormat, decode_exact, get

pytestmark = pytest.mark.torchao

MX_ARGS = {
    "mxfp4@torchao": (torch.float4_e2m1fn_x2, ScaleCalculationMode.FLOOR),
    "mxfp4_rceil@torchao": (torch.float4_e2m1fn_x2, ScaleCalculationMode.RCEIL),
    "mxfp6_e2m3@torchao": (DTYPE_FP6_E2M3, ScaleCalculationMode.FLOOR),
    "mxfp8_e4m3@torchao": (torch.float8_e4m3fn, ScaleCalculationMode.FLOOR),
}
PRESETS = (*MX_ARGS, "nvfp4@torchao", "nvfp4_2level@torchao")
BACKENDS = ("numba", "reference")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # input and output
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16}
REFERENCE_MAX_ELEMENTS = 2048  # the exact backend costs about 0.3 ms per element


class Result(NamedTuple):
    codes: np.ndarray  # uint8, torchao's layout
    scale_codes: np.ndarray  # uint8, (rows, blocks)
    tensor_scale: float | None
    values: dict[str, torch.Tensor]  # dequantized, by output dtype


# ---------------------------------------------------------------------------
# both sides


def torchao_result(name: str, x: torch.Tensor) -> Result:
    if name in MX_ARGS:
        elem_dtype, mode = MX_ARGS[name]
        block = get(name).block_size
        scale, data = to_mx(x, elem_dtype, block, mode)
        values = {k: to_dtype(data, scale, elem_dtype, block, dt) for k, dt in DTYPES.items()}
        return Result(data.view(torch.uint8).numpy(), scale.view(torch.uint8).numpy(), None, values)
    if name == "nvfp4_2level@torchao":
        t = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(torch.max(torch.abs(x))))
    else:
        t = NVFP4Tensor.to_nvfp4(x)
    values = {k: t.dequantize(dt) for k, dt in DTYPES.items()}
    ts = None if t.per_tensor_scale is None else float(t.per_tensor_scale)
    return Result(t.qdata.view(torch.uint8).numpy(), t.scale.view(torch.uint8).numpy(), ts, values)


def lowbit_result(name: str, x: torch.Tensor, backend: str) -> Result:
    q = lowbit.quantize(x, name, backend=backend)
    values = {k: lowbit.dequantize(q, dtype=k, backend=backend) for k in DTYPES}
    return Result(q.codes, q.scale_codes, q.tensor_scale, values)


def canonical_bits(t: torch.Tensor) -> np.ndarray:
    """Bit patterns as int64 with every NaN mapped to -1 (signed zeros stay apart)."""
    bits = t.contiguous().view(INT_VIEW[t.dtype]).numpy().astype(np.int64)
    return np.where(torch.isnan(t).numpy(), -1, bits)


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    a, e = canonical_bits(actual), canonical_bits(expected)
    bad = np.argwhere(a != e)
    assert bad.size == 0, (
        f"{what}: {len(bad)} of {a.size} differ, first at {bad[0].tolist()}: "
        f"got {actual[tuple(bad[0])].item()!r}, expected {expected[tuple(bad[0])].item()!r}"
    )


def scale_is_nan(name: str, scale_codes: np.ndarray) -> np.ndarray:
    if isinstance(get(name).scale, ExpScaleFormat):
        return scale_codes == 255
    return (scale_codes & 0x7F) == 0x7F  # E4M3 (fn): S.1111.111


def assert_matches_torchao(name: str, x: torch.Tensor, backend: str) -> None:
    spec = get(name)
    ao = torchao_result(name, x)
    lb = lowbit_result(name, x, backend)

    nan_blocks = scale_is_nan(name, ao.scale_codes)
    np.testing.assert_array_equal(scale_is_nan(name, lb.scale_codes), nan_blocks, err_msg="NaN scales")
    np.testing.assert_array_equal(lb.scale_codes[~nan_blocks], ao.scale_codes[~nan_blocks], err_msg="scale codes")
    # Inside a NaN-scale block torchao's element codes mean nothing (its bit-level
    # casts turn NaN into arbitrary codes): there only the NaN scale (above) and the
    # all-NaN dequantized values (below) are compared.
    per_byte = 2 if spec.element.bits == 4 else 1
    code_ok = np.repeat(~nan_blocks, spec.block_size // per_byte, axis=1)
    assert lb.codes.shape == ao.codes.shape
    np.testing.assert_array_equal(lb.codes[code_ok], ao.codes[code_ok], err_msg="element codes")

    if ao.tensor_scale is None:
        assert lb.tensor_scale is None
    else:
        assert_same_bits(torch.tensor([lb.tensor_scale]), torch.tensor([ao.tensor_scale]), "tensor scale")

    value_nan_blocks = torch.from_numpy(np.repeat(nan_blocks, spec.block_size, axis=1))
    for k in DTYPES:
        assert_same_bits(lb.values[k], ao.values[k], f"dequantize to {k}")
        assert torch.isnan(lb.values[k][value_nan_blocks]).all()
    fq = lowbit.fake_quant(x, name, backend=backend)
    assert_same_bits(fq, ao.values[str(x.dtype).removeprefix("torch.")], "fake_quant")


# ---------------------------------------------------------------------------
# inputs: each case gives whole blocks, (blocks, block_size), in the input dtype


def grid(fmt) -> np.ndarray:
    """The non-negative finite values of a float format, ascending."""
    return np.array([float(decode_exact(fmt, c)) for c in range(fmt.max_code + 1)])


def block_scales(spec) -> np.ndarray:
    """The block scales to test: E8M0 powers of two under which the element maximum
    stays a finite float32, or the E4M3 values torchao's NVFP4 clamp allows."""
    if isinstance(spec.scale, ExpScaleFormat):
        return 2.0 ** np.arange(-140, 128 - spec.element.emax)
    s = grid(spec.scale)
    return s[s >= spec.scale_min]


def nudge(t: torch.Tensor, ulps: torch.Tensor) -> torch.Tensor:
    """``t`` moved ``ulps`` units in the last place of its own dtype away from zero
    (toward zero for negative ``ulps``, stopping at zero)."""
    iv = INT_VIEW[t.dtype]
    sign_bit = 1 << (torch.finfo(t.dtype).bits - 1)
    bits = t.view(iv).to(torch.int64)
    mag = torch.clamp((bits & (sign_bit - 1)) + ulps, min=0)
    return torch.where(bits < 0, mag - sign_bit, mag).to(iv).view(t.dtype)


def as_blocks(blocks: list[np.ndarray], bs: int, dtype: torch.dtype, rng, ulps: list[np.ndarray] | None = None):
    """Blocks of ``bs`` (zero-padded, each shuffled) in ``dtype``; ``ulps`` moves values
    after the conversion, so neighbours are neighbours in the input dtype."""
    v = np.zeros((len(blocks), bs))
    u = np.zeros((len(blocks), bs), np.int64)
    for i, b in enumerate(blocks):
        v[i, : b.size] = b
        if ulps is not None:
            u[i, : b.size] = ulps[i]
        p = rng.permutation(bs)
        v[i], u[i] = v[i, p], u[i, p]
    return nudge(torch.from_numpy(v).to(dtype), torch.from_numpy(u))


def random_sign(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size=n)


def case_random(spec, dtype, rng) -> torch.Tensor:
    """Gaussian and heavy-tailed (Student t, 1.5 degrees of freedom) rows, row scales 2^N(0, 8)."""
    rows = 128
    row_scale = np.exp2(rng.normal(0, 8, (rows, 1)))
    gauss = rng.normal(size=(rows // 2, 256))
    heavy = rng.standard_t(1.5, size=(rows // 2, 256))
    return torch.from_numpy(np.concatenate([gauss, heavy]) * row_scale).to(dtype)


def _tie_blocks(spec, dtype, rng, moves: tuple[int, ...]) -> torch.Tensor:
    """For every block scale s: the element maximum times s (which makes the scale s)
    and every element midpoint times s, moved by each of ``moves`` ulps; the non-zero
    element values ride along. Random signs."""
    bs = spec.block_size
    g = grid(spec.element)
    mids = (g[1:] + g[:-1]) / 2
    pool = np.concatenate([np.tile(mids, len(moves)), g[1:]])
    pool_ulps = np.concatenate([np.repeat(moves, mids.size), np.zeros(g.size - 1, np.int64)])
    blocks, ulps = [], []
    for s in block_scales(spec):
        for chunk in np.array_split(rng.permutation(pool.size), math.ceil(pool.size / (bs - 1))):
            blocks.append(np.concatenate([[g[-1]], pool[chunk]]) * s * random_sign(rng, chunk.size + 1))
            ulps.append(np.concatenate([[0], pool_ulps[chunk]]))
    return as_blocks(blocks, bs, dtype, rng, ulps)


def case_ties(spec, dtype, rng) -> torch.Tensor:
    return _tie_blocks(spec, dtype, rng, (0,))


def case_tie_neighbours(spec, dtype, rng) -> torch.Tensor:
    return _tie_blocks(spec, dtype, rng, (-1, 1))


def case_amax_near_pow2(spec, dtype, rng) -> torch.Tensor:
    """Block maxima a few ulps around the points where the block scale changes."""
    bs = spec.block_size
    if isinstance(spec.scale, ExpScaleFormat):
        # floor switches at powers of two, rceil where amax / elem_max is one (the
        # float32-log2 quirk: amax / 6 a few ulps above 2^k)
        pows = 2.0 ** np.arange(-126, 128)
        emax = spec.element.max_value
        targets = np.concatenate([pows, emax * pows[emax * pows < 2.0**128]])
        moves = np.arange(-3, 9)
    else:
        # the E4M3 block scale rounds amax / 6: it switches at 6 * (E4M3 values and midpoints)
        s = grid(spec.scale)[1:]
        targets = 6 * np.concatenate([s, (s[1:] + s[:-1]) / 2])
        moves = np.arange(-2, 3)
    blocks, ulps = [], []
    for a in targets:
        for m in moves:
            rest = rng.uniform(-0.9, 0.9, bs - 1) * a
            blocks.append(np.concatenate([[a * random_sign(rng, 1)[0]], rest]))
            ulps.append(np.concatenate([[m], np.zeros(bs - 1, np.int64)]))
    return as_blocks(blocks, bs, dtype, rng, ulps)


def case_tiny(spec, dtype, rng) -> torch.Tensor:
    """Blocks near and below the smallest scales: float32/bfloat16 subnormals (torchao's MX
    floor divides by 2^-126 there; its rceil flushes amax <= 6 * 2^-127) and NVFP4 blocks
    whose amax / 6 is under the 2^-6 scale clamp."""
    bs = spec.block_size
    g = grid(spec.element)
    smooth = [rng.uniform(-1, 1, bs) * 2.0**e for e in (*range(-150, -117), *range(-30, -2))]
    exact = [rng.choice(g, bs) * random_sign(rng, bs) * 2.0**k for k in (*range(-140, -123), *range(-14, -5))]
    edges = [np.array([2.0**-149, -(2.0**-126 - 2.0**-149), 2.0**-126, 6 * 2.0**-127, -6 * 2.0**-128])]
    return as_blocks(smooth + exact + edges, bs, dtype, rng)


def case_zero_blocks(spec, dtype, rng) -> torch.Tensor:
    """All-zero blocks of either sign, zeros around one smallest subnormal or one 1.0,
    and ordinary blocks (so a two-level tensor scale stays positive)."""
    bs = spec.block_size
    zeros = [np.zeros(bs), -np.zeros(bs), np.copysign(np.zeros(bs), random_sign(rng, bs))]
    one = np.copysign(np.zeros(bs), random_sign(rng, bs))
    one[0] = 1.0
    blocks = [*zeros, np.zeros(bs), -np.zeros(bs), one, *rng.normal(size=(4, bs))]
    ulps = [np.zeros(bs, np.int64) for _ in blocks]
    ulps[3][0] = ulps[4][0] = 1  # +0 and -0 moved to the smallest subnormal of the input dtype
    return as_blocks(blocks, bs, dtype, rng, ulps)


def case_zero_tensor(spec, dtype, rng) -> torch.Tensor:
    """Only signed zeros (a two-level tensor scale of 0: torchao makes everything NaN)."""
    bs = spec.block_size
    return as_blocks([np.copysign(np.zeros(bs), random_sign(rng, bs)) for _ in range(4)], bs, dtype, rng)


def _special_blocks(spec, dtype, rng, specials: list[list[float]]) -> torch.Tensor:
    """Ordinary blocks with ``specials`` written in, plus four ordinary blocks."""
    bs = spec.block_size
    blocks = []
    for vals in specials:
        b = rng.normal(size=bs) * 2.0 ** rng.integers(-20, 20)
        b[: len(vals)] = vals
        blocks.append(b)
    return as_blocks(blocks + list(rng.normal(size=(4, bs))), bs, dtype, rng)


def case_inf(spec, dtype, rng) -> torch.Tensor:
    inf, bs = np.inf, spec.block_size
    zeros_inf = [inf] + [0.0, -0.0] * (bs // 2 - 1) + [0.0]
    return _special_blocks(spec, dtype, rng, [[inf], [-inf], [inf, -inf], [-inf, 2.0**-140], zeros_inf, [inf] * bs])


def case_nan(spec, dtype, rng) -> torch.Tensor:
    nan, inf, bs = np.nan, np.inf, spec.block_size
    return _special_blocks(spec, dtype, rng, [[nan], [-nan], [nan, inf], [nan, -0.0] * (bs // 2), [nan] * bs])


CASES: dict[str, Callable[..., torch.Tensor]] = {
    "random": case_random,
    "ties": case_ties,
    "tie_neighbours": case_tie_neighbours,
    "amax_near_pow2": case_amax_near_pow2,
    "tiny": case_tiny,
    "zero_blocks": case_zero_blocks,
    "zero_tensor": case_zero_tensor,
    "inf": case_inf,
    "nan": case_nan,
}


def make_input(name: str, case: str, dtype_name: str, backend: str) -> torch.Tensor:
    spec = get(name)
    rng = np.random.default_rng(zlib.crc32(f"{name}/{case}/{dtype_name}".encode()))
    x = CASES[case](spec, DTYPES[dtype_name], rng)
    if backend == "reference" and x.numel() > REFERENCE_MAX_ELEMENTS:
        rows = rng.choice(x.shape[0], REFERENCE_MAX_ELEMENTS // x.shape[1], replace=False)
        x = x[np.sort(rows)]
    return x.contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_torchao(name: str, case: str, dtype_name: str, backend: str) -> None:
    assert_matches_torchao(name, make_input(name, case, dtype_name, backend), backend)


# ---------------------------------------------------------------------------
# torchao's deviations from the exact rules: the presets have them, the exact
# formats do not


def e2m1_block(scale: float) -> torch.Tensor:
    """One MX block: every E2M1 value of either sign, twice, times ``scale`` (exact in float32)."""
    g = grid(get("mxfp4").element)
    return torch.tensor(np.tile(np.concatenate([g, -g]), 2)[None, :] * scale, dtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mx_tiny_blocks(backend: str) -> None:
    """amax = 6 * 2^-127: torchao's floor path divides by 2^-126 but multiplies back by
    2^-127 (about half the value); its rceil path takes ceil(log2(2^-127)) = -127, scale
    code 0, multiplies by 1 and flushes. Exact MXFP4 (either rule) returns x exactly."""
    x = e2m1_block(2.0**-127)
    for name in ("mxfp4@torchao", "mxfp4_rceil@torchao"):
        assert_matches_torchao(name, x, backend)
    halved = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 3.0])  # RNE_E2M1(g / 2)
    expected = torch.cat([halved, -halved] * 2)[None, :] * 2.0**-127
    assert_same_bits(lowbit.fake_quant(x, "mxfp4@torchao", backend=backend), expected, "torchao floor")
    assert_same_bits(lowbit.fake_quant(x, "mxfp4_rceil@torchao", backend=backend), x * 0.0, "torchao rceil")
    for name in ("mxfp4", "mxfp4_rceil"):
        assert_same_bits(lowbit.fake_quant(x, name, backend=backend), x, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [-100, -20, 5, 20, 100])
def test_rceil_float32_log2_quirk(k: int, backend: str) -> None:
    """amax one ulp above 6 * 2^k: fl32(amax / 6) is one ulp above 2^k, whose float32
    log2 rounds to exactly k, so torchao's rceil picks scale 2^k and clips amax to
    6 * 2^k. The exact rceil rule picks 2^(k+1)."""
    amax = nudge(torch.tensor([6 * 2.0**k]), torch.tensor([1]))
    x = amax * torch.linspace(-1, 1, 32)[None, :]
    assert_matches_torchao("mxfp4_rceil@torchao", x, backend)
    scale, _data = to_mx(x, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.RCEIL)
    assert scale.view(torch.uint8).item() == k + 127
    q = lowbit.quantize(x, "mxfp4_rceil@torchao", backend=backend)
    assert q.scale_codes.item() == k + 127
    assert lowbit.fake_quant(x, "mxfp4_rceil@torchao", backend=backend)[0, -1].item() == 6 * 2.0**k
    assert lowbit.quantize(x, "mxfp4_rceil", backend=backend).scale_codes.item() == k + 128


def nvfp4_cases() -> torch.Tensor:
    """Row 0 sets a two-level tensor scale of exactly 1. Row 1: s = 45 / 6 = 7.5 and
    18.75 / 7.5 = 2.5, a tie (to 2). Rows 2 and 3: E2M1 values times 2^-8 and 2^-11,
    whose amax / 6 (2^-8, an E4M3 subnormal; 2^-11, under the smallest) is below
    torchao's 2^-6 scale clamp."""
    g = grid(get("nvfp4").element)
    rows = np.zeros((4, 16))
    rows[0, 0] = 2688.0
    rows[1, :2] = [45.0, 18.75]
    rows[2] = np.concatenate([g, -g]) * 2.0**-8
    rows[3] = np.concatenate([g, -g]) * 2.0**-11
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_reciprocal_and_scale_clamp(backend: str) -> None:
    """torchao scales elements by a float32 reciprocal: 18.75 * fl32(1 / 7.5) is just
    above 2.5 and goes to 3, dequantized 22.5 (exact: 2 * 7.5 = 15). It clamps block
    scales to >= 2^-6: a block of amax 6 * 2^-8 lands on a 4x coarser grid and one of
    amax 6 * 2^-11 flushes to zero. Exact NVFP4 has subnormal scales (down to 2^-9): it
    returns the first block exactly and keeps the second on a grid of 2^-9."""
    x = nvfp4_cases()
    coarse = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.5])  # RNE_E2M1(g / 4)
    coarse = torch.cat([coarse, -coarse])
    for name in ("nvfp4@torchao", "nvfp4_2level@torchao"):
        assert_matches_torchao(name, x, backend)
        y = lowbit.fake_quant(x, name, backend=backend)
        assert y[1, 1].item() == 22.5
        assert_same_bits(y[2], coarse * 2.0**-6, name)
        assert_same_bits(y[3], x[3] * 0.0, name)
    exact = lowbit.fake_quant(x, "nvfp4", backend=backend)
    assert exact[1, 1].item() == 15.0
    assert_same_bits(exact[2], x[2], "nvfp4")
    assert_same_bits(exact[3], coarse * 2.0**-9, "nvfp4")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_two_level_product_rounding(backend: str) -> None:
    """torchao dequantizes q * fl32(ts * s) (the scale product rounded first), exact
    NVFP4 rounds q * s * ts once: with identical codes, 5 to 17% of the outputs on
    Gaussian data (depending on ts) are one ulp apart."""
    rows = 256 if backend == "numba" else REFERENCE_MAX_ELEMENTS // 256
    x = torch.from_numpy(np.random.default_rng(11).normal(size=(rows, 256))).float()
    q_ao = lowbit.quantize(x, "nvfp4_2level@torchao", backend=backend)
    q_ex = lowbit.quantize(x, "nvfp4", backend=backend)
    assert q_ao.tensor_scale == q_ex.tensor_scale
    ts = np.float64(q_ex.tensor_scale)
    values = grid(get("nvfp4").element)
    codes = q_ex.unpacked_codes()
    same = (q_ao.unpacked_codes() == codes) & np.repeat(q_ao.scale_codes == q_ex.scale_codes, 16, axis=1)
    assert same.mean() > 0.99
    qv = np.where(codes & 8, -1.0, 1.0) * values[codes & 7]
    s = np.repeat(q_ex.scales, 16, axis=1)
    exact_order = (qv * s * ts).astype(np.float32)  # the float64 product is exact (2 + 4 + 24 bits)
    torchao_order = (qv.astype(np.float32) * (s * ts).astype(np.float32)).astype(np.float32)
    y_ex = lowbit.dequantize(q_ex, dtype="float32", backend=backend).numpy()
    y_ao = lowbit.dequantize(q_ao, dtype="float32", backend=backend)
    np.testing.assert_array_equal(y_ex, exact_order)
    np.testing.assert_array_equal(y_ao.numpy()[same], torchao_order[same])
    assert_matches_torchao("nvfp4_2level@torchao", x, backend)
    apart = same & (y_ao.numpy() != y_ex)
    assert 0.03 < apart.sum() / same.sum() < 0.3
    ulps = np.abs(y_ao.numpy().view(np.int32)[apart].astype(np.int64) - y_ex.view(np.int32)[apart])
    assert (ulps == 1).all()


# ---------------------------------------------------------------------------
# the float32 log2 of torchao's CPU rceil


def pow2_neighbourhood(ulps: int) -> np.ndarray:
    """Every positive finite float32 within ``ulps`` of a power of two 2^-149 .. 2^127."""
    base = (2.0 ** np.arange(-149, 128)).astype(np.float32).view(np.int32).astype(np.int64)
    bits = (base[:, None] + np.arange(-ulps, ulps + 1)[None, :]).ravel()
    return np.unique(bits[(bits > 0) & (bits < 0x7F800000)]).astype(np.int32).view(np.float32)


def exact_ceil_log2(d: np.ndarray) -> np.ndarray:
    """ceil(log2(d)) exactly, from frexp's exponent."""
    m, e = np.frexp(d.astype(np.float64))
    return np.where(m == 0.5, e - 1, e)


def test_rceil_log2_matches_torch_large_tensor() -> None:
    """One vectorized torch.log2 / numpy call over every float32 within 2048 ulps of a
    power of two; the Numba helper element by element, as the kernels call it."""
    d = pow2_neighbourhood(2048)
    torch_ceil = torch.ceil(torch.log2(torch.from_numpy(d))).numpy()
    np.testing.assert_array_equal(np.ceil(reference._torchao_log2_f32(d)), torch_ceil)
    np.testing.assert_array_equal(np.array([numba_backend._torchao_ceil_log2(v) for v in d]), torch_ceil)
    # the quirk the presets reproduce is really there: just above 2^k, ceil gives k
    assert (torch_ceil < exact_ceil_log2(d)).sum() > 1000


def test_rceil_log2_matches_torch_small_tensors() -> None:
    """torch.log2 and numpy on one-element tensors (their scalar / tail code paths),
    within 64 ulps of each power of two, where every change of the ceil lies."""
    d = pow2_neighbourhood(64)
    torch_ceil = np.array([torch.ceil(torch.log2(torch.tensor([v], dtype=torch.float32))).item() for v in d])
    ref_ceil = np.array([np.ceil(reference._torchao_log2_f32(np.array([v]))).item() for v in d])
    np.testing.assert_array_equal(ref_ceil, torch_ceil)
    np.testing.assert_array_equal(np.array([numba_backend._torchao_ceil_log2(v) for v in d]), torch_ceil)
    assert (torch_ceil < exact_ceil_log2(d)).any()
