"""Module-level functions mirroring the C primitives (factors, inverses, directions).

Each runs on a kf_context owned by the calling thread (the C library requires one context per
thread), created on first use. Inputs are converted as described in _arrays; results are new
float32 arrays. Errors raise KronfacError carrying the C status and kf_context_last_error.
"""

import ctypes
import threading

import numpy as np

from . import _lib
from ._arrays import (as_float_array, batch_input, float_arg, matrix_input, new_matrix, ptr,
                      shape_error, size_arg, square_input)
from ._errors import KronfacError, Status, raise_for

_SHARED_MODES = {"expand": 0, "reduce": 1}
_PRECISIONS = {"double": 0, "float": 1}


def shared_mode_value(mode, name="mode"):
    try:
        return _SHARED_MODES[mode]
    except (KeyError, TypeError):
        raise ValueError(f"{name} must be 'expand' or 'reduce', got {mode!r}") from None


def precision_value(precision):
    try:
        return _PRECISIONS[precision]
    except (KeyError, TypeError):
        raise ValueError(f"precision must be 'double' or 'float', got {precision!r}") from None


def require(name):
    """The C function `name`, or KF_ERR_UNSUPPORTED when the loaded library predates it."""
    if name in _lib.missing:
        raise KronfacError(Status.KF_ERR_UNSUPPORTED,
                           f"{name} is not in the loaded library {_lib.library_path}")
    return getattr(_lib.lib, name)


class _Context:
    """Owns one kf_context; freed with the object (its thread's local storage)."""

    def __init__(self):
        handle = _lib.kf_context_p()
        raise_for(_lib.lib.kf_context_create(None, ctypes.byref(handle)), b"",
                  "kf_context_create failed")
        self.handle = handle
        self._destroy = _lib.lib.kf_context_destroy  # kept: module globals may be gone at exit

    def call(self, name, *args):
        fn = require(name)
        status = fn(self.handle, *args)
        if status != 0:
            raise_for(status, _lib.lib.kf_context_last_error(self.handle))

    def __del__(self):
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            self._destroy(handle)


_local = threading.local()


def _ctx():
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = _Context()
    return ctx


# ---- version and build ------------------------------------------------------------------------

def version():
    """The C library's version, "MAJOR.MINOR.PATCH"."""
    return _lib.lib.kf_version().decode()


def build_info():
    """What the loaded library was compiled with (backend, SIMD level, linear algebra)."""
    return _lib.lib.kf_build_info().decode()


def has_blas():
    """True when the loaded library uses OpenBLAS, False for the portable kernels."""
    return bool(_lib.lib.kf_has_blas())


def library_path():
    """The file the binding loaded libkronfac from."""
    return _lib.library_path


# ---- factors ----------------------------------------------------------------------------------

def activation_factor(x, bias=True, mode="expand"):
    """The activation factor A of a batch, (in + bias) x (in + bias).

    x: (N, in), or (N, R, in) for a layer with a shared axis of length R.
    expand: A = 1/(N R) sum_{n,r} a~ a~^T with a~ = [a; 1] when bias;
    reduce: a is averaged over r first, then the 1 appended: A = 1/N sum_n abar~ abar~^T.
    """
    m, ld, n, r, width = batch_input(x, "x")
    bias = 1 if bias else 0
    dim = width + bias
    out = new_matrix(dim, dim)
    _ctx().call("kf_activation_factor", n, r, width, ptr(m), ld, bias,
                shared_mode_value(mode), ptr(out), max(dim, 1))
    return out


def gradient_factor(g, mode="expand", loss_terms_per_example=1, scale=1.0):
    """The gradient factor G of a batch of output gradients, out x out.

    g: (N, out) or (N, R, out), per-example gradients of the per-example loss terms (pass
    scale=N for gradients of a batch-mean loss). Each g is multiplied by scale, then
    expand: G = 1/(N R') sum_{n,r} g g^T;  reduce: G = 1/(N R') sum_n (sum_r g)(sum_r g)^T,
    with R' = loss_terms_per_example (R for a per-position loss, 1 when the shared axis is reduced
    before the loss).
    """
    m, ld, n, r, width = batch_input(g, "g")
    terms = size_arg(loss_terms_per_example, "loss_terms_per_example")
    out = new_matrix(width, width)
    _ctx().call("kf_gradient_factor", n, r, width, ptr(m), ld, shared_mode_value(mode), terms,
                float_arg(scale, "scale"), ptr(out), max(width, 1))
    return out


