"""Explicit SIMD helpers for the Numba kernels: the max of |x| over 64 bytes, the
weighted count of threshold crossings in a block (:func:`weighted_count`), and the
argmin of summed lookup-table rows (:func:`lut_argmin`).

LLVM's loop vectoriser handles long element-wise loops well, but not a max
reduction over a short block (16 or 32 floats): with a runtime length it picks
an interleave count longer than the block and runs the scalar loop, and with a
constant length it unrolls the block and vectorises the loop over blocks with
gathers. ``max_abs_bits`` states the intended code directly: one 64-byte load, a
mask, and LLVM's ``vector.reduce.umax`` (a few shuffles).

Summing a 32-column table row per element (lookup-table dialect selection) has
the same problem: written as Numba loops, the loop over elements is vectorised
with gathers (one per column word and lane) or the accumulators live in memory;
measured 4x slower than ``lut_argmin``, which keeps 32 16-bit (or 32-bit) sums in
vector registers and adds each row with one 64-byte (128-byte) load; 16-bit sums
are twice as fast, so they saturate instead of needing every sum to fit.

The two_stage count of a 32-float block is a reduction of the same kind:
``weighted_count`` keeps 16 int32 sums in one vector register (compare, select,
add per threshold) and reduces them once per block.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def max_abs_bits(typingctx, arr, start, limit):
    """max over arr[start : start + 64 // itemsize] of |x|'s bit pattern (sign bit cleared),
    counting patterns >= ``limit`` as 0; ``arr`` is a C-contiguous 1-D float32/float64 array
    and the caller guarantees the 64 bytes are inside it. Returns an int64.

    Non-negative floats order like their bit patterns, so this is max |x| as bits;
    patterns >= the Inf pattern are Inf or NaN.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"):
        return None
    if arr.dtype not in (types.float32, types.float64):
        return None
    width = arr.dtype.bitwidth
    lanes = 512 // width
    sig = types.int64(arr, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ity = ir.IntType(width)
        vty = ir.VectorType(ity, lanes)
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), vty.as_pointer())
        v = builder.and_(builder.load(ptr, align=width // 8), ir.Constant(vty, [(1 << (width - 1)) - 1] * lanes))
        undef = ir.Constant(vty, ir.Undefined)
        lim = builder.insert_element(undef, builder.trunc(args[2], ity) if width < 64 else args[2], ir.IntType(32)(0))
        lim = builder.shuffle_vector(lim, undef, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
        v = builder.select(builder.icmp_unsigned("<", v, lim), v, ir.Constant(vty, [0] * lanes))
        fnty = ir.FunctionType(ity, [vty])
        reduce = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.vector.reduce.umax.v{lanes}i{width}")
        m = builder.call(reduce, [v])
        return builder.zext(m, ir.IntType(64)) if width < 64 else m

    return sig, codegen


LANES = 16  # float32 lanes of one 64-byte vector
LUT_WIDTH = 32  # columns of a lut_argmin table
LUT_MAX_SUM = 1 << 27  # column sums must stay below this: the key is (sum << 5) | column, 32 bits


@intrinsic
def lut_argmin(typingctx, table, rows, n):
    """argmin over the 32 columns d of sum(table[rows[j] * 32 + d] for j < n), ties to the
    lowest d. ``table`` is a C-contiguous 1-D uint16 or uint32 array (rows of 32 entries),
    ``rows`` a C-contiguous 1-D int32 array of row numbers inside it. The sums saturate
    at 2^16 - 1 (uint16): the result is exact when the least sum stays below that, since
    every saturated sum is then larger; for uint32 every sum must stay below
    ``LUT_MAX_SUM``. The caller guarantees it. Returns an int64.

    Each element adds its whole table row to 32 accumulators of the table's width with
    one vector load and saturating add; the key (sum << 5) | d then orders by sum first
    and id second, so one ``vector.reduce.umin`` gives the argmin with its tie rule.
    """
    ok = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (table, rows))
    if not (ok and table.dtype in (types.uint16, types.uint32) and rows.dtype == types.int32):
        return None
    width = table.dtype.bitwidth
    sig = types.int64(table, rows, types.int64)

    def codegen(context, builder, signature, args):
        entry, i32, i64 = ir.IntType(width), ir.IntType(32), ir.IntType(64)
        tab = context.make_array(signature.args[0])(context, builder, args[0])
        rws = context.make_array(signature.args[1])(context, builder, args[1])
        vty = ir.VectorType(entry, LUT_WIDTH)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vty, [0] * LUT_WIDTH))
        addsat = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty]), f"llvm.uadd.sat.v{LUT_WIDTH}i{width}"
        )
        with cgutils.for_range(builder, args[2]) as loop:
            r = builder.sext(builder.load(builder.gep(rws.data, [loop.index])), i64)
            ptr = builder.bitcast(builder.gep(tab.data, [builder.mul(r, i64(LUT_WIDTH))]), vty.as_pointer())
            builder.store(builder.call(addsat, [builder.load(acc), builder.load(ptr, align=width // 8)]), acc)
        wty = ir.VectorType(i32, LUT_WIDTH)
        sums = builder.zext(builder.load(acc), wty) if width < 32 else builder.load(acc)
        ids = ir.Constant(wty, list(range(LUT_WIDTH)))
        key = builder.or_(builder.shl(sums, ir.Constant(wty, [5] * LUT_WIDTH)), ids)  # 21 bits for uint16
        fnty = ir.FunctionType(i32, [wty])
        reduce = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.vector.reduce.umin.v{LUT_WIDTH}i32")
        best = builder.call(reduce, [key])
        return builder.zext(builder.and_(best, i32(LUT_WIDTH - 1)), i64)

    return sig, codegen


@intrinsic
def weighted_count(typingctx, arr, start, chunks, scale, thresholds, weights):
    """sum over x in arr[start : start + 16 * chunks] and j of weights[j] * (|x| * scale >
    thresholds[j]). ``arr`` is a C-contiguous 1-D float32 array (the caller guarantees the
    range is inside it), ``scale`` a float32, ``thresholds`` and ``weights`` tuples of the
    same length of float32 and int32. The 16 int32 lane sums must not overflow (the caller's
    weights and block size bound them). Returns an int64.

    Every |x| * scale is one float32 multiply, as the caller's scalar code would round it.
    """
    ok = isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype == types.float32
    tuples = isinstance(thresholds, types.UniTuple) and isinstance(weights, types.UniTuple)
    if not (ok and tuples and len(thresholds) == len(weights) and scale == types.float32):
        return None
    if thresholds.dtype != types.float32 or weights.dtype != types.int32:
        return None
    sig = types.int64(arr, types.int64, types.int64, scale, thresholds, weights)

    def codegen(context, builder, signature, args):
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vf, vi = ir.VectorType(f32, LANES), ir.VectorType(i32, LANES)
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        zeros = ir.Constant(vi, [0] * LANES)

        def splat(value, vty):
            undef = ir.Constant(vty, ir.Undefined)
            return builder.shuffle_vector(builder.insert_element(undef, value, i32(0)), undef, zeros)

        scale_v = splat(args[3], vf)
        cuts = [splat(builder.extract_value(args[4], j), vf) for j in range(len(thresholds))]
        steps = [splat(builder.extract_value(args[5], j), vi) for j in range(len(weights))]
        acc = cgutils.alloca_once_value(builder, zeros)
        with cgutils.for_range(builder, args[2]) as loop:
            at = builder.add(args[1], builder.mul(loop.index, i64(LANES)))
            ptr = builder.bitcast(builder.gep(ary.data, [at]), vi.as_pointer())
            mag = builder.and_(builder.load(ptr, align=4), ir.Constant(vi, [0x7FFFFFFF] * LANES))
            u = builder.fmul(builder.bitcast(mag, vf), scale_v)
            total = builder.load(acc)
            for cut, step in zip(cuts, steps):
                total = builder.add(total, builder.select(builder.fcmp_ordered(">", u, cut), step, zeros))
            builder.store(total, acc)
        fnty = ir.FunctionType(i32, [vi])
        reduce = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.vector.reduce.add.v{LANES}i32")
        return builder.sext(builder.call(reduce, [builder.load(acc)]), i64)

    return sig, codegen
