"""Kronfac for Python: Kronecker-factored preconditioning (FOOF, K-FAC, EKFAC) of numpy gradients.

A pure ctypes binding of the C library libkronfac (see README.md beside this package for how the
library is found). Two levels:

* functions mirroring the C primitives, for preconditioning your own model's gradients:
  activation_factor, gradient_factor, pi, damped_inverse, sym_eig, foof_direction,
  kfac_direction, kronecker_apply, eigenbasis_apply;
* 2-D convolutions (NCHW) as dense layers over patches: im2col, col2im, conv2d, conv2d_backward,
  conv2d_output_rows, conv2d_output_size;
* Optimizer, the stateful optimizer (factors, moving averages, inverses, momentum, checkpoints),
  which updates your numpy parameters in place.

Conventions: matrices are numpy arrays; float32 with contiguous rows is passed without a copy,
float64 (and other float dtypes or layouts) is converted once to float32. Results are float32.
Gradients and directions of a dense layer are shaped (out, in + 1) when the bias column is
included (the bias gradient as the last column).

Errors: KronfacError (status code, C status name, message) for everything the C library rejects
and for shape problems the binding detects itself (status KF_ERR_SHAPE); TypeError for values of
the wrong Python or numpy type (integer or complex arrays, a string where a number belongs);
ValueError for an unknown option string or a negative size.
"""

from ._conv import (col2im, conv2d, conv2d_backward, conv2d_output_rows, conv2d_output_size,
                    im2col)
from ._errors import KronfacError, Status, status_string
from ._optimizer import ALGORITHMS, Optimizer
from ._primitives import (activate, activation_factor, activation_gradient, build_info, damped_inverse, eigenbasis_apply,
                          foof_direction, gradient_factor, has_blas, kfac_direction,
                          kronecker_apply, library_path, pi, sym_eig, version)

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "KronfacError",
    "Optimizer",
    "Status",
    "activate",
    "activation_factor",
    "activation_gradient",
    "build_info",
    "col2im",
    "conv2d",
    "conv2d_backward",
    "conv2d_output_rows",
    "conv2d_output_size",
    "damped_inverse",
    "eigenbasis_apply",
    "foof_direction",
    "gradient_factor",
    "has_blas",
    "im2col",
    "kfac_direction",
    "kronecker_apply",
    "library_path",
    "pi",
    "status_string",
    "sym_eig",
    "version",
]
