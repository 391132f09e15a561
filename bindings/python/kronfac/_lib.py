"""Finding and loading libkronfac, and the ctypes signature of every function in kronfac.h.

Lookup order (the first that exists wins):
  1. the file named by the environment variable KRONFAC_LIBRARY (an error if it does not load);
  2. the package folder (a libkronfac copied next to this file);
  3. the build folder of the source tree: <repo>/build/blas/libkronfac.so, found relative to this
     file when the package is imported from bindings/python/ in a checkout;
  4. the system: ctypes.util.find_library("kronfac").
"""

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

# Opaque handles are passed around as void pointers.
kf_context_p = ctypes.c_void_p
kf_optimizer_p = ctypes.c_void_p
c_float_p = ctypes.POINTER(ctypes.c_float)
c_double_p = ctypes.POINTER(ctypes.c_double)
c_size_p = ctypes.POINTER(ctypes.c_size_t)
# C enums (kf_status, kf_shared_mode, kf_precision, ...) are int-sized and may be negative.
c_enum = ctypes.c_int


class kf_allocator(ctypes.Structure):
    _fields_ = [
        ("alloc", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)),
        ("free", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)),
        ("ctx", ctypes.c_void_p),
    ]


class kf_optimizer_params(ctypes.Structure):
    _fields_ = [
        ("algorithm", c_enum),
        ("learning_rate", ctypes.c_float),
        ("momentum", ctypes.c_float),
        ("weight_decay", ctypes.c_float),
        ("damping", ctypes.c_float),
        ("factor_decay", ctypes.c_float),
        ("stats_interval", ctypes.c_uint32),
        ("inverse_interval", ctypes.c_uint32),
        ("inverse_precision", c_enum),
        ("kl_clip", ctypes.c_float),
        ("adam_beta1", ctypes.c_float),
        ("adam_beta2", ctypes.c_float),
        ("adam_epsilon", ctypes.c_float),
        ("stats_subsample", ctypes.c_uint32),
    ]


class kf_layer_params(ctypes.Structure):
    _fields_ = [
        ("out", ctypes.c_size_t),
        ("in_", ctypes.c_size_t),
        ("bias", ctypes.c_int),
        ("shared", ctypes.c_size_t),
        ("shared_mode", c_enum),
        ("loss_terms_per_example", ctypes.c_size_t),
        ("algorithm", c_enum),
        ("uses", ctypes.c_size_t),
    ]


class kf_layer_tensors(ctypes.Structure):
    _fields_ = [
        ("weight", c_float_p),
        ("ld_weight", ctypes.c_size_t),
        ("bias", c_float_p),
        ("grad_weight", c_float_p),
        ("ld_grad_weight", ctypes.c_size_t),
        ("grad_bias", c_float_p),
    ]


class kf_conv2d_shape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "batch", "in_channels", "height", "width", "out_channels", "kernel_h", "kernel_w",
        "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w")]


class kf_layer_batch(ctypes.Structure):
    _fields_ = [
        ("weight", c_float_p),
        ("ld_weight", ctypes.c_size_t),
        ("bias", c_float_p),
        ("x", c_float_p),
        ("ldx", ctypes.c_size_t),
        ("gs", c_float_p),
        ("ldgs", ctypes.c_size_t),
    ]


_S = ctypes.c_size_t
_F = ctypes.c_float
_FP = c_float_p
_CTX = kf_context_p
_OPT = kf_optimizer_p
_ST = c_enum  # kf_status

