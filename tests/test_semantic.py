"""SemanticState: exact chunked saliency, groups, decomposition, SeDA, schedule, bits.

References are independent of the code under test: attention probabilities come
from torch's own scaled_dot_product_attention with V = identity (so its output *is*
the probability map, masks handled by SDPA itself), dialect usage from
np.bincount over an unrestricted lowbit.quantize, bits from the format's field
widths counted by hand.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_triton import DEVICE, needs_triton, quiet_interpreter

import lowbit
from lowbit.emulate import Recipe, SubFormatbooks
from lowbit.emulate.semantic import Decomposition, SeDA, SemanticState, attention_groups, attention_saliency
from lowbit.testing.conformance import assert_same_bits

FMT = "semantic_dialect"  # 32 dialects, lut selection, block 32, 4-bit elements, 5-bit exponent
N_DIALECTS = 32


def _probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """The full (B, H, L, L) attention probability map, from SDPA itself (V = identity)."""
    eye = torch.eye(k.shape[2], dtype=q.dtype).expand(q.shape[0], q.shape[1], -1, -1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, eye, attn_mask=mask, scale=scale)


def _qk(seed: int, b: int = 2, h: int = 3, n: int = 16, d: int = 8, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(b, h, n, d, generator=g, dtype=dtype), 2 * torch.randn(b, h, n, d, generator=g, dtype=dtype)


def _activations(seed: int, shape: tuple[int, ...] = (2, 16, 64)) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.laplace(size=shape).astype(np.float32))


def _masks(kind: str, b: int, h: int, n: int) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(7)
    if kind == "none":
        return None
    if kind == "bool":
        m = torch.rand(b, 1, n, n, generator=g) > 0.4
        m[:, :, :, 0] = True
        m[0, 0, 3] = False  # one query row with no allowed key: SDPA gives it zeros
        return m
    return torch.randn(n, n, generator=g, dtype=torch.float64) * 3  # additive, broadcast over batch and heads


# ---------------------------------------------------------------------------
# saliency


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("chunk", [1, 5, 37, 100])
def test_saliency_equals_full_softmax(chunk: int, mask_kind: str) -> None:
    q, k = _qk(1, b=2, h=3, n=37, d=16)
    mask = _masks(mask_kind, 2, 3, 37)
    scale = 0.3 if mask_kind == "additive" else None
    expected = _probabilities(q, k, mask, scale).mean(dim=(1, 2))  # average over heads and queries
    got = attention_saliency(q, k, attn_mask=mask, scale=scale, chunk=chunk)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


def test_saliency_of_the_masked_row_is_not_counted() -> None:
    q, k = _qk(2, b=1, h=1, n=4, d=4)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False
    # three live query rows out of four, each summing to 1: total saliency 3/4
    assert float(attention_saliency(q, k, attn_mask=mask, chunk=3).sum()) == pytest.approx(0.75, rel=1e-12)


def test_chunked_path_never_builds_the_full_map(monkeypatch: pytest.MonkeyPatch) -> None:
    n, chunk = 50, 8
    seen: list[tuple[int, ...]] = []
    real = torch.softmax

    def guarded(t: torch.Tensor, *args: object, **kw: object) -> torch.Tensor:
        assert t.shape[-2] <= chunk and t.shape[-1] == n, f"softmax over {tuple(t.shape)}"
        seen.append(tuple(t.shape))
        return real(t, *args, **kw)

    monkeypatch.setattr(torch, "softmax", guarded)
    st = SemanticState(FMT, Decomposition(), SeDA(anchors=4), chunk=chunk)
    q, k = _qk(3, b=1, h=2, n=n)
    st.observe_attention("attn", q, k, step=0)
    assert len(seen) == 2 * math.ceil(n / chunk)  # one pass for saliency, one for groups
    assert st.attention_state("attn").groups is not None


# ---------------------------------------------------------------------------
# groups


def _hand_built_logits() -> torch.Tensor:
    """(H=3, L=8, L=8) logits; anchors are tokens 0 and 5, groups [0,0,0,0,0,1,1,1]."""
    z = torch.zeros(3, 8, 8, dtype=torch.float64)
    for i in (0, 1, 2, 4, 5):  # token 5 attends to anchor 0 but is itself an anchor
        z[:, i, 0] = 6.0
    for i in (6, 7):
        z[:, i, 5] = 6.0
    # token 3: head 0 strongly prefers anchor 0 (p = e^8/(e^8+7) = 0.998), heads 1 and 2
    # mildly prefer anchor 5 (p5 = e/(e+7) = 0.280 vs p0 = 1/(e+7) = 0.103): the head
    # average gives anchor 0 (0.401 vs 0.187), a majority vote would give anchor 5.
    z[0, 3, 0] = 8.0
    z[1:, 3, 5] = 1.0
    return z


def test_groups_of_hand_built_attention() -> None:
    z = _hand_built_logits()
    flipped = z.flip(1, 2)  # the same attention with the token order reversed
    q = torch.stack([z, flipped])  # (B=2, H=3, L=8, D=8): with one-hot keys, q k^T is q
    k = torch.eye(8, dtype=torch.float64).expand(2, 3, 8, 8)
    st = SemanticState(FMT, Decomposition(fraction=0.25), SeDA(anchors=2), chunk=3)
    st.observe_attention("attn", q, k, scale=1.0, step=0)
    s = st.attention_state("attn")
    assert s.anchors.tolist() == [[0, 5], [7, 2]]
    assert s.groups.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert s.salient.nonzero().tolist() == [[0, 0], [0, 5], [1, 2], [1, 7]]  # ceil(0.25 * 8) = 2 per item
    d = st.describe()["attn"]
    assert d["group_sizes"] == [[5, 3], [5, 3]] and d["salient"] == [2, 2]


def _expected_groups(p: torch.Tensor, n_anchors: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchors (B, A) and groups (B, L) from a full probability map (B, H, L, L): the most
    salient tokens, and for each token the anchor its head-averaged row favours most."""
    saliency = p.mean(dim=(1, 2)).numpy()
    anchors = np.argsort(-saliency, axis=1, kind="stable")[:, :n_anchors]
    mean = p.mean(dim=1).numpy()  # (B, L, L) averaged over heads
    groups = np.stack([mean[b][:, anchors[b]].argmax(axis=1) for b in range(p.shape[0])])
    for b in range(p.shape[0]):
        groups[b, anchors[b]] = np.arange(n_anchors)
    return anchors, groups