# ---- damping, inverses, eigendecompositions ----------------------------------------------------

def pi(A, G):
    """The trace-norm pi = sqrt((tr A / dim A) / (tr G / dim G)); 1 when a trace is <= 0 or not
    finite."""
    a, lda = square_input(A, "A")
    g, ldg = square_input(G, "G")
    value = ctypes.c_float()
    _ctx().call("kf_pi", a.shape[0], ptr(a), lda, g.shape[0], ptr(g), ldg, ctypes.byref(value))
    return value.value


def damped_inverse(F, damping, *, precision="double", return_jitter=False):
    """(sym(F) + damping I)^{-1} by Cholesky, sym(F) = (F + F^T)/2, retrying with growing jitter
    when F is not positive definite. With return_jitter=True returns (inverse, jitter added)."""
    f, ldf = square_input(F, "F")
    n = f.shape[0]
    inv = new_matrix(n, n)
    jitter = ctypes.c_float()
    _ctx().call("kf_damped_inverse", n, ptr(f), ldf, float_arg(damping, "damping"),
                precision_value(precision), ptr(inv), max(n, 1), ctypes.byref(jitter))
    return (inv, jitter.value) if return_jitter else inv


def sym_eig(F):
    """Eigendecomposition sym(F) = Q diag(w) Q^T: (w ascending, Q with eigenvectors in columns)."""
    f, ldf = square_input(F, "F")
    n = f.shape[0]
    w = np.empty(n, dtype=np.float32)
    q = new_matrix(n, n)
    _ctx().call("kf_sym_eig", n, ptr(f), ldf, ptr(w), ptr(q), max(n, 1))
    return w, q


# ---- directions -------------------------------------------------------------------------------

def _direction_inputs(grad, A):
    v, ldv = matrix_input(grad, "grad")
    a, lda = square_input(A, "A")
    if a.shape[0] != v.shape[1]:
        raise shape_error(f"A is {a.shape[0]} x {a.shape[0]} but grad has {v.shape[1]} columns "
                          "(in + 1 with the bias column)")
    return v, ldv, a, lda


def foof_direction(grad, A, damping):
    """FOOF: grad (A + damping I)^{-1}; grad is (out, in [+ 1]), A matches its columns."""
    v, ldv, a, lda = _direction_inputs(grad, A)
    out, dim_a = v.shape
    d = new_matrix(out, dim_a)
    _ctx().call("kf_foof_direction", out, dim_a, ptr(v), ldv, ptr(a), lda,
                float_arg(damping, "damping"), ptr(d), max(dim_a, 1))
    return d


def kfac_direction(grad, A, G, damping, exact=False):
    """K-FAC: (G + (gamma/pi) I)^{-1} grad (A + pi gamma I)^{-1}, gamma = sqrt(damping) (damping
    > 0); with exact=True the exactly damped mat((A (x) G + damping I)^{-1} vec(grad))."""
    v, ldv, a, lda = _direction_inputs(grad, A)
    g, ldg = square_input(G, "G")
    out, dim_a = v.shape
    if g.shape[0] != out:
        raise shape_error(f"G is {g.shape[0]} x {g.shape[0]} but grad has {out} rows")
    d = new_matrix(out, dim_a)
    damping = float_arg(damping, "damping")
    if exact:
        _ctx().call("kf_kfac_exact_direction", out, dim_a, ptr(v), ldv, ptr(a), lda, ptr(g), ldg,
                    damping, ptr(d), max(dim_a, 1))
    else:
        _ctx().call("kf_kfac_direction", out, dim_a, ptr(v), ldv, ptr(a), lda, ptr(g), ldg,
                    damping, ptr(d), max(dim_a, 1), None)
    return d


