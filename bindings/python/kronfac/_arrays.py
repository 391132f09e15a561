"""numpy <-> C matrix conversion.

Inputs: any array-like of a floating-point dtype. float32 arrays whose rows are contiguous (the
last axis has unit stride, rows evenly spaced) are passed without a copy, using the row stride as
the leading dimension; anything else (float64, float16, other layouts) is converted once to a
C-contiguous float32 copy. Integer, boolean, complex and object arrays raise TypeError, so that an
integer array is never silently truncated or rounded.
Outputs are new C-contiguous float32 arrays.
"""

import operator

import numpy as np

from ._errors import KronfacError, Status
from ._lib import c_float_p

F32 = np.dtype(np.float32)
_ITEM = F32.itemsize


def as_float_array(x, name):
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array (float32, or float64 converted "
                        f"to float32), got dtype {arr.dtype}")
    return arr


def shape_error(message):
    return KronfacError(Status.KF_ERR_SHAPE, message)


def row_layout_ok(m):
    """True when the 2-D float32 array m can be handed to C as (pointer, ld) without a copy."""
    rows, cols = m.shape
    if cols > 1 and m.strides[1] != _ITEM:
        return False
    if rows > 1 and (m.strides[0] <= 0 or m.strides[0] % _ITEM or m.strides[0] < cols * _ITEM):
        return False
    return True


def leading_dim(m):
    rows, cols = m.shape
    # The stride of a single row is meaningless (numpy may report anything for it).
    return cols if rows <= 1 else m.strides[0] // _ITEM


def as_rows(arr, rows, cols):
    """(matrix, ld): arr viewed as `rows` x `cols` float32 rows for C, copied at most once."""
    if arr.dtype != F32:
        arr = np.ascontiguousarray(arr, dtype=F32)
    m = arr.reshape(rows, cols)  # a view when the layout allows, else one copy
    if not row_layout_ok(m):
        m = np.ascontiguousarray(m)
    return m, leading_dim(m)


def matrix_input(x, name):
    """A 2-D input as (array, ld)."""
    arr = as_float_array(x, name)
    if arr.ndim != 2:
        raise shape_error(f"{name} must be a 2-D array, got shape {arr.shape}")
    return as_rows(arr, arr.shape[0], arr.shape[1])


def square_input(x, name):
    m, ld = matrix_input(x, name)
    if m.shape[0] != m.shape[1]:
        raise shape_error(f"{name} must be square, got shape {m.shape}")
    return m, ld


def batch_input(x, name):
    """A batch (N, width) or (N, R, width) as (rows array, ld, N, R, width)."""
    arr = as_float_array(x, name)
    if arr.ndim == 2:
        n, r, width = arr.shape[0], 1, arr.shape[1]
    elif arr.ndim == 3:
        n, r, width = arr.shape
    else:
        raise shape_error(f"{name} must have shape (N, width) or (N, R, width), got {arr.shape}")
    m, ld = as_rows(arr, n * r, width)
    return m, ld, n, r, width


def ptr(m):
    return m.ctypes.data_as(c_float_p)


def new_matrix(rows, cols):
    return np.empty((rows, cols), dtype=F32)


def size_arg(value, name, minimum=0):
    """A non-negative integer for a size_t argument (ctypes would wrap -1 to 2**64 - 1)."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def float_arg(value, name):
    # float("0.1") would succeed: strings are refused explicitly, as a type error.
    if not isinstance(value, (str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{name} must be a real number, got {value!r}")