@pytest.mark.parametrize("chunk", [1, 6, 64])
def test_groups_equal_full_attention_argmax(chunk: int) -> None:
    q, k = _qk(4, b=2, h=3, n=24)
    mask = _masks("bool", 2, 3, 24)
    anchors, expected = _expected_groups(_probabilities(q, k, mask), 5)
    got = attention_groups(q, k, torch.from_numpy(anchors), attn_mask=mask, chunk=chunk)
    np.testing.assert_array_equal(got.numpy(), expected)
    st = SemanticState(FMT, None, SeDA(anchors=5), chunk=chunk)
    st.observe_attention("attn", q, k, attn_mask=mask, step=0)
    np.testing.assert_array_equal(st.attention_state("attn").anchors.numpy(), anchors)
    np.testing.assert_array_equal(st.attention_state("attn").groups.numpy(), expected)


# ---------------------------------------------------------------------------
# decomposition


def test_decomposition_improves_salient_rows_and_leaves_the_rest() -> None:
    q, k = _qk(5)
    x = _activations(5)
    st = SemanticState(FMT, Decomposition(fraction=0.25), None)
    st.observe_attention("attn", q, k, step=0)
    y, stats, applied = st.quantize("blk.ff", "attn", x, step=0)
    assert applied == "decomposition"
    salient = st.attention_state("attn").salient
    top = np.argsort(-_probabilities(q, k).mean(dim=(1, 2)).numpy(), axis=1, kind="stable")[:, :4]
    assert sorted(salient.nonzero()[:, 1].tolist()) == sorted(top.ravel().tolist())

    plain = lowbit.fake_quant(x, FMT, axis=-1)
    assert_same_bits(plain[~salient], y[~salient])
    residual = x[salient] - plain[salient]
    assert_same_bits(plain[salient] + lowbit.fake_quant(residual, FMT, axis=-1), y[salient])
    err_y = ((y - x)[salient] ** 2).sum(dim=-1)
    err_plain = ((plain - x)[salient] ** 2).sum(dim=-1)
    assert bool((err_y < err_plain).all())
    assert stats.sq_error == pytest.approx(float(((y.double() - x.double()) ** 2).sum()), rel=1e-12)