# name: (restype, argtypes). Every KF_API function of kronfac.h, in the header's order.
FUNCTIONS = {
    # status, version, build information
    "kf_status_string": (ctypes.c_char_p, [c_enum]),
    "kf_version": (ctypes.c_char_p, []),
    "kf_version_major": (ctypes.c_int, []),
    "kf_version_minor": (ctypes.c_int, []),
    "kf_version_patch": (ctypes.c_int, []),
    "kf_build_info": (ctypes.c_char_p, []),
    "kf_has_blas": (ctypes.c_int, []),
    "kf_blas_set_threads": (_ST, [ctypes.c_int]),
    # context
    "kf_context_create": (_ST, [ctypes.POINTER(kf_allocator), ctypes.POINTER(_CTX)]),
    "kf_context_destroy": (None, [_CTX]),
    "kf_context_last_error": (ctypes.c_char_p, [_CTX]),
    "kf_context_memory_bytes": (_ST, [_CTX, c_size_p]),
    "kf_context_reserve": (_ST, [_CTX, _S, _S]),
    # dense kernels
    "kf_gemm": (_ST, [_CTX, c_enum, c_enum, _S, _S, _S, _F, _FP, _S, _FP, _S, _F, _FP, _S]),
    "kf_syrk": (_ST, [_CTX, _S, _S, _F, _FP, _S, _F, _FP, _S]),
    "kf_scale": (_ST, [_CTX, _S, _S, _F, _FP, _S]),
    "kf_axpby": (_ST, [_CTX, _S, _S, _F, _FP, _S, _F, _FP, _S]),
    "kf_trace": (_ST, [_CTX, _S, _FP, _S, c_double_p]),
    # factors
    "kf_activation_factor": (_ST, [_CTX, _S, _S, _S, _FP, _S, ctypes.c_int, c_enum, _FP, _S]),
    "kf_gradient_factor": (_ST, [_CTX, _S, _S, _S, _FP, _S, c_enum, _S, _F, _FP, _S]),
    "kf_factor_ema_update": (_ST, [_CTX, _S, _F, _FP, _S, _FP, _S, c_double_p]),
    # damping, inverses, eigendecompositions
    "kf_pi": (_ST, [_CTX, _S, _FP, _S, _S, _FP, _S, _FP]),
    "kf_damped_inverse": (_ST, [_CTX, _S, _FP, _S, _F, c_enum, _FP, _S, _FP]),
    "kf_sym_eig": (_ST, [_CTX, _S, _FP, _S, _FP, _FP, _S]),
    # directions
    "kf_kronecker_apply": (_ST, [_CTX, _S, _S, _FP, _S, _FP, _S, _FP, _S, _FP, _S]),
    "kf_foof_direction": (_ST, [_CTX, _S, _S, _FP, _S, _FP, _S, _F, _FP, _S]),
    "kf_kfac_direction": (_ST, [_CTX, _S, _S, _FP, _S, _FP, _S, _FP, _S, _F, _FP, _S, _FP]),
    "kf_eigenbasis_apply": (_ST, [_CTX, _S, _S, _FP, _S, _FP, _S, _FP, _FP, _S, _FP,
                                  _FP, _S, _F, _FP, _S]),
    "kf_kfac_exact_direction": (_ST, [_CTX, _S, _S, _FP, _S, _FP, _S, _FP, _S, _F, _FP, _S]),
    # activations
    "kf_activation_forward": (_ST, [_CTX, c_enum, _S, _FP, _FP]),
    "kf_activation_backward": (_ST, [_CTX, c_enum, _S, _FP, _FP, _FP]),
    # convolutions
    "kf_conv2d_shape_init": (_ST, [ctypes.POINTER(kf_conv2d_shape), _S, _S, _S, _S, _S, _S, _S]),
    "kf_conv2d_output_size": (_ST, [_CTX, ctypes.POINTER(kf_conv2d_shape), c_size_p, c_size_p]),
    "kf_im2col": (_ST, [_CTX, ctypes.POINTER(kf_conv2d_shape), _FP, _FP, _S]),
    "kf_col2im": (_ST, [_CTX, ctypes.POINTER(kf_conv2d_shape), _FP, _S, _FP]),
    "kf_conv2d_forward": (_ST, [_CTX, ctypes.POINTER(kf_conv2d_shape), _FP, _FP, _S, _FP, _FP, _S,
                                _FP]),
    "kf_conv2d_backward": (_ST, [_CTX, ctypes.POINTER(kf_conv2d_shape), _FP, _FP, _S, _FP, _FP, _S,
                                 _FP, _S, _FP, _FP]),
    "kf_conv2d_output_rows": (_ST, [_CTX, ctypes.POINTER(kf_conv2d_shape), _FP, _FP, _S]),
    # optimizer
    "kf_algorithm_name": (ctypes.c_char_p, [c_enum]),
    "kf_optimizer_params_init": (_ST, [ctypes.POINTER(kf_optimizer_params), c_enum]),
    "kf_optimizer_create": (_ST, [ctypes.POINTER(kf_optimizer_params),
                                  ctypes.POINTER(kf_allocator), ctypes.POINTER(_OPT)]),
    "kf_optimizer_destroy": (None, [_OPT]),
    "kf_optimizer_last_error": (ctypes.c_char_p, [_OPT]),
    "kf_optimizer_get_params": (_ST, [_OPT, ctypes.POINTER(kf_optimizer_params)]),
    "kf_layer_params_init": (_ST, [ctypes.POINTER(kf_layer_params), _S, _S]),
    "kf_optimizer_add_layer": (_ST, [_OPT, ctypes.POINTER(kf_layer_params), c_size_p]),
    "kf_optimizer_needs_statistics": (_ST, [_OPT, ctypes.POINTER(ctypes.c_int)]),
    "kf_optimizer_observe_activations": (_ST, [_OPT, _S, _S, _FP, _S]),
    "kf_optimizer_observe_gradients": (_ST, [_OPT, _S, _S, _FP, _S, _F]),
    "kf_optimizer_reserve_batch": (_ST, [_OPT, _S]),
    "kf_optimizer_step": (_ST, [_OPT, ctypes.POINTER(kf_layer_tensors), _S]),
    "kf_optimizer_set_learning_rate": (_ST, [_OPT, _F]),
    "kf_optimizer_set_damping": (_ST, [_OPT, _F]),
    "kf_optimizer_layer_count": (_ST, [_OPT, c_size_p]),
    "kf_optimizer_step_count": (_ST, [_OPT, ctypes.POINTER(ctypes.c_uint64)]),
    "kf_optimizer_inverse_count": (_ST, [_OPT, _S, ctypes.POINTER(ctypes.c_uint64)]),
    "kf_optimizer_layer_pi": (_ST, [_OPT, _S, _FP]),
    "kf_optimizer_layer_damping": (_ST, [_OPT, _S, _FP]),
    "kf_optimizer_layer_algorithm": (_ST, [_OPT, _S, ctypes.POINTER(c_enum)]),
    "kf_optimizer_layer_factor": (_ST, [_OPT, _S, c_enum, _FP, _S]),
    "kf_optimizer_memory_bytes": (_ST, [_OPT, c_size_p]),
    "kf_optimizer_checkpoint_size": (_ST, [_OPT, c_size_p]),
    "kf_optimizer_save": (_ST, [_OPT, ctypes.c_void_p, _S, c_size_p]),
    "kf_optimizer_restore": (_ST, [_OPT, ctypes.c_void_p, _S]),
    "kf_optimizer_create_from_checkpoint": (_ST, [ctypes.c_void_p, _S,
                                                  ctypes.POINTER(kf_allocator),
                                                  ctypes.POINTER(_OPT)]),
    "kf_optimizer_save_file": (_ST, [_OPT, ctypes.c_char_p]),
    "kf_optimizer_restore_file": (_ST, [_OPT, ctypes.c_char_p]),
    "kf_optimizer_create_from_file": (_ST, [ctypes.c_char_p, ctypes.POINTER(kf_allocator),
                                            ctypes.POINTER(_OPT)]),
    # A loaded optimizer's layer shapes, against which numpy arrays are checked.
    "kf_optimizer_layer_params": (_ST, [_OPT, _S, ctypes.POINTER(kf_layer_params)]),
    "kf_optimizer_params_validate": (_ST, [ctypes.POINTER(kf_optimizer_params), ctypes.c_char_p,
                                           _S]),
    "kf_optimizer_step_batch": (_ST, [_OPT, _S, ctypes.POINTER(kf_layer_batch), _S]),
}


