"""Quantized checkpoints: an :class:`~lowbit.emulate.Emulation` saved to one safetensors file.

:func:`save` writes every weight the emulation quantized in its packed low-bit form (the
:meth:`~lowbit.emulate.Quantized.packed_fields` of its :class:`~lowbit.emulate.Quantized`:
element codes, bit-packed scale codes and dialect ids, plus the float32 tensor scale and
the packed NaN mask when it has them), every other parameter and buffer of the model as
it is, and JSON metadata: the checkpoint version, the lowbit version, the recipe (whole:
layer policy, decomposition, SeDA) with the ``apply`` keywords, each weight's format and
layout, the full definition of every format used, and the calibration state of
:func:`lowbit.emulate.calibrate` (the step count and six_bit's fitted model in the JSON,
SmoothQuant factors and static activation scales as float32 arrays). Weights of a
``scaling`` recipe are INT8 codes of the smoothed weight over its per-row float32 scale
(field ``row_scale``). The file's size is the real storage cost (:class:`CheckpointInfo`).

:func:`load` checks the whole file against the model before it touches anything, then
copies the stored tensors into the model, applies the stored recipe and makes the
quantized linears compute with the stored weights: a forward equals the saved
emulation's forward bit for bit. A quantized linear has no full-precision weight in the
file, so its own weight is set to the values the stored one stands for
(``dequantize``): after ``remove``, the model is the checkpoint in full precision.

The safetensors helpers here (reading a file with one-line errors, a format's definition
as canonical JSON, a quantized tensor's layout) are shared with ``lowbit quantize`` /
``lowbit dequantize`` (:mod:`lowbit.cli`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import lowbit
from lowbit import formats
from lowbit.emulate.api import Quantized, code_format, dequantize, unpack_bits
from lowbit.emulate.model import _ACTIVE, Emulation, apply
from lowbit.emulate.recipes import Recipe
from lowbit.emulate.scaled import rotate
from lowbit.emulate.stats import QuantStats
from lowbit.formats.spec import BLOCK_SPECS, ExpScaleFormat, Formatbook, decode_exact

__all__ = ["CHECKPOINT_VERSION", "CheckpointInfo", "layout_fields", "load", "read_safetensors", "save", "spec_json", "tensor_layout"]

#: Version of the checkpoint layout, stored in the file; :func:`load` reads only this one.
CHECKPOINT_VERSION = 1

#: The metadata key holding the checkpoint's JSON document.
METADATA_KEY = "lowbit.checkpoint"

# A quantized weight's arrays are stored as "<parameter name>:<field>" (":" is in no
# module name diffusers or torch make); the other tensors under their own names.
_SEP = ":"
# Calibration arrays are stored as "calibration:<kind>:<linear>".
_CALIBRATION = f"calibration{_SEP}"
_CALIBRATION_ARRAYS = ("smoothing", "scales")


# ---------------------------------------------------------------------------
# shared with the CLI


def spec_json(spec: Any) -> str:
    """The full definition of a format as canonical JSON, so that two definitions compare as strings."""
    return json.dumps(attrs.asdict(spec), sort_keys=True)


def tensor_layout(q: Quantized) -> dict[str, Any]:
    """What rebuilds ``q`` besides its spec and arrays: shape, block axis, dtype, row length, seed."""
    return {"shape": list(q.shape), "axis": q.axis, "dtype": q.dtype, "n": q.n, "seed": q.seed}


def layout_fields(layout: dict[str, Any]) -> dict[str, Any]:
    """The :class:`Quantized` fields a :func:`tensor_layout` stands for (a torch container)."""
    return {"shape": tuple(layout["shape"]), "axis": layout["axis"], "dtype": layout["dtype"], "n": layout["n"],
            "seed": layout["seed"], "container": "torch"}  # fmt: skip


def read_safetensors(path: Path, framework: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata, every tensor) of a safetensors file, as ``framework`` ("pt" or "np") arrays.
    FileNotFoundError for a missing file, ValueError for one safetensors cannot read
    (a truncated file included), each with a one-line message."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework=framework) as f:
            return f.metadata() or {}, {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None


# ---------------------------------------------------------------------------
# the report


@attrs.frozen(kw_only=True)
class CheckpointInfo:
    """What a checkpoint file holds and what it costs.

    bytes                the file's size (header included)
    quantized_weights    weights stored in packed low-bit form
    quantized_elements   their elements
    quantized_bytes      their storage (:meth:`Quantized.nbytes`: packed fields, tensor scales)
    other_bytes          the other parameters and buffers, stored as they are
    elements             elements of every parameter and buffer of the model
    """

    path: Path
    bytes: int
    quantized_weights: int
    quantized_elements: int
    quantized_bytes: int
    other_bytes: int
    elements: int

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per element of the quantized weights (NaN when there are none)."""
        return 8 * self.quantized_bytes / self.quantized_elements if self.quantized_elements else math.nan

    @property
    def vs_float32(self) -> float:
        """How many times smaller the file is than the model's tensors in float32."""
        return 4 * self.elements / self.bytes

    @property
    def vs_bfloat16(self) -> float:
        """How many times smaller the file is than the model's tensors in bfloat16."""
        return 2 * self.elements / self.bytes


