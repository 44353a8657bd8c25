"""quantize / dequantize / fake_quant: input checking, layout, packing, dispatch.

Layout: the block axis is moved last and the other axes flattened into rows, so
a backend sees a C-contiguous (rows, n) array; blocks never straddle rows and a
partial last block is padded with zeros (or refused, per the spec's padding).
float16 and bfloat16 inputs are widened to float32 (exact); float64 stays
float64, so it is rounded once, from its own value. The input is never written.

Stochastic rounding draws its bits from (seed, row * n + column) in that layout
(see :func:`lowbit.emulate.random_bits`).

Devices: ``backend="auto"`` picks Triton for CUDA tensors and Numba otherwise.
A backend that takes tensors (Triton) gets the layout as a tensor of the input's
dtype on the input's device, and a Quantized it makes from a torch tensor holds
torch tensors on that device; every other Quantized holds numpy arrays, and
``Quantized.cpu()`` gives the numpy form of either.

Sub-formatbooks (:class:`SubFormatbooks`) restrict, per block, the dialects a
Formatbook's selection may choose from (SemanticDialect); their ids are given
over the block grid of ``x`` and laid out like the blocks.
"""

from __future__ import annotations

import secrets
from types import ModuleType
from typing import Any

import attrs
import numpy as np
from attrs import field, frozen

from lowbit.emulate.backends import Parts, backend_for, takes_tensors
from lowbit.formats import resolve
from lowbit.formats.spec import BLOCK_SPECS, BlockFormat, Formatbook

try:  # torch is a hard dependency, but keep numpy-only use cheap to import
    import torch
except ImportError:  # pragma: no cover - torch is pinned in pyproject
    torch = None  # type: ignore[assignment]

FLOAT_KINDS = ("float16", "bfloat16", "float32", "float64")


def _bits_for(count: int) -> int:
    """Bits of an index into ``count`` things (0 for a single thing)."""
    return max(count - 1, 0).bit_length()


def _bool_table(masks: Any) -> np.ndarray:
    m = np.asarray(masks)
    if m.dtype != np.bool_ or m.ndim not in (2, 3) or 0 in m.shape:
        raise ValueError(
            "masks must be a non-empty bool array (sub-formatbooks, dialects) or "
            f"(sub-formatbooks, block positions, dialects), got {m.dtype} {m.shape}"
        )
    if not m.any(axis=-1).all():
        raise ValueError(f"every sub-formatbook must allow a dialect; {np.argwhere(~m.any(axis=-1)).tolist()} allow none")
    return m


def _id_array(ids: Any) -> np.ndarray:
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise TypeError(f"sub-formatbook ids must be integers, got dtype {a.dtype}")
    return a


