"""2-D convolutions in NCHW (the C library's "Convolutions" section) for numpy arrays.

A convolution is a dense layer shared over its R = OH * OW output locations: im2col gives its
inputs as N * R patch rows of width C_in * KH * KW, and conv2d_output_rows gives its output
gradients as N * R rows of width C_out, the two layouts activation_factor and gradient_factor take
(reshaped to (N, R, width)) and the Optimizer observes. Weights are shaped (C_out, C_in, KH, KW),
whose row-major reshape to (C_out, C_in * KH * KW) is the dense layer's W.

kernel, stride, padding and dilation are an int (both axes) or a pair (height, width).
"""

import ctypes

import numpy as np

from . import _lib
from ._arrays import F32, as_float_array, as_rows, new_matrix, ptr, shape_error, size_arg
from ._primitives import _ctx, require


def _pair(value, name):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}")
        return size_arg(value[0], name), size_arg(value[1], name)
    v = size_arg(value, name)
    return v, v


def _tensor(x, name, ndim=4):
    arr = as_float_array(x, name)
    if arr.ndim != ndim:
        raise shape_error(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=F32)


def _shape(n, c, h, w, c_out, kernel, stride, padding, dilation):
    kh, kw = _pair(kernel, "kernel")
    s = _lib.kf_conv2d_shape()
    require("kf_conv2d_shape_init")(ctypes.byref(s), n, c, h, w, c_out, kh, kw)
    s.stride_h, s.stride_w = _pair(stride, "stride")
    s.pad_h, s.pad_w = _pair(padding, "padding")
    s.dilation_h, s.dilation_w = _pair(dilation, "dilation")
    return s


def _output_size(s):
    oh, ow = ctypes.c_size_t(), ctypes.c_size_t()
    _ctx().call("kf_conv2d_output_size", ctypes.byref(s), ctypes.byref(oh), ctypes.byref(ow))
    return oh.value, ow.value


def conv2d_output_size(input_shape, kernel, stride=1, padding=0, dilation=1):
    """(OH, OW) of a convolution of an input of shape (N, C_in, H, W)."""
    n, c, h, w = (size_arg(v, "input_shape") for v in input_shape)
    return _output_size(_shape(n, c, h, w, 1, kernel, stride, padding, dilation))


def im2col(x, kernel, stride=1, padding=0, dilation=1):
    """The patch matrix of x (N, C_in, H, W): (N * OH * OW, C_in * KH * KW), row
    n * OH * OW + oh * OW + ow, column c * KH * KW + kh * KW + kw, zeros in the padding."""
    xa = _tensor(x, "x")
    s = _shape(*xa.shape, 1, kernel, stride, padding, dilation)
    oh, ow = _output_size(s)
    k = s.in_channels * s.kernel_h * s.kernel_w
    col = new_matrix(s.batch * oh * ow, k)
    _ctx().call("kf_im2col", ctypes.byref(s), ptr(xa), ptr(col), max(k, 1))
    return col


def col2im(col, input_shape, kernel, stride=1, padding=0, dilation=1):
    """The adjoint of im2col: patch rows (N * OH * OW, C_in * KH * KW) summed back onto an array
    of input_shape (N, C_in, H, W)."""
    n, c, h, w = (size_arg(v, "input_shape") for v in input_shape)
    s = _shape(n, c, h, w, 1, kernel, stride, padding, dilation)
    oh, ow = _output_size(s)
    k = c * s.kernel_h * s.kernel_w
    arr = as_float_array(col, "col")
    if arr.shape != (n * oh * ow, k):
        raise shape_error(f"col must have shape {(n * oh * ow, k)}, got {arr.shape}")
    m, ld = as_rows(arr, n * oh * ow, k)
    dx = np.empty((n, c, h, w), dtype=F32)
    _ctx().call("kf_col2im", ctypes.byref(s), ptr(m), ld, ptr(dx))
    return dx


def _weight(w, c_in):
    wa = as_float_array(w, "w")
    if wa.ndim != 4 or wa.shape[1] != c_in:
        raise shape_error(f"w must have shape (C_out, {c_in}, KH, KW), got {wa.shape}")
    c_out, _, kh, kw = wa.shape
    m, ld = as_rows(wa, c_out, c_in * kh * kw)
    return m, ld, c_out, (kh, kw)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1):
    """The convolution of x (N, C_in, H, W) with w (C_out, C_in, KH, KW) plus the bias b (C_out)
    when given: (N, C_out, OH, OW)."""
    xa = _tensor(x, "x")
    wm, ldw, c_out, kernel = _weight(w, xa.shape[1])
    s = _shape(*xa.shape, c_out, kernel, stride, padding, dilation)
    oh, ow = _output_size(s)
    bp = None
    if b is not None:
        ba = np.ascontiguousarray(as_float_array(b, "b"), dtype=F32)
        if ba.shape != (c_out,):
            raise shape_error(f"b must have shape ({c_out},), got {ba.shape}")
        bp = ptr(ba)
    y = np.empty((s.batch, c_out, oh, ow), dtype=F32)
    _ctx().call("kf_conv2d_forward", ctypes.byref(s), ptr(xa), ptr(wm), ldw, bp, None, 0, ptr(y))
    return y


def conv2d_backward(x, w, dy, stride=1, padding=0, dilation=1, bias=True, input_grad=True):
    """Gradients from dy = dL/dy (N, C_out, OH, OW) of conv2d(x, w, b, ...): (dw, db, dx) with dw
    shaped like w, db (C_out,) or None when bias is False, dx shaped like x or None when
    input_grad is False."""
    xa = _tensor(x, "x")
    wm, ldw, c_out, kernel = _weight(w, xa.shape[1])
    s = _shape(*xa.shape, c_out, kernel, stride, padding, dilation)
    oh, ow = _output_size(s)
    dya = _tensor(dy, "dy")
    if dya.shape != (s.batch, c_out, oh, ow):
        raise shape_error(f"dy must have shape {(s.batch, c_out, oh, ow)}, got {dya.shape}")
    k = wm.shape[1]
    dw = new_matrix(c_out, k)
    db = np.empty(c_out, dtype=F32) if bias else None
    dx = np.empty(xa.shape, dtype=F32) if input_grad else None
    _ctx().call("kf_conv2d_backward", ctypes.byref(s), ptr(xa), None, 0, ptr(dya), ptr(wm), ldw,
                ptr(dw), max(k, 1), None if db is None else ptr(db),
                None if dx is None else ptr(dx))
    return dw.reshape(np.shape(w)), db, dx


def conv2d_output_rows(dy):
    """The rows layout of an output-side array dy (N, C_out, OH, OW): (N * OH * OW, C_out), row
    n * OH * OW + oh * OW + ow, as gradient_factor and the Optimizer take it."""
    dya = _tensor(dy, "dy")
    n, c_out, oh, ow = dya.shape
    # A 1 x 1 convolution of an OH x OW input has exactly these output locations.
    s = _shape(n, 1, oh, ow, c_out, 1, 1, 0, 1)
    g = new_matrix(n * oh * ow, c_out)
    _ctx().call("kf_conv2d_output_rows", ctypes.byref(s), ptr(dya), ptr(g), max(c_out, 1))
    return g
