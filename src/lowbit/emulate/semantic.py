"""The SemanticDialect activation policies: attention-guided decomposition and SeDA.

Source: SemanticDialect (Jang and Tambe, arXiv 2603.02883, 2026; no public code).
The paper's own text gives the three ideas (a lookup-table formatbook, residual
re-quantization of salient tokens, semantic-aware dialect assignment with anchor
tokens whose correlated tokens share a sub-formatbook, updated across denoising
steps); every rule below that makes them concrete is this project's decision
(see ``docs/semantic.md`` and ``shared/reference/dialects.md``) and is a parameter
or a policy stated here.

Saliency (per attention module, from SDPA's own ``q, k``: (B, H, L, D), after
QK-norm and RoPE)
    The attention each key token receives: ``softmax(q k^T * scale + mask)``
    summed over queries, averaged over heads and queries (divided by H * L), so
    each batch item's saliency sums to 1 when no query row is fully masked. Exact,
    computed in query chunks of ``chunk`` rows: at most (B, H, chunk, L) scores
    exist at once, never the full L x L map. ``scale`` defaults to 1/sqrt(D).
    ``attn_mask`` follows SDPA: a bool mask allows a key where True, a float mask
    is added to the scores; both broadcast to (B, H, L, L). A query row with no
    allowed key contributes nothing (SDPA's math path outputs zeros there).
    Scores are computed in float32 (float64 for float64 input).
    Cross-attention (Lq != Lk) is ignored.
Salient tokens (decomposition)
    Per batch item the ``ceil(fraction * L)`` tokens of largest saliency (stable
    sort: ties to the lower token index).
Decomposition (``Decomposition``)
    ``y = Q(x)`` everywhere, and on salient tokens ``y = Q(x) + Q_r(x - Q(x))``
    where ``Q_r`` is ``residual_format`` (default: the activation format, without
    sub-formatbooks). The residual is formed and the sum taken in float32 (float64
    for float64 input) and rounded once to x's dtype. Non-salient rows are exactly
    ``Q(x)``.
Anchors and groups (``SeDA``)
    Anchors are the ``min(anchors, L)`` most salient tokens of each batch item
    (same stable order; group g is led by the g-th most salient anchor). Every
    token joins the anchor it attends to most: argmax over the anchors of its
    softmax row (the full row over all keys, mask included) averaged over heads,
    computed in the same query chunks; ties go to the more salient anchor (a row
    with no allowed anchor therefore joins group 0). Each anchor joins its own
    group whatever it attends to. Batch items have separate groups.
Sub-formatbooks (``SeDA``)
    Per linear layer, the first time it is quantized after its attention module's
    state was refreshed: x is quantized without restriction, and each group's
    sub-formatbook is the ``min(dialects_per_group, dialects)`` dialects its
    blocks chose most (ties to the lower dialect id; a group whose blocks use
    fewer dialects is filled with unused ones in id order). With
    ``SeDA.per_position`` a group keeps one such list per block position along
    the channels, chosen from the blocks at that position (blocks at different
    channel positions can have different distributions). The masks are cached
    until the next refresh. x is then quantized with :class:`SubFormatbooks`: one
    sub-formatbook id per token (``b * groups + g``), broadcast over that token's
    blocks (with ``per_position``, a mask table of (groups, positions, dialects)).
    Needs a Formatbook activation format with ``mse`` or ``lut``
    selection (``two_stage`` picks from a fixed pair and cannot be restricted).
Refresh schedule
    An attention module's state (saliency, salient tokens, anchors, groups) is
    computed when :meth:`SemanticState.observe_attention` sees it for the first
    time, when ``SeDA.refresh_every`` steps have passed since its last refresh
    (every step without SeDA), when the step goes backwards (a new sampling run),
    or when its batch or token count changed. Otherwise the call does nothing.
Bits (:class:`QuantStats`)
    The main quantization's storage (codes, scales, dialect ids; with SeDA each
    block's index within its sub-formatbook, the per-token sub-formatbook ids and
    the mask table), plus the residual's whole storage as extra bits. Salient
    positions and groups are recomputed from attention and not stored.
    ``sq_error`` is that of the final output; ``clipped`` and ``dialect_counts``
    are the main quantization's.
Token slices (joint attention)
    A linear layer of one stream of a dual-stream block sees only that stream's
    tokens while the joint attention sees both. :meth:`SemanticState.quantize`
    then takes ``tokens``, the slice of the attention's token sequence that x's
    token axis is, and uses the saliency, salient tokens and groups of those
    tokens only (sub-formatbook ids ``b * groups + g`` of the sliced tokens; the
    cached masks are per group and serve any slice).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
import torch

from lowbit.emulate.api import SubFormatbooks, fake_quant, quantize
from lowbit.emulate.stats import QuantStats, error_stats, fake_quant_with_stats
from lowbit.formats import resolve
from lowbit.formats.spec import Formatbook

__all__ = ["AttentionState", "Decomposition", "SeDA", "SemanticState", "attention_groups", "attention_saliency"]


def _fraction(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{attribute.name} must be in (0, 1], got {value}")


def _positive(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


def check_regex(pattern: str, what: str) -> None:
    """ValueError naming ``what`` when ``pattern`` is not a valid regex, so a bad layer
    pattern is refused where it is written, not at the first module-name search."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{what} {pattern!r} is not a valid regex: {exc}") from None