@frozen(kw_only=True, eq=False)
class SubFormatbooks:
    """Per block, the set of dialects a Formatbook's selection may choose from.

    masks  bool (sub-formatbooks, dialects): ``masks[s, d]`` allows dialect d in
           sub-formatbook s; or (sub-formatbooks, block positions, dialects):
           ``masks[s, p, d]`` allows dialect d to the block at position p along
           the block axis (p < the number of blocks there) of sub-formatbook s, so
           one id per token can give each of the token's blocks its own list.
           Every sub-formatbook (and position) allows at least one dialect.
    ids    integers in [0, sub-formatbooks): the sub-formatbook of each block,
           broadcastable to the block grid (``x``'s shape with the block axis
           length replaced by the number of blocks); e.g. shape (tokens, 1) gives
           one sub-formatbook per token of a (tokens, channels) activation. Stored
           as given: that is the granularity whose ids are counted in storage,
           and the whole mask table is stored with them.
    """

    masks: np.ndarray = field(converter=_bool_table)
    ids: np.ndarray = field(converter=_id_array)

    def __attrs_post_init__(self) -> None:
        if self.ids.size and (self.ids.min() < 0 or self.ids.max() >= len(self.masks)):
            raise ValueError(f"sub-formatbook ids must lie in [0, {len(self.masks)}), got {self.ids.min()}..{self.ids.max()}")

    @classmethod
    def from_dialects(cls, groups: Any, n_dialects: int, ids: Any) -> "SubFormatbooks":
        """Sub-formatbooks from lists of allowed dialect ids (one list per sub-formatbook)."""
        masks = np.zeros((len(groups), n_dialects), np.bool_)
        for s, group in enumerate(groups):
            group = list(group)
            if not all(isinstance(d, (int, np.integer)) and 0 <= d < n_dialects for d in group):
                raise ValueError(f"sub-formatbook {s}: dialect ids must be integers in [0, {n_dialects}), got {group}")
            masks[s, group] = True
        return cls(masks=masks, ids=ids)

    @property
    def id_bits(self) -> int:
        """Bits of a stored sub-formatbook id."""
        return _bits_for(len(self.masks))

    @property
    def index_bits(self) -> int:
        """Bits of a block's dialect as stored: its index within its sub-formatbook."""
        return _bits_for(int(self.masks.sum(axis=-1).max()))

    @property
    def table(self) -> np.ndarray:
        """The masks as a 2-D table: one row per sub-formatbook, or per (sub-formatbook, position)."""
        return self.masks.reshape(-1, self.masks.shape[-1])

    def rows(self, sub: np.ndarray) -> np.ndarray:
        """The :attr:`table` row of every block, from the sub-formatbook ids of a (rows, blocks) grid."""
        if self.masks.ndim == 2:
            return sub
        positions = self.masks.shape[1]
        if sub.shape[-1] != positions:
            raise ValueError(f"the masks hold {positions} block positions; the block grid has {sub.shape[-1]} blocks along the block axis")
        return sub * positions + np.arange(positions, dtype=sub.dtype)

    def local_ids(self, sub: np.ndarray, dialect_ids: np.ndarray) -> np.ndarray:
        """Each block's dialect as its index among the dialects its sub-formatbook allows
        (``sub``: the sub-formatbook ids of a (rows, blocks) grid)."""
        rank = np.cumsum(self.table, axis=1) - 1
        return rank[self.rows(sub), dialect_ids].astype(np.uint8)

    def global_ids(self, sub: np.ndarray, local: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`local_ids`."""
        order = np.argsort(~self.table, axis=1, kind="stable")  # allowed dialects first, in id order
        return order[self.rows(sub), local].astype(np.uint8)


@frozen(kw_only=True)
class Quantized:
    """A quantized tensor: packed codes, per-block scales, tensor scale, spec.

    The arrays are numpy arrays, or torch tensors on the input's device when a
    backend that works on tensors (Triton) quantized a torch tensor; :meth:`cpu`
    gives the numpy form, which is the same whichever backend quantized.

    codes        uint8, shape (rows, packed columns): codes of 4 bits or fewer
                 two per byte (``spec.nibble_order``), wider codes one per byte
    scale_codes  scale codes per block, shape (rows, blocks), or None
    scales       the scale values (float64) matching ``scale_codes``, or None
    tensor_scale the float32 per-tensor scale, or None
    nan_mask     packed bits marking NaN inputs of element formats without a
                 NaN code (policy ``nan='keep'``), or None
    dialect_ids  formatbooks: the dialect each block chose, shape (rows, blocks)
    subbooks     the :class:`SubFormatbooks` the selection was restricted by, or None
    seed         the seed stochastic rounding used (None otherwise)
    """

    spec: Any
    shape: tuple[int, ...]
    axis: int
    dtype: str
    container: str
    n: int
    codes: np.ndarray
    scale_codes: np.ndarray | None = None
    scales: np.ndarray | None = None
    tensor_scale: float | None = None
    nan_mask: np.ndarray | None = None
    dialect_ids: np.ndarray | None = None
    subbooks: SubFormatbooks | None = None
    seed: int | None = None

    @property
    def element(self) -> Any:
        """The format of the stored codes."""
        return code_format(self.spec)

    def unpacked_codes(self) -> Any:
        """The element codes, one per element, shape (rows, n)."""
        return unpack_codes(self.codes, self.element, self.n)

    def cpu(self) -> "Quantized":
        """The same quantized tensor with numpy arrays (tensors are copied from their device)."""
        return self.replace(**{f: _as_numpy(getattr(self, f)) for f in _ARRAY_FIELDS})

    def block_subbooks(self) -> np.ndarray:
        """The sub-formatbook of every block, shape (rows, blocks) (requires ``subbooks``)."""
        assert self.subbooks is not None
        return _block_layout(self.subbooks.ids, self.shape, self.axis, self.dialect_ids.shape)  # type: ignore[union-attr]

    def packed_fields(self) -> dict[str, np.ndarray]:
        """The storage, each field bit-packed at its width (:func:`pack_bits`): codes, scale
        codes, dialect ids (with sub-formatbooks: each block's index within its sub-formatbook,
        then the sub-formatbook ids as given and the mask table), as numpy arrays."""
        q = self.cpu()
        out = {"codes": q.codes}
        if q.scale_codes is not None:
            out["scale_codes"] = pack_bits(q.scale_codes, q.spec.scale.bits)
        if q.dialect_ids is not None and q.subbooks is None:
            out["dialect_ids"] = pack_bits(q.dialect_ids, q.spec.dialect_id_bits)
        if q.subbooks is not None:
            sb = q.subbooks
            out["dialect_ids"] = pack_bits(sb.local_ids(q.block_subbooks(), q.dialect_ids), sb.index_bits)  # type: ignore[arg-type]
            out["subbook_ids"] = pack_bits(sb.ids, sb.id_bits)
            out["subbook_masks"] = pack_bits(sb.masks, 1)
        return out

    def nbytes(self) -> int:
        """Bytes of storage: the :meth:`packed_fields` and the float32 tensor scale."""
        total = sum(a.nbytes for a in self.packed_fields().values())
        return total + (4 if self.tensor_scale is not None else 0)

    def bits_per_element(self) -> float:
        """Storage bits (:meth:`nbytes`) per element of the quantized tensor."""
        return 8 * self.nbytes() / max(int(np.prod(self.shape)), 1)

    def replace(self, **kw: Any) -> "Quantized":
        return attrs.evolve(self, **kw)


# ---------------------------------------------------------------------------
# packing


def pack_bits(values: Any, bits: int) -> np.ndarray:
    """Non-negative integers below 2^bits, flattened in C order, as a uint8 array of
    ceil(size * bits / 8) bytes: value i occupies bits [i * bits, (i + 1) * bits), least
    significant bit first. ``bits=0`` stores nothing."""
    v = np.asarray(values).astype(np.uint64).ravel()
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"a value ({int(v.max())}) does not fit in {bits} bits")
    planes = (v[:, None] >> np.arange(bits, dtype=np.uint64)[None, :]) & np.uint64(1)
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The ``count`` values :func:`pack_bits` packed at ``bits`` bits each, as int64."""
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits).astype(np.int64)
    return (planes << np.arange(bits, dtype=np.int64)[None, :]).sum(axis=1)


