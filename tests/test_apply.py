"""lowbit.emulate.apply / remove on a small hand-written DiT-like model.

Expected outputs are recomputed here from the public numerics (``lowbit.fake_quant``,
``torch.nn.functional``), never through the model transform's own helpers. The
SemanticDialect wiring is checked with a recording stand-in for ``SemanticState``
(the algorithms are tested in their own module).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
import lowbit.emulate.model as model_module
from lowbit.cli import main
from lowbit.emulate import Keep, LayerPolicy, Quantize, Recipe, Report, apply, calibrate, get_recipe, recipes, remove
from lowbit.emulate import semantic
from lowbit.emulate.scaled import Scaling
from lowbit.emulate.semantic import Decomposition, SeDA
from lowbit.emulate.sixbit import SixBit
from lowbit.emulate.stats import fake_quant_with_stats
from lowbit.testing.conformance import assert_same_bits

HEADS, DIM, TOKENS = 2, 64, 12


class RecordingProcessor:
    """A diffusers-style processor: projections, then SDPA with keyword arguments.
    Records SDPA's inputs and output as seen inside the processor."""

    def __init__(self, mask: torch.Tensor | None = None) -> None:
        self.mask = mask
        self.seen: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, attn: ToyAttention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        ctx = x if context is None else context
        q, k, v = (t.view(b, -1, HEADS, c // HEADS).transpose(1, 2) for t in (attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)))
        out = F.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=self.mask)
        self.seen.append((q, k, v, out))
        return attn.to_out(out.transpose(1, 2).reshape(b, n, c))


class ToyAttention(nn.Module):
    def __init__(self, dim: int, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))
        self.processor = RecordingProcessor(mask)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.processor(self, x, context)


class Modulation(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)


class ToyBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = Modulation(dim)
        self.attn1 = ToyAttention(dim)
        self.attn2 = ToyAttention(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift, scale = self.norm1.linear(t).chunk(2, dim=-1)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + scale[:, None]) + shift[:, None]
        x = x + self.attn1(h)
        x = x + self.attn2(x, context)
        return x + self.ff(x)


class ToyDiT(nn.Module):
    def __init__(self, dim: int = DIM, layers: int = 2) -> None:
        super().__init__()
        self.x_embedder = nn.Linear(8, dim)
        self.time_embed = nn.Linear(1, dim)
        self.blocks = nn.ModuleList(ToyBlock(dim) for _ in range(layers))
        self.norm_out = Modulation(dim)
        self.proj_out = nn.Linear(dim, 8)
        self.register_buffer("offset", torch.linspace(-1, 1, 8))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.x_embedder(x)
        temb = self.time_embed(t[:, None])
        for block in self.blocks:
            h = block(h, temb, context)
        shift, scale = self.norm_out.linear(temb).chunk(2, dim=-1)
        return self.proj_out(F.layer_norm(h, h.shape[-1:]) * (1 + scale[:, None]) + shift[:, None]) + self.offset


KEPT = {"x_embedder", "time_embed", "norm_out.linear", "proj_out", "blocks.0.norm1.linear", "blocks.1.norm1.linear"}


def make_model() -> ToyDiT:
    torch.manual_seed(0)
    return ToyDiT().eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, TOKENS, 8, generator=g), torch.tensor([0.3]), torch.randn(1, 5, DIM, generator=g)


def forward(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs())


TEXT, VIDEO = 4, 12  # tokens of the two streams of the dual-stream toy


class JointProcessor:
    """A dual-stream processor: each stream's own projections, then one SDPA over both
    streams concatenated in ``order`` (diffusers' Flux puts text first, Mochi video first).
    The last ``drop`` text tokens are left out of the joint sequence (as Mochi does with
    masked prompt tokens). Records SDPA's q and k and each output projection's input and output."""

    def __init__(self, order: str, drop: int = 0) -> None:
        self.order, self.drop = order, drop
        self.seen: dict[str, Any] = {}

    def __call__(self, attn: JointAttention, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        kept = context.shape[1] - self.drop

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, HEADS, c // HEADS).transpose(1, 2)

        video = [heads(p(x)) for p in (attn.to_q, attn.to_k, attn.to_v)]
        text = [heads(p(context))[:, :, :kept] for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)]
        first, last = (text, video) if self.order == "text_first" else (video, text)
        q, k, v = (torch.cat(pair, dim=2) for pair in zip(first, last))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        video_out, text_out = (out[:, kept:], out[:, :kept]) if self.order == "text_first" else (out[:, :n], out[:, n:])
        text_out = F.pad(text_out, (0, 0, 0, self.drop))
        video_y, text_y = attn.to_out(video_out), attn.to_add_out(text_out)
        self.seen = {"q": q, "k": k, "to_out": (video_out, video_y), "to_add_out": (text_out, text_y)}
        return video_y, text_y