# ---------------------------------------------------------------------------
# save


def _emulation_of(target: Emulation | nn.Module) -> Emulation:
    if isinstance(target, Emulation):
        emulation = target
    elif isinstance(target, nn.Module):
        found = _ACTIVE.get(target)
        if found is None or found.model is not target:
            raise ValueError(
                f"no lowbit emulation is applied to this {type(target).__name__}; "
                "save the Emulation of lowbit.emulate.apply (or the model it was applied to)"
            )
        emulation = found
    else:
        raise TypeError(f"save takes an Emulation or a torch.nn.Module, got {type(target).__name__}")
    if _ACTIVE.get(emulation.model) is not emulation:
        raise ValueError(f"{emulation!r} was removed; there is nothing to save")
    return emulation


def _param_name(linear: str) -> str:
    return f"{linear}.weight" if linear else "weight"


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by name (a shared tensor once)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def save(target: Emulation | nn.Module, path: str | Path) -> CheckpointInfo:
    """Write the emulation ``target`` (an :class:`Emulation`, or the model one was applied
    to) to the safetensors file ``path``; see the module docstring for what it holds."""
    emulation = _emulation_of(target)
    if emulation.recipe.needs_calibration and not emulation.calibration:
        raise ValueError(f"recipe {emulation.recipe.name!r} needs calibration: calibrate the emulation before saving it")
    path = Path(path)
    tensors = _model_tensors(emulation.model)
    arrays: dict[str, torch.Tensor] = {}
    weights: dict[str, Any] = {}
    definitions: dict[str, str] = {}
    for linear, q in emulation.quantized_weights.items():
        name = _param_name(linear)
        fields = q.packed_fields()
        if q.tensor_scale is not None:
            fields["tensor_scale"] = np.array(q.tensor_scale, np.float32)  # float32 holds it exactly
        if q.nan_mask is not None:
            fields["nan_mask"] = np.ascontiguousarray(q.cpu().nan_mask)
        if linear in emulation.weight_scales:
            fields["row_scale"] = emulation.weight_scales[linear].detach().to("cpu", torch.float32).numpy()
        for field, value in fields.items():
            arrays[f"{name}{_SEP}{field}"] = torch.from_numpy(np.ascontiguousarray(value))
        stats = emulation.sites[linear].operands["weight"].stats
        counts = None if stats.dialect_counts is None else [int(c) for c in stats.dialect_counts]
        weights[name] = {
            "format": q.spec.name,
            **tensor_layout(q),
            "fields": sorted(fields),
            "stats": {**attrs.asdict(stats), "dialect_counts": counts},
        }
        definitions[q.spec.name] = spec_json(q.spec)
    for name, tensor in tensors.items():
        if name in weights:
            continue
        if _SEP in name:
            raise ValueError(f"the model's tensor name {name!r} holds {_SEP!r}, which names quantized fields in a checkpoint")
        arrays[name] = tensor.detach().to("cpu", copy=True).contiguous()
    calibration = {k: v for k, v in emulation.calibration.items() if k not in _CALIBRATION_ARRAYS}
    for kind in _CALIBRATION_ARRAYS:
        if kind in emulation.calibration:
            calibration[kind] = sorted(emulation.calibration[kind])
            for linear, value in emulation.calibration[kind].items():
                arrays[f"{_CALIBRATION}{kind}{_SEP}{linear}"] = value.detach().to("cpu", torch.float32).contiguous()
    document = {
        "version": CHECKPOINT_VERSION,
        "lowbit": lowbit.__version__,
        "recipe": emulation.recipe.to_dict(),
        "apply": {"stats": emulation.stats, "token_order": emulation.token_order},
        "weights": weights,
        "formats": definitions,
        "calibration": calibration,
    }
    save_file(arrays, str(path), metadata={METADATA_KEY: json.dumps(document)})
    quantized = emulation.quantized_weights.values()
    return CheckpointInfo(
        path=path,
        bytes=path.stat().st_size,
        quantized_weights=len(weights),
        quantized_elements=sum(math.prod(q.shape) for q in quantized),
        quantized_bytes=sum(q.nbytes() for q in quantized) + sum(4 * s.numel() for s in emulation.weight_scales.values()),
        other_bytes=sum(t.numel() * t.element_size() for n, t in tensors.items() if n not in weights),
        elements=sum(t.numel() for t in tensors.values()),
    )