def code_format(spec: Any) -> Any:
    """The format whose codes a quantized ``spec`` stores (its element, or its code view)."""
    if isinstance(spec, Formatbook):
        return spec.code_format
    return spec.element if isinstance(spec, BlockFormat) else spec


def pack_codes(codes: Any, element: Any) -> Any:
    """Pack (rows, n) codes: 4 bits or fewer two per byte, else one per byte (uint8/uint16).
    Numpy arrays or torch tensors (which stay on their device)."""
    if element.bits > 8:
        return codes.to(torch.uint16) if _is_tensor(codes) else codes.astype(np.uint16)
    codes = codes.to(torch.uint8) if _is_tensor(codes) else codes.astype(np.uint8)
    if element.bits > 4:
        return codes
    rows, n = codes.shape
    if n % 2 and _is_tensor(codes):
        codes = torch.cat([codes, codes.new_zeros((rows, 1))], dim=1)
    elif n % 2:
        codes = np.concatenate([codes, np.zeros((rows, 1), np.uint8)], axis=1)
    first, second = codes[:, 0::2], codes[:, 1::2]
    if element.nibble_order == "low_first":
        return first | (second << 4)
    return (first << 4) | second


def unpack_codes(packed: Any, element: Any, n: int) -> Any:
    if element.bits > 4:
        return packed
    rows = packed.shape[0]
    lo, hi = packed & 0xF, packed >> 4
    first, second = (lo, hi) if element.nibble_order == "low_first" else (hi, lo)
    if _is_tensor(packed):
        return torch.stack([first, second], dim=-1).reshape(rows, -1)[:, :n].contiguous()
    out = np.empty((rows, 2 * packed.shape[1]), np.uint8)
    out[:, 0::2], out[:, 1::2] = first, second
    return np.ascontiguousarray(out[:, :n])


# ---------------------------------------------------------------------------
# tensors on a device (backends that take tensors)

_ARRAY_FIELDS = ("codes", "scale_codes", "scales", "nan_mask", "dialect_ids")
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' bit order


def _is_tensor(a: Any) -> bool:
    return torch is not None and isinstance(a, torch.Tensor)


def _as_numpy(a: Any) -> Any:
    return a.detach().cpu().numpy() if _is_tensor(a) else a


