"""apply / remove: a :class:`~lowbit.emulate.recipes.Recipe` as a reversible model transform.

What is emulated (inference only: quantized operands carry no gradient):

- ``nn.Linear`` layers the layer policy quantizes: the weight is fake-quantized ONCE, at
  :func:`apply`, with blocks along the input features (the weight's last axis), and the
  dequantized copy is cached; the input is fake-quantized at every forward with blocks
  along its last axis. The bias stays in full precision. The layer runs as
  ``F.linear(Q(x), Q(W), b)`` through an instance-level ``forward``.
- attention modules (anything with a diffusers-style ``.processor``): the module's own
  processor is wrapped, and only the ``scaled_dot_product_attention`` call inside it is
  intercepted with a :class:`torch.overrides.TorchFunctionMode` (q, k, v are
  (B, H, L, D), after QK-norm and RoPE). ``qk``: q and k are fake-quantized with blocks
  along the head dim and SDPA runs on them. ``pv``: attention is computed explicitly,
  ``softmax(q k^T * scale + mask)`` in float32, then P (blocks along the key axis) and V
  (blocks along the key axis) are fake-quantized and multiplied. Modules whose operands
  are all off and that feed no semantic policy are not touched.
- SemanticDialect policies (``recipe.decomposition`` / ``recipe.assignment``): one
  :class:`lowbit.emulate.semantic.SemanticState` observes every wrapped self-attention's
  q and k and quantizes the activations of linears whose activation format is the
  recipe's, using the attention module that shares the longest module-path prefix with
  the linear (ties: the first in module order) or, once that one is known to be
  cross-attention (``is_cross_attention``, or SDPA saw Lq != Lk), another attention
  module of the same block. In dual-stream blocks the joint attention sees the text
  and video tokens concatenated while each stream's linears see their own stream: a
  linear whose token count n differs from the attention's L uses the slice of the joint
  sequence its stream occupies (see :data:`JOINT_TOKEN_ORDER` and
  :data:`TEXT_STREAM_LINEARS`).

:func:`remove` restores the model exactly: the same parameter, buffer and processor
objects, no hooks and no instance attributes left behind.

Statistics (``stats=True``, the default) cost one extra full-precision computation per
quantized layer and forward: the layer's output SQNR is measured against the
full-precision output of the same layer on the same input.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import warnings
import weakref
from collections import Counter
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

import attrs
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.overrides import TorchFunctionMode

from lowbit.emulate import semantic
from lowbit.emulate.api import Quantized, fake_quant
from lowbit.emulate.recipes import FROM_RECIPE, Keep, Recipe, resolve_recipe
from lowbit.emulate.report import LayerReport, OperandReport, Report
from lowbit.emulate.scaled import (
    INT8,
    SCALE_BITS,
    absmax_scale,
    rotate,
    scaled_fake_quant,
    scaled_fake_quant_with_stats,
    smoothing_factors,
    step_group,
)
from lowbit.emulate.sixbit import FULL_PRECISION_BITS, SixBitState, timed
from lowbit.emulate.stats import QuantStats, error_stats, fake_quant_with_stats
from lowbit.formats import resolve

__all__ = ["JOINT_TOKEN_ORDER", "TEXT_STREAM_LINEARS", "Emulation", "apply", "calibrate", "remove"]

TokenOrder = Literal["text_first", "video_first"]

# Where each stream sits in the joint attention sequence of a dual-stream model, by the
# class name of the model (or of the closest enclosing module, for a nested one). Read
# off diffusers 0.42.1, where each processor concatenates the two streams before SDPA:
JOINT_TOKEN_ORDER: Mapping[str, TokenOrder] = MappingProxyType({
    # transformer_flux.py, FluxAttnProcessor: query = torch.cat([encoder_query, query], dim=1)
    "FluxTransformer2DModel": "text_first",
    # transformer_hunyuan_video.py, HunyuanVideoAttnProcessor2_0: query = torch.cat([query, encoder_query], dim=1)
    "HunyuanVideoTransformer3DModel": "video_first",
    # attention_processor.py, MochiAttnProcessor2_0:
    # valid_query = torch.cat([query[idx : idx + 1], valid_encoder_query], dim=2)
    "MochiTransformer3DModel": "video_first",
})  # fmt: skip

# A linear belongs to the text stream of a dual-stream block when a component of its
# module path is one of these (diffusers' names for the context projections and FFN);
# every other linear of such a block belongs to the video stream.
TEXT_STREAM_LINEARS = frozenset({"add_q_proj", "add_k_proj", "add_v_proj", "to_added_qkv", "to_add_out", "ff_context"})

# Every module an Emulation has touched (the root included) -> that Emulation.
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, Emulation] = weakref.WeakKeyDictionary()

# torch.nn.functional.scaled_dot_product_attention's parameters, in order.
_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


@attrs.define(eq=False)
class _Operand:
    """One quantized operand of a layer: its format and accumulated statistics."""

    format: str
    stats: QuantStats = attrs.field(factory=QuantStats)

    def report(self) -> OperandReport:
        s = self.stats
        counts = None if s.dialect_counts is None else tuple(int(c) for c in s.dialect_counts)
        return OperandReport(
            format=self.format,
            elements=s.elements,
            bits_per_element=s.bits_per_element,
            clip_rate=s.clip_rate,
            sqnr_db=s.sqnr_db if s.elements else float("nan"),
            dialect_counts=counts,
        )


@attrs.define(eq=False)
class _Site:
    """A quantized layer: its module, operands and running statistics."""

    name: str
    kind: str  # "linear" or "attention"
    module: nn.Module
    rule: str
    operands: dict[str, _Operand]
    attention: str | None = None  # linears: the attention module a semantic policy used last
    candidates: tuple[str, ...] = ()  # linears: attention modules it may use, best first
    joint: Literal["first", "last"] | None = None  # linears: its stream's place in a joint sequence
    scheme: Literal["plain", "scaled", "six_bit"] = "plain"  # linears: which recipe scheme computes it
    calls: int = 0
    runs: int = 0  # attention: calls of its processor (calls: of scaled_dot_product_attention)
    output: QuantStats = attrs.field(factory=QuantStats)
    applied: Counter[str] = attrs.field(factory=Counter)

    def clear(self) -> None:
        """Forget activation and output statistics (weights are quantized once and kept)."""
        self.calls, self.runs, self.output, self.applied = 0, 0, QuantStats(), Counter()
        for key, op in self.operands.items():
            if key != "weight":
                op.stats = QuantStats()

    def report(self) -> LayerReport:
        # an attention module without operand formats is only observed by the semantic state
        reason = "" if self.operands else "operands off (observed by the activation policy)"
        if self.runs and not self.calls:  # e.g. linear attention: nothing to intercept
            reason = f"its processor ran {self.runs} times without calling scaled_dot_product_attention"
        return LayerReport(
            name=self.name,
            kind=self.kind,
            quantized=not reason,
            rule=self.rule,
            reason=reason,
            calls=self.calls,
            output_sqnr_db=self.output.sqnr_db if self.output.elements else float("nan"),
            operands={k: op.report() for k, op in self.operands.items()},
            attention=self.attention,
            semantic=dict(self.applied),
        )


class _SDPAInterceptor(TorchFunctionMode):
    """Sends the ``scaled_dot_product_attention`` calls of one attention module to its Emulation."""

    def __init__(self, emulation: Emulation, site: _Site) -> None:
        super().__init__()
        self.emulation, self.site = emulation, site

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        bound = {**_SDPA_DEFAULTS, **dict(zip(_SDPA_PARAMS, args)), **kwargs}
        return self.emulation._attention(self.site, func, bound)


class _Processor:
    """An attention module's own processor, run with its SDPA call intercepted.

    Subclassed per processor class (:func:`_processor_class`) so that
    ``inspect.signature(wrapper.__call__)`` is the original's: diffusers filters the
    keyword arguments it passes by that signature. Other attributes read through.
    """

    def __init__(self, original: Any, emulation: Emulation, site: _Site) -> None:
        self.original, self.emulation, self.site = original, emulation, site

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        self.site.runs += 1
        with _SDPAInterceptor(self.emulation, self.site):
            return self.original(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "original":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.original, name)


@functools.lru_cache(maxsize=None)
def _processor_class(cls: type) -> type:
    def __call__(self: _Processor, *args: Any, **kwargs: Any) -> Any:
        return self._run(*args, **kwargs)

    try:
        __call__.__signature__ = inspect.signature(cls.__call__)  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # a builtin without a signature: keep the generic one
        pass
    return type(f"Lowbit{cls.__name__}", (_Processor,), {"__call__": __call__})


def _explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: dict[str, Any],
    quant_p: Callable[[torch.Tensor], torch.Tensor],
    quant_v: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """SDPA written out so that P and V can be quantized: softmax in float32, then P @ V."""
    if a["dropout_p"]:
        raise ValueError("PV quantization computes attention explicitly and supports no dropout (use model.eval())")
    if a["enable_gqa"] and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    logits = (q.float() @ k.float().transpose(-2, -1)) * scale
    mask = a["attn_mask"]
    if a["is_causal"]:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
    p = torch.softmax(logits, dim=-1).to(v.dtype)
    return (quant_p(p) @ quant_v(v)).to(q.dtype)


def _common_depth(a: str, b: str) -> int:
    """How many leading module-path components ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _enclosing(name: str, values: Mapping[str, TokenOrder]) -> TokenOrder | None:
    """The value of the closest module enclosing module ``name`` (the root "" included) that has one."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        value = values.get(".".join(parts[:i]))
        if value is not None:
            return value
    return None


def _attention_candidates(name: str, attentions: list[str]) -> tuple[str, ...]:
    """The attention modules a linear's semantic policy may use, best first: the one sharing
    the longest module-path prefix with ``name`` (the first such in module order), then its
    siblings (the other attention modules of the same block), for when it is cross-attention."""
    best, depth = None, 0
    for attention in attentions:
        d = _common_depth(name, attention)
        if d > depth:
            best, depth = attention, d
    if best is None:
        return ()
    parent = best.rpartition(".")[0]
    siblings = [a for a in attentions if parent and a != best and a.rpartition(".")[0] == parent]
    return (best, *siblings)


def _joint_place(name: str, order: TokenOrder | None) -> Literal["first", "last"] | None:
    """Where the stream of linear ``name`` sits in a joint attention sequence of ``order``
    (None: no known order): text linears are those of :data:`TEXT_STREAM_LINEARS`."""
    if order is None:
        return None
    text = not TEXT_STREAM_LINEARS.isdisjoint(name.split("."))
    return "first" if text == (order == "text_first") else "last"


def _transformer_blocks(model: nn.Module) -> list[str]:
    """Names of the transformer blocks of ``model``: elements of an ``nn.ModuleList`` that
    hold an attention module (one with a ``processor``), outermost only."""
    blocks: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or any(name.startswith(b + ".") for b in blocks):
            continue
        for i, child in enumerate(module):
            if any(callable(getattr(m, "processor", None)) for m in child.modules()):
                blocks.append(f"{name}.{i}" if name else str(i))
    return blocks


def _pick(rule_value: str | None, recipe_value: str | None) -> str | None:
    """A layer rule's format for one operand: its own, or the recipe's for FROM_RECIPE."""
    return recipe_value if rule_value == FROM_RECIPE else rule_value


class Emulation:
    """A recipe applied to a model; made by :func:`apply`, undone by :meth:`remove`.

    ``step`` is the index of the root forward in progress, or of the last one (0 for the
    first forward after :func:`apply` or :meth:`reset`); ``forwards`` counts root forwards
    since then. ``token_order`` fixes the joint-attention token order of the whole model
    (None: :data:`JOINT_TOKEN_ORDER`). Use it as a context manager to remove on exit.
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        *,
        stats: bool = True,
        backend: str = "auto",
        token_order: TokenOrder | None = None,
    ) -> None:
        if token_order not in (None, "text_first", "video_first"):
            raise ValueError(f"token_order must be 'text_first', 'video_first' or None, got {token_order!r}")
        self.model, self.recipe, self.stats, self.backend = model, recipe, stats, backend
        self.token_order = token_order
        self.step = 0
        self.forwards = 0
        self.sites: dict[str, _Site] = {}
        self.skipped: dict[str, tuple[str, str, str]] = {}  # name -> (kind, rule, reason)
        self.semantic: Any = None
        self._weights: dict[str, torch.Tensor] = {}
        # linear name -> its weight's Quantized (the storage lowbit.save writes)
        self.quantized_weights: dict[str, Quantized] = {}
        self._cross: set[str] = set()  # attention modules known to be cross-attention
        self._first_tokens: dict[str, int] = {}  # joint attention -> token count of its first stream
        # recipe.six_bit: the policy's state, each linear's transformer block, the INT8 copies
        # of the NVFP4 weights, and the blocks that return several tensors
        self.six_bit: SixBitState | None = None
        self._block_of: dict[str, str] = {}
        self._int8_weights: dict[str, torch.Tensor] = {}
        self._multi_output: set[str] = set()
        # recipe.scaling: each INT8 weight's per-row scale
        self.weight_scales: dict[str, torch.Tensor] = {}
        # what calibrate() stored: "steps" (forwards per run), "smoothing" (linear -> per-input-
        # channel SmoothQuant factors), "scales" (linear -> static activation scale per step
        # group), "six_bit" (the fitted sensitivity model); empty before calibration
        self.calibration: dict[str, Any] = {}
        self.calibrating = False
        self._amax: dict[str, list[torch.Tensor]] = {}  # while calibrating: linear -> per-step channel amax
        self._on_forward: Callable[[], None] | None = None
        self._calibration_steps = 1  # while calibrating: steps per sampling run
        self._restore: list[Callable[[], None]] = []
        self._removed = False
        self._plan()

    # -- set-up ------------------------------------------------------------------
    def _plan(self) -> None:
        """Decide every layer's treatment and quantize the weights; nothing is installed yet."""
        recipe = self.recipe
        orders: dict[str, TokenOrder] = {}  # module name -> its class's joint token order
        decided: set[str] = set()  # the modules the layer policy was asked about
        for name, module in self.model.named_modules():
            if type(module).__name__ in JOINT_TOKEN_ORDER:
                orders[name] = JOINT_TOKEN_ORDER[type(module).__name__]
            if isinstance(module, nn.Linear):
                self._plan_linear(name, module)
                decided.add(name)
            elif name and callable(getattr(module, "processor", None)):
                self._plan_attention(name, module)
                decided.add(name)
        self._warn_unmatched(decided)
        attentions = [s.name for s in self.sites.values() if s.kind == "attention"]
        if recipe.semantic:
            self.semantic = semantic.SemanticState(
                recipe.activation, recipe.decomposition, recipe.assignment, backend=self.backend, stats=self.stats
            )
            for site in self.sites.values():
                act = site.operands.get("activation")
                if site.kind == "linear" and act is not None and act.format == recipe.activation:
                    site.candidates = _attention_candidates(site.name, attentions)
                    site.joint = _joint_place(site.name, self.token_order or _enclosing(site.name, orders))
            # cross-attention carries no state; more is found when SDPA sees Lq != Lk
            self._cross = {a for a in attentions if getattr(self.sites[a].module, "is_cross_attention", False) is True}
        if recipe.six_bit is not None:
            blocks = _transformer_blocks(self.model)
            self.six_bit = SixBitState(recipe.six_bit, blocks)
            for site in self.sites.values():
                block = max((b for b in blocks if site.name.startswith(b + ".")), key=len, default=None)
                if block is not None:
                    self._block_of[site.name] = block
        self._quantize_weights()

    def _warn_unmatched(self, decided: set[str]) -> None:
        """Warn about exact-name layer rules that name no linear or attention module of the model."""
        unmatched = [name for name, _ in self.recipe.layers.exact if name not in decided]
        if unmatched:
            warnings.warn(
                f"recipe {self.recipe.name!r}: the layer-policy exact name(s) {', '.join(map(repr, unmatched))} "
                f"match no nn.Linear or attention module of this {type(self.model).__name__}, so those rules do "
                "nothing (exact names are full module paths in the model given to apply, as named_modules() "
                "gives them)",
                UserWarning,
                stacklevel=5,  # _warn_unmatched, _plan, Emulation.__init__, apply, the caller of apply
            )

    def _quantize_weights(self) -> None:
        """Quantize every quantized linear's weight (again after calibration: SmoothQuant
        scales the weights). Scaled weights waiting for their smoothing factors are left."""
        recipe = self.recipe
        smoothing = self.calibration.get("smoothing", {})
        for site in self.sites.values():
            op = site.operands.get("weight")
            if op is None:
                continue
            w = site.module.weight.detach()
            if site.scheme == "scaled":
                assert recipe.scaling is not None
                if recipe.scaling.smoothquant is not None and site.name not in smoothing:
                    continue
                if site.name in smoothing:
                    w = (w.float() * smoothing[site.name]).to(w.dtype)
                scale = absmax_scale(w)
                self._weights[site.name], op.stats, self.quantized_weights[site.name] = scaled_fake_quant_with_stats(
                    w, scale, backend=self.backend
                )
                self.weight_scales[site.name] = scale
                continue
            if site.scheme == "six_bit" and recipe.six_bit.hadamard:  # type: ignore[union-attr]
                w = rotate(w, recipe.six_bit.hadamard)  # type: ignore[union-attr]
            y, st, q = fake_quant_with_stats(w, op.format, axis=-1, backend=self.backend)
            self._weights[site.name] = y
            self.quantized_weights[site.name] = q
            op.stats = st
            if site.scheme == "six_bit":
                self._int8_weights[site.name], site.operands["weight_int8"].stats, _ = scaled_fake_quant_with_stats(
                    y, absmax_scale(y), backend=self.backend
                )

    def _plan_linear(self, name: str, module: nn.Linear) -> None:
        rule, matched = self.recipe.layers.rule_for(name)
        if isinstance(rule, Keep):
            self.skipped[name] = ("linear", matched, rule.reason)
            return
        formats = {
            "weight": _pick(rule.weight, self.recipe.weight),
            "activation": _pick(rule.activation, self.recipe.activation),
        }
        if not any(formats.values()):
            self.skipped[name] = ("linear", matched, "no weight or activation format")
            return
        operands = {k: _Operand(f) for k, f in formats.items() if f is not None}
        scheme: Literal["plain", "scaled", "six_bit"] = "plain"
        if self.recipe.scaling is not None and formats["weight"] == formats["activation"] == INT8:
            scheme = "scaled"
        elif self.recipe.six_bit is not None and formats["activation"] == self.recipe.activation and formats["weight"]:
            scheme = "six_bit"
            operands |= {"weight_int8": _Operand(INT8), "activation_int8": _Operand(INT8)}
        self.sites[name] = _Site(name=name, kind="linear", module=module, rule=matched, operands=operands, scheme=scheme)

    def _plan_attention(self, name: str, module: nn.Module) -> None:
        rule, matched = self.recipe.layers.rule_for(name)
        if isinstance(rule, Keep):
            if self.recipe.qk or self.recipe.pv or self.recipe.semantic:
                self.skipped[name] = ("attention", matched, rule.reason)
            return
        qk, pv = _pick(rule.qk, self.recipe.qk), _pick(rule.pv, self.recipe.pv)
        if qk is None and pv is None and not self.recipe.semantic:
            return  # nothing to do: the SDPA call is left alone
        operands = {}
        if qk is not None:
            operands |= {"q": _Operand(qk), "k": _Operand(qk)}
        if pv is not None:
            operands |= {"p": _Operand(pv), "v": _Operand(pv)}
        self.sites[name] = _Site(name=name, kind="attention", module=module, rule=matched, operands=operands)

    def use_quantized_weight(
        self, name: str, quantized: Quantized, weight: torch.Tensor, stats: QuantStats, row_scale: torch.Tensor | None = None
    ) -> None:
        """Compute linear ``name`` with a stored quantized weight (:func:`lowbit.load`) instead
        of the one quantized at apply: ``weight`` is what it stands for (``dequantize(quantized)``,
        times ``row_scale`` for scaled INT8) on the module's device and dtype, ``stats`` its
        weight statistics."""
        if row_scale is not None:
            self.weight_scales[name] = row_scale
        self._weights[name] = weight
        self.quantized_weights[name] = quantized
        site = self.sites[name]
        site.operands["weight"].stats = stats
        if site.scheme == "six_bit":
            self._int8_weights[name], site.operands["weight_int8"].stats, _ = scaled_fake_quant_with_stats(
                weight, absmax_scale(weight), backend=self.backend
            )

    def _install(self) -> None:
        handle = self.model.register_forward_pre_hook(self._on_root_forward)
        self._restore.append(handle.remove)
        touched = [self.model]
        for site in self.sites.values():
            key = "forward" if site.kind == "linear" else "processor"
            d = site.module.__dict__
            had, old = key in d, d.get(key)
            if site.kind == "linear":
                d[key] = functools.partial(self._linear, site)
            else:
                original = getattr(site.module, "processor")
                d[key] = _processor_class(type(original))(original, self, site)
            self._restore.append(functools.partial(self._put_back, d, key, had, old))
            touched.append(site.module)
        if self.six_bit is not None:
            modules = dict(self.model.named_modules())
            for block in self.six_bit.blocks:
                module = modules[block]
                d = module.__dict__
                had, old = "forward" in d, d.get("forward")
                d["forward"] = functools.partial(self._block, block, module.forward)
                self._restore.append(functools.partial(self._put_back, d, "forward", had, old))
                touched.append(module)
        for module in touched:
            _ACTIVE[module] = self

    @staticmethod
    def _put_back(d: dict[str, Any], key: str, had: bool, old: Any) -> None:
        if had:
            d[key] = old
        else:
            del d[key]

    # -- running -------------------------------------------------------------------
    def _on_root_forward(self, module: nn.Module, args: Any) -> None:
        if self.recipe.needs_calibration and not self.calibration and not self.calibrating:
            raise RuntimeError(
                f"recipe {self.recipe.name!r} needs calibration before its first forward: "
                "use lowbit.emulate.calibrate(model, recipe, run_fn, steps=...)"
            )
        # calibration runs one or more sampling runs of calibration["steps"] steps each
        self.step = self.forwards % self._calibration_steps if self.calibrating else self.forwards
        self.forwards += 1
        if self._on_forward is not None:
            self._on_forward()
        if self.six_bit is not None and not self.calibrating:
            self.six_bit.begin_step(self.step)

    def _quant(self, site: _Site, key: str, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Fake-quantize operand ``key`` of ``site`` (statistics only while they are on)."""
        op = site.operands.get(key)
        if op is None:
            return x
        if not self.stats:
            return fake_quant(x, op.format, axis=axis, backend=self.backend)
        y, st, _ = fake_quant_with_stats(x, op.format, axis=axis, backend=self.backend)
        op.stats = op.stats + st
        return y

    def _activation(self, site: _Site, x: torch.Tensor) -> torch.Tensor:
        op = site.operands.get("activation")
        if op is None or self.semantic is None or op.format != self.recipe.activation:
            return self._quant(site, "activation", x, -1)
        site.attention = next((a for a in site.candidates if a not in self._cross), None)
        tokens, reason = self._joint_tokens(site, x.shape[-2])
        if reason:
            site.applied[f"plain ({reason})"] += 1
            return self._quant(site, "activation", x, -1)
        y, st, applied = self.semantic.quantize(site.name, site.attention, x, step=self.step, tokens=tokens)
        if self.stats:
            op.stats = op.stats + st
        site.applied[applied] += 1
        return y

    def _joint_tokens(self, site: _Site, n: int) -> tuple[slice | None, str]:
        """The slice of its attention's joint token sequence that a linear seeing ``n`` tokens
        covers (None: all of it, or no joint order is known and the semantic state explains
        any mismatch), or a reason why none fits.

        With L joint tokens, the first stream is ``0:n`` and the last ``L-n:L``. The last
        stream's slice needs the joint sequence to hold exactly both streams: when the first
        stream's count m (its linears' last one) is known and m + n != L (e.g. Mochi leaves
        masked prompt tokens out of the joint sequence), no slice fits.
        """
        if site.joint is None or site.attention is None:
            return None, ""
        if site.joint == "first":
            self._first_tokens[site.attention] = n
        state = self.semantic.attention_state(site.attention)
        if state is None or state.tokens == n:
            return None, ""
        total = state.tokens
        if site.joint == "first":
            return slice(0, n), ""
        first = self._first_tokens.get(site.attention)
        if first is not None and first + n != total:
            return None, f"joint tokens {total} != {first} + {n} of the two streams"
        return slice(total - n, total), ""

    def _linear(self, site: _Site, x: torch.Tensor) -> torch.Tensor:
        module = site.module
        if self.calibrating and site.scheme == "scaled":
            self._record_amax(site.name, x)
            return F.linear(x, module.weight, module.bias)
        weight = self._weights.get(site.name, module.weight)
        if weight.device != module.weight.device or weight.dtype != module.weight.dtype:
            raise RuntimeError(
                f"{site.name}: the model was moved to {module.weight.device}/{module.weight.dtype} after apply; "
                "its weights were quantized on the old device/dtype: remove() and apply() again"
            )
        if site.scheme == "scaled":
            xq = self._scaled_activation(site, x)
        elif site.scheme == "six_bit":
            xq, weight = self._six_bit_operands(site, x)
        else:
            xq = self._activation(site, x)
        y = F.linear(xq, weight, module.bias)
        site.calls += 1
        if self.stats:
            site.output = site.output + error_stats(F.linear(x, module.weight, module.bias), y)
        return y

    # -- recipe.scaling --------------------------------------------------------------
    def _record_amax(self, name: str, x: torch.Tensor) -> None:
        """Calibration: the per-input-channel maximum magnitude of a linear's input at this step."""
        amax = x.detach().abs().float().reshape(-1, x.shape[-1]).amax(dim=0)
        seen = self._amax.setdefault(name, [])
        if len(seen) <= self.step:
            seen.extend(torch.zeros_like(amax) for _ in range(self.step + 1 - len(seen)))
        seen[self.step] = torch.maximum(seen[self.step], amax)

    def _scaled_activation(self, site: _Site, x: torch.Tensor) -> torch.Tensor:
        scaling = self.recipe.scaling
        assert scaling is not None
        smooth = self.calibration.get("smoothing", {}).get(site.name)
        if smooth is not None:
            x = (x.float() / smooth).to(x.dtype)
        if scaling.activation == "token":
            return self._scaled_quant(site, "activation", x, absmax_scale(x), rows=True)
        return self._scaled_quant(site, "activation", x, self._static_scale(site.name), rows=False)

    def _scaled_quant(self, site: _Site, key: str, x: torch.Tensor, scale: torch.Tensor, rows: bool) -> torch.Tensor:
        """INT8 over whole rows (or the tensor) for operand ``key`` (statistics only while on)."""
        if not self.stats:
            return scaled_fake_quant(x, scale, backend=self.backend)
        y, st, _ = scaled_fake_quant_with_stats(x, scale, backend=self.backend, rows=rows)
        op = site.operands[key]
        op.stats = op.stats + st
        return y

    def _static_scale(self, name: str) -> torch.Tensor:
        """The calibrated activation scale of linear ``name`` for the step in progress."""
        scales, steps = self.calibration["scales"][name], self.calibration["steps"]
        if self.step >= steps:
            raise RuntimeError(
                f"{name}: static activation scales were calibrated for {steps} denoising steps, and this is "
                f"forward {self.step} since the last reset(); call reset() between runs"
            )
        return scales[step_group(self.step, steps, len(scales))]

    # -- recipe.six_bit --------------------------------------------------------------
    def _six_bit_operands(self, site: _Site, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(quantized input, weight) of a six_bit linear at this step: by its block's precision."""
        six, policy = self.six_bit, self.recipe.six_bit
        assert six is not None and policy is not None
        block = self._block_of.get(site.name)
        precision = six.current.get(block, "int8") if block is not None else "int8"
        if self.calibrating and precision != "nvfp4":  # the full-precision pass of calibration
            return x, site.module.weight
        xr = rotate(x, policy.hadamard) if policy.hadamard else x
        n, step = x.numel(), self.step
        if precision == "int8" and not self.calibrating:
            if block is not None and six.state[block].refresh and six.outlier(x):
                six.full_precision[step][site.name] += 1
                six.count_activation(step, n, FULL_PRECISION_BITS * n)
                return xr, self._weights[site.name]
            six.count_activation(step, n, 8.0 * n + SCALE_BITS * (n // x.shape[-1]))
        elif not self.calibrating:
            six.count_activation(step, n, resolve(site.operands["activation"].format).bits * n)
        if precision == "int8":
            return self._scaled_quant(site, "activation_int8", xr, absmax_scale(xr), rows=True), self._int8_weights[site.name]
        return self._quant(site, "activation", xr, -1), self._weights[site.name]

    def _block_output(self, name: str, out: Any, x: torch.Tensor) -> torch.Tensor | None:
        """The output of block ``name`` that continues its input ``x``: the output itself, or
        for a block returning several tensors (then never skipped) the first of x's shape."""
        if isinstance(out, torch.Tensor) and out.shape == x.shape:
            return out
        self._multi_output.add(name)
        items = out if isinstance(out, (tuple, list)) else ()
        return next((t for t in items if isinstance(t, torch.Tensor) and t.shape == x.shape), None)

    def _block(self, name: str, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        six = self.six_bit
        assert six is not None
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if self.calibrating:
            six.current[name] = "full"
            out = forward(*args, **kwargs)
            six.current[name] = "nvfp4"
            out_q = forward(*args, **kwargs)
            del six.current[name]
            y, y_q = self._block_output(name, out, x), self._block_output(name, out_q, x)
            if y is not None and y_q is not None:
                six.record_sensitivity(name, self.step, x, y, y_q)
            return out
        step = self.step
        decision = six.decide(name, skippable=name not in self._multi_output)
        if decision == "skip":
            return x + six.skipped(name, step).to(x.dtype)
        six.current[name] = decision
        try:
            out, seconds = timed(lambda: forward(*args, **kwargs), x)
        finally:
            six.current.pop(name, None)
        six.computed(name, step, decision, x, self._block_output(name, out, x), seconds)
        return out

    # -- calibration -----------------------------------------------------------------
    def calibrate(self, run_fn: Callable[[nn.Module], Any], *, steps: int, progress: bool | Progress = True) -> dict[str, Any]:
        """Run ``run_fn(model)`` once in full precision, collecting what the recipe calibrates,
        and store it in :attr:`calibration` (replacing any earlier calibration).

        ``run_fn`` runs one or more sampling runs of ``steps`` denoising steps each: it must
        make a positive multiple of ``steps`` root forwards (each batch of prompts being one
        forward); forward ``i`` is step ``i % steps``, and statistics merge over the runs.
        ``scaling``: the per-input-channel activation maxima give the SmoothQuant factors
        (weights are then quantized again) and the per-step static scales (per step group:
        the largest); ``six_bit``: every block also runs with NVFP4 activations, and the
        sensitivity model is fitted. Returns :attr:`calibration`. Statistics are cleared.
        ``progress``: show a progress bar (True), none (False), or add the task to this
        ``rich.progress.Progress``.
        """
        self._check_live()
        if not self.recipe.needs_calibration:
            raise ValueError(f"recipe {self.recipe.name!r} has nothing to calibrate")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.reset()
        self._amax.clear()
        if self.six_bit is not None:
            self.six_bit.start_calibration()
        self.calibrating = True
        try:
            self._calibration_steps = steps
            own = not isinstance(progress, Progress)
            with Progress(transient=True, disable=not progress) if own else contextlib.nullcontext(progress) as bar:
                task = bar.add_task(f"calibrating {self.recipe.name}", total=steps)

                def advance() -> None:
                    if self.step == 0 and self.forwards > 1:  # another sampling run
                        bar.reset(task, description=f"calibrating {self.recipe.name}, run {self.forwards // steps + 1}")
                    bar.advance(task)

                self._on_forward = advance
                with torch.no_grad():
                    run_fn(self.model)
            if self.forwards == 0 or self.forwards % steps:
                raise ValueError(
                    f"run_fn made {self.forwards} forwards of the model; a positive multiple of steps={steps} was expected"
                )
            self.calibration = self._fit_calibration(steps)
        finally:
            self.calibrating, self._on_forward = False, None
            self._amax.clear()
            if self.six_bit is not None:
                self.six_bit.calibration = None
        if "smoothing" in self.calibration:  # SmoothQuant scales the weights: quantize them again
            self._quantize_weights()
        self.reset()
        return self.calibration

    def _fit_calibration(self, steps: int) -> dict[str, Any]:
        calibration: dict[str, Any] = {"steps": steps}
        scaling = self.recipe.scaling
        if scaling is not None:
            smoothing, scales = {}, {}
            groups = scaling.step_groups or steps
            group_of = torch.tensor([step_group(t, steps, groups) for t in range(steps)])
            for name, site in self.sites.items():
                if site.scheme != "scaled":
                    continue
                seen = self._amax.get(name, [])
                if len(seen) != steps:
                    raise ValueError(f"{name} ran at {len(seen)} of the {steps} calibration steps")
                amax = torch.stack(seen)  # (steps, in_features)
                if scaling.smoothquant is not None:
                    smoothing[name] = smoothing_factors(amax.amax(dim=0), site.module.weight, scaling.smoothquant)
                    amax = amax / smoothing[name]
                top = torch.zeros(groups).scatter_reduce(0, group_of, amax.amax(dim=1).cpu(), "amax")
                scales[name] = absmax_scale(top.unsqueeze(1)).squeeze(1).to(amax.device)
            if scaling.smoothquant is not None:
                calibration["smoothing"] = smoothing
            if scaling.activation == "static":
                calibration["scales"] = scales
        if self.six_bit is not None:
            calibration["six_bit"] = self.six_bit.fit()
        return calibration

    def _attention(self, site: _Site, sdpa: Callable[..., Any], a: dict[str, Any]) -> torch.Tensor:
        q, k, v = a["query"], a["key"], a["value"]
        if q.shape[-2] != k.shape[-2]:
            self._cross.add(site.name)
        if self.semantic is not None:
            self.semantic.observe_attention(site.name, q, k, attn_mask=a["attn_mask"], scale=a["scale"], step=self.step)
        site.calls += 1
        if not site.operands:
            return sdpa(**a)
        qq, kq = self._quant(site, "q", q, -1), self._quant(site, "k", k, -1)
        if "p" in site.operands:
            out = _explicit_attention(
                qq, kq, v, a, lambda p: self._quant(site, "p", p, -1), lambda t: self._quant(site, "v", t, -2)
            )
        else:
            out = sdpa(**{**a, "query": qq, "key": kq})
        if self.stats:
            site.output = site.output + error_stats(sdpa(**a), out)
        return out

    # -- public --------------------------------------------------------------------
    def _check_live(self) -> None:
        if self._removed:
            raise RuntimeError("this Emulation was removed; apply the recipe again")

    def reset(self) -> None:
        """Start over: step 0, fresh semantic state, activation and output statistics cleared."""
        self._check_live()
        self.step = self.forwards = 0
        self._first_tokens.clear()
        if self.semantic is not None:
            self.semantic.reset()
        if self.six_bit is not None:
            self.six_bit.reset()
        for site in self.sites.values():
            site.clear()

    def report(self) -> Report:
        """Per layer: formats, what was skipped and why, SQNR, clip rate, bits, dialects."""
        self._check_live()
        layers = [site.report() for site in self.sites.values()]
        for name, (kind, rule, reason) in self.skipped.items():
            layers.append(
                LayerReport(name=name, kind=kind, quantized=False, rule=rule, reason=reason, calls=0,
                            output_sqnr_db=float("nan"), operands={}, attention=None, semantic={})
            )  # fmt: skip
        order = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        layers.sort(key=lambda layer: order[layer.name])
        return Report(
            recipe=self.recipe.name,
            stats=self.stats,
            forwards=self.forwards,
            semantic_state=None if self.semantic is None else self.semantic.describe(),
            six_bit=None if self.six_bit is None or not self.six_bit.calibrated else self.six_bit.summary(),
            layers=layers,
        )

    def remove(self) -> None:
        """Restore the model exactly as it was before :func:`apply` and drop all state."""
        self._check_live()
        for undo in reversed(self._restore):
            undo()
        for module in [m for m, emu in _ACTIVE.items() if emu is self]:
            del _ACTIVE[module]
        self._restore.clear()
        self._weights.clear()
        self.quantized_weights.clear()
        self.sites.clear()
        self.skipped.clear()
        self._first_tokens.clear()
        self._int8_weights.clear()
        self.weight_scales.clear()
        self.calibration = {}
        self.semantic = self.six_bit = None
        self._removed = True

    def __enter__(self) -> Emulation:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._removed:
            self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._removed else f"{len(self.sites)} quantized layers, step {self.step}"
        return f"<Emulation {self.recipe.name!r} on {type(self.model).__name__}: {state}>"


def apply(
    model: nn.Module,
    recipe: Recipe | str,
    *,
    stats: bool = True,
    backend: str = "auto",
    token_order: TokenOrder | None = None,
    **overrides: Any,
) -> Emulation:
    """Emulate ``recipe`` (a :class:`Recipe` or a registered name) on ``model``.

    ``overrides`` replace recipe fields (``apply(model, "mxfp4", qk="mxfp8_e4m3")``); an
    unknown one is a ValueError listing the recipe fields and these keyword arguments.
    ``stats=False`` skips the statistics (for timing). ``backend`` is the emulation
    backend ("auto": Triton for CUDA tensors, Numba otherwise). ``token_order``
    ("text_first" or "video_first") is the order of the two streams in the joint
    attention of dual-stream blocks, for the semantic policies; None: looked up in
    :data:`JOINT_TOKEN_ORDER` by class name. Move the model to its device and dtype
    before applying: weights are quantized here, once. A layer-policy exact name that
    names no ``nn.Linear`` or attention module of ``model`` gives a UserWarning.
    """
    _check_model(model)
    taken = next((m for m in model.modules() if m in _ACTIVE), None)
    if taken is not None:
        raise RuntimeError(
            f"the model is already emulated ({_ACTIVE[taken]!r}); call lowbit.emulate.remove(model) before applying again"
        )
    resolved = resolve_recipe(recipe, overrides, caller=apply)
    emulation = Emulation(model, resolved, stats=stats, backend=backend, token_order=token_order)
    emulation._install()
    return emulation


def _check_model(model: Any) -> None:
    """TypeError unless ``model`` is a module (apply and remove take one)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def calibrate(
    model: nn.Module,
    recipe: Recipe | str,
    run_fn: Callable[[nn.Module], Any],
    *,
    steps: int,
    progress: bool | Progress = True,
    stats: bool = True,
    backend: str = "auto",
    token_order: TokenOrder | None = None,
    **overrides: Any,
) -> Emulation:
    """:func:`apply` ``recipe`` to ``model`` and calibrate it (:meth:`Emulation.calibrate`):
    ``run_fn(model)`` runs the model through ``steps`` forwards (e.g. a sampling loop
    over calibration prompts) once, in full precision; a progress bar follows it. Returns
    the calibrated Emulation; on an error the model is left as it was.
    """
    resolved = resolve_recipe(recipe, overrides, caller=calibrate)
    emulation = apply(model, resolved, stats=stats, backend=backend, token_order=token_order)
    try:
        emulation.calibrate(run_fn, steps=steps, progress=progress)
    except BaseException:
        emulation.remove()
        raise
    return emulation


def remove(model: nn.Module) -> None:
    """Undo :func:`apply` on ``model`` (the module that was passed to it)."""
    _check_model(model)
    emulation = _ACTIVE.get(model)
    if emulation is not None and emulation.model is model:
        emulation.remove()
        return
    other = emulation or next((_ACTIVE[m] for m in model.modules() if m in _ACTIVE), None)
    if other is None:
        raise RuntimeError(f"no lowbit emulation is applied to this {type(model).__name__}; nothing to remove")
    raise RuntimeError(
        f"apply() was not called on this {type(model).__name__}, but {other!r} covers modules of it; "
        "remove that model instead"
    )
