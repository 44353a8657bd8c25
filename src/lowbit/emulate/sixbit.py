"""``six_bit``: per-block NVFP4/INT8 activations chosen each step, and a temporal delta cache.

The policy (a recipe's ``six_bit``, :class:`SixBit`) works per transformer block (an
element of an ``nn.ModuleList`` that holds an attention module) and denoising step (a
root forward of the emulated model):

Precision. ``gamma = ||Y - X||_1 / ||X||_1`` is the relative L1 change a block made to
its input at the step it last ran. A linear model ``alpha * gamma + beta``, fitted by
:func:`lowbit.emulate.calibrate`, predicts the block's sensitivity to NVFP4 activations
(measured in calibration as ``||Y_nvfp4 - Y||_1 / ||Y - X||_1``: the error NVFP4
activations make relative to the block's own update); the block runs its linears with
INT8 activations (per token, dynamic, symmetric) when the prediction exceeds the
calibrated threshold (the ``1 - int8_fraction`` quantile of the calibration
predictions), with NVFP4 activations otherwise. A block whose gamma is unknown (the
first step, and the first step after a skip) runs INT8. Weights are stored in NVFP4;
the INT8 path uses them cast to INT8 per output channel. ``hadamard``: the block
Hadamard transform of that size (at most; see :func:`lowbit.emulate.scaled.rotate`)
rotates activations online and weights offline before quantization.

Temporal delta cache (``cache``). After each computed step the block's residual
``delta = Y - X`` is kept, with ``change = ||delta - delta_prev||_1 / ||delta_prev||_1``
between its last two computed steps. At the next step the block is skipped (output
``X + delta``) when ``change < stable``, it has been skipped fewer than ``max_skips``
times in a row, and the accumulated estimated error of the consecutive skips (each
adds ``change``) stays within ``error_budget``. The step that recomputes a block after
a skip refreshes the cache: there, linears whose input has ``max|x| / mean|x|`` above
``outlier_ratio`` run with full-precision activations (their weights stay NVFP4), and
the others INT8. Blocks returning several tensors (dual-stream blocks) are never
skipped; their gamma uses the output with the shape of their first input.

Accounting: effective activation bits per element (INT8: 8 plus one float32 scale per
token; NVFP4: its storage; full precision: 16), which blocks ran in which precision
or were skipped at each step, and the wall time saved (each skip saves the time the
block took when it last ran).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Literal

import attrs
import torch

__all__ = ["BlockDecision", "SixBit", "SixBitState"]

#: What a block does at one step.
BlockDecision = Literal["int8", "nvfp4", "skip"]
#: Bits per element counted for activations left in full precision.
FULL_PRECISION_BITS = 16.0


def _positive(instance: object, attribute: attrs.Attribute, value: Any) -> None:
    if not value > 0:
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be positive, got {value!r}")


def _fraction(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be in [0, 1], got {value!r}")


def _hadamard(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 2 or value & (value - 1)):
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be a power of two >= 2 or None, got {value!r}")


@attrs.frozen(kw_only=True)
class SixBit:
    """The ``six_bit`` policy; every threshold of the module docstring, with its default."""

    int8_fraction: float = attrs.field(default=0.5, validator=_fraction)
    hadamard: int | None = attrs.field(default=None, validator=_hadamard)
    cache: bool = True
    stable: float = attrs.field(default=0.15, validator=_positive)
    max_skips: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    error_budget: float = attrs.field(default=0.3, validator=_positive)
    outlier_ratio: float = attrs.field(default=25.0, validator=_positive)


def _l1(t: torch.Tensor) -> float:
    return float(t.detach().double().abs().sum())


def _rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_1 / ||b||_1 (inf when b is zero and a is not)."""
    num, den = _l1(a.double() - b.double()), _l1(b)
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


@attrs.define
class _Block:
    """One block's state across steps."""

    gamma: float | None = None  # at the last computed step
    delta: torch.Tensor | None = None  # Y - X at the last computed step
    change: float | None = None  # between the last two computed deltas
    skips: int = 0  # consecutive skips so far
    error: float = 0.0  # accumulated estimated error of those skips
    seconds: float = 0.0  # wall time of the last computed step
    refresh: bool = False  # the step in progress recomputes after a skip


@attrs.define
class _Calibration:
    """What calibration measured: (gamma at the previous step, sensitivity) pairs."""

    gammas: dict[str, tuple[int, float]] = attrs.field(factory=dict)  # block -> (step, gamma) last seen
    pairs: list[tuple[float, float]] = attrs.field(factory=list)