def _packbits(mask: Any) -> Any:
    """np.packbits(mask, axis=-1) of a (rows, n) bool array or tensor."""
    if not _is_tensor(mask):
        return np.packbits(mask, axis=-1)
    rows, n = mask.shape
    padded = mask.new_zeros((rows, -(-n // 8) * 8), dtype=torch.uint8)
    padded[:, :n] = mask
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (padded.view(rows, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def _unpackbits(packed: Any, n: int) -> Any:
    """The (rows, n) bool mask :func:`_packbits` packed."""
    if not _is_tensor(packed):
        return np.unpackbits(packed, axis=-1, count=n).astype(bool)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) & weights) != 0).reshape(packed.shape[0], -1)[:, :n].contiguous()  # kernels index it flat


def _dispatch(spec: Any, backend: str, data: Any) -> tuple[ModuleType, bool]:
    """(backend module, whether it takes tensors) for ``spec`` on ``data`` (x, or stored codes)."""
    name = _check_backend_name(backend, data)
    module = backend_for(spec, name)
    tensors = takes_tensors(name)
    if not tensors and _is_tensor(data) and data.device.type != "cpu":
        raise TypeError(
            f"x is on {data.device}; backend {name!r} takes CPU tensors and numpy arrays "
            "(backend='auto' picks 'triton' for CUDA tensors)"
        )
    return module, tensors


def _to_tensor(x: Any, container: str, kind: str) -> Any:
    """x as a tensor of its own dtype (a numpy array becomes a CPU tensor; bfloat16 via its bits)."""
    if container == "torch":
        return x.detach()
    if kind == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(x).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(x))


def _tensor_output(y: Any, shape: tuple[int, ...], axis: int, container: str, kind: str) -> Any:
    """A tensor backend's (rows, n) output in x's shape and container."""
    src = _moved_shape_source(shape)
    y = y.reshape(src[:axis] + src[axis + 1 :] + (src[axis],)).movedim(-1, axis).reshape(shape)
    if container == "torch":
        return y
    y = y.cpu()
    return _from_result(y.view(torch.int16).numpy() if y.element_size() == 2 else y.numpy(), container, kind)


# ---------------------------------------------------------------------------
# input and output conversion


def _kind_of(x: Any) -> tuple[str, str]:
    """(container, float kind) of ``x``; a clear error for anything else."""
    if torch is not None and isinstance(x, torch.Tensor):
        kind = str(x.dtype).removeprefix("torch.")
        if kind not in FLOAT_KINDS:
            raise TypeError(f"x must be a floating tensor (float16, bfloat16, float32, float64), got {x.dtype}")
        return "torch", kind
    if isinstance(x, np.ndarray):
        kind = x.dtype.name
        if kind not in FLOAT_KINDS:
            raise TypeError(f"x must be a floating array (float16, bfloat16, float32, float64), got dtype {x.dtype}")
        return "numpy", kind
    raise TypeError(f"x must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _to_numpy(x: Any, container: str, kind: str) -> np.ndarray:
    """A float32/float64 numpy array with the same values (never a writable alias of x)."""
    if container == "torch":
        x = x.detach()
        if kind == "bfloat16":
            return _bf16_bits_to_f32(x.contiguous().view(torch.int16).numpy().view(np.uint16))
        x = x.numpy()
    if kind == "bfloat16":
        return _bf16_bits_to_f32(np.ascontiguousarray(x).view(np.uint16))
    if kind == "float16":
        return x.astype(np.float32)
    return x


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _from_result(y: np.ndarray, container: str, kind: str) -> Any:
    """Backend output (floats, or uint16 bit patterns for 16-bit kinds) -> x's container."""
    if kind in ("float16", "bfloat16"):
        bits = y.view(np.uint16)
        if container == "torch":
            return torch.from_numpy(bits.view(np.int16).copy()).view(getattr(torch, kind))
        if kind == "float16":
            return bits.view(np.float16)
        import ml_dtypes  # a numpy bfloat16 array can only exist with ml_dtypes installed

        return bits.view(ml_dtypes.bfloat16)
    y = y.astype(np.dtype(kind), copy=False)
    return torch.from_numpy(y) if container == "torch" else y


def _normalize_axis(axis: int, ndim: int) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for a tensor with {ndim} dimensions")
    return int(axis) % ndim


def _layout(x: np.ndarray, axis: int) -> np.ndarray:
    """(rows, n) C-contiguous view/copy with ``axis`` last."""
    moved = np.moveaxis(x, axis, -1)
    n = moved.shape[-1]
    return np.ascontiguousarray(moved.reshape(-1, n) if moved.size else np.empty((int(np.prod(moved.shape[:-1])), n), x.dtype))


def _unlayout(y: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    return np.moveaxis(y.reshape(moved_shape), -1, axis)


def _resolve_seed(spec: Any, seed: int | None, deterministic: bool) -> int | None:
    element = code_format(spec)
    if element.rounding != "stochastic":
        return None
    if seed is None:
        seed = element.sr_seed
    if seed is None:
        if deterministic:
            raise ValueError(
                f"format {spec.name!r} rounds stochastically and deterministic=True, but no seed was given: "
                "pass seed=... or set the format's sr_seed"
            )
        seed = secrets.randbits(32)
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    return int(seed)


def _block_layout(ids: np.ndarray, shape: tuple[int, ...], axis: int, grid: tuple[int, int]) -> np.ndarray:
    """Sub-formatbook ids over the block grid of a tensor of ``shape`` -> (rows, blocks) int32,
    laid out like the blocks (the block axis last)."""
    full = list(_moved_shape_source(shape))
    full[axis] = grid[1]
    try:
        b = np.broadcast_to(ids, tuple(full))
    except ValueError:
        raise ValueError(
            f"sub-formatbook ids of shape {ids.shape} do not broadcast to the block grid {tuple(full)} "
            f"(x's shape with axis {axis} holding the number of blocks)"
        ) from None
    return np.ascontiguousarray(np.moveaxis(b, axis, -1).reshape(grid), dtype=np.int32)


def _subbooks_for(spec: Any, subbooks: Any, shape: tuple[int, ...], axis: int, x2: np.ndarray) -> dict[str, Any]:
    """The backend keyword for ``subbooks`` (none when it is None), after checking it fits ``spec``."""
    if subbooks is None:
        return {}
    if not isinstance(subbooks, SubFormatbooks):
        raise TypeError(f"subbooks must be a lowbit.emulate.SubFormatbooks, got {type(subbooks).__name__}")
    if not isinstance(spec, Formatbook):
        raise ValueError(f"format {spec.name!r} has no dialects to restrict; sub-formatbooks need a Formatbook")
    if spec.selection == "two_stage":
        raise ValueError(
            f"format {spec.name!r} selects by two_stage, which picks from a fixed pair; "
            "sub-formatbooks need mse or lut selection"
        )
    if subbooks.masks.shape[-1] != len(spec.dialects):
        raise ValueError(f"the masks have {subbooks.masks.shape[-1]} columns; format {spec.name!r} has {len(spec.dialects)} dialects")
    grid = (x2.shape[0], -(-x2.shape[1] // spec.block_size))
    return {"subbooks": (subbooks.table, subbooks.rows(_block_layout(subbooks.ids, shape, axis, grid)))}


def _check_backend_name(backend: str, data: Any) -> str:
    """The backend name; "auto" is Triton for CUDA tensors ``data``, else Numba."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend != "auto":
        return backend
    return "triton" if _is_tensor(data) and data.device.type == "cuda" else "numba"


def _check_arithmetic(spec: Any, kind: str) -> None:
    if getattr(spec, "arithmetic", "exact") == "torchao" and kind not in ("float32", "bfloat16"):
        raise TypeError(
            f"format {spec.name!r} reproduces torchao 0.18, which takes float32 or bfloat16 input; got {kind}"
        )


def _prepare(
    x: Any, fmt: Any, axis: int | None, tensors: bool = False
) -> tuple[Any, str, str, Any, int, tuple[int, ...]]:
    """(spec, container, kind, (rows, n) layout, axis, shape); the layout is a tensor of
    x's dtype on x's device for a backend that takes tensors, else a numpy array."""
    spec = resolve(fmt)
    container, kind = _kind_of(x)
    _check_arithmetic(spec, kind)
    arr = _to_tensor(x, container, kind) if tensors else _to_numpy(x, container, kind)
    shape = tuple(arr.shape)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if axis is None:
        axis = spec.axis if isinstance(spec, BLOCK_SPECS) else -1
    ax = _normalize_axis(axis, arr.ndim)
    if tensors:
        moved = arr.movedim(ax, -1)
        x2 = moved.reshape(-1, moved.shape[-1]).contiguous()
    else:
        x2 = _layout(arr, ax)
    if isinstance(spec, BLOCK_SPECS) and spec.padding == "error" and x2.shape[1] % spec.block_size:
        raise ValueError(
            f"format {spec.name!r} has padding='error' and block_size={spec.block_size}, "
            f"which does not divide the length {x2.shape[1]} of axis {ax}"
        )
    return spec, container, kind, x2, ax, shape


# ---------------------------------------------------------------------------
# the public functions


def quantize(
    x: Any,
    fmt: Any,
    *,
    axis: int | None = None,
    backend: str = "auto",
    seed: int | None = None,
    deterministic: bool = False,
    subbooks: SubFormatbooks | None = None,
) -> Quantized:
    """Quantize ``x`` (torch tensor or numpy array) to ``fmt`` (a name or a spec).

    ``axis`` is the block axis (default: the spec's). ``backend``: "auto" (Triton
    for CUDA tensors, Numba otherwise), "numba", "reference", "triton" or any
    registered backend. ``seed`` sets
    stochastic rounding's random bits; ``deterministic=True`` refuses to draw a
    fresh seed when neither ``seed`` nor the spec's ``sr_seed`` is set.
    ``subbooks`` restricts each block's dialect (Formatbooks with mse or lut
    selection; see :class:`SubFormatbooks`).
    """
    module, tensors = _dispatch(resolve(fmt), backend, x)
    spec, container, kind, x2, ax, shape = _prepare(x, fmt, axis, tensors)
    s = _resolve_seed(spec, seed, deterministic)
    extra = _subbooks_for(spec, subbooks, shape, ax, x2)
    parts = module.quantize(spec, x2, seed=s, **extra)
    if tensors and container == "numpy":
        parts = parts.replace(**{f: _as_numpy(getattr(parts, f)) for f in _ARRAY_FIELDS})
    element = code_format(spec)
    return Quantized(
        spec=spec,
        shape=shape,
        axis=ax,
        dtype=kind,
        container=container,
        n=x2.shape[1],
        codes=pack_codes(parts.codes, element),
        scale_codes=parts.scale_codes,
        scales=parts.scales,
        tensor_scale=parts.tensor_scale,
        nan_mask=None if parts.nan_mask is None else _packbits(parts.nan_mask),
        dialect_ids=parts.dialect_ids,
        subbooks=subbooks,
        seed=s,
    )


def dequantize(q: Quantized, *, backend: str = "auto", dtype: str | None = None) -> Any:
    """The values ``q`` stands for, in the container and dtype that were quantized.

    ``dtype`` (one of float16, bfloat16, float32, float64) overrides the dtype.
    """
    if not isinstance(q, Quantized):
        raise TypeError(f"q must be a Quantized (from lowbit.quantize), got {type(q).__name__}")
    kind = q.dtype if dtype is None else str(dtype).removeprefix("torch.")
    if kind not in FLOAT_KINDS:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_KINDS)}, got {dtype!r}")
    module, tensors = _dispatch(q.spec, backend, q.codes)
    if tensors and not _is_tensor(q.codes):  # numpy storage: CPU tensors for the interpreter
        q = q.replace(**{f: torch.from_numpy(a) for f in _ARRAY_FIELDS if (a := getattr(q, f)) is not None})
    elif not tensors:
        q = q.cpu()
    parts = Parts(
        codes=q.unpacked_codes(),
        scale_codes=q.scale_codes,
        scales=q.scales,
        tensor_scale=q.tensor_scale,
        nan_mask=None if q.nan_mask is None else _unpackbits(q.nan_mask, q.n),
        dialect_ids=q.dialect_ids,
    )
    y = module.dequantize(q.spec, parts, kind)
    if tensors:
        return _tensor_output(y, q.shape, q.axis, q.container, kind)
    return _from_result(_unlayout(y, _moved_shape_source(q.shape), q.axis).reshape(q.shape), q.container, kind)


def fake_quant(
    x: Any,
    fmt: Any,
    *,
    axis: int | None = None,
    backend: str = "auto",
    seed: int | None = None,
    deterministic: bool = False,
    subbooks: SubFormatbooks | None = None,
) -> Any:
    """``dequantize(quantize(x, fmt, ...))`` in one pass: same shape, dtype and container as ``x``."""
    module, tensors = _dispatch(resolve(fmt), backend, x)
    spec, container, kind, x2, ax, shape = _prepare(x, fmt, axis, tensors)
    s = _resolve_seed(spec, seed, deterministic)
    extra = _subbooks_for(spec, subbooks, shape, ax, x2)
    y = module.fake_quant(spec, x2, seed=s, out=kind, **extra)
    if tensors:
        return _tensor_output(y, shape, ax, container, kind)
    return _from_result(_unlayout(y, _moved_shape_source(shape), ax).reshape(shape), container, kind)


def _moved_shape_source(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if shape else (1,)
