"""One explicit SIMD helper for the Numba kernels: the max of |x| over 64 bytes.

LLVM's loop vectoriser handles long element-wise loops well, but not a max
reduction over a short block (16 or 32 floats): with a runtime length it picks
an interleave count longer than the block and runs the scalar loop, and with a
constant length it unrolls the block and vectorises the loop over blocks with
gathers. This intrinsic states the intended code directly: one 64-byte load, a
mask, and LLVM's ``vector.reduce.umax`` (a few shuffles).
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