class SixBitState:
    """The runtime state of the ``six_bit`` policy in one :class:`~lowbit.emulate.Emulation`."""

    def __init__(self, policy: SixBit, blocks: list[str]) -> None:
        self.policy = policy
        self.blocks = blocks
        # fitted by calibration: sensitivity = alpha * gamma + beta; INT8 above threshold
        self.alpha: float | None = None
        self.beta: float | None = None
        self.threshold: float | None = None
        self.calibration: _Calibration | None = None
        self.reset()

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None

    def reset(self) -> None:
        """Forget the per-block state and the schedule (the fitted model is kept)."""
        self.state = {b: _Block() for b in self.blocks}
        self.schedule: list[dict[str, BlockDecision]] = []
        self.full_precision: list[Counter[str]] = []  # per step: linears run in full precision
        self.act_bits: list[list[float]] = []  # per step: [elements, bits]
        self.seconds_run = 0.0
        self.seconds_saved = 0.0
        self.current: dict[str, BlockDecision] = {}  # block being computed -> its precision

    # -- calibration ----------------------------------------------------------------
    def start_calibration(self) -> None:
        self.calibration = _Calibration()

    def record_sensitivity(self, block: str, step: int, x: torch.Tensor, y: torch.Tensor, y_nvfp4: torch.Tensor) -> None:
        """Calibration: block input ``x``, full-precision output ``y`` and output with NVFP4
        activations at ``step``; pairs this step's sensitivity with the gamma of the step
        before (when the block ran at step - 1 of the same sampling run)."""
        cal = self.calibration
        assert cal is not None
        update = _l1(y.double() - x.double())
        sensitivity = _l1(y_nvfp4.double() - y.double()) / update if update > 0 else math.inf
        previous = cal.gammas.get(block)
        if previous is not None and previous[0] == step - 1 and math.isfinite(sensitivity):
            cal.pairs.append((previous[1], sensitivity))
        cal.gammas[block] = (step, _rel_l1(y, x))

    def fit(self) -> dict[str, float]:
        """Fit alpha, beta by least squares and set the threshold; returns them."""
        cal = self.calibration
        if cal is None or len(cal.pairs) < 2:
            got = 0 if cal is None else len(cal.pairs)
            raise ValueError(
                "six_bit calibration needs at least two (gamma, sensitivity) pairs, one per block and "
                f"step after the first, and got {got}: calibrate over more denoising steps"
            )
        g = torch.tensor([p[0] for p in cal.pairs], dtype=torch.float64)
        s = torch.tensor([p[1] for p in cal.pairs], dtype=torch.float64)
        a = torch.stack([g, torch.ones_like(g)], dim=1)
        alpha, beta = torch.linalg.lstsq(a, s.unsqueeze(1)).solution.squeeze(1).tolist()
        predicted = alpha * g + beta
        threshold = float(torch.quantile(predicted, 1.0 - self.policy.int8_fraction))
        self.alpha, self.beta, self.threshold = alpha, beta, threshold
        return self.fitted()

    def fitted(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta, "threshold": self.threshold}

    def set_fitted(self, values: dict[str, float]) -> None:
        self.alpha, self.beta, self.threshold = (float(values[k]) for k in ("alpha", "beta", "threshold"))

    # -- inference ------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        while len(self.schedule) <= step:
            self.schedule.append({})
            self.full_precision.append(Counter())
            self.act_bits.append([0, 0.0])

    def decide(self, block: str, skippable: bool) -> BlockDecision:
        """What ``block`` does at this step (see the module docstring)."""
        p, st = self.policy, self.state[block]
        st.refresh = False
        if (
            p.cache
            and skippable
            and st.change is not None
            and st.change < p.stable
            and st.skips < p.max_skips
            and st.error + st.change <= p.error_budget
        ):
            return "skip"
        if st.skips:
            st.refresh = True
            return "int8"
        if st.gamma is None:
            return "int8"
        assert self.alpha is not None and self.beta is not None and self.threshold is not None
        return "int8" if self.alpha * st.gamma + self.beta > self.threshold else "nvfp4"

    def skipped(self, block: str, step: int) -> torch.Tensor:
        """Record a skip; the cached delta to add to the block's input."""
        st = self.state[block]
        assert st.delta is not None and st.change is not None
        st.skips += 1
        st.error += st.change
        self.seconds_saved += st.seconds
        self.schedule[step][block] = "skip"
        return st.delta

    def computed(
        self, block: str, step: int, decision: BlockDecision, x: torch.Tensor, y: torch.Tensor | None, seconds: float
    ) -> None:
        """Record a computed step: gamma, delta, change, timing."""
        st = self.state[block]
        if y is None:  # no output continues the input: no gamma, no cache
            st.gamma = st.delta = st.change = None
        else:
            delta = (y - x).detach()
            st.gamma = _rel_l1(y, x)
            st.change = _rel_l1(delta, st.delta) if st.delta is not None and st.delta.shape == delta.shape else None
            st.delta = delta
        st.skips, st.error, st.seconds = 0, 0.0, seconds
        self.seconds_run += seconds
        self.schedule[step][block] = decision

    def count_activation(self, step: int, elements: int, bits: float) -> None:
        self.act_bits[step][0] += elements
        self.act_bits[step][1] += bits

    def outlier(self, x: torch.Tensor) -> bool:
        """Whether max|x| / mean|x| exceeds ``outlier_ratio``."""
        a = x.detach().abs().float()
        mean = float(a.mean())
        return mean > 0 and float(a.max()) / mean > self.policy.outlier_ratio

    def summary(self) -> dict[str, Any]:
        """Per step the decision of every block, and the totals: skip rate, activation
        bits per element, seconds run and saved (None where nothing was counted)."""
        decisions = Counter(d for step in self.schedule for d in step.values())
        total = sum(decisions.values())
        elements = sum(e for e, _ in self.act_bits)
        bits = sum(b for _, b in self.act_bits)
        spent = self.seconds_run + self.seconds_saved
        return {
            "fitted": self.fitted(),
            "steps": [
                {
                    "blocks": dict(step),
                    "full_precision_linears": sorted(fp),
                    "activation_bits": b / e if e else None,
                }
                for step, fp, (e, b) in zip(self.schedule, self.full_precision, self.act_bits)
            ],
            "decisions": dict(decisions),
            "skip_rate": decisions["skip"] / total if total else None,
            "activation_bits": bits / elements if elements else None,
            "seconds_run": self.seconds_run,
            "seconds_saved": self.seconds_saved,
            "saved_fraction": self.seconds_saved / spent if spent else None,
        }


def timed(fn: Any, x: torch.Tensor) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds (CUDA work synchronised)."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    out = fn()
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return out, time.perf_counter() - t0