def _optional_regex(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value is None:
        return
    what = f"{type(instance).__name__}.{attribute.name}"
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a regex string or None, got {value!r}")
    check_regex(value, what)


@attrs.frozen
class Decomposition:
    """Attention-guided activation decomposition.

    The ``fraction`` of tokens that receive the most attention get their residual
    ``x - Q(x)`` quantized again (in ``residual_format``, default: the activation
    format) and added back. ``layers`` is a regex searched in linear-module names
    (None: every quantized linear).
    """

    fraction: float = attrs.field(default=0.1, validator=_fraction)
    residual_format: str | None = None
    layers: str | None = attrs.field(default=None, validator=_optional_regex)


@attrs.frozen
class SeDA:
    """Semantic-aware dialect assignment.

    ``anchors`` most-attended tokens each lead a group; every other token joins the
    anchor it attends to most. A group's blocks choose among the
    ``dialects_per_group`` dialects its blocks use most (its sub-formatbook);
    ``per_position``: one such list per block position along the channels, chosen
    from the group's blocks at that position (the stored id stays one per token;
    the mask table grows by the number of positions). Groups and sub-formatbooks
    are recomputed every ``refresh_every`` denoising steps. ``layers``: regex on
    linear-module names (None: every quantized linear).
    """

    anchors: int = attrs.field(default=8, validator=_positive)
    dialects_per_group: int = attrs.field(default=8, validator=_positive)
    refresh_every: int = attrs.field(default=5, validator=_positive)
    per_position: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    layers: str | None = attrs.field(default=None, validator=_optional_regex)


# ---------------------------------------------------------------------------
# attention statistics (exact, chunked over queries)


def _check_qk(query: torch.Tensor, key: torch.Tensor) -> None:
    for name, t in (("query", query), ("key", key)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor (batch, heads, tokens, head_dim), got {getattr(t, 'shape', type(t).__name__)}")
    if 0 in query.shape or 0 in key.shape:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must not be empty")
    if query.shape[:2] != key.shape[:2] or query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must agree in batch, heads and head_dim")


def _check_chunk(chunk: int) -> None:
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")


def _probability_chunks(
    query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None, scale: float | None, chunk: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, probabilities (B, H, rows, Lk)) over query chunks of at most ``chunk``
    rows (query and key already checked)."""
    b, h, lq, d = query.shape
    lk = key.shape[2]
    dtype = torch.promote_types(query.dtype, torch.float32)
    k = key.to(dtype)
    s = 1.0 / math.sqrt(d) if scale is None else float(scale)
    mask = None
    if attn_mask is not None:
        try:
            mask = torch.broadcast_to(attn_mask, (b, h, lq, lk))  # a view: nothing L x L is made here
        except RuntimeError:
            raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to {(b, h, lq, lk)}") from None
    for i in range(0, lq, chunk):
        scores = torch.matmul(query[:, :, i : i + chunk].to(dtype), k.transpose(-1, -2)) * s
        if mask is not None:
            m = mask[:, :, i : i + chunk]
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.to(dtype)
        p = torch.softmax(scores, dim=-1)
        allowed = (scores > float("-inf")).any(dim=-1, keepdim=True)
        yield i, torch.where(allowed, p, torch.zeros((), dtype=dtype, device=p.device))


def attention_saliency(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Attention each key token receives, (B, Lk): softmax column sums averaged over
    heads and queries, computed exactly in query chunks of ``chunk`` rows (see the
    module docstring for mask and scale)."""
    _check_qk(query, key)
    _check_chunk(chunk)
    h, lq = query.shape[1:3]
    total = None
    for _, p in _probability_chunks(query, key, attn_mask, scale, chunk):
        part = p.sum(dim=(1, 2))
        total = part if total is None else total + part
    return total / (h * lq)  # type: ignore[operator]


def attention_groups(
    query: torch.Tensor,
    key: torch.Tensor,
    anchors: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Each query token's group, (B, Lq) int64: the index into ``anchors`` (B, A) of
    the anchor key its head-averaged softmax row gives the most probability (first
    anchor on ties); each anchor joins its own group (self-attention)."""
    _check_qk(query, key)
    _check_chunk(chunk)
    b, _, lq = query.shape[:3]
    if anchors.ndim != 2 or anchors.shape[0] != b or anchors.dtype != torch.int64 or anchors.min() < 0 or anchors.max() >= key.shape[2]:
        raise ValueError(f"anchors must be int64 key indices of shape (batch={b}, anchors), got {anchors.dtype} {tuple(anchors.shape)}")
    groups = torch.empty((b, lq), dtype=torch.int64)
    idx = anchors.to(query.device)
    for i, p in _probability_chunks(query, key, attn_mask, scale, chunk):
        mean = p.mean(dim=1)  # (B, rows, Lk)
        at_anchors = torch.gather(mean, 2, idx[:, None, :].expand(-1, mean.shape[1], -1))
        groups[:, i : i + mean.shape[1]] = at_anchors.argmax(dim=-1).cpu()
    rows = torch.arange(b)[:, None].expand_as(anchors)
    groups[rows, anchors.cpu()] = torch.arange(anchors.shape[1]).expand_as(anchors)
    return groups


def _top_tokens(saliency: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (B, count) of the most salient tokens, most salient first, ties to lower index."""
    return torch.sort(saliency, dim=-1, descending=True, stable=True).indices[:, :count]


# ---------------------------------------------------------------------------
# state


@attrs.frozen(eq=False)
class AttentionState:
    """One attention module's semantic state (CPU tensors), from the step it was refreshed at.

    saliency (B, L) float; salient (B, L) bool or None (no decomposition);
    anchors (B, A) int64 token indices, most salient first, and groups (B, L)
    int64 in [0, A), or None (no SeDA).
    """

    step: int
    saliency: torch.Tensor
    salient: torch.Tensor | None = None
    anchors: torch.Tensor | None = None
    groups: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return int(self.saliency.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.saliency.shape[1])


def _allowed(mask: np.ndarray) -> list:
    """The dialect ids a sub-formatbook allows; per block position for a (positions, dialects) mask."""
    return np.flatnonzero(mask).tolist() if mask.ndim == 1 else [_allowed(m) for m in mask]


@attrs.frozen(eq=False)
class _Subbooks:
    """A linear layer's sub-formatbook masks (B * A, dialects), or (B * A, block positions,
    dialects) with ``SeDA.per_position``, for one AttentionState."""

    state: AttentionState
    masks: np.ndarray
    step: int


def _matcher(pattern: str | None) -> re.Pattern[str] | None:
    return None if pattern is None else re.compile(pattern)


def _selects(pattern: re.Pattern[str] | None, name: str) -> bool:
    return pattern is None or pattern.search(name) is not None


def _check_step(step: int) -> None:
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")


def _check_tokens(tokens: slice | None) -> None:
    """``tokens`` is None or a slice ``start:stop`` with ints 0 <= start < stop and no step."""
    if tokens is None:
        return
    ok = isinstance(tokens, slice) and tokens.step in (None, 1)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in (tokens.start, tokens.stop))
    if not ok or not 0 <= tokens.start < tokens.stop:
        raise ValueError(f"tokens must be None or a slice start:stop of ints with 0 <= start < stop, got {tokens!r}")


class SemanticState:
    """Attention-guided decomposition and SeDA for the activations of one model.

    ``activation_format``: a format name or spec (blocks along the last axis).
    ``decomposition`` / ``seda``: the policies, either may be None. ``backend``:
    the emulation backend (as :func:`lowbit.quantize`). ``chunk``: query rows per
    chunk of the attention statistics. The algorithms are in the module docstring.
    """

    def __init__(
        self,
        activation_format: Any,
        decomposition: Decomposition | None,
        seda: SeDA | None,
        *,
        backend: str = "auto",
        chunk: int = 1024,
        stats: bool = True,
    ) -> None:
        if decomposition is not None and not isinstance(decomposition, Decomposition):
            raise TypeError(f"decomposition must be a Decomposition or None, got {type(decomposition).__name__}")
        if seda is not None and not isinstance(seda, SeDA):
            raise TypeError(f"seda must be a SeDA or None, got {type(seda).__name__}")
        _check_chunk(chunk)
        self.spec = resolve(activation_format)
        if seda is not None and (not isinstance(self.spec, Formatbook) or self.spec.selection == "two_stage"):
            kind = f"selects by {self.spec.selection}" if isinstance(self.spec, Formatbook) else f"is a {type(self.spec).__name__}"
            raise ValueError(
                f"SeDA restricts each block's dialect to a sub-formatbook: it needs a Formatbook activation format "
                f"with mse or lut selection, and {self.spec.name!r} {kind}"
            )
        self.decomposition = decomposition
        self.seda = seda
        self.residual_spec = None
        if decomposition is not None:
            self.residual_spec = self.spec if decomposition.residual_format is None else resolve(decomposition.residual_format)
        self.backend = backend
        self.chunk = chunk
        self.stats = stats
        self.refresh_every = seda.refresh_every if seda is not None else 1
        self._decomposition_layers = _matcher(decomposition.layers) if decomposition is not None else None
        self._seda_layers = _matcher(seda.layers) if seda is not None else None
        self._states: dict[str, AttentionState] = {}
        self._subbooks: dict[str, _Subbooks] = {}

    # -- attention ---------------------------------------------------------

    def observe_attention(
        self,
        attn_name: str,
        query: torch.Tensor,
        key: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
        step: int,
    ) -> None:
        """Refresh ``attn_name``'s state from SDPA's ``query``, ``key`` (B, H, L, D) when it
        has none or is due (see the module docstring); cross-attention is ignored."""
        _check_step(step)
        _check_qk(query, key)
        if query.shape[2] != key.shape[2] or (self.decomposition is None and self.seda is None):
            return
        batch, tokens = int(query.shape[0]), int(query.shape[2])
        old = self._states.get(attn_name)
        if old is not None and (old.batch, old.tokens) == (batch, tokens) and old.step <= step < old.step + self.refresh_every:
            return
        with torch.no_grad():
            saliency = attention_saliency(query, key, attn_mask=attn_mask, scale=scale, chunk=self.chunk).cpu()
            salient = anchors = groups = None
            if self.decomposition is not None:
                top = _top_tokens(saliency, math.ceil(self.decomposition.fraction * tokens))
                salient = torch.zeros((batch, tokens), dtype=torch.bool).scatter_(1, top, True)
            if self.seda is not None:
                anchors = _top_tokens(saliency, min(self.seda.anchors, tokens))
                groups = attention_groups(query, key, anchors, attn_mask=attn_mask, scale=scale, chunk=self.chunk)
        self._states[attn_name] = AttentionState(step=int(step), saliency=saliency, salient=salient, anchors=anchors, groups=groups)

    def attention_state(self, attn_name: str) -> AttentionState | None:
        """``attn_name``'s current state, or None before its first observation."""
        return self._states.get(attn_name)

    # -- activations -------------------------------------------------------

    def quantize(
        self, linear_name: str, attn_name: str | None, x: torch.Tensor, *, step: int, tokens: slice | None = None
    ) -> tuple[torch.Tensor, QuantStats, str]:
        """Fake-quantize the activation ``x`` (..., n, C) of ``linear_name`` in the activation
        format, using ``attn_name``'s state where the policies select this layer and the
        state fits x. ``tokens`` is the slice ``start:stop`` of the attention's token
        sequence that x's token axis is (a joint attention's stream); None: all of them
        (n must then be the state's token count). Returns (y, stats, applied): applied is
        "decomposition+seda", "decomposition", "seda", "plain" (no policy selects this
        layer) or "plain (<why the state was not used>)"."""
        _check_step(step)
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor (..., tokens, channels), got {getattr(x, 'shape', type(x).__name__)}")
        _check_tokens(tokens)
        use_decomposition = self.decomposition is not None and _selects(self._decomposition_layers, linear_name)
        use_seda = self.seda is not None and _selects(self._seda_layers, linear_name)
        reason = self._unusable(attn_name, x, tokens) if use_decomposition or use_seda else ""
        if reason or not (use_decomposition or use_seda):
            y, stats = self._fake_quant(x, self.spec)
            return y, stats, f"plain ({reason})" if reason else "plain"
        state = self._states[attn_name]  # type: ignore[index]
        rows = slice(None) if tokens is None else tokens
        subbooks = self._subformatbooks(linear_name, state, rows, x, step) if use_seda else None
        y, stats = self._fake_quant(x, self.spec, subbooks)
        if use_decomposition:
            assert state.salient is not None
            y, stats = self._add_residual(x, y, stats, state.salient[:, rows])
        applied = "+".join(name for name, on in (("decomposition", use_decomposition), ("seda", use_seda)) if on)
        return y, stats, applied

    def _unusable(self, attn_name: str | None, x: torch.Tensor, tokens: slice | None) -> str:
        """Why ``attn_name``'s state cannot serve ``x`` as its ``tokens`` ("" when it can)."""
        if attn_name is None:
            return "no attention module"
        state = self._states.get(attn_name)
        if state is None:
            return "no attention state yet"
        n = x.shape[-2]
        if tokens is None and n != state.tokens:
            return f"token count {n} != {state.tokens}"
        if tokens is not None and tokens.stop > state.tokens:
            return f"token slice {tokens.start}:{tokens.stop} outside {state.tokens} tokens"
        if tokens is not None and tokens.stop - tokens.start != n:
            return f"token count {n} != slice {tokens.start}:{tokens.stop}"
        batch = math.prod(x.shape[:-2])
        if batch != state.batch:
            return f"batch {batch} != {state.batch}"
        return ""

    def _subformatbooks(
        self, linear_name: str, state: AttentionState, tokens: slice, x: torch.Tensor, step: int
    ) -> SubFormatbooks:
        """The sub-formatbooks of ``linear_name`` for ``state``'s ``tokens`` (the masks are
        computed from x on first use and cached per group, so they serve any slice)."""
        assert state.groups is not None and self.seda is not None
        n_groups = state.anchors.shape[1]  # type: ignore[union-attr]
        ids = (torch.arange(state.batch)[:, None] * n_groups + state.groups[:, tokens]).numpy()  # (B, n)
        cached = self._subbooks.get(linear_name)
        if cached is None or cached.state is not state:
            n_dialects = len(self.spec.dialects)
            q = quantize(x, self.spec, axis=-1, backend=self.backend).cpu()
            chosen = np.asarray(q.dialect_ids, dtype=np.int64)  # (B * n, blocks)
            positions = chosen.shape[1] if self.seda.per_position else 1
            # one count row per (group, position): the position is 0 for every block without per_position
            rows = (ids.reshape(-1, 1) * positions + np.arange(chosen.shape[1]) % positions).ravel()
            tables = state.batch * n_groups * positions
            counts = np.bincount(rows * n_dialects + chosen.ravel(), minlength=tables * n_dialects).reshape(tables, n_dialects)
            top = np.argsort(-counts, axis=1, kind="stable")[:, : min(self.seda.dialects_per_group, n_dialects)]
            masks = np.zeros_like(counts, dtype=np.bool_)
            np.put_along_axis(masks, top, True, axis=1)
            if self.seda.per_position:
                masks = masks.reshape(state.batch * n_groups, positions, n_dialects)
            cached = self._subbooks[linear_name] = _Subbooks(state=state, masks=masks, step=int(step))
        return SubFormatbooks(masks=cached.masks, ids=ids.reshape(x.shape[:-1] + (1,)))

    def _add_residual(
        self, x: torch.Tensor, y: torch.Tensor, stats: QuantStats, salient: torch.Tensor
    ) -> tuple[torch.Tensor, QuantStats]:
        """Add the re-quantized residual on the ``salient`` (B, n) tokens of x; charge its
        storage as extra bits (none when the slice of a joint sequence holds no salient token)."""
        if not bool(salient.any()):
            return y, stats
        rows = salient.reshape(-1).to(x.device)
        wide = torch.promote_types(x.dtype, torch.float32)
        x2, y2 = x.detach().reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1])
        base = y2[rows].to(wide)
        fixed, res_stats = self._fake_quant(x2[rows].to(wide) - base, self.residual_spec)
        out = y2.clone()
        out[rows] = (base + fixed).to(x.dtype)
        out = out.reshape(x.shape)
        if not self.stats:
            return out, stats
        return out, attrs.evolve(stats, bits=stats.bits + res_stats.bits, sq_error=error_stats(x, out).sq_error)

    def _fake_quant(self, x: torch.Tensor, spec: Any, subbooks: SubFormatbooks | None = None) -> tuple[torch.Tensor, QuantStats]:
        """Fake quantization along the last axis, with statistics unless they are off."""
        if self.stats:
            y, st, _ = fake_quant_with_stats(x, spec, axis=-1, backend=self.backend, subbooks=subbooks)
            return y, st
        return fake_quant(x, spec, axis=-1, backend=self.backend, subbooks=subbooks), QuantStats()

    # -- bookkeeping -------------------------------------------------------

    def reset(self) -> None:
        """Forget every attention state and cached sub-formatbook."""
        self._states.clear()
        self._subbooks.clear()

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary per attention module: refresh step, batch, tokens, salient
        tokens per batch item, anchors, group sizes and the cached sub-formatbooks
        (dialect ids per group, a list per block position with ``SeDA.per_position``, per
        linear layer, with the step they were computed at)."""
        out: dict[str, Any] = {}
        for name, state in self._states.items():
            entry: dict[str, Any] = {"refresh_step": state.step, "batch": state.batch, "tokens": state.tokens}
            if state.salient is not None:
                entry["salient"] = state.salient.sum(dim=1).tolist()
            if state.groups is not None and state.anchors is not None:
                n_groups = state.anchors.shape[1]
                entry["anchors"] = state.anchors.tolist()
                entry["group_sizes"] = [torch.bincount(g, minlength=n_groups).tolist() for g in state.groups]
                entry["subformatbooks"] = {
                    linear: {
                        "computed_at_step": c.step,
                        "dialects": [[_allowed(m) for m in c.masks[b * n_groups : (b + 1) * n_groups]] for b in range(state.batch)],
                    }
                    for linear, c in self._subbooks.items()
                    if c.state is state
                }
            out[name] = entry
        return out
