"""six_bit: per-block INT8/NVFP4 choice, the temporal delta cache, calibration.

The schedules below are derived by hand from the rules in lowbit.emulate.sixbit: a block
``y = 1.5 x`` fed ``x_t = x_0 * 1.1^t`` has gamma 0.5 at every step and a delta that
changes by exactly 10% from one step to the next (1.1^k - 1 across k steps).
"""

from __future__ import annotations

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.emulate import Report, calibrate, fake_quant, get_recipe
from lowbit.emulate.scaled import rotate
from lowbit.emulate.sixbit import SixBit, SixBitState


class Attention(nn.Module):
    """Marks its block as a transformer block (a module with a callable processor)."""

    def __init__(self) -> None:
        super().__init__()
        self.processor = lambda *args, **kwargs: None


class Block(nn.Module):
    def __init__(self, two_outputs: bool = False) -> None:
        super().__init__()
        self.attn = Attention()
        self.fc = nn.Linear(64, 64)
        self.two_outputs = two_outputs

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self.out = self.fc(hidden_states)  # quantized as the block's precision says; kept for checks
        y = hidden_states * 1.5
        return (y, self.out) if self.two_outputs else y


class Net(nn.Module):
    def __init__(self, two_outputs: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([Block(two_outputs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        return out[0] if isinstance(out, tuple) else out


def _inputs(n: int) -> list[torch.Tensor]:
    x0 = torch.ones(4, 64)
    x0[0, 0] = 1000.0  # max|x| / mean|x| = 1000 / 4.9 > 25: an outlier input at every step
    return [x0 * 1.1**t for t in range(n)]


def _run(policy: SixBit, steps: int = 9, two_outputs: bool = False) -> tuple[Net, dict, list[torch.Tensor], list[torch.Tensor]]:
    model = Net(two_outputs)
    xs = _inputs(steps)
    recipe = attrs.evolve(get_recipe("six_bit"), six_bit=policy)
    # the block ignores its linear: NVFP4 sensitivity 0 at every step, so alpha = beta = 0,
    # threshold 0 and a block with a known gamma runs NVFP4
    emu = calibrate(model, recipe, lambda m: [m(x) for x in xs[:3]], steps=3, progress=False)
    try:
        assert emu.calibration["six_bit"] == {"alpha": 0.0, "beta": 0.0, "threshold": 0.0}
        ys = [model(x) for x in xs]
        return model, emu.report().six_bit, xs, ys
    finally:
        emu.remove()


def _pattern(summary: dict) -> list[str]:
    return [step["blocks"]["blocks.0"] for step in summary["steps"]]


def test_delta_cache_schedule_by_hand() -> None:
    _, summary, xs, ys = _run(SixBit(stable=0.3, max_skips=5, error_budget=0.25))
    # t2, t3: change 0.1 < 0.3 and accumulated 0.1, 0.2 <= 0.25; t4: 0.3 > 0.25 -> recompute
    # (INT8: first after a skip); its change 1.1^3 - 1 = 0.331 >= 0.3, so t5 runs (NVFP4)
    assert _pattern(summary) == ["int8", "nvfp4", "skip", "skip", "int8", "nvfp4", "skip", "skip", "int8"]
    # a skipped step returns its input plus the delta of the last computed step
    for t, last in ((2, 1), (3, 1), (6, 5), (7, 5)):
        assert torch.equal(ys[t], xs[t] + (xs[last] * 1.5 - xs[last]))
    for t in (0, 1, 4, 5, 8):
        assert torch.equal(ys[t], xs[t] * 1.5)
    # refresh steps (4, 8) run the outlier linear with full-precision activations
    assert [s["full_precision_linears"] for s in summary["steps"]] == [[], [], [], [], ["blocks.0.fc"], [], [], [], ["blocks.0.fc"]]
    # INT8: 8 bits + a float32 scale per token of 64; NVFP4: 4.5; full precision: 16
    assert [s["activation_bits"] for s in summary["steps"]] == [8.5, 4.5, None, None, 16.0, 4.5, None, None, 16.0]
    assert summary["decisions"] == {"int8": 3, "nvfp4": 2, "skip": 4}
    assert summary["skip_rate"] == pytest.approx(4 / 9)
    assert summary["seconds_saved"] > 0 and 0 < summary["saved_fraction"] < 1


def test_at_most_max_skips_in_a_row() -> None:
    _, summary, _, _ = _run(SixBit(stable=0.3, max_skips=1, error_budget=10.0))
    # after a single skip the block recomputes; the change across the gap is 1.1^2 - 1 = 0.21 < 0.3
    assert _pattern(summary) == ["int8", "nvfp4", "skip", "int8", "skip", "int8", "skip", "int8", "skip"]


def test_cache_off_and_strict_threshold_never_skip() -> None:
    for policy in (SixBit(cache=False), SixBit(stable=0.05)):
        _, summary, xs, ys = _run(policy, steps=5)
        assert _pattern(summary) == ["int8", "nvfp4", "nvfp4", "nvfp4", "nvfp4"]
        assert all(torch.equal(y, x * 1.5) for x, y in zip(xs, ys))


def test_block_with_two_outputs_is_never_skipped() -> None:
    _, summary, _, _ = _run(SixBit(stable=0.3), steps=5, two_outputs=True)
    assert _pattern(summary) == ["int8", "nvfp4", "nvfp4", "nvfp4", "nvfp4"]  # gamma from the output of x's shape


def test_linear_precisions_by_hand() -> None:
    # the linear's outputs at step 0 (INT8: gamma unknown) and step 1 (NVFP4)
    model, xs = Net(), _inputs(3)
    recipe = attrs.evolve(get_recipe("six_bit"), six_bit=SixBit(cache=False, hadamard=32))
    emu = calibrate(model, recipe, lambda m: [m(x) for x in xs], steps=3, progress=False)
    fc = model.blocks[0].fc
    w = fake_quant(rotate(fc.weight.detach(), 32), "nvfp4")
    try:
        model(xs[0])
        xr = rotate(xs[0], 32)
        sx, sw = xr.abs().amax(-1, keepdim=True) / 127, w.abs().amax(-1, keepdim=True) / 127
        q = lambda t, s: torch.round(t / s).clamp(-127, 127) * s  # noqa: E731
        torch.testing.assert_close(model.blocks[0].out, F.linear(q(xr, sx), q(w, sw), fc.bias), rtol=0, atol=0)
        model(xs[1])
        xr = rotate(xs[1], 32)
        expected = F.linear(fake_quant(xr, "nvfp4"), w, fc.bias)
        torch.testing.assert_close(model.blocks[0].out, expected, rtol=0, atol=0)
    finally:
        emu.remove()


def test_fit_by_hand() -> None:
    state = SixBitState(SixBit(int8_fraction=0.25), ["b"])
    state.start_calibration()
    assert state.calibration is not None
    state.calibration.pairs = [(0.1, 1.2), (0.2, 1.4), (0.3, 1.6), (0.4, 1.8)]  # s = 2 g + 1
    fitted = state.fit()
    assert fitted["alpha"] == pytest.approx(2.0) and fitted["beta"] == pytest.approx(1.0)
    # predictions 1.2 .. 1.8; the 0.75 quantile, linearly interpolated: 1.6 + 0.25 * 0.2
    assert fitted["threshold"] == pytest.approx(1.65)
    state.state["b"].gamma = 0.35  # predicts 1.7 > 1.65
    assert state.decide("b", skippable=True) == "int8"
    state.state["b"].gamma = 0.3  # predicts 1.6
    assert state.decide("b", skippable=True) == "nvfp4"


def test_fit_needs_two_pairs() -> None:
    model = Net()
    with pytest.raises(ValueError, match="at least two"):
        calibrate(model, "six_bit", lambda m: m(torch.ones(2, 64)), steps=1, progress=False)


def test_policy_values_checked() -> None:
    with pytest.raises(ValueError, match="power of two"):
        SixBit(hadamard=100)
    with pytest.raises(ValueError, match="int8_fraction"):
        SixBit(int8_fraction=1.5)
    with pytest.raises(ValueError, match="stable must be positive"):
        SixBit(stable=0.0)


def test_report_json_and_schedule_plot(tmp_path) -> None:
    model, xs = Net(), _inputs(4)
    recipe = attrs.evolve(get_recipe("six_bit"), six_bit=SixBit(stable=0.3))
    with calibrate(model, recipe, lambda m: [m(x) for x in xs[:3]], steps=3, progress=False) as emu:
        for x in xs:
            model(x)
        report = emu.report()
    assert Report.from_json(report.to_json()).to_dict() == report.to_dict()
    assert report.summary["activation_bits_per_element"] == report.six_bit["activation_bits"]
    written = report.plot(tmp_path)
    assert [p.name for p in written] == ["sqnr.png", "six_bit.png"]
    from PIL import Image

    assert Image.open(written[1]).size[0] > 100


def test_calibration_pairs_stay_inside_each_sampling_run() -> None:
    # two runs of one step each: no block ran at step - 1 of the same run, so no pairs
    with pytest.raises(ValueError, match="and got 0"):
        calibrate(Net(), "six_bit", lambda m: [m(torch.ones(2, 64)) for _ in range(2)], steps=1, progress=False)