def kronecker_apply(grad, A_inv, G_inv=None):
    """G_inv grad A_inv with precomputed (e.g. cached) inverses; G_inv None means identity."""
    v, ldv, a, lda = _direction_inputs(grad, A_inv)
    out, dim_a = v.shape
    if G_inv is None:
        g, ldg, gp = None, 0, None
    else:
        g, ldg = square_input(G_inv, "G_inv")
        if g.shape[0] != out:
            raise shape_error(f"G_inv is {g.shape[0]} x {g.shape[0]} but grad has {out} rows")
        gp = ptr(g)
    d = new_matrix(out, dim_a)
    _ctx().call("kf_kronecker_apply", out, dim_a, ptr(v), ldv, gp, ldg, ptr(a), lda, ptr(d),
                max(dim_a, 1))
    return d


def eigenbasis_apply(grad, eig_A, eig_G, damping, scaling=None):
    """Q_G [(Q_G^T grad Q_A) / (S + damping)] Q_A^T with eig_A = (alpha, Q_A) and eig_G =
    (beta, Q_G) as returned by sym_eig; S = beta alpha^T (K-FAC with exact damping) or the given
    (out, in [+ 1]) scaling (EKFAC)."""
    v, ldv = matrix_input(grad, "grad")
    out, dim_a = v.shape
    w_a, q_a, ldqa = _eig_input(eig_A, "eig_A", dim_a)
    w_g, q_g, ldqg = _eig_input(eig_G, "eig_G", out)
    if scaling is None:
        s, lds, sp = None, 0, None
    else:
        s, lds = matrix_input(scaling, "scaling")
        if s.shape != v.shape:
            raise shape_error(f"scaling has shape {s.shape}, grad {v.shape}")
        sp = ptr(s)
    d = new_matrix(out, dim_a)
    _ctx().call("kf_eigenbasis_apply", out, dim_a, ptr(v), ldv, ptr(q_g), ldqg, ptr(w_g),
                ptr(q_a), ldqa, ptr(w_a), sp, lds, float_arg(damping, "damping"), ptr(d),
                max(dim_a, 1))
    return d


def _eig_input(pair, name, dim):
    try:
        w, q = pair
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (eigenvalues, eigenvectors)") from None
    w = np.ascontiguousarray(as_float_array(w, name + " eigenvalues"), dtype=np.float32)
    q, ldq = square_input(q, name + " eigenvectors")
    if w.shape != (dim,) or q.shape[0] != dim:
        raise shape_error(f"{name} must hold {dim} eigenvalues and {dim} x {dim} eigenvectors, "
                          f"got {w.shape} and {q.shape}")
    return w, q, ldq


_ACTIVATIONS = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3}


def _activation_value(kind):
    try:
        return _ACTIVATIONS[kind]
    except (KeyError, TypeError):
        raise ValueError("kind must be 'identity', 'relu', 'tanh' or 'sigmoid', "
                         f"got {kind!r}") from None


def activate(x, kind):
    """f(x) element-wise (kf_activation_forward) for kind 'identity', 'relu', 'tanh' or
    'sigmoid': a new float32 array of x's shape. NaN stays NaN."""
    value = _activation_value(kind)
    xa = np.ascontiguousarray(as_float_array(x, "x"), dtype=np.float32)
    y = np.empty_like(xa)
    if xa.size:
        _ctx().call("kf_activation_forward", value, xa.size, ptr(xa), ptr(y))
    return y


def activation_gradient(y, dy, kind):
    """f'(x) * dy from the outputs y = f(x) (kf_activation_backward): a new float32 array."""
    value = _activation_value(kind)
    ya = np.ascontiguousarray(as_float_array(y, "y"), dtype=np.float32)
    dya = np.ascontiguousarray(as_float_array(dy, "dy"), dtype=np.float32)
    if ya.shape != dya.shape:
        raise shape_error(f"y has shape {ya.shape} but dy has {dya.shape}")
    dx = np.empty_like(dya)
    if dya.size:
        _ctx().call("kf_activation_backward", value, dya.size, ptr(ya), ptr(dya), ptr(dx))
    return dx