# ---------------------------------------------------------------------------
# load


def _scale_values(scale: Any, codes: np.ndarray) -> np.ndarray:
    """The float64 block-scale values of ``codes`` in scale format ``scale``, as quantize gives them."""
    if isinstance(scale, ExpScaleFormat):
        table = [math.nan if c == scale.nan_code else math.ldexp(1.0, c - scale.bias) for c in range(1 << scale.bits)]
    else:
        table = [float(decode_exact(scale, c)) for c in range(1 << scale.bits)]
    return np.asarray(table, np.float64)[codes]


def _unpacked(path: Path, arrays: dict[str, torch.Tensor], key: str, bits: int, shape: tuple[int, int]) -> np.ndarray:
    """The (rows, blocks) uint8 values bit-packed in ``arrays[key]`` at ``bits`` bits each."""
    packed = arrays[key].numpy()
    count = shape[0] * shape[1]
    if packed.dtype != np.uint8 or packed.shape != (-(-count * bits // 8),):
        raise ValueError(f"{path}: {key}: expected {-(-count * bits // 8)} bytes of uint8, got {packed.dtype} {packed.shape}")
    return unpack_bits(packed, bits, count).reshape(shape).astype(np.uint8)


def _rebuild(path: Path, name: str, entry: dict[str, Any], spec: Any, arrays: dict[str, torch.Tensor]) -> Quantized:
    """The Quantized of stored weight ``name`` (its arrays checked against its layout)."""
    keys = {"format", "shape", "axis", "dtype", "n", "seed", "fields", "stats"}
    if set(entry) != keys:
        raise ValueError(f"{path}: {name}: stored entry has keys {sorted(entry)}, expected {sorted(keys)}")
    n, shape = entry["n"], tuple(entry["shape"])
    if not shape or n != shape[entry["axis"]]:
        raise ValueError(f"{path}: {name}: row length {n!r} is not the length of axis {entry['axis']!r} of shape {list(shape)}")
    rows = math.prod(shape) // n
    element = code_format(spec)
    block = isinstance(spec, BLOCK_SPECS)
    expected = {"codes"} | ({"scale_codes"} if block else set()) | ({"dialect_ids"} if isinstance(spec, Formatbook) else set())
    expected |= {"tensor_scale"} if getattr(spec, "tensor_scale", None) is not None else set()
    if not expected <= set(entry["fields"]) <= expected | {"nan_mask", "row_scale"}:
        raise ValueError(f"{path}: {name}: stored fields {entry['fields']} do not fit format {spec.name!r} (expected {sorted(expected)})")
    codes = arrays[f"{name}{_SEP}codes"].numpy()
    columns = -(-n // 2) if element.bits <= 4 else n
    if codes.shape != (rows, columns) or codes.dtype != (np.uint16 if element.bits > 8 else np.uint8):
        raise ValueError(f"{path}: {name}{_SEP}codes: expected ({rows}, {columns}) codes, got {codes.dtype} {codes.shape}")
    parts: dict[str, Any] = {}
    if block:
        grid = (rows, -(-n // spec.block_size))
        parts["scale_codes"] = _unpacked(path, arrays, f"{name}{_SEP}scale_codes", spec.scale.bits, grid)
        parts["scales"] = _scale_values(spec.scale, parts["scale_codes"])
    if isinstance(spec, Formatbook):
        parts["dialect_ids"] = _unpacked(path, arrays, f"{name}{_SEP}dialect_ids", spec.dialect_id_bits, grid)
    if "tensor_scale" in entry["fields"]:
        parts["tensor_scale"] = float(arrays[f"{name}{_SEP}tensor_scale"])
    if "nan_mask" in entry["fields"]:
        parts["nan_mask"] = arrays[f"{name}{_SEP}nan_mask"].numpy()
        if parts["nan_mask"].shape != (rows, -(-n // 8)):
            raise ValueError(f"{path}: {name}{_SEP}nan_mask: expected ({rows}, {-(-n // 8)}) bytes, got {parts['nan_mask'].shape}")
    if "row_scale" in entry["fields"] and tuple(arrays[f"{name}{_SEP}row_scale"].shape) != (rows, 1):
        raise ValueError(f"{path}: {name}{_SEP}row_scale: expected ({rows}, 1) scales, got {tuple(arrays[f'{name}{_SEP}row_scale'].shape)}")
    return Quantized(spec=spec, **layout_fields(entry), codes=codes, **parts)


def _document(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The checkpoint's JSON document, its version checked."""
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: not a lowbit checkpoint (no {METADATA_KEY!r} metadata; lowbit.save writes one)")
    try:
        document = json.loads(metadata[METADATA_KEY])
        version = document["version"]
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"{path}: the {METADATA_KEY!r} metadata is not a lowbit checkpoint document") from None
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {version!r}; this lowbit {lowbit.__version__} reads version {CHECKPOINT_VERSION}")
    keys = {"version", "lowbit", "recipe", "apply", "weights", "formats", "calibration"}
    if set(document) != keys:
        raise ValueError(f"{path}: the checkpoint document has keys {sorted(document)}, expected {sorted(keys)}")
    return document


def _checked_formats(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    """Every format of the stored weights, registered here with the definition they were stored in."""
    specs = {}
    for name, definition in document["formats"].items():
        if name not in formats.names():
            raise ValueError(f"{path}: unknown format {name!r}; registered formats: {', '.join(formats.names())}")
        specs[name] = formats.get(name)
        if spec_json(specs[name]) != definition:
            raise ValueError(f"{path}: format {name!r} is registered here with a different definition than the file was written with")
    unknown = sorted({e["format"] for e in document["weights"].values()} - set(specs))
    if unknown:
        raise ValueError(f"{path}: weights name format(s) {', '.join(map(repr, unknown))} the file does not define")
    return specs


def _checked_names(path: Path, document: dict[str, Any], arrays: dict[str, torch.Tensor], model: nn.Module) -> None:
    """The file holds exactly the model's parameters and buffers, with their shapes and dtypes."""
    tensors = _model_tensors(model)
    weights = document["weights"]
    fields = {f"{name}{_SEP}{field}" for name, e in weights.items() for field in e["fields"]}
    absent = sorted(fields - set(arrays))
    if absent:
        raise ValueError(f"{path}: quantized field(s) {_listed(absent)} missing from the file")
    stored = {name: (list(e["shape"]), e["dtype"]) for name, e in weights.items()}
    stored |= {k: (list(t.shape), _dtype(t)) for k, t in arrays.items() if k not in fields and not k.startswith(_CALIBRATION)}
    if set(tensors) - set(stored):
        raise ValueError(f"{path}: the model does not match: the file lacks {_listed(sorted(set(tensors) - set(stored)))}")
    if set(stored) - set(tensors):
        raise ValueError(f"{path}: the model does not match: it has no {_listed(sorted(set(stored) - set(tensors)))}")
    for name, (shape, dtype) in stored.items():
        t = tensors[name]
        if (list(t.shape), _dtype(t)) != (shape, dtype):
            raise ValueError(f"{path}: the model does not match: {name} is {dtype} {shape} in the file and {_dtype(t)} {list(t.shape)} in the model")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _calibration_keys(recipe: Recipe) -> set[str]:
    """The keys of the calibration state of ``recipe`` (none when it needs no calibration)."""
    if not recipe.needs_calibration:
        return set()
    keys = {"steps"} | ({"six_bit"} if recipe.six_bit is not None else set())
    if recipe.scaling is not None:
        keys |= {"smoothing"} if recipe.scaling.smoothquant is not None else set()
        keys |= {"scales"} if recipe.scaling.activation == "static" else set()
    return keys


def _checked_calibration(
    path: Path, stored: Any, arrays: dict[str, torch.Tensor], recipe: Recipe, model: nn.Module
) -> dict[str, Any]:
    """The calibration state :func:`save` wrote, checked against the recipe and the model."""
    expected = _calibration_keys(recipe)
    if stored == {} and expected:
        raise ValueError(f"{path}: holds no calibration state, but recipe {recipe.name!r} needs it")
    if not isinstance(stored, dict) or set(stored) != expected:
        keys = sorted(stored) if isinstance(stored, dict) else type(stored).__name__
        raise ValueError(f"{path}: calibration state with {keys} does not fit recipe {recipe.name!r} (expected {sorted(expected)})")
    steps = stored.get("steps", 1)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{path}: calibration steps must be a positive integer, got {steps!r}")
    fitted = stored.get("six_bit", {"alpha": 0.0, "beta": 0.0, "threshold": 0.0})
    if not (isinstance(fitted, dict) and set(fitted) == {"alpha", "beta", "threshold"}
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in fitted.values())):  # fmt: skip
        raise ValueError(f"{path}: six_bit calibration must hold finite alpha, beta and threshold, got {fitted!r}")
    out: dict[str, Any] = {k: v for k, v in stored.items() if k not in _CALIBRATION_ARRAYS}
    modules = dict(model.named_modules())
    groups = None if recipe.scaling is None else recipe.scaling.step_groups or steps
    keys = set()
    for kind in (k for k in _CALIBRATION_ARRAYS if k in stored):
        out[kind] = {}
        for linear in stored[kind]:
            key = f"{_CALIBRATION}{kind}{_SEP}{linear}"
            module = modules.get(linear)
            if key not in arrays or not isinstance(module, nn.Linear):
                raise ValueError(f"{path}: calibration array {key} is missing or names no linear of the model")
            shape = (module.in_features,) if kind == "smoothing" else (groups,)
            if tuple(arrays[key].shape) != shape:
                raise ValueError(f"{path}: {key}: expected shape {list(shape)}, got {list(arrays[key].shape)}")
            out[kind][linear] = arrays[key]
            keys.add(key)
    extra = sorted(k for k in arrays if k.startswith(_CALIBRATION) and k not in keys)
    if extra:
        raise ValueError(f"{path}: calibration array(s) {_listed(extra)} are not listed in the calibration state")
    return out


def _weight_stats(entry: dict[str, Any]) -> QuantStats:
    """The weight statistics :func:`save` stored."""
    stats = dict(entry["stats"])
    counts = stats.pop("dialect_counts")
    return QuantStats(**stats, dialect_counts=None if counts is None else np.asarray(counts, np.int64))


def load(path: str | Path, model: nn.Module, *, backend: str = "auto") -> Emulation:
    """Apply the checkpoint at ``path`` to ``model`` (a module of the configuration it was
    saved from, with no emulation applied) and return the :class:`Emulation`.

    Everything is checked first (file, version, recipe, formats, names, shapes, dtypes,
    packed sizes, the recipe quantizing exactly the stored weights); any error is a
    FileNotFoundError or ValueError with a one-line message and leaves ``model`` as it
    was. Then the stored tensors are copied into the model, each quantized linear's own
    weight becomes the values its stored weight stands for, and those are what the
    emulation computes with. ``backend`` is the emulation backend for the activations.
    """
    path = Path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    metadata, arrays = read_safetensors(path, "pt")
    document = _document(path, metadata)
    recipe = Recipe.from_dict(document["recipe"]).check()
    taken = next((m for m in model.modules() if m in _ACTIVE), None)
    if taken is not None:
        raise ValueError(f"the model is already emulated ({_ACTIVE[taken]!r}); remove it before loading a checkpoint")
    try:
        options = document["apply"]
        if set(options) != {"stats", "token_order"} or options["token_order"] not in (None, "text_first", "video_first"):
            raise ValueError(f"{path}: bad apply keywords {options!r} (expected stats and token_order)")
        specs = _checked_formats(path, document)
        _checked_names(path, document, arrays, model)
        calibration = _checked_calibration(path, document["calibration"], arrays, recipe, model)
        quantized = {name: _rebuild(path, name, e, specs[e["format"]], arrays) for name, e in document["weights"].items()}
        stats = {name: _weight_stats(e) for name, e in document["weights"].items()}
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed checkpoint document ({type(exc).__name__}: {exc})") from None
    emulation = apply(model, recipe, stats=bool(options["stats"]), backend=backend, token_order=options["token_order"])
    linears = {_param_name(linear): linear for linear, site in emulation.sites.items() if "weight" in site.operands}
    if set(linears) != set(quantized):
        emulation.remove()
        raise ValueError(
            f"{path}: the stored recipe quantizes {len(linears)} weight(s) of this model and the file holds "
            f"{len(quantized)}; these differ: {_listed(sorted(set(linears) ^ set(quantized)))}"
        )
    scaled = {linear for linear, site in emulation.sites.items() if site.scheme == "scaled"}
    unfit = [kind for kind in _CALIBRATION_ARRAYS if kind in calibration and set(calibration[kind]) != scaled]
    if unfit:
        emulation.remove()
        raise ValueError(
            f"{path}: the stored calibration ({', '.join(unfit)}) covers other linears than the {len(scaled)} "
            "the recipe quantizes with scaled INT8 in this model"
        )
    tensors = _model_tensors(model)
    device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
    emulation.calibration = {
        k: {linear: t.to(device) for linear, t in v.items()} if k in _CALIBRATION_ARRAYS else v for k, v in calibration.items()
    }
    if emulation.six_bit is not None:
        emulation.six_bit.set_fitted(calibration["six_bit"])
    hadamard = None if recipe.six_bit is None else recipe.six_bit.hadamard
    smoothing = emulation.calibration.get("smoothing", {})
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name not in quantized:
                tensor.copy_(arrays[name])
                continue
            linear = linears[name]
            row_scale = arrays.get(f"{name}{_SEP}row_scale")
            value = dequantize(quantized[name])
            # what the linear computes with, exactly as quantized at save (scaled INT8: codes times row scale)
            weight = (value if row_scale is None else value * row_scale).to(tensor.device, tensor.dtype)
            # the module's own weight: that value without the smoothing or rotation applied before quantization
            if linear in smoothing:
                tensor.copy_(weight.float() / smoothing[linear])
            elif hadamard and emulation.sites[linear].scheme == "six_bit":
                tensor.copy_(rotate(weight, hadamard))  # the orthonormal Sylvester transform is its own inverse
            else:
                tensor.copy_(weight)
            scale = None if row_scale is None else row_scale.to(tensor.device)
            emulation.use_quantized_weight(linear, quantized[name], weight, stats[name], row_scale=scale)
    return emulation
