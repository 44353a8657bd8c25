"""lowbit.save / lowbit.load: quantized checkpoints of an Emulation.

Round trips on tiny diffusers Wan and Flux (Open-Sora 2.0) transformers: the checkpoint
is loaded into a fresh instance with other random weights and must reproduce the saved
emulation's forward bit for bit. File sizes are checked against a count made here from
each format's definition (element bits, block size, scale bits, dialect-id bits), and
every error must leave the model as it was.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Callable

import attrs
import diffusers
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import lowbit
from lowbit.emulate import Keep, LayerPolicy, Quantize, Recipe, apply, calibrate, get_recipe, recipes, remove
from lowbit.emulate.semantic import Decomposition, SeDA
from lowbit.emulate.sixbit import SixBit
from lowbit.testing.conformance import assert_same_bits
from test_diffusers_models import _flux_open_sora, _wan, run

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

ROUND_TRIP_RECIPES = ["mxfp4", "nvfp4", "block_dialect", "semantic_dialect", "fp8"]

# Storage of each recipe's weight format, from its definition: bits per element code, block
# size, bits per block scale, bits per block dialect id, bytes of the per-tensor scale.
# mxfp4: OCP MX v1.0 (FP4 E2M1, 32, E8M0); nvfp4: FP4 E2M1, 16, FP8 E4M3 scales and a float32
# tensor scale; DialectFP4 (BlockDialect): sign + 3-bit index, 32, 5-bit exponent, 16
# dialects; semantic_dialect: the same with 32 dialects in blocks of 16; fp8: E4M3, no scale.
STORAGE = {
    "mxfp4": (4, 32, 8, 0, 0),
    "nvfp4": (4, 16, 8, 0, 4),
    "block_dialect": (4, 32, 5, 4, 0),
    "semantic_dialect": (4, 16, 5, 5, 0),
    "fp8": (8, None, 0, 0, 0),
}

MODELS: dict[str, Callable[[], tuple[nn.Module, dict[str, Any]]]] = {"wan": _wan, "flux": _flux_open_sora}


def hand_count(recipe: str, out_features: int, in_features: int) -> int:
    """Bytes of one (out, in) weight stored in ``recipe``'s weight format."""
    code_bits, block, scale_bits, id_bits, tensor_scale = STORAGE[recipe]
    codes = out_features * math.ceil(in_features * code_bits / 8)  # codes are packed per row
    blocks = 0 if block is None else out_features * math.ceil(in_features / block)
    return codes + math.ceil(blocks * scale_bits / 8) + math.ceil(blocks * id_bits / 8) + tensor_scale