@pytest.mark.parametrize(
    "residual_format, residual_bits",
    [
        # 4 salient tokens (ceil(0.25 * 16)) x 2 batch items x 64 channels = 512 residual elements.
        # fp8_e4m3 is a scalar format: 1 sign + 4 exponent + 3 mantissa bits = 8 bits per element, no scales
        ("fp8_e4m3", 512 * 8),
        # mxfp8_e4m3: the same 8-bit elements plus one 8-bit E8M0 scale per block of 32: 512 / 32 = 16 blocks
        ("mxfp8_e4m3", 512 * 8 + 16 * 8),
    ],
)
def test_decomposition_residual_in_its_own_format(residual_format: str, residual_bits: int) -> None:
    q, k = _qk(24)
    x = _activations(24)
    st = SemanticState(FMT, Decomposition(fraction=0.25, residual_format=residual_format), None)
    st.observe_attention("attn", q, k, step=0)
    y, stats, applied = st.quantize("blk.ff", "attn", x, step=0)
    assert applied == "decomposition"
    salient = st.attention_state("attn").salient
    assert salient.sum(dim=1).tolist() == [4, 4]

    plain = lowbit.fake_quant(x, FMT, axis=-1)
    assert_same_bits(plain[~salient], y[~salient])
    residual = x[salient] - plain[salient]
    fixed = lowbit.fake_quant(residual, residual_format, axis=-1)
    assert not torch.equal(fixed, lowbit.fake_quant(residual, FMT, axis=-1))  # the residual's format shows
    assert_same_bits(plain[salient] + fixed, y[salient])
    # the main quantization as in test_bits_by_hand (2048 4-bit codes, 64 5-bit exponents, 64 5-bit
    # dialect ids), plus the residual's storage in its own format
    assert stats.bits == 2048 * 4 + 64 * 5 + 64 * 5 + residual_bits


def test_decomposition_keeps_dtype_and_leading_dims() -> None:
    q, k = _qk(6, b=2)
    st = SemanticState(FMT, Decomposition(), SeDA(anchors=2, dialects_per_group=3))
    st.observe_attention("attn", q, k, step=0)
    x = _activations(6, (2, 16, 64)).to(torch.bfloat16)
    y, stats, applied = st.quantize("lin", "attn", x, step=0)
    assert applied == "decomposition+seda" and y.dtype == torch.bfloat16 and y.shape == x.shape
    assert stats.elements == x.numel()


# ---------------------------------------------------------------------------
# SeDA


def _most_used(ids: np.ndarray, k: int) -> list[int]:
    counts = np.bincount(ids.ravel(), minlength=N_DIALECTS)
    return sorted(sorted(range(N_DIALECTS), key=lambda d: (-counts[d], d))[:k])


def _expected_subbooks(x: torch.Tensor, groups: np.ndarray, n_groups: int, k: int, per_position: bool = False) -> list:
    """Per batch item and group: the k dialects its blocks choose most without restriction;
    ``per_position``: such a list for each block position along the channels."""
    ids = np.asarray(lowbit.quantize(x, FMT, axis=-1).dialect_ids).reshape(groups.shape + (-1,))
    out = []
    for b in range(groups.shape[0]):
        row = []
        for g in range(n_groups):
            mine = ids[b][groups[b] == g]  # (tokens of the group, blocks)
            row.append([_most_used(mine[:, p], k) for p in range(mine.shape[1])] if per_position else _most_used(mine, k))
        out.append(row)
    return out


def test_seda_sub_formatbooks_are_the_most_used_dialects() -> None:
    q, k = _qk(8)
    x = _activations(8)
    st = SemanticState(FMT, None, SeDA(anchors=3, dialects_per_group=4, per_position=False))
    st.observe_attention("attn", q, k, step=0)
    y, stats, applied = st.quantize("blk.0.ff", "attn", x, step=0)
    assert applied == "seda"
    groups = st.attention_state("attn").groups.numpy()
    expected = _expected_subbooks(x, groups, 3, 4)
    assert st.describe()["attn"]["subformatbooks"]["blk.0.ff"]["dialects"] == expected

    flat = [d for per_batch in expected for d in per_batch]
    sub = torch.from_numpy(np.arange(2)[:, None] * 3 + groups)[..., None]
    q1 = lowbit.quantize(x, FMT, axis=-1, subbooks=SubFormatbooks.from_dialects(flat, N_DIALECTS, ids=sub))
    assert_same_bits(lowbit.dequantize(q1), y)
    chosen = np.asarray(q1.dialect_ids).reshape(2, 16, 2)
    for b in range(2):
        for t in range(16):
            assert set(chosen[b, t].tolist()) <= set(expected[b][groups[b, t]])
    np.testing.assert_array_equal(stats.dialect_counts, np.bincount(chosen.ravel(), minlength=N_DIALECTS))
    assert not np.array_equal(y.numpy(), lowbit.fake_quant(x, FMT, axis=-1).numpy())  # the restriction did something