def _library_file_names():
    if sys.platform == "darwin":
        return ["libkronfac.dylib"]
    if os.name == "nt":
        return ["kronfac.dll", "libkronfac.dll"]
    return ["libkronfac.so"]


def _candidates():
    """Yields (where, path) in lookup order; the environment variable is handled by the caller."""
    here = Path(__file__).resolve().parent
    for name in _library_file_names():
        yield "package folder", here / name
    # bindings/python/kronfac/_lib.py -> the repository root is three folders up.
    repo = here.parent.parent.parent
    for name in _library_file_names():
        yield "build folder", repo / "build" / "blas" / name


def _load():
    explicit = os.environ.get("KRONFAC_LIBRARY")
    if explicit:
        # An explicit choice that fails must not silently fall back to another copy.
        try:
            return ctypes.CDLL(explicit), explicit
        except OSError as e:
            raise ImportError(f"kronfac: KRONFAC_LIBRARY={explicit!r} could not be loaded: "
                              f"{e}") from e
    tried = ["KRONFAC_LIBRARY (not set)"]
    for where, path in _candidates():
        tried.append(f"{where}: {path}")
        if path.is_file():
            return ctypes.CDLL(str(path)), str(path)
    found = ctypes.util.find_library("kronfac")
    tried.append(f"system: find_library('kronfac') -> {found}")
    if found:
        return ctypes.CDLL(found), found
    raise ImportError("kronfac: libkronfac not found; tried\n  " + "\n  ".join(tried)
                      + "\nBuild it (cmake) and set KRONFAC_LIBRARY to the shared library.")


lib, library_path = _load()

# Functions this library lacks (an older build): calling them raises KF_ERR_UNSUPPORTED instead of
# failing at import, so the primitives stay usable.
missing = set()
for _name, (_restype, _argtypes) in FUNCTIONS.items():
    try:
        _fn = getattr(lib, _name)
    except AttributeError:
        missing.add(_name)
        continue
    _fn.restype = _restype
    _fn.argtypes = _argtypes
