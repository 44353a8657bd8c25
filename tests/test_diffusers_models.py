"""Every built-in recipe on tiny random-weight diffusers video DiTs.

For each class: the recipe changes the output, the default layer policy keeps the
embedders, the AdaLN modulation linears and the final layer in full precision (the
expected names are listed here by hand from each class's module tree), attention
operands can be quantized, and ``remove`` gives back the model bit for bit.
FluxTransformer2DModel is fed 3-D position ids: the Open-Sora 2.0 topology. In the
dual-stream blocks of Flux, HunyuanVideo and Mochi the semantic policies reach the
linears of both streams.
"""

from __future__ import annotations

from typing import Any, Callable

import diffusers
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.emulate import Report, apply, calibrate, get_recipe, recipes
from lowbit.emulate.semantic import Decomposition
from lowbit.testing.conformance import assert_same_bits
from test_apply import assert_restored, snapshot

# diffusers' Mochi RoPE asks CPU autocast for float32, which CPU autocast ignores with a warning
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

TEXT, TEXT_DIM = 5, 16


def _wan() -> tuple[nn.Module, dict[str, Any]]:
    model = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
        in_channels=4, out_channels=4, text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32)  # fmt: skip
    return model, dict(hidden_states=torch.randn(1, 4, 2, 8, 8), timestep=torch.tensor([500]),
                       encoder_hidden_states=torch.randn(1, TEXT, TEXT_DIM))  # fmt: skip


def _hunyuan() -> tuple[nn.Module, dict[str, Any]]:
    model = diffusers.HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
        attention_head_dim=8, num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2,
        patch_size_t=1, text_embed_dim=TEXT_DIM, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))  # fmt: skip
    return model, dict(hidden_states=torch.randn(1, 4, 2, 8, 8), timestep=torch.tensor([500]),
                       encoder_hidden_states=torch.randn(1, TEXT, TEXT_DIM), encoder_attention_mask=torch.ones(1, TEXT),
                       pooled_projections=torch.randn(1, 8), guidance=torch.tensor([3500.0]))  # fmt: skip


def _cogvideox() -> tuple[nn.Module, dict[str, Any]]:
    model = diffusers.CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, time_embed_dim=8, text_embed_dim=TEXT_DIM, num_layers=1, sample_width=8, sample_height=8,
        sample_frames=5, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=TEXT)  # fmt: skip
    return model, dict(hidden_states=torch.randn(1, 2, 4, 8, 8), timestep=torch.tensor([500]),
                       encoder_hidden_states=torch.randn(1, TEXT, TEXT_DIM))  # fmt: skip


def _ltx() -> tuple[nn.Module, dict[str, Any]]:
    model = diffusers.LTXVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=1, caption_channels=TEXT_DIM)  # fmt: skip
    return model, dict(hidden_states=torch.randn(1, 2 * 4 * 4, 4), timestep=torch.tensor([500]),
                       encoder_hidden_states=torch.randn(1, TEXT, TEXT_DIM), encoder_attention_mask=torch.ones(1, TEXT),
                       num_frames=2, height=4, width=4)  # fmt: skip


def _mochi() -> tuple[nn.Module, dict[str, Any]]:
    model = diffusers.MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        pooled_projection_dim=16, in_channels=4, out_channels=4, text_embed_dim=TEXT_DIM, time_embed_dim=8,
        max_sequence_length=TEXT)  # fmt: skip
    return model, dict(hidden_states=torch.randn(1, 4, 2, 8, 8), timestep=torch.tensor([500]),
                       encoder_hidden_states=torch.randn(1, TEXT, TEXT_DIM),
                       encoder_attention_mask=torch.ones(1, TEXT, dtype=torch.bool))  # fmt: skip


def _latte() -> tuple[nn.Module, dict[str, Any]]:
    model = diffusers.LatteTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, num_layers=1, cross_attention_dim=16, sample_size=8, patch_size=2, norm_type="ada_norm_single",
        caption_channels=TEXT_DIM, video_length=2)  # fmt: skip
    return model, dict(hidden_states=torch.randn(1, 4, 2, 8, 8), timestep=torch.tensor([500]),
                       encoder_hidden_states=torch.randn(1, TEXT, TEXT_DIM))  # fmt: skip


def _flux_open_sora() -> tuple[nn.Module, dict[str, Any]]:
    model = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, out_channels=16, num_layers=1,
        num_single_layers=1, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=8, guidance_embeds=False, axes_dims_rope=(2, 2, 4))  # fmt: skip
    t, h, w = 2, 4, 4
    grid = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    img_ids = torch.stack(grid, dim=-1).reshape(-1, 3).float()  # (t, h, w) position of every latent token
    return model, dict(hidden_states=torch.randn(1, t * h * w, 16), timestep=torch.tensor([0.5]),
                       encoder_hidden_states=torch.randn(1, TEXT, TEXT_DIM), pooled_projections=torch.randn(1, 8),
                       img_ids=img_ids, txt_ids=torch.zeros(TEXT, 3))  # fmt: skip