def build(name: str, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(seed)
    model, kwargs = MODELS[name]()
    return model.eval(), kwargs


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = tensors(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    apply(model, "mxfp4").remove()  # no emulation was left applied


def data_bytes(path: Path) -> int:
    """The file's size less the 8-byte header length and the JSON header."""
    (header,) = struct.unpack("<Q", path.read_bytes()[:8])
    return path.stat().st_size - 8 - header


def rewrite(path: Path, edit: Callable[[dict[str, Any], dict[str, torch.Tensor]], None]) -> None:
    """Re-save a checkpoint after ``edit`` changed its JSON document or tensors in place."""
    with safe_open(str(path), framework="pt") as f:
        document = json.loads(f.metadata()["lowbit.checkpoint"])
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    edit(document, arrays)
    save_file(arrays, str(path), metadata={"lowbit.checkpoint": json.dumps(document)})


# ---------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("recipe", ROUND_TRIP_RECIPES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_round_trip_reproduces_the_emulation_bit_for_bit(tmp_path: Path, model_name: str, recipe: str) -> None:
    model, kwargs = build(model_name, seed=0)
    path = tmp_path / "model.safetensors"
    with apply(model, recipe) as emulation:
        expected = run(model, kwargs)
        info = lowbit.save(emulation, path)
        weights = {n: lin.weight.detach().clone() for n, lin in model.named_modules() if n in emulation.sites
                   and "weight" in emulation.sites[n].operands}  # fmt: skip
        expected_report = emulation.report()
    original = tensors(model)

    fresh, _ = build(model_name, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(tensors(fresh).values(), original.values()))
    loaded = lowbit.load(path, fresh)
    assert_same_bits(expected, run(fresh, kwargs))
    assert loaded.recipe == get_recipe(recipe)
    report = loaded.report()
    assert [lay.operands.get("weight") for lay in report.layers] == [lay.operands.get("weight") for lay in expected_report.layers]

    # the file's data: every quantized weight by hand, the other tensors in float32
    quantized = {f"{n}.weight": w for n, w in weights.items()}
    expected_data = sum(hand_count(recipe, *w.shape) for w in quantized.values())
    expected_data += sum(4 * t.numel() for k, t in original.items() if k not in quantized)
    assert data_bytes(path) == expected_data
    elements = sum(t.numel() for t in original.values())
    assert info.bytes == path.stat().st_size
    assert info.quantized_weights == len(quantized)
    assert info.quantized_elements == sum(w.numel() for w in quantized.values())
    assert info.vs_float32 == 4 * elements / path.stat().st_size
    assert info.vs_float32 > 1

    # remove: the stored tensors, and for quantized linears the values their weights stand for
    loaded.remove()
    restored = tensors(fresh)
    weight_format = get_recipe(recipe).weight
    for key, value in original.items():
        want = lowbit.fake_quant(value, weight_format, axis=-1) if key in quantized else value
        assert_same_bits(want, restored[key])


@pytest.mark.parametrize(
    ("recipe", "bits"),
    [("mxfp4", 4.25), ("nvfp4", (1536 + 192 + 4) * 8 / 3072), ("block_dialect", (1536 + 60 + 48) * 8 / 3072),
     ("semantic_dialect", (1536 + 120 + 120) * 8 / 3072), ("fp8", 8.0)],
)  # fmt: skip
def test_one_small_layer_costs_its_hand_count(tmp_path: Path, recipe: str, bits: float) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    path = tmp_path / "linear.safetensors"
    with apply(linear, recipe) as emulation:
        info = lowbit.save(emulation, path)
    weight_bytes = hand_count(recipe, 48, 64)
    assert info.quantized_bytes == weight_bytes and info.bits_per_weight == bits
    assert (info.quantized_weights, info.quantized_elements, info.other_bytes, info.elements) == (1, 48 * 64, 48 * 4, 48 * 65)
    assert data_bytes(path) == weight_bytes + 48 * 4
    assert info.vs_bfloat16 == 2 * 48 * 65 / path.stat().st_size


def test_recipe_and_apply_keywords_are_stored_whole(tmp_path: Path) -> None:
    recipe = Recipe(
        name="custom", weight="nvfp4", activation="semantic_dialect", qk="mxfp8_e4m3",
        decomposition=Decomposition(fraction=0.25, residual_format="mxfp4", layers=r"ff"),
        assignment=SeDA(anchors=3, dialects_per_group=4, refresh_every=2, layers=None),
        layers=LayerPolicy().with_rules(exact={"transformer_blocks.0.ff.net.2": Keep("sensitive")},
                                        patterns=[(r"\.attn\.to_k$", Quantize(activation=None))]),
        description="everything set",
    )  # fmt: skip
    for value in [recipe, *recipes().values()]:
        assert Recipe.from_dict(json.loads(json.dumps(value.to_dict()))) == value
    # a recipe written before SeDA.per_position existed had one list of dialects per token
    older = recipe.to_dict()
    del older["assignment"]["per_position"]
    assert Recipe.from_dict(older) == attrs.evolve(recipe, assignment=attrs.evolve(recipe.assignment, per_position=False))
    model, kwargs = build("flux", seed=0)
    path = tmp_path / "custom.safetensors"
    with apply(model, recipe, token_order="video_first", stats=False):
        expected = run(model, kwargs)
        lowbit.save(model, path)  # the model an emulation is applied to works as well
    fresh, _ = build("flux", seed=1)
    loaded = lowbit.load(path, fresh)
    assert (loaded.recipe, loaded.token_order, loaded.stats) == (recipe, "video_first", False)
    assert "transformer_blocks.0.ff.net.2" in loaded.skipped
    assert_same_bits(expected, run(fresh, kwargs))
    with safe_open(str(path), framework="pt") as f:
        document = json.loads(f.metadata()["lowbit.checkpoint"])
    assert document["version"] == 1 and document["lowbit"] == lowbit.__version__ and document["calibration"] == {}
    assert {e["format"] for e in document["weights"].values()} == {"nvfp4"}


def test_an_activation_only_recipe_stores_the_recipe_and_the_tensors(tmp_path: Path) -> None:
    model, kwargs = build("wan", seed=0)
    path = tmp_path / "act.safetensors"
    with apply(model, "mxfp4", weight=None) as emulation:
        expected = run(model, kwargs)
        info = lowbit.save(emulation, path)
    assert (info.quantized_weights, info.quantized_elements) == (0, 0) and math.isnan(info.bits_per_weight)
    fresh, _ = build("wan", seed=1)
    loaded = lowbit.load(path, fresh)
    assert loaded.recipe.weight is None and torch.equal(run(fresh, kwargs), expected)
    remove(fresh)
    assert all(torch.equal(a, b) for a, b in zip(tensors(fresh).values(), tensors(model).values()))


@pytest.mark.parametrize("fmt", ["fp4_e2m1", "dialectfp4_mse"])
def test_a_nan_weight_is_kept_through_the_stored_nan_mask(tmp_path: Path, fmt: str) -> None:
    # neither format has a NaN code (DialectFP4's 5-bit exponent scale has none either)
    torch.manual_seed(0)
    linear = nn.Linear(64, 8)
    with torch.no_grad():
        linear.weight[2, 5] = float("nan")
    x = torch.randn(3, 64)
    path = tmp_path / "nan.safetensors"
    with apply(linear, Recipe(name="w", weight=fmt)) as emulation:
        expected = linear(x)
        lowbit.save(emulation, path)
    with safe_open(str(path), framework="pt") as f:
        assert "weight:nan_mask" in f.keys()
    fresh = nn.Linear(64, 8)
    lowbit.load(path, fresh)
    assert torch.isnan(expected).any()
    assert_same_bits(expected, fresh(x))


# ---------------------------------------------------------------------------
# errors


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = build("wan", seed=0)
    path = tmp_path_factory.mktemp("ck") / "wan.safetensors"
    with apply(model, "nvfp4") as emulation:
        lowbit.save(emulation, path)
    return path


def _weight(document: dict[str, Any]) -> str:
    return next(iter(document["weights"]))


def _set_format(document: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
    document["formats"]["nope"] = document["formats"].pop("nvfp4")
    for entry in document["weights"].values():
        entry["format"] = "nope"


def _change_definition(document: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
    spec = json.loads(document["formats"]["nvfp4"])
    spec["block_size"] = 32
    document["formats"]["nvfp4"] = json.dumps(spec, sort_keys=True)


def _short_scales(document: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
    key = f"{_weight(document)}:scale_codes"
    arrays[key] = arrays[key][:-1].clone()


def _keep_a_quantized_linear(document: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
    document["recipe"]["layers"]["exact"].append([_weight(document).removesuffix(".weight"), {"keep": {"reason": "x"}}])


EDITS: dict[str, tuple[Callable[[dict[str, Any], dict[str, torch.Tensor]], None], str]] = {
    "unknown format": (_set_format, "unknown format 'nope'"),
    "unknown recipe format": (lambda d, a: d["recipe"].update(weight="nope"), r"unknown format\(s\) 'nope'"),
    "redefined format": (_change_definition, "different definition"),
    "unknown recipe field": (lambda d, a: d["recipe"].update(extra=1), r"unknown field\(s\) 'extra'"),
    "unknown layer rule": (lambda d, a: d["recipe"]["layers"].update(default={"drop": {}}), "layer-policy rule must be"),
    "version": (lambda d, a: d.update(version=2), "checkpoint version 2"),
    "calibration": (lambda d, a: d.update(calibration={"x": 1}), "calibration state"),
    "missing field": (lambda d, a: a.pop(f"{_weight(d)}:codes"), "missing from the file"),
    "short field": (_short_scales, "scale_codes: expected"),
    "malformed entry": (lambda d, a: d["weights"][_weight(d)].pop("n"), "stored entry has keys"),
    "recipe quantizes others": (_keep_a_quantized_linear, "stored recipe quantizes"),
}


def _load_fails(path: Path, model: nn.Module, error: type[Exception], match: str) -> None:
    before = tensors(model)
    with pytest.raises(error, match=match) as caught:
        lowbit.load(path, model)
    assert "\n" not in str(caught.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("case", list(EDITS))
def test_a_bad_checkpoint_is_refused_and_the_model_is_unchanged(saved: Path, tmp_path: Path, case: str) -> None:
    edit, match = EDITS[case]
    path = tmp_path / "edited.safetensors"
    path.write_bytes(saved.read_bytes())
    rewrite(path, edit)
    _load_fails(path, build("wan", seed=1)[0], ValueError, match)


def test_unreadable_files_are_refused(saved: Path, tmp_path: Path) -> None:
    model, _ = build("wan", seed=1)
    _load_fails(tmp_path / "missing.safetensors", model, FileNotFoundError, "no such file")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(saved.read_bytes()[:-100])
    _load_fails(truncated, model, ValueError, "not a readable safetensors file")
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    _load_fails(plain, model, ValueError, "not a lowbit checkpoint")


def test_a_mismatched_model_is_refused_and_left_unchanged(saved: Path) -> None:
    deeper = diffusers_wan(num_layers=2)
    _load_fails(saved, deeper, ValueError, r"the file lacks blocks\.1\.")
    flux, _ = build("flux", seed=1)
    _load_fails(saved, flux, ValueError, "the model does not match")
    wider = diffusers_wan(ffn_dim=64)
    _load_fails(saved, wider, ValueError, r"blocks\.0\.ffn\.net\.0\.proj\.weight is float32 \[32, 24\] in the file and float32 \[64, 24\]")
    half, _ = build("wan", seed=1)
    _load_fails(saved, half.to(torch.bfloat16), ValueError, "is float32 .* in the file and bfloat16")
    emulated, _ = build("wan", seed=1)
    with apply(emulated, "mxfp4"):
        with pytest.raises(ValueError, match="already emulated"):
            lowbit.load(saved, emulated)


def test_a_smaller_model_is_refused(tmp_path: Path) -> None:
    deeper = diffusers_wan(num_layers=2)
    path = tmp_path / "deep.safetensors"
    with apply(deeper, "mxfp4") as emulation:
        lowbit.save(emulation, path)
    _load_fails(path, build("wan", seed=1)[0], ValueError, r"it has no blocks\.1\.")


def test_save_needs_a_live_emulation(tmp_path: Path) -> None:
    model, _ = build("wan", seed=0)
    with pytest.raises(ValueError, match="no lowbit emulation is applied"):
        lowbit.save(model, tmp_path / "x.safetensors")
    emulation = apply(model, "mxfp4")
    emulation.remove()
    with pytest.raises(ValueError, match="was removed"):
        lowbit.save(emulation, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def diffusers_wan(**changes: Any) -> nn.Module:
    """The tiny Wan of test_diffusers_models with some configuration changed."""
    model, _ = build("wan", seed=1)
    return diffusers.WanTransformer3DModel.from_config({**model.config, **changes}).eval()


@pytest.mark.parametrize("recipe", ["static_w8a8", "six_bit", "w8a8_dynamic"])
def test_round_trip_of_int8_and_calibrated_recipes(tmp_path: Path, recipe: str) -> None:
    model, kwargs = build("wan", seed=0)
    path = tmp_path / "model.safetensors"
    chosen = get_recipe(recipe)
    if recipe == "six_bit":  # the rotated weights too
        chosen = attrs.evolve(chosen, six_bit=SixBit(hadamard=32))
    if chosen.needs_calibration:
        emulation = calibrate(model, chosen, lambda m: [run(m, kwargs) for _ in range(3)], steps=3, progress=False)
    else:
        emulation = apply(model, chosen)
    with emulation:
        expected = [run(model, kwargs) for _ in range(3)]  # three denoising steps
        info = lowbit.save(emulation, path)
        shapes = [emulation.sites[n].module.weight.shape for n in emulation.quantized_weights]
        calibration = emulation.calibration

    fresh, _ = build("wan", seed=1)
    with lowbit.load(path, fresh) as loaded:
        for want in expected:
            assert_same_bits(want, run(fresh, kwargs))
        assert loaded.recipe == chosen
        assert loaded.calibration.keys() == calibration.keys()
        for kind in ("smoothing", "scales"):  # float32 arrays, stored exactly
            for linear, value in calibration.get(kind, {}).items():
                assert_same_bits(value, loaded.calibration[kind][linear])
        if recipe == "six_bit":
            assert loaded.calibration["six_bit"] == calibration["six_bit"]
        else:  # INT8 codes, one byte each, and a float32 scale per output channel (by hand)
            assert info.quantized_bytes == sum(out * inp + 4 * out for out, inp in shapes)


def test_an_uncalibrated_emulation_is_not_saved(tmp_path: Path) -> None:
    model, _ = build("wan", seed=0)
    with apply(model, "static_w8a8") as emulation, pytest.raises(ValueError, match="needs calibration"):
        lowbit.save(emulation, tmp_path / "model.safetensors")


def test_calibration_state_must_fit_the_recipe(tmp_path: Path) -> None:
    model, kwargs = build("wan", seed=0)
    path = tmp_path / "model.safetensors"
    with calibrate(model, "static_w8a8", lambda m: [run(m, kwargs) for _ in range(2)], steps=2, progress=False) as emulation:
        lowbit.save(emulation, path)
    fresh, _ = build("wan", seed=1)
    before = tensors(fresh)
    rewrite(path, lambda d, a: d.update(calibration={}))
    with pytest.raises(ValueError, match="holds no calibration state, but recipe 'static_w8a8' needs it"):
        lowbit.load(path, fresh)
    assert_unchanged(fresh, before)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of a calibrated static_w8a8 and six_bit emulation of the tiny Wan."""
    paths = {}
    for recipe in ("static_w8a8", "six_bit"):
        model, kwargs = build("wan", seed=0)
        with calibrate(model, recipe, lambda m: [run(m, kwargs) for _ in range(3)], steps=3, progress=False) as emu:
            paths[recipe] = tmp_path_factory.mktemp(recipe) / "model.safetensors"
            lowbit.save(emu, paths[recipe])
    return paths


def _first(arrays: dict[str, torch.Tensor], prefix: str) -> str:
    return sorted(k for k in arrays if k.startswith(prefix))[0]


def _drop_linear(document: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
    """Leave one linear out of the calibration state, consistently (its arrays too)."""
    for kind in ("scales", "smoothing"):
        arrays.pop(f"calibration:{kind}:{document['calibration'][kind].pop()}")


CALIBRATION_EDITS: dict[str, tuple[str, Callable[[dict[str, Any], dict[str, torch.Tensor]], None], str]] = {
    "missing array": ("static_w8a8", lambda d, a: a.pop(_first(a, "calibration:scales:")), "is missing or names no linear"),
    "wrong shape": ("static_w8a8", lambda d, a: a.update({_first(a, "calibration:scales:"): torch.ones(4)}), r"expected shape \[3\], got \[4\]"),
    "unlisted array": ("static_w8a8", lambda d, a: d["calibration"]["scales"].pop(), "not listed in the calibration state"),
    "fewer linears": ("static_w8a8", lambda d, a: _drop_linear(d, a), "covers other linears"),
    "bad steps": ("static_w8a8", lambda d, a: d["calibration"].update(steps=0), "positive integer"),
    "missing key": ("static_w8a8", lambda d, a: d["calibration"].pop("smoothing"), "does not fit recipe 'static_w8a8'"),
    "bad fit": ("six_bit", lambda d, a: d["calibration"]["six_bit"].update(alpha="x"), "finite alpha, beta and threshold"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CALIBRATION_EDITS))
def test_a_bad_calibration_state_is_refused_and_the_model_is_unchanged(calibrated: dict[str, Path], tmp_path: Path, case: str) -> None:
    recipe, edit, match = CALIBRATION_EDITS[case]
    path = tmp_path / "edited.safetensors"
    path.write_bytes(calibrated[recipe].read_bytes())
    rewrite(path, edit)
    _load_fails(path, build("wan", seed=1)[0], ValueError, match)
