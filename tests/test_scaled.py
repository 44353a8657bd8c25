"""INT8 scaled over whole axes, SmoothQuant, static per-step calibration: the w8a8 recipes.

Golden values are derived by hand from the definitions in lowbit.emulate.scaled (round
half to even, symmetric clamp at 127, SmoothQuant factors max|X|^a / max|W|^(1-a)), or
recomputed with plain torch arithmetic (torch.round is round-half-to-even), never with
the code under test.
"""

from __future__ import annotations

import io

import attrs
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from torch import nn

from lowbit.emulate import Recipe, apply, calibrate, get_recipe, remove
from lowbit.emulate.scaled import (
    Scaling,
    absmax_scale,
    hadamard,
    rotate,
    rotation_size,
    scaled_fake_quant,
    scaled_fake_quant_with_stats,
    smoothing_factors,
)
from lowbit.emulate.sixbit import SixBit
from lowbit.testing.conformance import assert_same_bits


def test_scaled_fake_quant_by_hand() -> None:
    # scale 0.5: v = x / 0.5 = [2.5, -1.5, 127.5, 200, -200, 0.25]; the clamp to +-127 comes
    # first, then ties to even: [2, -2, 127, 127, -127, 0] -> times 0.5
    x = torch.tensor([1.25, -0.75, 63.75, 100.0, -100.0, 0.125])
    y, st, q = scaled_fake_quant_with_stats(x, torch.tensor(0.5), rows=False)
    assert_same_bits(y, scaled_fake_quant(x, torch.tensor(0.5)))
    assert q.codes.ravel().tolist() == [2, 254, 127, 127, 129, 0]  # two's complement bytes of 2, -2, 127, 127, -127, 0
    assert_same_bits(torch.tensor([1.0, -1.0, 63.5, 63.5, -63.5, 0.0]), y)
    assert st.clipped == 3  # |v| >= 127.5: 127.5, 200, -200
    assert st.bits == 8 * 6 + 32  # one float32 scale for the tensor
    assert st.elements == 6
    assert st.sq_error == pytest.approx(0.25**2 + 0.25**2 + 0.25**2 + 36.5**2 * 2 + 0.125**2)


def test_scaled_fake_quant_keeps_dtype_and_int8_has_one_zero() -> None:
    x = torch.tensor([[-0.0, 0.0, 1.0]], dtype=torch.bfloat16)
    y, st, _ = scaled_fake_quant_with_stats(x, absmax_scale(x))
    assert y.dtype == torch.bfloat16
    assert st.bits == 8 * 3 + 32  # one scale per row
    assert_same_bits(torch.tensor([[0.0, 0.0, 1.0]]), y.float())  # two's complement INT8 has no -0


def test_absmax_scale() -> None:
    x = torch.tensor([[0.0, 0.0], [2.54, -1.0]])
    assert_same_bits(torch.tensor([[1.0], [2.54 / 127]], dtype=torch.float32), absmax_scale(x))
    assert_same_bits(torch.tensor(2.54 / 127, dtype=torch.float32), absmax_scale(x, per_row=False))


def test_per_token_int8_matches_torch_rounding() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 96) * torch.linspace(0.01, 30, 96)
    s = x.abs().amax(dim=-1, keepdim=True) / 127
    expected = torch.round(x / s).clamp(-127, 127) * s + 0.0  # + 0.0: INT8 code 0 is +0, never -0
    y = scaled_fake_quant(x, absmax_scale(x))
    assert_same_bits(expected, y)


def test_smoothing_factors_by_hand() -> None:
    act = torch.tensor([4.0, 1.0, 0.0])
    w = torch.tensor([[1.0, -4.0, 2.0], [0.5, 1.0, -1.0]])  # column maxima 1, 4, 2
    f = smoothing_factors(act, w, 0.5)
    assert_same_bits(torch.tensor([2.0, 0.5, 1.0]), f)  # sqrt(4)/1, sqrt(1)/2, act 0 -> 1


def test_hadamard_sylvester() -> None:
    h4 = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32)
    assert_same_bits(h4, hadamard(4) * 2)
    h = hadamard(128)
    torch.testing.assert_close(h @ h.T, torch.eye(128), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="power of two"):
        hadamard(12)