class JointAttention(nn.Module):
    def __init__(self, dim: int, processor: JointProcessor) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(dim, dim))  # diffusers' to_out.0
        self.add_q_proj, self.add_k_proj, self.add_v_proj, self.to_add_out = (nn.Linear(dim, dim) for _ in range(4))
        self.processor = processor

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.processor(self, x, context)


class JointBlock(nn.Module):
    """A dual-stream block: joint attention, then an FFN per stream (``ff``, ``ff_context``)."""

    def __init__(self, dim: int, processor: JointProcessor) -> None:
        super().__init__()
        self.attn = JointAttention(dim, processor)
        self.ff, self.ff_context = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, c = self.attn(x, context)
        x, context = x + a, context + c
        return x + self.ff(x), context + self.ff_context(context)


class JointDiT(nn.Module):
    def __init__(self, order: str, drop: int = 0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([JointBlock(DIM, JointProcessor(order, drop))])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x, context = block(x, context)
        return x, context


def joint_model(order: str, drop: int = 0) -> JointDiT:
    torch.manual_seed(0)
    return JointDiT(order, drop).eval()


def joint_forward(model: JointDiT) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model(torch.randn(1, VIDEO, DIM, generator=g), torch.randn(1, TEXT, DIM, generator=g))


class FakeSemanticState:
    """Stands in for lowbit.emulate.semantic.SemanticState and records how it is called."""

    made: list[FakeSemanticState] = []

    def __init__(self, activation_format: Any, decomposition: Any, seda: Any, *, backend: str = "auto", chunk: int = 1024, stats: bool = True):
        self.args = (activation_format, decomposition, seda)
        self.observed: list[tuple[str, tuple[int, ...], tuple[int, ...], int]] = []
        self.quantized: list[tuple[str, str | None, int]] = []
        self.tokens: list[slice | None] = []
        self.resets = 0
        FakeSemanticState.made.append(self)

    def observe_attention(self, attn_name: str, query: torch.Tensor, key: torch.Tensor, *, attn_mask: Any = None,
                          scale: Any = None, step: int) -> None:  # fmt: skip
        self.observed.append((attn_name, tuple(query.shape), tuple(key.shape), step))

    def quantize(self, linear_name: str, attn_name: str | None, x: torch.Tensor, *, step: int,
                 tokens: slice | None = None) -> tuple[Any, Any, str]:  # fmt: skip
        self.quantized.append((linear_name, attn_name, step))
        self.tokens.append(tokens)
        y, stats, _ = fake_quant_with_stats(x, self.args[0], axis=-1, extra_bits=1000.0)
        return y, stats, "seda" if attn_name else "plain (no attention module)"

    def reset(self) -> None:
        self.resets += 1

    def describe(self) -> dict[str, Any]:
        return {"fake": True, "observed": len(self.observed)}


@pytest.fixture
def fake_semantic(monkeypatch: pytest.MonkeyPatch) -> type[FakeSemanticState]:
    FakeSemanticState.made = []
    monkeypatch.setattr(semantic, "SemanticState", FakeSemanticState)
    return FakeSemanticState


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything remove() must restore: tensors (objects and values), every module's
    attributes (objects), processors and hook tables."""
    return {
        "tensors": {k: (v, v.detach().clone()) for k, v in [*model.named_parameters(), *model.named_buffers()]},
        "attrs": {name: dict(vars(m)) for name, m in model.named_modules()},
        "processors": {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")},
        "hooks": {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in model.named_modules()},
    }


def assert_restored(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, (tensor, values) in before["tensors"].items():
        assert after["tensors"][key][0] is tensor, key
        assert_same_bits(values, tensor.detach())
    for name, attributes in before["attrs"].items():
        now = after["attrs"][name]
        assert now.keys() == attributes.keys(), (name, set(now) ^ set(attributes))
        assert all(now[k] is v for k, v in attributes.items()), name
    assert all(after["processors"][n] is p for n, p in before["processors"].items())
    assert after["hooks"] == before["hooks"]


# ---------------------------------------------------------------------------
# linears


def test_a_linear_computes_with_quantized_weight_and_input() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    with apply(linear, "mxfp4"):
        y = linear(x)
    expected = F.linear(lowbit.fake_quant(x, "mxfp4", axis=-1), lowbit.fake_quant(linear.weight.detach(), "mxfp4", axis=-1), linear.bias)
    assert_same_bits(expected, y)
    assert_same_bits(F.linear(x, linear.weight, linear.bias), linear(x))


def test_weights_are_quantized_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model()
    weights = {id(p) for name, p in model.named_parameters() if name.endswith("weight")}
    calls = {"weight": 0, "other": 0}
    real = model_module.fake_quant_with_stats

    def counting(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        is_weight = any(x.data_ptr() == p.data_ptr() for p in model.parameters() if id(p) in weights)
        calls["weight" if is_weight else "other"] += 1
        return real(x, *args, **kwargs)

    monkeypatch.setattr(model_module, "fake_quant_with_stats", counting)
    quantized = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in KEPT]
    with apply(model, "nvfp4"):
        assert calls == {"weight": len(quantized), "other": 0}
        forward(model)
        forward(model)
    assert calls == {"weight": len(quantized), "other": 2 * len(quantized)}


def test_stats_off_uses_plain_fake_quant_and_reports_no_sqnr() -> None:
    model = make_model()
    with apply(model, "mxfp4") as on:
        y_on = forward(model)
    with apply(model, "mxfp4", stats=False) as off:
        y_off = forward(model)
        report = off.report()
    assert_same_bits(y_off, y_on)
    layer = next(lay for lay in report.layers if lay.name == "blocks.0.ff.0")
    assert math.isnan(layer.output_sqnr_db) and layer.operands["activation"].elements == 0
    assert layer.operands["weight"].elements == 2 * DIM * DIM  # weights are always described
    assert not report.stats and on is not off


# ---------------------------------------------------------------------------
# remove, context manager, errors


@pytest.mark.parametrize("recipe", ["fp8", "mxfp4", "block_dialect"])
def test_remove_restores_the_model_bit_for_bit(recipe: str) -> None:
    model = make_model()
    reference, before = forward(model), snapshot(model)
    emulation = apply(model, recipe, qk="mxfp8_e4m3", pv="mxfp8_e4m3")
    assert not torch.equal(forward(model), reference)
    remove(model)
    assert_restored(model, before)
    assert_same_bits(reference, forward(model))
    with pytest.raises(RuntimeError, match="removed"):
        emulation.report()


def test_context_manager_removes_even_after_an_error() -> None:
    model = make_model()
    reference, before = forward(model), snapshot(model)
    with pytest.raises(ZeroDivisionError):
        with apply(model, "mxfp4", qk="mxfp4") as emulation:
            assert emulation.report().quantized
            1 / 0
    assert_restored(model, before)
    assert_same_bits(reference, forward(model))
    apply(model, "mxfp4").remove()  # applicable again


def test_double_apply_and_remove_without_apply_are_errors() -> None:
    model = make_model()
    with pytest.raises(RuntimeError, match="no lowbit emulation is applied"):
        remove(model)
    with apply(model, "mxfp4"):
        with pytest.raises(RuntimeError, match="already emulated"):
            apply(model, "nvfp4")
        with pytest.raises(RuntimeError, match="already emulated"):
            apply(model.blocks[0], "nvfp4")
        with pytest.raises(RuntimeError, match="remove that model instead"):
            remove(model.blocks[0])
    with pytest.raises(RuntimeError, match="no lowbit emulation is applied"):
        remove(model)


def test_apply_and_remove_take_only_a_module() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        apply("x", "mxfp4")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        remove("x")  # type: ignore[arg-type]


def test_unknown_names_and_fields_are_clear_errors() -> None:
    model = make_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"unknown recipe 'mxfp5'.*mxfp4.*block_dialect"):
        apply(model, "mxfp5")
    with pytest.raises(ValueError, match=r"unknown format\(s\) 'mxfp5'.*registered formats: .*nvfp4"):
        apply(model, "mxfp4", weight="mxfp5")
    with pytest.raises(ValueError, match=r"unknown format\(s\) 'int3'"):
        apply(model, "mxfp4", layers=LayerPolicy(exact={"proj_out": Quantize(activation="int3")}))
    with pytest.raises(ValueError, match=r"unknown recipe field\(s\) 'weights'.*weight, activation"):
        apply(model, "mxfp4", weights="nvfp4")
    # a misspelt keyword of apply itself lands in the overrides: the error names apply's keywords too
    with pytest.raises(ValueError, match=r"unknown recipe field\(s\) 'stat'; a Recipe has name, weight, .*, "
                                         r"description; apply\(\) itself takes the keyword arguments stats, "
                                         r"backend, token_order$"):
        apply(model, "mxfp4", stat=False)
    with pytest.raises(ValueError, match=r"unknown recipe field\(s\) 'progres'.*; calibrate\(\) itself takes the "
                                         r"keyword arguments steps, progress, stats, backend, token_order$"):
        calibrate(model, "static_w8a8", lambda m: None, steps=1, progres=False)
    with pytest.raises(ValueError, match="no activation format"):
        apply(model, "semantic_dialect", activation=None)
    with pytest.raises(TypeError, match="Recipe or a registered recipe name"):
        apply(model, 4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Keep or a Quantize"):
        LayerPolicy(exact={"proj_out": "keep"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="not a valid regex"):
        LayerPolicy(patterns=[("blocks.(", Keep())])
    assert_restored(model, before)


# ---------------------------------------------------------------------------
# layer policy


def test_default_policy_keeps_embedders_modulation_and_final_layer() -> None:
    model = make_model()
    with apply(model, "mxfp4") as emulation:
        report = emulation.report()
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {lay.name for lay in report.skipped} == KEPT
    assert {lay.name for lay in report.quantized} == linears - KEPT
    assert all(lay.reason and lay.rule.startswith("pattern") for lay in report.skipped)


def test_exact_name_beats_pattern_beats_default() -> None:
    policy = LayerPolicy(
        exact={"blocks.0.ff.2": Quantize(weight="fp8_e4m3", activation=None), "proj_out": Quantize()},
        patterns=[(r"\.attn2\.", Keep("cross-attention")), (r"attn", Quantize(weight="nvfp4")), *LayerPolicy().patterns],
        default=Keep("not listed"),
    )
    model = make_model()
    with apply(model, "mxfp4", layers=policy) as emulation:
        layers = {lay.name: lay for lay in emulation.report().layers}
    assert {k: op.format for k, op in layers["blocks.0.ff.2"].operands.items()} == {"weight": "fp8_e4m3"}
    assert layers["blocks.0.ff.2"].rule == "exact name 'blocks.0.ff.2'"
    assert {k: op.format for k, op in layers["proj_out"].operands.items()} == {"weight": "mxfp4", "activation": "mxfp4"}
    assert not layers["blocks.1.attn2.to_q"].quantized and layers["blocks.1.attn2.to_q"].reason == "cross-attention"
    assert {k: op.format for k, op in layers["blocks.1.attn1.to_v"].operands.items()} == {"weight": "nvfp4", "activation": "mxfp4"}
    assert not layers["blocks.1.ff.0"].quantized and layers["blocks.1.ff.0"].reason == "not listed"
    assert not layers["x_embedder"].quantized


def test_exact_names_that_match_no_layer_warn() -> None:
    model = make_model()
    # a name that does not exist, and a module that is neither a linear nor an attention
    # module (the rule would not reach the linears inside it)
    exact = {"blocks.9.nonexistent": Keep(), "blocks.0.ff": Keep(), "blocks.0.ff.0": Keep()}
    policy = LayerPolicy().with_rules(exact=exact)
    with pytest.warns(UserWarning) as record:
        apply(model, "mxfp4", layers=policy).remove()
    (warning,) = [w for w in record if "exact name" in str(w.message)]
    assert str(warning.message).startswith(
        "recipe 'mxfp4': the layer-policy exact name(s) 'blocks.9.nonexistent', 'blocks.0.ff' match no nn.Linear "
        "or attention module of this ToyDiT"
    )
    assert warning.filename == __file__  # it points at the apply call
    # exact names of a linear and of an attention module: no warning
    policy = LayerPolicy().with_rules(exact={"blocks.0.ff.0": Keep(), "blocks.0.attn1": Quantize()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply(model, "mxfp4", layers=policy).remove()


def test_with_rules_puts_new_rules_first() -> None:
    policy = LayerPolicy().with_rules(exact={"proj_out": Quantize(activation=None)}, patterns=[(r"ff\.2$", Keep("last ff"))])
    assert policy.rule_for("proj_out") == (Quantize(activation=None), "exact name 'proj_out'")
    assert policy.rule_for("blocks.1.ff.2")[0] == Keep("last ff")
    assert policy.rule_for("x_embedder")[0] == LayerPolicy().rule_for("x_embedder")[0]
    assert policy.rule_for("blocks.1.ff.0") == (Quantize(), "default")


# ---------------------------------------------------------------------------
# attention operands


def _sdpa_inputs(model: ToyDiT) -> tuple[torch.Tensor, ...]:
    return model.blocks[0].attn1.processor.seen[-1]


def test_attention_is_not_touched_when_its_operands_are_off() -> None:
    model = make_model()
    processors = [m.processor for m in model.modules() if isinstance(m, ToyAttention)]
    with apply(model, "mxfp4") as emulation:
        assert [m.processor for m in model.modules() if isinstance(m, ToyAttention)] == processors
        assert all(type(p) is RecordingProcessor for p in processors)
        assert all(lay.kind == "linear" for lay in emulation.report().layers)


def test_qk_quantizes_q_and_k_along_the_head_dim() -> None:
    model = make_model()
    with apply(model, "mxfp4", weight=None, activation=None, qk="mxfp4"):
        forward(model)
        q, k, v, out = _sdpa_inputs(model)
    assert q.shape == (1, HEADS, TOKENS, DIM // HEADS)
    expected = F.scaled_dot_product_attention(lowbit.fake_quant(q, "mxfp4", axis=-1), lowbit.fake_quant(k, "mxfp4", axis=-1), v)
    assert_same_bits(expected, out)
    assert not torch.equal(out, F.scaled_dot_product_attention(q, k, v))


class LinearAttentionProcessor:
    """A processor that never calls scaled_dot_product_attention (linear attention, as
    Sana's): there is nothing for the operand formats to intercept."""

    def __call__(self, attn: ToyAttention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = F.relu(attn.to_q(x)), F.relu(attn.to_k(x)), attn.to_v(x)
        return attn.to_out(q @ (k.transpose(-1, -2) @ v) / x.shape[-2])


def test_attention_without_an_sdpa_call_is_reported_as_not_quantized() -> None:
    model = make_model()
    linear_attention = model.blocks[0].attn1
    linear_attention.processor = LinearAttentionProcessor()
    with apply(model, "mxfp4", qk="mxfp8_e4m3") as emulation:
        forward(model)
        forward(model)
        report = emulation.report()
    layers = {layer.name: layer for layer in report.layers}
    name = next(n for n, m in model.named_modules() if m is linear_attention)
    assert not layers[name].quantized and layers[name].calls == 0
    assert layers[name].reason == "its processor ran 2 times without calling scaled_dot_product_attention"
    assert layers[name] in report.skipped
    others = [lay for n, lay in layers.items() if lay.kind == "attention" and n != name]
    assert others and all(lay.quantized and lay.calls == 2 and lay.reason == "" for lay in others)


def test_pv_quantizes_p_and_v_along_the_key_axis() -> None:
    model = make_model()
    with apply(model, "mxfp4", weight=None, activation=None, pv="nvfp4") as emulation:
        forward(model)
        q, k, v, out = _sdpa_inputs(model)
        report = emulation.report()
    # the documented computation: softmax(q k^T * scale) in float32, scale = 1/sqrt(head dim)
    p = torch.softmax((q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1])), dim=-1)
    expected = lowbit.fake_quant(p, "nvfp4", axis=-1) @ lowbit.fake_quant(v, "nvfp4", axis=-2)
    assert_same_bits(expected, out)
    assert not torch.allclose(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-4, atol=1e-5)
    attn = next(lay for lay in report.layers if lay.name == "blocks.0.attn1")
    assert set(attn.operands) == {"p", "v"} and attn.calls == 1 and math.isfinite(attn.output_sqnr_db)


def test_pv_respects_a_boolean_mask() -> None:
    mask = torch.ones(TOKENS, TOKENS, dtype=torch.bool)
    mask[:, -4:] = False
    model = make_model()
    model.blocks[0].attn1.processor.mask = mask
    with apply(model, "mxfp4", weight=None, activation=None, pv="mxfp4"):
        forward(model)
        q, k, v, out = _sdpa_inputs(model)
        fp = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # Masked keys carry no weight: their values cannot reach the output.
        v2 = v.clone()
        v2[..., -4:, :] = 1e3
        out2 = model_module._explicit_attention(q, k, v2, {**model_module._SDPA_DEFAULTS, "attn_mask": mask},
                                                lambda t: t, lambda t: t)  # fmt: skip
    torch.testing.assert_close(out2, fp, rtol=1e-5, atol=1e-6)
    # the quantized output: softmax(q k^T * scale) with masked keys at -inf (so exactly 0 in P)
    logits = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]))
    p = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    assert torch.all(p[..., -4:] == 0)
    assert_same_bits(lowbit.fake_quant(p, "mxfp4", axis=-1) @ lowbit.fake_quant(v, "mxfp4", axis=-2), out)