def test_seda_per_position_keeps_a_list_per_block_position() -> None:
    q, k = _qk(8)
    x = _activations(8)  # (2, 16, 64): two blocks per token
    assert SeDA().per_position  # the default
    st = SemanticState(FMT, None, SeDA(anchors=3, dialects_per_group=4))
    st.observe_attention("attn", q, k, step=0)
    y, stats, applied = st.quantize("blk.0.ff", "attn", x, step=0)
    assert applied == "seda"
    groups = st.attention_state("attn").groups.numpy()
    expected = _expected_subbooks(x, groups, 3, 4, per_position=True)
    assert st.describe()["attn"]["subformatbooks"]["blk.0.ff"]["dialects"] == expected
    assert expected != [[[lists[0]] * 2 for lists in per_batch] for per_batch in expected]  # the positions differ somewhere

    masks = np.zeros((6, 2, N_DIALECTS), bool)
    for b, per_batch in enumerate(expected):
        for g, per_position in enumerate(per_batch):
            for p, allowed in enumerate(per_position):
                masks[b * 3 + g, p, allowed] = True
    sub = torch.from_numpy(np.arange(2)[:, None] * 3 + groups)[..., None]
    q1 = lowbit.quantize(x, FMT, axis=-1, subbooks=SubFormatbooks(masks=masks, ids=sub))
    assert_same_bits(lowbit.dequantize(q1), y)
    chosen = np.asarray(q1.dialect_ids).reshape(2, 16, 2)
    for b in range(2):
        for t in range(16):
            for p in range(2):
                assert chosen[b, t, p] in expected[b][groups[b, t]][p]
    per_token = SemanticState(FMT, None, SeDA(anchors=3, dialects_per_group=4, per_position=False))
    per_token.observe_attention("attn", q, k, step=0)
    assert not np.array_equal(y.numpy(), per_token.quantize("blk.0.ff", "attn", x, step=0)[0].numpy())


# ---------------------------------------------------------------------------
# token slices (one stream of a joint attention)