# Models with dual-stream (joint attention) blocks, and the policies each semantic recipe applies
DUAL_STREAM = {"flux_open_sora", "hunyuan_video", "mochi"}
SEMANTIC_PARTS = {"semantic_dialect": "decomposition+seda", "semantic_dialect_no_seda": "decomposition",
                  "semantic_dialect_no_decomp": "seda"}  # fmt: skip

# Linears the default policy must keep, read off each class's module tree: a name here
# keeps that module and everything under it.
MODELS: dict[str, tuple[Callable[[], tuple[nn.Module, dict[str, Any]]], tuple[str, ...]]] = {
    "wan": (_wan, ("condition_embedder", "proj_out")),
    "hunyuan_video": (_hunyuan, ("context_embedder", "time_text_embed", "transformer_blocks.0.norm1.linear",
        "transformer_blocks.0.norm1_context.linear", "single_transformer_blocks.0.norm.linear", "norm_out.linear",
        "proj_out")),  # fmt: skip
    "cogvideox": (_cogvideox, ("patch_embed", "time_embedding", "transformer_blocks.0.norm1.linear",
        "transformer_blocks.0.norm2.linear", "norm_out.linear", "proj_out")),  # fmt: skip
    "ltx_video": (_ltx, ("proj_in", "time_embed", "caption_projection", "proj_out")),
    "mochi": (_mochi, ("time_embed", "transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear_1",
        "norm_out.linear", "proj_out")),  # fmt: skip
    "latte": (_latte, ("adaln_single", "caption_projection", "proj_out")),
    "flux_open_sora": (_flux_open_sora, ("time_text_embed", "context_embedder", "x_embedder",
        "transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear",
        "single_transformer_blocks.0.norm.linear", "norm_out.linear", "proj_out")),  # fmt: skip
}


def run(model: nn.Module, kwargs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**kwargs, return_dict=False)[0]


class Built:
    """A tiny model, its inputs, its full-precision output and its snapshot."""

    def __init__(self, name: str) -> None:
        self.name = name
        make, self.keep = MODELS[name]
        torch.manual_seed(0)
        self.model, self.kwargs = make()
        self.model.eval()
        self.reference = run(self.model, self.kwargs)
        self.before = snapshot(self.model)
        self.linears = {n for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}
        self.kept = {n for n in self.linears if any(n == k or n.startswith(k + ".") for k in self.keep)}
        self.attentions = {n for n, m in self.model.named_modules() if callable(getattr(m, "processor", None))}

    def check_restored(self) -> None:
        assert_restored(self.model, self.before)
        assert_same_bits(self.reference, run(self.model, self.kwargs))


@pytest.fixture(scope="module", params=list(MODELS))
def built(request: pytest.FixtureRequest) -> Built:
    return Built(request.param)


@pytest.mark.parametrize("recipe", list(recipes()))
def test_builtin_recipe(built: Built, recipe: str) -> None:
    if get_recipe(recipe).needs_calibration:
        # three denoising steps on the test inputs, then one forward with the calibration
        emulation = calibrate(built.model, recipe, lambda m: [run(m, built.kwargs) for _ in range(3)], steps=3, progress=False)
    else:
        emulation = apply(built.model, recipe)
    with emulation:
        y = run(built.model, built.kwargs)
        report = emulation.report()
    assert y.shape == built.reference.shape and torch.isfinite(y).all()
    assert not torch.equal(y, built.reference)
    skipped = {lay.name for lay in report.skipped if lay.kind == "linear"}
    quantized = {lay.name for lay in report.quantized if lay.kind == "linear"}
    assert skipped == built.kept
    assert quantized == built.linears - built.kept
    assert all(lay.calls >= 1 for lay in report.quantized)
    assert Report.from_json(report.to_json()).to_dict() == report.to_dict()
    if recipe.startswith("semantic_dialect"):
        # every quantized linear's activation went through the semantic state
        linears = [lay for lay in report.quantized if lay.kind == "linear"]
        assert sum(sum(lay.semantic.values()) for lay in linears) == sum(lay.calls for lay in linears)
        applied = {k for lay in linears for k in lay.semantic}
        assert SEMANTIC_PARTS[recipe] in applied, applied
        if built.name in DUAL_STREAM:
            # both streams' linears fit their joint attention's state; only the projections
            # that run before the first attention find none yet
            assert applied <= {SEMANTIC_PARTS[recipe], "plain (no attention state yet)"}, applied
    if recipe == "six_bit":
        # every transformer block ran, in INT8 (its gamma is unknown at the first step)
        assert report.six_bit is not None
        blocks = report.six_bit["steps"][0]["blocks"]
        assert blocks and set(blocks.values()) == {"int8"}, blocks
    built.check_restored()


