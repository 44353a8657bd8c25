"""The ``lowbit`` command line, run in-process through ``lowbit.cli.main``.

Round trips through files are checked bit for bit against ``lowbit.fake_quant``;
the statistics of ``compare`` are recomputed here with numpy from
``fake_quant`` output (and the clip limits from the formats' definitions), not
through the CLI's own helpers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

import lowbit
from lowbit import formats
from lowbit.cli import main, sample_tensor
from lowbit.emulate import available_backends


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``lowbit argv...``."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns, so NaN equals NaN and -0 differs from +0."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _sample(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Gaussian values over several magnitudes, with a NaN, an Inf, a -0 and a zero row."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-8, 9, size=shape))
    flat = x.reshape(-1)
    flat[3], flat[10], flat[11] = np.nan, -np.inf, -0.0
    x[-1] = 0.0
    return torch.from_numpy(x).to(dtype)


def _write_input(path: Path, x: torch.Tensor) -> None:
    if path.suffix == ".npy":
        np.save(path, x.numpy())
    else:
        save_file({"x": x}, path)


def _read_output(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path))
    return load_file(path)["x"]


# ---------------------------------------------------------------------------
# lowbit formats


def test_formats_json_describes_every_registered_format(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "formats", "--json")
    assert status == 0 and err == ""
    rows = {row["name"]: row for row in json.loads(out)}
    assert list(rows) == formats.names()
    for name, row in rows.items():
        spec = formats.get(name)
        assert row["spec"] == json.loads(json.dumps(attrs.asdict(spec)))
        assert row["backends"] == available_backends(spec)
    assert rows["mxfp4"] | {"spec": None, "backends": None} == {
        "name": "mxfp4",
        "kind": "block",
        "element": "fp4_e2m1",
        "rounding": "nearest_even",
        "block_size": 32,
        "scale": "e8m0",
        "scale_rule": "floor",
        "bits_per_element": 4.25,
        "tensor_scale_bits": None,
        # 4 + 8/32 with E8M0; 4 + 5/32 as the BlockDialect paper charges MXFP4
        "bits_by_exponent": {"8-bit exponent": 4.25, "5-bit exponent": 4.15625},
        "plugin": "lowbit.plugins.builtin_formats",
        "spec": None,
        "backends": None,
    }
    nvfp4 = rows["nvfp4"]
    assert (nvfp4["bits_per_element"], nvfp4["tensor_scale_bits"], nvfp4["scale"]) == (4.5, 32, "fp8_e4m3")
    assert rows["nvfp4@torchao"]["tensor_scale_bits"] is None  # single-level preset
    assert nvfp4["bits_by_exponent"] is None  # an E4M3 scale is not a bare exponent
    # DialectFP4: 4-bit code + (exponent + 4-bit dialect id) / 32 per element; the
    # format stores the 5-bit exponent: 4 + 9/32 = 4.28125, with E8M0 4 + 12/32.
    dialect = rows["dialectfp4"]
    assert dialect["bits_per_element"] == 4.28125
    assert dialect["bits_by_exponent"] == {"8-bit exponent": 4.375, "5-bit exponent": 4.28125}
    int8 = rows["int8"]
    assert (int8["kind"], int8["block_size"], int8["bits_per_element"]) == ("element", None, 8)
    assert rows["mxfp6_e3m2_sr"]["plugin"] == "e3m2_sr"  # the example plugin, through its entry point


def test_formats_table_lists_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "formats")
    assert status == 0 and err == ""
    lines = out.splitlines()
    for name in formats.names():
        assert any(f" {name} " in line for line in lines), name
    nvfp4 = next(line for line in lines if "│ nvfp4 " in line)
    assert "4.5 + 32-bit tensor scale" in nvfp4 and "fp8_e4m3 nearest" in nvfp4


# ---------------------------------------------------------------------------
# lowbit quantize / dequantize


@pytest.mark.parametrize(
    ("fmt", "dtype", "axis", "suffix", "seed"),
    [
        ("fp4_e2m1", torch.float32, None, ".npy", None),  # NaN kept through the NaN mask
        ("int8", torch.float16, None, ".npy", None),
        ("fp8_e5m2", torch.float64, 0, ".npy", None),
        ("mxfp4", torch.float32, 0, ".npy", None),  # partial last block along axis 0
        ("nvfp4", torch.bfloat16, None, ".safetensors", None),  # block and tensor scales
        ("nvfp4_2level@torchao", torch.float32, None, ".safetensors", None),
        ("mxfp6_e3m2_sr", torch.float32, 1, ".npy", 7),  # stochastic rounding, from the example plugin
    ],
)
def test_quantize_dequantize_round_trip_is_fake_quant(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fmt: str,
    dtype: torch.dtype,
    axis: int | None,
    suffix: str,
    seed: int | None,
) -> None:
    x = _sample((40, 3, 50), dtype)
    src, packed, back = tmp_path / f"x{suffix}", tmp_path / "q.safetensors", tmp_path / f"y{suffix}"
    _write_input(src, x)
    options = [] if axis is None else ["--axis", axis]
    options += [] if seed is None else ["--seed", seed]
    assert run(capsys, "quantize", "--format", fmt, src, packed, *options)[0] == 0
    assert run(capsys, "dequantize", packed, back)[0] == 0

    y = _read_output(back)
    expected = lowbit.fake_quant(x, fmt, axis=axis, seed=seed)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(_bits(y), _bits(expected))


def test_quantized_file_holds_codes_scales_and_metadata(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    x = _sample((8, 64), torch.float32)
    src, packed = tmp_path / "x.npy", tmp_path / "q.safetensors"
    _write_input(src, x)
    assert run(capsys, "quantize", "--format", "nvfp4", src, packed, "--axis", "0")[0] == 0

    with safe_open(str(packed), framework="np") as f:
        metadata = f.metadata()
    arrays = load_numpy(packed)
    q = lowbit.quantize(x, "nvfp4", axis=0)
    assert q.scale_codes is not None and q.scales is not None
    assert metadata["lowbit.version"] == lowbit.__version__
    assert metadata["lowbit.format"] == "nvfp4"
    assert json.loads(metadata["lowbit.spec"]) == json.loads(json.dumps(attrs.asdict(formats.get("nvfp4"))))
    assert json.loads(metadata["lowbit.tensors"]) == {
        "tensor": {"shape": [8, 64], "axis": 0, "dtype": "float32", "n": 8, "seed": None}
    }
    assert sorted(arrays) == ["tensor.codes", "tensor.scale_codes", "tensor.scales", "tensor.tensor_scale"]
    assert np.array_equal(arrays["tensor.codes"], q.codes)
    assert np.array_equal(arrays["tensor.scale_codes"], q.scale_codes)
    assert np.array_equal(arrays["tensor.scales"], q.scales, equal_nan=True)
    assert arrays["tensor.tensor_scale"].dtype == np.float32 and float(arrays["tensor.tensor_scale"]) == q.tensor_scale


def test_safetensors_input_quantizes_every_floating_tensor(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tensors = {
        "w": _sample((16, 96), torch.bfloat16, seed=1),
        "b": _sample((96,), torch.float32, seed=2),
        "steps": torch.arange(5),
    }
    src, packed, back = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "y.safetensors"
    save_file(tensors, src)

    assert run(capsys, "quantize", "--format", "mxfp8_e4m3", src, packed)[0] == 0
    assert run(capsys, "dequantize", packed, back)[0] == 0
    y = load_file(back)
    assert sorted(y) == ["b", "w"]
    for name, t in y.items():
        assert torch.equal(_bits(t), _bits(lowbit.fake_quant(tensors[name], "mxfp8_e4m3")))

    assert run(capsys, "quantize", "--format", "mxfp8_e4m3", src, packed, "--tensor", "b")[0] == 0
    assert run(capsys, "dequantize", packed, back)[0] == 0
    assert list(load_file(back)) == ["b"]


def test_dequantize_refuses_a_file_written_for_another_definition(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src, packed = tmp_path / "x.npy", tmp_path / "q.safetensors"
    _write_input(src, _sample((4, 64), torch.float32))
    assert run(capsys, "quantize", "--format", "mxfp4", src, packed)[0] == 0
    with safe_open(str(packed), framework="np") as f:
        metadata = f.metadata()
    spec = json.loads(metadata["lowbit.spec"])
    spec["scale_rule"] = "ceil"
    save_numpy(load_numpy(packed), str(packed), metadata=metadata | {"lowbit.spec": json.dumps(spec)})

    status, out, err = run(capsys, "dequantize", packed, tmp_path / "y.npy")
    assert (status, out) == (2, "")
    assert "different definition" in err
    assert not (tmp_path / "y.npy").exists()


# ---------------------------------------------------------------------------
# lowbit compare


def _expected_stats(x: np.ndarray, fmt: str, limit: np.ndarray) -> dict[str, float]:
    """The compare statistics from fake_quant output; ``limit``: largest magnitude per element."""
    y = lowbit.fake_quant(x, fmt).astype(np.float64)
    xf = x.astype(np.float64)
    finite = np.isfinite(xf)
    err = y[finite] - xf[finite]
    return {
        "finite_inputs": int(finite.sum()),
        "mse": float(np.mean(err**2)),
        "sqnr_db": float(10 * np.log10(np.sum(xf[finite] ** 2) / np.sum(err**2))),
        "max_abs_error": float(np.max(np.abs(err))),
        "clip_rate": float(np.mean(np.abs(xf[finite]) > np.broadcast_to(limit, xf.shape)[finite])),
    }


def _mx_limit(x: np.ndarray, element_max: float, emax: int) -> np.ndarray:
    """OCP MX floor rule: X = 2^(floor(log2 amax) - emax) per block of 32 along the last axis."""
    amax = np.abs(x.astype(np.float64)).reshape(x.shape[0], -1, 32).max(axis=-1)
    _, e = np.frexp(amax)  # amax = m * 2^e with m in [0.5, 1): floor(log2 amax) = e - 1
    return np.repeat(element_max * np.exp2(e - 1 - emax), 32, axis=-1)


def _nvfp4_limit(x: np.ndarray) -> np.ndarray:
    """6 * block scale * tensor scale, rounded once to float32 (what the largest code decodes to)."""
    q = lowbit.quantize(x, "nvfp4")
    assert q.scales is not None and q.tensor_scale is not None
    return np.repeat((q.scales * (6.0 * q.tensor_scale)).astype(np.float32), 16, axis=-1)


def test_compare_json_matches_numpy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    clean = (rng.standard_normal((64, 96)) * 200).astype(np.float32)
    special = clean.copy()
    special[0, 0], special[1, 1], special[2, 2] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "clean.npy", clean)
    np.save(tmp_path / "special.npy", special)

    status, out, _ = run(capsys, "compare", "--formats", "mxfp4,nvfp4", tmp_path / "clean.npy", "--json")
    assert status == 0
    got = {row["format"]: row for row in json.loads(out)}
    expected = {
        "mxfp4": _expected_stats(clean, "mxfp4", _mx_limit(clean, 6.0, 2)),
        "nvfp4": _expected_stats(clean, "nvfp4", _nvfp4_limit(clean)),
    }
    # Element formats: NaN and Inf inputs are left out; an Inf input is not a clip.
    status, out, _ = run(capsys, "compare", "--formats", "fp8_e4m3, int8", tmp_path / "special.npy", "--json")
    assert status == 0
    got |= {row["format"]: row for row in json.loads(out)}
    expected |= {
        "fp8_e4m3": _expected_stats(special, "fp8_e4m3", np.array(448.0)),
        "int8": _expected_stats(special, "int8", np.array(127.0)),
    }
    assert list(got) == list(expected)
    for fmt, stats in expected.items():
        assert 0 < stats["clip_rate"] < 0.6, fmt  # the data exercises clipping for every format
        row = got[fmt]
        assert row["bits_per_element"] == formats.get(fmt).bits
        assert row["finite_inputs"] == stats["finite_inputs"]
        for key in ("mse", "sqnr_db", "max_abs_error", "clip_rate"):
            assert row[key] == pytest.approx(stats[key], rel=1e-12), (fmt, key)


def test_compare_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    save_file({"w": _sample((4, 64), torch.float32), "b": _sample((64,), torch.float32)}, tmp_path / "m.safetensors")
    status, out, err = run(capsys, "compare", "--formats", "mxfp4,nvfp4", tmp_path / "m.safetensors", "--tensor", "w")
    assert status == 0 and err == ""
    assert "(4, 64) float32" in out
    assert any(line.startswith("│ mxfp4 ") for line in out.splitlines())
    assert any(line.startswith("│ nvfp4 ") for line in out.splitlines())


# ---------------------------------------------------------------------------
# lowbit demo


def test_demo_prints_the_table_and_both_comparisons(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "demo", "--formats")
    assert status == 0 and err == ""
    formats_at, builtin_at, presets_at = (
        out.index("Registered formats"),
        out.index("Built-in formats"),
        out.index("Presets reproducing other stacks"),
    )
    assert formats_at < builtin_at < presets_at
    comparison = out[builtin_at:presets_at]
    assert "│ mxfp4 " in comparison and "│ nvfp4 " in comparison and "@" not in comparison
    assert "│ nvfp4_2level@torchao " in out[presets_at:]
    # only lowbit's own formats are compared; the plugin's appear in the format table alone
    assert "mxfp6_e3m2_sr" not in out[builtin_at:]


def test_sample_tensor_is_fixed() -> None:
    x = sample_tensor()
    assert x.shape == (256, 1024) and x.dtype == np.float32
    assert np.array_equal(x, sample_tensor())


# ---------------------------------------------------------------------------
# errors: one line on stderr, status 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["quantize", "--format", "nope", "x.npy", "q.safetensors"], "unknown format 'nope'"),
        (["compare", "--formats", "mxfp4,mxfp5", "x.npy"], "unknown format 'mxfp5'"),
        (["quantize", "--format", "mxfp4", "missing.npy", "q.safetensors"], "missing.npy: no such file"),
        (["compare", "--formats", "mxfp4", "x.npy", "--axis", "5"], "axis=5 is out of range"),
        (["compare", "--formats", "int8", "ints.npy"], "floating"),
        (["quantize", "--format", "mxfp4", "x.npy", "q.npy"], "output of quantize is a .safetensors file"),
        (["quantize", "--format", "mxfp4", "x.npy", "q.safetensors", "--backend", "nope"], "unknown backend"),
        (["dequantize", "x.npy", "y.npy"], "not a readable safetensors file"),
        (["quantize", "--format", "mxfp4", "x.npy"], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_errors_are_one_line_with_status_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.ones((2, 64), np.float32))
    np.save("ints.npy", np.ones((2, 64), np.int32))
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert err.startswith("lowbit: error: ") and err.count("\n") == 1
    assert message in err
    assert not Path("q.npy").exists() and not Path("q.safetensors").exists()
