"""Format lookups and the spec values: get / names, frozen, hashable, picklable,
comparable, ``evolve``, and unknown names that list the closest ones."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import attrs
import pytest

import lowbit
from lowbit.formats import E8M0, BlockFormat, CodebookFormat, FloatFormat, IntFormat, evolve, get, names
from lowbit.formats.spec import SPEC_TYPES
from lowbit.registry import UnknownNameError

# issue 2: the built-in names every installation has
REQUIRED = (
    "fp4_e2m1", "fp4_e3m0", "fp4_e1m2", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2", "int4", "int8",
    "mxfp4", "mxfp6_e2m3", "mxfp8_e4m3", "nvfp4",
    "mxfp4@torchao", "mxfp4_rceil@torchao", "nvfp4@torchao", "nvfp4_2level@torchao",
)  # fmt: skip


def test_names_hold_the_required_formats_once() -> None:
    registered = names()
    assert set(REQUIRED) <= set(registered)
    assert len(registered) == len(set(registered))


@pytest.mark.parametrize("name", names())
def test_get_returns_the_registered_spec(name: str) -> None:
    spec = get(name)
    assert spec.name == name
    assert isinstance(spec, SPEC_TYPES)
    assert get(name) is spec
    assert lowbit.formats.resolve(name) is spec and lowbit.formats.resolve(spec) is spec


@pytest.mark.parametrize("name", names())
def test_specs_are_frozen_hashable_picklable_and_comparable(name: str) -> None:
    spec = get(name)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    clone = pickle.loads(pickle.dumps(spec))
    assert clone == spec and hash(clone) == hash(spec) and clone is not spec
    assert copy.deepcopy(spec) == spec
    assert {spec: 1}[clone] == 1
    assert evolve(spec, name=name + "_copy") != spec


def test_specs_compare_by_value() -> None:
    a = FloatFormat(name="e3m2", ebits=3, mbits=2)
    assert a == FloatFormat(name="e3m2", ebits=3, mbits=2, bias=3, special="none", rounding="nearest_even")
    assert a != FloatFormat(name="e3m2", ebits=3, mbits=2, rounding="toward_zero")
    assert len({a, FloatFormat(name="e3m2", ebits=3, mbits=2), evolve(a, sr_bits=4)}) == 2
    assert get("mxfp4") == BlockFormat(name="mxfp4", element=get("fp4_e2m1"), block_size=32, scale=E8M0)


def test_evolve_changes_only_what_it_is_given_and_validates() -> None:
    mx = get("mxfp4")
    rne = evolve(mx, name="mxfp4_b16", block_size=16)
    assert (rne.name, rne.block_size) == ("mxfp4_b16", 16)
    assert attrs.asdict(rne, recurse=False) == {**attrs.asdict(mx, recurse=False), "name": "mxfp4_b16", "block_size": 16}
    assert mx.block_size == 32  # the original is untouched
    with pytest.raises(ValueError, match=r"scale_rule='nearest' needs a float scale format"):
        evolve(mx, scale_rule="nearest")


@pytest.mark.parametrize(
    ("name", "closest"),
    [("mxfp5", "mxfp4"), ("nvpf4", "nvfp4"), ("fp8_e4m2", "fp8_e4m3"), ("MXFP4", None), ("int16", "int4")],
)
def test_unknown_name_lists_the_closest(name: str, closest: str | None) -> None:
    with pytest.raises(UnknownNameError) as err:
        get(name)
    message = str(err.value)
    assert message.startswith(f"unknown format {name!r}")
    if closest is None:
        assert "closest" not in message
    else:
        listed = message.split("; closest: ")[1].split(" (")[0].split(", ")
        assert closest in listed and set(listed) <= set(names())
    assert isinstance(err.value, KeyError)


# OCP MX v1.0 tables 1, 2 and 4: largest finite value and emax_elem; NVFP4 and MX
# storage: element bits plus the 8-bit scale spread over the block
@pytest.mark.parametrize(
    ("name", "max_value", "emax", "bits"),
    [
        ("fp4_e2m1", 6.0, 2, 4),
        ("fp6_e2m3", 7.5, 2, 6),
        ("fp6_e3m2", 28.0, 4, 6),
        ("fp8_e4m3", 448.0, 8, 8),
        ("fp8_e5m2", 57344.0, 15, 8),
        ("int4", 7.0, 2, 4),
        ("int8", 127.0, 6, 8),
    ],
)
def test_element_limits(name: str, max_value: float, emax: int, bits: int) -> None:
    spec = get(name)
    assert (spec.max_value, spec.emax, spec.bits) == (max_value, emax, bits)


@pytest.mark.parametrize(("name", "bits"), [("mxfp4", 4.25), ("mxfp8_e4m3", 8.25), ("nvfp4", 4.5)])
def test_block_bits_per_element(name: str, bits: float) -> None:
    assert get(name).bits == bits


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FloatFormat(name="f", ebits=1, mbits=0, special="ieee"), r"special='ieee' needs at least 2 exponent bits"),
        (lambda: FloatFormat(name="f", ebits=4, mbits=0, special="fn"), r"special='fn' needs mantissa bits"),
        (lambda: FloatFormat(name="f", ebits=4, mbits=3, special="fnuz", signed=False), r"special='fnuz' needs a sign bit"),
        (lambda: IntFormat(name="i", int_bits=17), r"int_bits must be in 2..16"),
        (lambda: IntFormat(name="i", int_bits=8, overflow="inf"), r"needs an Inf code|only saturate"),
        (lambda: CodebookFormat(name="c", magnitudes=(0, 1, 2)), r"power-of-two number of magnitudes"),
        (lambda: CodebookFormat(name="c", magnitudes=(0, 2, 1, 3)), r"start at 0 and strictly increase"),
        (
            lambda: BlockFormat(name="b", element=get("fp4_e2m1"), block_size=16, scale=get("fp8_e4m3"), scale_rule="nearest"),
            r"need scale_min and scale_max",
        ),
        (lambda: evolve(get("mxfp4"), zero_block="zero_scale"), r"zero_block='zero_scale' needs a scale format with a zero"),
        (lambda: evolve(get("nvfp4"), tensor_scale=lowbit.formats.TensorScale(amax="all")), r"amax='all' is torchao's behaviour"),
    ],
)
def test_inconsistent_specs_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