def test_rotation_sizes_and_identity() -> None:
    assert [rotation_size(k, 128) for k in (96, 384, 7, 1024)] == [32, 128, 1, 128]
    x = torch.randn(5, 7)
    assert rotate(x, 128) is x  # odd reduction axis: no rotation
    x, w = torch.randn(10, 96, dtype=torch.float64), torch.randn(12, 96, dtype=torch.float64)
    torch.testing.assert_close(rotate(x, 128) @ rotate(w, 128).T, x @ w.T)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weight": "mxfp4"}, "scaling needs weight and activation 'int8'"),
        ({"six_bit": SixBit()}, "combines scaling and six_bit"),
    ],
)
def test_recipe_checks(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attrs.evolve(get_recipe("w8a8_dynamic"), **fields).check()


def test_policy_values_checked() -> None:
    with pytest.raises(ValueError, match="smoothquant must be in"):
        Scaling(smoothquant=1.5)
    with pytest.raises(ValueError):
        Scaling(activation="channel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step_groups"):
        Scaling(step_groups=0)


@pytest.mark.parametrize("name", ["w8a8_dynamic", "static_w8a8", "six_bit"])
def test_recipe_round_trip(name: str) -> None:
    recipe = get_recipe(name)
    assert Recipe.from_dict(recipe.to_dict()) == recipe


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(8, 6)
        with torch.no_grad():
            self.fc.weight[:, 3] *= 20  # an outlier input channel of the weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _q(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.round(t / s).clamp(-127, 127) * s


def test_dynamic_w8a8_linear_by_hand() -> None:
    model = Toy()
    x = torch.randn(4, 8) * 3
    w = model.fc.weight.detach()
    expected = F.linear(_q(x, x.abs().amax(-1, keepdim=True) / 127), _q(w, w.abs().amax(-1, keepdim=True) / 127), model.fc.bias)
    with apply(model, "w8a8_dynamic") as emu:
        assert_same_bits(expected, model(x))
        report = emu.report()
    with apply(model, "w8a8_dynamic", stats=False):  # the path without statistics computes the same
        assert_same_bits(expected, model(x))
    layer = report.layers[0]
    assert layer.operands["weight"].bits_per_element == 8 + 32 / 8  # one float32 scale per row of 8
    assert layer.operands["activation"].bits_per_element == 8 + 32 / 8


def _steps_inputs() -> list[torch.Tensor]:
    torch.manual_seed(2)
    return [torch.randn(5, 8) * (1 + t) for t in range(3)]


def test_static_calibration_by_hand() -> None:
    model = Toy()
    xs = _steps_inputs()
    recipe = attrs.evolve(get_recipe("static_w8a8"), scaling=Scaling(activation="static", smoothquant=0.5, step_groups=2))
    emu = calibrate(model, recipe, lambda m: [m(x) for x in xs], steps=3, progress=False)
    try:
        w = model.fc.weight.detach()
        channel_max = torch.stack([x.abs().amax(0) for x in xs]).amax(0)
        f = channel_max.sqrt() / w.abs().amax(0).sqrt()
        assert_same_bits(f, emu.calibration["smoothing"]["fc"])
        # step groups of 3 steps in 2: steps 0 and 1 -> group 0, step 2 -> group 1
        tops = [(x / f).abs().amax() for x in xs]
        expected = torch.stack([torch.maximum(tops[0], tops[1]), tops[2]]) / 127
        assert_same_bits(expected, emu.calibration["scales"]["fc"])
        wf = w * f
        wq = _q(wf, wf.abs().amax(-1, keepdim=True) / 127)
        for t, x in enumerate(xs):
            y = model(x)
            assert_same_bits(F.linear(_q(x / f, expected[t * 2 // 3]), wq, model.fc.bias), y)
        with pytest.raises(RuntimeError, match="calibrated for 3 denoising steps"):
            model(xs[0])
        emu.reset()
        assert_same_bits(F.linear(_q(xs[0] / f, expected[0]), wq, model.fc.bias), model(xs[0]))
    finally:
        emu.remove()


def test_calibration_needed_and_errors_leave_the_model_alone() -> None:
    model = Toy()
    x = torch.randn(2, 8)
    before = model(x)
    with apply(model, "static_w8a8"), pytest.raises(RuntimeError, match="needs calibration"):
        model(x)
    with pytest.raises(ValueError, match="made 2 forwards of the model; a positive multiple of steps=3"):
        calibrate(model, "static_w8a8", lambda m: [m(x), m(x)], steps=3, progress=False)
    assert_same_bits(before, model(x))  # removed after the failed calibration
    with apply(model, "w8a8_dynamic") as emu, pytest.raises(ValueError, match="nothing to calibrate"):
        emu.calibrate(lambda m: m(x), steps=1)
    with pytest.raises(RuntimeError, match="no lowbit emulation"):
        remove(model)


def test_static_calibration_over_two_sampling_runs() -> None:
    model = Toy()
    xs = _steps_inputs()
    recipe = attrs.evolve(get_recipe("static_w8a8"), scaling=Scaling(activation="static"))
    # two runs of 3 steps: the second with twice the inputs; forward i is step i % 3
    emu = calibrate(model, recipe, lambda m: [m(x * k) for k in (1, 2) for x in xs], steps=3, progress=False)
    with emu:
        expected = torch.stack([(2 * x).abs().amax() for x in xs]) / 127
        assert_same_bits(expected, emu.calibration["scales"]["fc"])
    with pytest.raises(ValueError, match="made 5 forwards"):
        calibrate(model, recipe, lambda m: [m(x) for x in (*xs, *xs[:2])], steps=3, progress=False)


def test_calibration_progress_bar() -> None:
    model = Toy()
    xs = _steps_inputs()
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with Progress(console=console) as bar:
        emu = calibrate(model, "static_w8a8", lambda m: [m(x) for _ in range(2) for x in xs], steps=3, progress=bar)
        emu.remove()
    # one task, reset for the second sampling run and run to the end of it
    (task,) = bar.tasks
    assert (task.description, task.completed, task.total) == ("calibrating static_w8a8, run 2", 3, 3)
    assert "calibrating static_w8a8" in console.file.getvalue()  # type: ignore[attr-defined]