@pytest.mark.parametrize("operand", ["qk", "pv"])
def test_attention_operands(built: Built, operand: str) -> None:
    with apply(built.model, "mxfp4", weight=None, activation=None, **{operand: "mxfp4"}) as emulation:
        y = run(built.model, built.kwargs)
        report = emulation.report()
    assert not torch.equal(y, built.reference)
    attention = {lay.name: lay for lay in report.layers if lay.kind == "attention"}
    assert set(attention) <= built.attentions
    wrapped = [lay for lay in attention.values() if lay.quantized]
    assert wrapped and all(lay.calls >= 1 for lay in wrapped)
    expected = {"q", "k"} if operand == "qk" else {"p", "v"}
    assert all(set(lay.operands) == expected for lay in wrapped)
    # attention inside a kept module (HunyuanVideo's text refiner) stays in full precision
    assert {n for n, lay in attention.items() if not lay.quantized} == {
        n for n in built.attentions if any(n.startswith(k + ".") for k in built.keep)
    }
    built.check_restored()


@pytest.mark.parametrize("built", sorted(DUAL_STREAM), indirect=True)
def test_semantic_policies_reach_both_streams_of_dual_stream_blocks(built: Built) -> None:
    with apply(built.model, "semantic_dialect") as emulation:
        run(built.model, built.kwargs)
        run(built.model, built.kwargs)  # q/k/v projections run before attention: second forward
        report = emulation.report()
    dual = [lay for lay in report.quantized if lay.kind == "linear" and lay.name.startswith("transformer_blocks.")]
    names = {lay.name for lay in dual}
    assert {"transformer_blocks.0.ff.net.2", "transformer_blocks.0.ff.net.0.proj"} <= names  # video stream
    assert any(n.endswith(".add_q_proj") for n in names)  # text stream
    for lay in dual:  # every linear of both streams used the state of its joint attention
        assert lay.semantic.get("decomposition+seda", 0) >= 1, (lay.name, lay.semantic)
        assert set(lay.semantic) <= {"decomposition+seda", "plain (no attention state yet)"}, (lay.name, lay.semantic)
    built.check_restored()


@pytest.mark.parametrize("built", ["flux_open_sora", "hunyuan_video"], indirect=True)
def test_text_stream_uses_its_end_of_the_joint_sequence(built: Built) -> None:
    # diffusers' Flux puts the text first in its joint attention, HunyuanVideo last
    fmt, block = "semantic_dialect_16", "transformer_blocks.0"  # the semantic_dialect recipe's format
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    to_add_out = built.model.get_submodule(f"{block}.attn.to_add_out")
    hook = to_add_out.register_forward_hook(lambda module, args, y: seen.append((args[0], y)))
    try:
        with apply(built.model, "semantic_dialect", weight=None, decomposition=Decomposition(fraction=0.5),
                   assignment=None) as emulation:  # fmt: skip
            run(built.model, built.kwargs)
            salient = emulation.semantic.attention_state(f"{block}.attn").salient
    finally:
        hook.remove()
    ((x, y),) = seen
    n = x.shape[1]
    head, tail = salient[:, :n], salient[:, -n:]
    rows, other = (head, tail) if built.name == "flux_open_sora" else (tail, head)
    assert rows.any() and not torch.equal(rows, other)  # the other end would show
    plain = lowbit.fake_quant(x, fmt, axis=-1)
    q = plain.clone()
    q[rows] = plain[rows] + lowbit.fake_quant(x[rows] - plain[rows], fmt, axis=-1)
    assert_same_bits(F.linear(q, to_add_out.weight, to_add_out.bias), y)
    built.check_restored()


def test_cross_attention_linears_use_the_self_attention_of_their_block() -> None:
    wan = Built("wan")  # attn2 is cross-attention (diffusers marks it is_cross_attention)
    with apply(wan.model, "semantic_dialect") as emulation:
        run(wan.model, wan.kwargs)
        run(wan.model, wan.kwargs)
        layers = {lay.name: lay for lay in emulation.report().layers}
    assert layers["blocks.0.attn2.to_q"].attention == "blocks.0.attn1"
    assert layers["blocks.0.ffn.net.2"].attention == "blocks.0.attn1"
    assert any(not k.startswith("plain") for k in layers["blocks.0.attn2.to_q"].semantic)
    wan.check_restored()