def _salient(q: torch.Tensor, k: torch.Tensor, count: int) -> torch.Tensor:
    """(B, L) bool: the ``count`` most attended tokens of each batch item (stable order)."""
    saliency = _probabilities(q, k).mean(dim=(1, 2)).numpy()
    top = np.argsort(-saliency, axis=1, kind="stable")[:, :count]
    mask = np.zeros(saliency.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return torch.from_numpy(mask)


def _packed_bits(rows: int) -> int:
    """Storage of ``rows`` x 64 values in FMT, each field packed into whole bytes: 4-bit codes,
    then a 5-bit exponent and a 5-bit dialect id for each of the 2 blocks per row."""
    return 8 * (math.ceil(rows * 64 * 4 / 8) + 2 * math.ceil(rows * 2 * 5 / 8))


def test_token_slice_uses_the_salient_rows_of_the_slice() -> None:
    q, k = _qk(30, n=16)
    salient = _salient(q, k, 4)  # ceil(0.25 * 16)
    head, tail = slice(0, 6), slice(10, 16)
    # the two slices of a 6-token stream see different salient rows: a wrong slice shows
    assert not torch.equal(salient[:, head], salient[:, tail])
    st = SemanticState(FMT, Decomposition(fraction=0.25), None)
    st.observe_attention("attn", q, k, step=0)
    x = _activations(30, (2, 6, 64))
    plain = lowbit.fake_quant(x, FMT, axis=-1)
    for tokens in (head, tail):
        rows = salient[:, tokens]
        assert rows.any()
        y, stats, applied = st.quantize("lin", "attn", x, step=0, tokens=tokens)
        assert applied == "decomposition"
        assert_same_bits(plain[~rows], y[~rows])
        fixed = plain[rows] + lowbit.fake_quant(x[rows] - plain[rows], FMT, axis=-1)
        assert_same_bits(fixed, y[rows])
        # plus the residual storage of exactly the slice's salient rows
        assert stats.bits == _packed_bits(2 * 6) + _packed_bits(int(rows.sum()))
    # a token that is salient in no batch item: nothing to add back, and no extra bits
    quiet = int(np.flatnonzero(~salient.any(dim=0).numpy())[0])
    y, stats, applied = st.quantize("lin", "attn", x[:, :1], step=0, tokens=slice(quiet, quiet + 1))
    assert applied == "decomposition"
    assert_same_bits(plain[:, :1], y)
    assert stats.bits == _packed_bits(2)


def test_token_slice_uses_the_groups_of_the_slice() -> None:
    q, k = _qk(31, n=16)
    _, groups = _expected_groups(_probabilities(q, k), 3)
    tokens = slice(9, 16)
    assert not np.array_equal(groups[:, tokens], groups[:, :7])
    st = SemanticState(FMT, None, SeDA(anchors=3, dialects_per_group=4, per_position=False))
    st.observe_attention("attn", q, k, step=0)
    x = _activations(31, (2, 7, 64))
    y, _, applied = st.quantize("blk.ff_context", "attn", x, step=0, tokens=tokens)
    assert applied == "seda"
    sliced = groups[:, tokens]
    expected = _expected_subbooks(x, sliced, 3, 4)  # groups absent from the slice: dialects 0-3
    assert st.describe()["attn"]["subformatbooks"]["blk.ff_context"]["dialects"] == expected
    sub = torch.from_numpy(np.arange(2)[:, None] * 3 + sliced)[..., None]
    flat = [d for per_batch in expected for d in per_batch]
    q1 = lowbit.quantize(x, FMT, axis=-1, subbooks=SubFormatbooks.from_dialects(flat, N_DIALECTS, ids=sub))
    assert_same_bits(lowbit.dequantize(q1), y)


# ---------------------------------------------------------------------------
# refresh schedule


def test_refresh_schedule_and_sub_formatbook_cache() -> None:
    q1, k1 = _qk(10)
    q2, k2 = _qk(11)
    sal1 = _probabilities(q1, k1).mean(dim=(1, 2))
    sal2 = _probabilities(q2, k2).mean(dim=(1, 2))
    st = SemanticState(FMT, Decomposition(), SeDA(anchors=3, dialects_per_group=4, refresh_every=3, per_position=False))
    x1 = _activations(12)
    x2 = torch.from_numpy(np.random.default_rng(13).uniform(-1, 1, size=(2, 16, 64)).astype(np.float32))

    st.observe_attention("attn", q1, k1, step=0)
    first = st.attention_state("attn")
    st.quantize("lin", "attn", x1, step=0)
    subbooks_x1 = _expected_subbooks(x1, first.groups.numpy(), 3, 4)
    for step in (1, 2):
        st.observe_attention("attn", q2, k2, step=step)
        st.quantize("lin", "attn", x2, step=step)
        assert st.attention_state("attn") is first
        torch.testing.assert_close(first.saliency, sal1, rtol=1e-12, atol=0)
        entry = st.describe()["attn"]["subformatbooks"]["lin"]
        assert entry == {"computed_at_step": 0, "dialects": subbooks_x1}

    st.observe_attention("attn", q2, k2, step=3)  # due: 3 steps since the refresh
    second = st.attention_state("attn")
    assert second is not first and second.step == 3
    torch.testing.assert_close(second.saliency, sal2, rtol=1e-12, atol=0)
    assert "lin" not in st.describe()["attn"]["subformatbooks"]  # the cache went with the old state
    st.quantize("lin", "attn", x2, step=3)
    subbooks_x2 = _expected_subbooks(x2, second.groups.numpy(), 3, 4)
    assert subbooks_x2 != _expected_subbooks(x1, second.groups.numpy(), 3, 4)  # x2 really changes them
    assert st.describe()["attn"]["subformatbooks"]["lin"] == {"computed_at_step": 3, "dialects": subbooks_x2}

    st.observe_attention("attn", q1, k1, step=1)  # the step went back: a new sampling run
    assert st.attention_state("attn").step == 1
    q3, k3 = _qk(14, n=12)
    st.observe_attention("attn", q3, k3, step=2)  # a new token count
    assert st.attention_state("attn").tokens == 12


def test_decomposition_alone_refreshes_every_step() -> None:
    q1, k1 = _qk(15)
    q2, k2 = _qk(16)
    st = SemanticState(FMT, Decomposition(), None)
    st.observe_attention("attn", q1, k1, step=0)
    first = st.attention_state("attn")
    st.observe_attention("attn", q2, k2, step=0)  # same step (e.g. a second guidance pass)
    assert st.attention_state("attn") is first
    st.observe_attention("attn", q2, k2, step=1)
    torch.testing.assert_close(st.attention_state("attn").saliency, _probabilities(q2, k2).mean(dim=(1, 2)), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------
# bits


@pytest.mark.parametrize(
    "decomposition, seda, bits",
    [
        # 2 x 16 tokens x 64 channels = 2048 elements in 64 blocks of 32:
        # codes 4 bits each, a 5-bit exponent and a 5-bit dialect id per block.
        (None, None, 2048 * 4 + 64 * 5 + 64 * 5),
        # + residual of ceil(0.25 * 16) = 4 tokens per item: 512 elements, 16 blocks
        (Decomposition(fraction=0.25), None, 8832 + 512 * 4 + 16 * 5 + 16 * 5),
        # SeDA per token, 3 anchors x 2 items = 6 sub-formatbooks of 4 dialects: a 2-bit index per
        # block instead of 5 bits, a 3-bit sub-formatbook id per token, 6 x 32 mask bits
        (None, SeDA(anchors=3, dialects_per_group=4, per_position=False), 2048 * 4 + 64 * 5 + 64 * 2 + 32 * 3 + 6 * 32),
        (Decomposition(fraction=0.25), SeDA(anchors=3, dialects_per_group=4, per_position=False), 8928 + 2208),
        # per block position (the default): the same ids, a mask table of 6 x 2 positions x 32 bits
        (None, SeDA(anchors=3, dialects_per_group=4), 2048 * 4 + 64 * 5 + 64 * 2 + 32 * 3 + 6 * 2 * 32),
    ],
)
def test_bits_by_hand(decomposition: Decomposition | None, seda: SeDA | None, bits: int) -> None:
    q, k = _qk(17)
    st = SemanticState(FMT, decomposition, seda)
    st.observe_attention("attn", q, k, step=0)
    _, stats, _ = st.quantize("lin", "attn", _activations(17), step=0)
    assert stats.bits == bits and stats.elements == 2048


@needs_triton
@quiet_interpreter
def test_triton_backend_matches_numba() -> None:
    q, k = _qk(23, b=1)
    x = _activations(23, (1, 16, 64))
    results = []
    for backend, device in (("numba", "cpu"), ("triton", DEVICE)):  # DEVICE: the interpreter's CPU, or CUDA
        st = SemanticState(FMT, Decomposition(fraction=0.25), SeDA(anchors=2, dialects_per_group=4), backend=backend)
        st.observe_attention("attn", q.to(device), k.to(device), step=0)
        results.append(st.quantize("lin", "attn", x.to(device), step=0))
    (y0, s0, a0), (y1, s1, a1) = results
    assert_same_bits(y0, y1.cpu())
    assert a0 == a1 == "decomposition+seda" and s0.bits == s1.bits


# ---------------------------------------------------------------------------
# which policy applies, and errors


def test_applied_labels_and_plain_fallbacks() -> None:
    q, k = _qk(18)
    x = _activations(18)
    plain = lowbit.fake_quant(x, FMT, axis=-1)
    st = SemanticState(FMT, Decomposition(layers=r"\.ff\."), SeDA(anchors=2, layers=r"to_out"))
    y, _, applied = st.quantize("blk.ff.0", "attn", x, step=0)
    assert applied == "plain (no attention state yet)"
    assert_same_bits(plain, y)
    st.observe_attention("attn", q, k, step=0)
    assert st.quantize("blk.ff.0", "attn", x, step=0)[2] == "decomposition"
    assert st.quantize("blk.attn.to_out.0", "attn", x, step=0)[2] == "seda"
    assert st.quantize("blk.attn.to_q", "attn", x, step=0)[2] == "plain"
    assert st.quantize("blk.ff.0", None, x, step=0)[2] == "plain (no attention module)"
    assert st.quantize("blk.ff.0", "attn", x[:, :3], step=0)[2] == "plain (token count 3 != 16)"
    assert st.quantize("blk.ff.0", "attn", x[:, :3], step=0, tokens=slice(14, 17))[2] == "plain (token slice 14:17 outside 16 tokens)"
    assert st.quantize("blk.ff.0", "attn", x[:, :3], step=0, tokens=slice(0, 4))[2] == "plain (token count 3 != slice 0:4)"
    assert st.quantize("blk.ff.0", "attn", x[:, :3], step=0, tokens=slice(13, 16))[2] == "decomposition"
    y, _, applied = st.quantize("blk.ff.0", "attn", torch.cat([x, x[:1]]), step=0)
    assert applied == "plain (batch 3 != 2)"
    assert_same_bits(plain, y[:2])


def test_cross_attention_is_ignored_and_reset_clears() -> None:
    st = SemanticState(FMT, Decomposition(), SeDA(anchors=2))
    q, _ = _qk(19, n=16)
    _, k = _qk(20, n=5)
    st.observe_attention("cross", q, k, step=0)
    assert st.attention_state("cross") is None
    q, k = _qk(21)
    st.observe_attention("attn", q, k, step=0)
    st.quantize("lin", "attn", _activations(21), step=0)
    summary = st.describe()
    json.dumps(summary)
    assert summary["attn"]["refresh_step"] == 0 and summary["attn"]["tokens"] == 16
    assert [sum(s) for s in summary["attn"]["group_sizes"]] == [16, 16]
    st.reset()
    assert st.describe() == {} and st.attention_state("attn") is None


@pytest.mark.parametrize("fmt, why", [("dialectfp4", "two_stage"), ("mxfp4", "BlockFormat")])
def test_seda_refuses_formats_without_restrictable_selection(fmt: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        SemanticState(fmt, None, SeDA())
    SemanticState(fmt, Decomposition(), None)  # decomposition works with any format


@pytest.mark.parametrize("policy, key", [(Decomposition, "decomposition"), (SeDA, "assignment")])
def test_a_bad_layers_regex_is_refused_when_the_policy_is_made(policy: type, key: str) -> None:
    # the message of LayerPolicy's patterns, with re's own reason (position 7 is the unclosed "(")
    problem = rf"{policy.__name__}\.layers 'blocks\.\(0' is not a valid regex: missing \), unterminated subpattern at position 7"
    with pytest.raises(ValueError, match=rf"^{problem}$"):
        policy(layers="blocks.(0")
    with pytest.raises(TypeError, match=rf"^{policy.__name__}\.layers must be a regex string or None, got 3$"):
        policy(layers=3)
    data = Recipe(name="r", activation=FMT, **{key: policy()}).to_dict()  # e.g. a checkpoint's recipe
    data[key]["layers"] = "blocks.(0"
    with pytest.raises(ValueError, match=rf"^{key}: {problem}$"):
        Recipe.from_dict(data)


def test_clear_errors() -> None:
    st = SemanticState(FMT, Decomposition(), None)
    q, k = _qk(22)
    with pytest.raises(ValueError, match="batch, heads, tokens, head_dim"):
        st.observe_attention("attn", q[0], k[0], step=0)
    with pytest.raises(ValueError, match="must agree"):
        st.observe_attention("attn", q, k[:, :2], step=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        st.observe_attention("attn", q, k, attn_mask=torch.ones(5, 16, dtype=torch.bool), step=0)
    with pytest.raises(ValueError, match="step"):
        st.observe_attention("attn", q, k, step=-1)
    with pytest.raises(ValueError, match="anchors must be"):
        attention_groups(q, k, torch.tensor([[0, 16], [1, 2]]))  # 16 is past the last key
    with pytest.raises(ValueError, match="tokens, channels"):
        st.quantize("lin", "attn", torch.randn(64), step=0)
    for tokens in (slice(4, 2), slice(0, 4, 2), slice(None, 4), (0, 4)):
        with pytest.raises(ValueError, match="tokens must be None or a slice"):
            st.quantize("lin", "attn", torch.randn(2, 4, 64), step=0, tokens=tokens)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk"):
        SemanticState(FMT, Decomposition(), None, chunk=0)
    with pytest.raises(TypeError, match="SeDA"):
        SemanticState(FMT, None, Decomposition())  # type: ignore[arg-type]