# ---------------------------------------------------------------------------
# semantic policies and step state


def test_semantic_state_is_wired_to_attention_and_linears(fake_semantic: type[FakeSemanticState]) -> None:
    model = make_model()
    with apply(model, "semantic_dialect") as emulation:
        (state,) = fake_semantic.made
        assert state.args == ("semantic_dialect_16", Decomposition(), SeDA())
        forward(model)
        forward(model)
        report = emulation.report()
        assert emulation.forwards == 2 and emulation.step == 1
    # Both attention modules of both blocks were observed with SDPA's (B, H, L, D) operands.
    observed = {(name, step) for name, *_, step in state.observed}
    assert observed == {(f"blocks.{b}.attn{a}", s) for b in (0, 1) for a in (1, 2) for s in (0, 1)}
    assert ("blocks.0.attn1", (1, HEADS, TOKENS, DIM // HEADS), (1, HEADS, TOKENS, DIM // HEADS), 0) in state.observed
    used = {(name, step): attn for name, attn, step in state.quantized}
    assert used["blocks.0.attn1.to_q", 0] == used["blocks.0.attn1.to_q", 1] == "blocks.0.attn1"
    assert used["blocks.1.ff.2", 0] == used["blocks.1.ff.2", 1] == "blocks.1.attn1"  # same block, first in order
    # attn2 is cross-attention (5 context tokens): known once its SDPA ran, then the
    # self-attention of the same block serves its linears
    assert used["blocks.1.attn2.to_q", 0] == "blocks.1.attn2"
    assert used["blocks.1.attn2.to_q", 1] == "blocks.1.attn1"
    assert {step for *_, step in state.quantized} == {0, 1}
    assert set(state.tokens) == {None}  # no dual-stream block: every linear sees all tokens
    layers = {lay.name: lay for lay in report.layers}
    assert layers["blocks.0.ff.0"].semantic == {"seda": 2}
    assert layers["blocks.0.ff.0"].attention == "blocks.0.attn1"
    # the extra bits the policy charged show up in the activation's bits per element
    act = layers["blocks.0.ff.0"].operands["activation"]
    plain = fake_quant_with_stats(torch.zeros(1, TOKENS, DIM), "semantic_dialect_16")[1].bits_per_element
    assert act.bits_per_element == pytest.approx(plain + 1000.0 / (TOKENS * DIM))
    assert report.semantic_state == {"fake": True, "observed": 8}
    observed_only = layers["blocks.0.attn1"]  # no qk/pv format: observed, not quantized
    assert not observed_only.quantized and observed_only.operands == {} and observed_only.calls == 2


def _with_residual(x: torch.Tensor, salient: torch.Tensor, fmt: str) -> torch.Tensor:
    """Decomposition by hand: Q(x) everywhere, plus Q(x - Q(x)) on the ``salient`` rows."""
    plain = lowbit.fake_quant(x, fmt, axis=-1)
    out = plain.clone()
    out[salient] = plain[salient] + lowbit.fake_quant(x[salient] - plain[salient], fmt, axis=-1)
    return out


@pytest.mark.parametrize("order", ["text_first", "video_first"])
def test_dual_stream_linears_use_the_salient_tokens_of_their_stream(order: str) -> None:
    model = joint_model(order)
    fmt, total = "semantic_dialect_16", TEXT + VIDEO  # the semantic_dialect recipe's format
    attn = model.blocks[0].attn
    with apply(model, "semantic_dialect", weight=None, decomposition=Decomposition(fraction=0.5), assignment=None,
               token_order=order) as emulation:  # fmt: skip
        joint_forward(model)
        layers = {lay.name: lay for lay in emulation.report().layers}
        state = emulation.semantic.attention_state("blocks.0.attn")
    seen = attn.processor.seen
    # the salient tokens of the joint sequence, from SDPA's own probabilities (V = identity)
    q, k = seen["q"].double(), seen["k"].double()
    probabilities = F.scaled_dot_product_attention(q, k, torch.eye(total, dtype=torch.float64).expand(1, HEADS, -1, -1))
    top = torch.sort(probabilities.mean(dim=(1, 2)), dim=-1, descending=True, stable=True).indices[:, : total // 2]
    salient = torch.zeros(1, total, dtype=torch.bool).scatter_(1, top, True)
    assert_same_bits(salient, state.salient)
    # (the stream's tokens, the other end of the sequence): text-first has text at 0..3 and
    # video at 4..15, video-first video at 0..11 and text at 12..15
    text_head, text_tail = slice(0, TEXT), slice(VIDEO, total)
    video_head, video_tail = slice(0, VIDEO), slice(TEXT, total)
    streams = {"to_add_out": (text_head, text_tail), "to_out": (video_tail, video_head)}
    if order == "video_first":
        streams = {"to_add_out": (text_tail, text_head), "to_out": (video_head, video_tail)}
    for name, (tokens, other) in streams.items():
        rows = salient[:, tokens]
        assert rows.any() and not torch.equal(rows, salient[:, other])  # a wrong slice would show
        linear = attn.to_add_out if name == "to_add_out" else attn.to_out[0]
        x, y = seen[name]
        assert_same_bits(F.linear(_with_residual(x, rows, fmt), linear.weight, linear.bias), y)
    # every linear that ran after the attention used its stream's slice of the state
    for name in ("attn.to_out.0", "attn.to_add_out", "ff", "ff_context"):
        assert layers[f"blocks.0.{name}"].semantic == {"decomposition": 1}, name
    for name in ("attn.to_q", "attn.add_q_proj"):
        assert layers[f"blocks.0.{name}"].semantic == {"plain (no attention state yet)": 1}, name


def test_dual_stream_fallbacks_and_token_order_errors() -> None:
    # a class without a known joint order: the stream linears' token counts do not fit
    model = joint_model("text_first")
    with apply(model, "semantic_dialect_no_seda") as emulation:
        joint_forward(model)
        layers = {lay.name: lay for lay in emulation.report().layers}
    assert layers["blocks.0.attn.to_add_out"].semantic == {f"plain (token count {TEXT} != {TEXT + VIDEO})": 1}
    assert layers["blocks.0.ff"].semantic == {f"plain (token count {VIDEO} != {TEXT + VIDEO})": 1}
    # one masked prompt token left out of the joint sequence: the video stream (first) still
    # fits, the text stream (last) would be misaligned and stays plain
    model = joint_model("video_first", drop=1)
    with apply(model, "semantic_dialect_no_seda", token_order="video_first") as emulation:
        joint_forward(model)
        layers = {lay.name: lay for lay in emulation.report().layers}
    why = f"plain (joint tokens {TEXT + VIDEO - 1} != {VIDEO} + {TEXT} of the two streams)"
    assert layers["blocks.0.attn.to_add_out"].semantic == layers["blocks.0.ff_context"].semantic == {why: 1}
    assert layers["blocks.0.attn.to_out.0"].semantic == layers["blocks.0.ff"].semantic == {"decomposition": 1}
    with pytest.raises(ValueError, match="token_order must be 'text_first', 'video_first' or None"):
        apply(model, "semantic_dialect", token_order="text-first")  # type: ignore[arg-type]


def test_reset_clears_step_state_and_statistics(fake_semantic: type[FakeSemanticState]) -> None:
    model = make_model()
    with apply(model, "semantic_dialect_no_seda") as emulation:
        forward(model)
        forward(model)
        emulation.reset()
        (state,) = fake_semantic.made
        assert state.resets == 1 and emulation.step == 0 and emulation.forwards == 0
        report = emulation.report()
        ff = next(lay for lay in report.layers if lay.name == "blocks.0.ff.0")
        assert ff.calls == 0 and ff.semantic == {} and ff.operands["activation"].elements == 0
        assert ff.operands["weight"].elements == 2 * DIM * DIM
        forward(model)
        assert state.quantized[-1][2] == 0


def test_step_counts_root_forwards_without_semantic_policy() -> None:
    model = make_model()
    with apply(model, "mxfp4") as emulation:
        assert emulation.step == 0 and emulation.forwards == 0
        for _ in range(3):
            forward(model)
        model.blocks[0](torch.zeros(1, 3, DIM), torch.zeros(1, DIM), torch.zeros(1, 2, DIM))  # not the root
        assert emulation.forwards == 3 and emulation.step == 2


# ---------------------------------------------------------------------------
# report


def test_report_json_table_and_plots(tmp_path: Path) -> None:
    model = make_model()
    with apply(model, "block_dialect", qk="mxfp8_e4m3") as emulation:
        forward(model)
        report = emulation.report()
    data = report.to_dict()
    assert json.loads(report.to_json()) == data
    assert Report.from_json(report.to_json()).to_dict() == data
    assert {lay["name"] for lay in data["layers"] if not lay["quantized"]} == KEPT
    for lay in report.quantized:
        assert math.isfinite(lay.output_sqnr_db) and lay.calls == 1, lay.name
    ff = next(lay for lay in report.layers if lay.name == "blocks.0.ff.0")
    assert ff.operands["weight"].format == "dialectfp4_mse" and ff.operands["activation"].format == "dialectfp4"
    assert sum(ff.operands["weight"].dialect_counts) == 2 * DIM * DIM // 32  # one dialect per block of 32
    assert 0 <= ff.operands["activation"].clip_rate < 1
    assert data["summary"]["skipped_layers"] == len(KEPT)
    text = str(report)
    assert "blocks.0.ff.0" in text and "AdaLN modulation" in text
    written = report.plot(tmp_path)
    assert [p.name for p in written] == ["sqnr.png", "dialects.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)


def test_report_sqnr_and_clip_rate_match_a_hand_computation() -> None:
    # One MXFP4 linear (layer "0", blocks of 32) over two forwards, the second with rare
    # large outliers. By the definitions of docs/models.md (Report) and lowbit.emulate.stats:
    # output SQNR = 10 log10(sum y^2 / sum (y_q - y)^2), y = x W^T + b, y_q = Q(x) Q(W)^T + b,
    # both sums over every element of both forwards; clip rate = the share of elements whose
    # magnitude exceeds the largest magnitude of their dequantized block.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48))
    g = torch.Generator().manual_seed(3)
    outliers = 1 + 30 * (torch.rand(3, 7, 64, generator=g) < 0.02)
    xs = [torch.randn(2, 5, 64, generator=g), torch.randn(3, 7, 64, generator=g) * outliers]
    with apply(model, "mxfp4") as emulation, torch.no_grad():
        for x in xs:
            model(x)
        report = emulation.report()
    with torch.no_grad():
        w, b = model[0].weight, model[0].bias
        w_q = lowbit.fake_quant(w, "mxfp4", axis=-1)

        def clipped(t: torch.Tensor, t_q: torch.Tensor) -> int:
            blocks, blocks_q = t.abs().reshape(-1, 2, 32), t_q.abs().reshape(-1, 2, 32)
            return int((blocks > blocks_q.amax(dim=-1, keepdim=True)).sum())

        signal, error, per_forward_db, x_clipped = [], [], [], 0
        for x in xs:
            x_q = lowbit.fake_quant(x, "mxfp4", axis=-1)
            y, y_q = F.linear(x, w, b).double(), F.linear(x_q, w_q, b).double()
            signal.append(float((y**2).sum()))
            error.append(float(((y_q - y) ** 2).sum()))
            per_forward_db.append(10 * math.log10(signal[-1] / error[-1]))
            x_clipped += clipped(x, x_q)
        sqnr = 10 * math.log10(sum(signal) / sum(error))
        activation_clip = x_clipped / sum(x.numel() for x in xs)
        weight_clip = clipped(w, w_q) / w.numel()
    # summing over forwards is not averaging the forwards' SQNRs: the test tells them apart
    assert abs(sqnr - sum(per_forward_db) / 2) > 1.0
    assert x_clipped > 0 and weight_clip > 0  # MXFP4 saturates a block maximum in (6, 8) x 2^e to 6 x 2^e
    (layer,) = report.quantized
    ops = layer.operands
    assert layer.name == "0" and layer.calls == 2 and ops["activation"].elements == sum(x.numel() for x in xs)
    # The float32 outputs are the same bits as the emulation's; only the order of the
    # float64 sums differs, so the SQNR agrees to float64 rounding: each sum of ~1500
    # terms is within ~1500 * 2^-53 relative, i.e. ~1e-12 dB; the clip rates are
    # ratios of the same integer counts, so they are equal exactly.
    assert layer.output_sqnr_db == pytest.approx(sqnr, rel=0, abs=1e-9)
    assert ops["activation"].clip_rate == activation_clip and ops["weight"].clip_rate == weight_clip
    # the JSON holds the same values and the table shows them rounded
    (data,) = [lay for lay in json.loads(report.to_json())["layers"] if lay["name"] == "0"]
    assert data["output_sqnr_db"] == layer.output_sqnr_db
    assert data["operands"]["activation"]["clip_rate"] == activation_clip
    columns = {column.header: list(column.cells) for column in report.table().columns}
    row = columns["layer"].index("0")
    assert columns["out SQNR dB"][row] == f"{sqnr:.2f}"
    assert columns["clip"][row] == f"{100 * activation_clip:.3f}%"


def test_report_of_non_formatbook_recipe_writes_only_the_sqnr_plot(tmp_path: Path) -> None:
    model = make_model()
    with apply(model, "mxfp4") as emulation:
        forward(model)
        written = emulation.report().plot(tmp_path)
    assert [p.name for p in written] == ["sqnr.png"]


# ---------------------------------------------------------------------------
# recipes


def test_builtin_recipes_are_registered_as_a_plugin() -> None:
    table = recipes()
    assert list(table) == ["fp8", "mxfp4", "nvfp4", "block_dialect", "semantic_dialect", "semantic_dialect_no_seda",
                           "semantic_dialect_no_decomp", "six_bit", "static_w8a8", "w8a8_dynamic"]  # fmt: skip
    formats = {name: (r.weight, r.activation, r.qk, r.pv) for name, r in table.items()}
    assert formats["fp8"] == ("fp8_e4m3", "fp8_e4m3", None, None)
    assert formats["block_dialect"] == ("dialectfp4_mse", "dialectfp4", None, None)
    assert formats["semantic_dialect"] == ("semantic_dialect_16", "semantic_dialect_16", None, None)
    policies = {name: (r.decomposition, r.assignment) for name, r in table.items()}
    assert policies["semantic_dialect"] == (Decomposition(), SeDA())
    assert policies["semantic_dialect_no_seda"] == (Decomposition(), None)
    assert policies["semantic_dialect_no_decomp"] == (None, SeDA())
    assert all(policies[n] == (None, None) for n in ("fp8", "mxfp4", "nvfp4", "block_dialect"))
    assert formats["six_bit"][:2] == ("nvfp4", "nvfp4") and table["six_bit"].six_bit == SixBit()
    assert table["static_w8a8"].scaling == Scaling(activation="static", smoothquant=0.5)
    assert table["w8a8_dynamic"].scaling == Scaling(activation="token")
    assert [n for n, r in table.items() if r.needs_calibration] == ["six_bit", "static_w8a8"]
    assert lowbit.registry.registry().recipes.origin["nvfp4"] == "lowbit.plugins.builtin_recipes"
    assert get_recipe("mxfp4") is table["mxfp4"]
    hash(table["semantic_dialect"])  # a recipe is a frozen, hashable value


def test_a_recipe_value_applies_without_registration() -> None:
    recipe = Recipe(name="w4 only", weight="mxfp4", layers=LayerPolicy(patterns=()))
    model = make_model()
    with apply(model, recipe) as emulation:
        report = emulation.report()
    assert not report.skipped  # no pattern: every linear is quantized
    assert all(set(lay.operands) == {"weight"} for lay in report.quantized)
    assert attrs.evolve(recipe, activation="mxfp4").activation == "mxfp4"


def test_cli_lists_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(recipes())
    assert rows[3]["weight"] == "dialectfp4_mse" and rows[4]["assignment"]["anchors"] == SeDA().anchors
    assert main(["recipes"]) == 0
    assert "semantic_dialect_no_decomp" in capsys.readouterr().out


def test_default_policy_holds_for_a_model_nested_in_a_wrapper() -> None:
    wrapper = nn.Module()
    wrapper.transformer = make_model()
    with apply(wrapper, "mxfp4") as emulation:
        skipped = {lay.name for lay in emulation.report().skipped}
    assert skipped == {f"transformer.{name}" for name in KEPT}
