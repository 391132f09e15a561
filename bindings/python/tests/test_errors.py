"""Bad input to the module-level functions: the right exception, the C message, inputs untouched.

The rule (documented in kronfac/__init__.py): KronfacError for what the C library rejects and for
shape problems (status KF_ERR_SHAPE); TypeError for a wrong dtype or Python type; ValueError for
an unknown option string or a negative size.
"""

import numpy as np
import pytest

import kronfac
from helpers import spd
from kronfac import KronfacError


def expect(name, fn, *args, **kwargs):
    with pytest.raises(KronfacError) as e:
        fn(*args, **kwargs)
    assert e.value.name == name, e.value
    assert e.value.status == getattr(kronfac.Status, name)
    assert str(e.value).startswith(name + ": ")
    return e.value


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, object])
def test_non_floating_dtypes_are_type_errors(dtype):
    x = np.ones((4, 3), dtype=dtype)
    with pytest.raises(TypeError):
        kronfac.activation_factor(x)
    with pytest.raises(TypeError):
        kronfac.gradient_factor(x)
    with pytest.raises(TypeError):
        kronfac.foof_direction(x, np.eye(3), 0.1)
    with pytest.raises(TypeError):
        kronfac.damped_inverse(np.ones((3, 3), dtype=dtype), 0.1)


def test_non_numbers_are_type_errors():
    with pytest.raises(TypeError):
        kronfac.foof_direction(np.ones((2, 3)), np.eye(3), "0.1")
    with pytest.raises(TypeError):
        kronfac.gradient_factor(np.ones((2, 3)), scale=None)
    with pytest.raises(TypeError):
        kronfac.gradient_factor(np.ones((2, 3)), loss_terms_per_example=1.5)
    with pytest.raises(TypeError):
        kronfac.activation_factor("not an array")


def test_unknown_options_and_negative_sizes_are_value_errors():
    x = np.ones((4, 3))
    with pytest.raises(ValueError):
        kronfac.activation_factor(x, mode="sideways")
    with pytest.raises(ValueError):
        kronfac.gradient_factor(x, mode=1)
    with pytest.raises(ValueError):
        kronfac.gradient_factor(x, loss_terms_per_example=-1)  # ctypes would wrap it to 2**64-1
    with pytest.raises(ValueError):
        kronfac.damped_inverse(np.eye(3), 0.1, precision="half")


@pytest.mark.parametrize("shape", [(3,), (2, 2, 2, 2), ()])
def test_wrong_rank(shape):
    x = np.ones(shape)
    expect("KF_ERR_SHAPE", kronfac.activation_factor, x)
    expect("KF_ERR_SHAPE", kronfac.gradient_factor, x)
    expect("KF_ERR_SHAPE", kronfac.damped_inverse, x, 0.1)
    expect("KF_ERR_SHAPE", kronfac.foof_direction, x, np.eye(3), 0.1)


def test_mismatched_shapes(rng):
    v, a, g = rng.standard_normal((3, 5)), spd(rng, 5), spd(rng, 3)
    e = expect("KF_ERR_SHAPE", kronfac.foof_direction, v, spd(rng, 4), 0.1)
    assert "grad" in e.message
    expect("KF_ERR_SHAPE", kronfac.foof_direction, v, np.ones((5, 4)), 0.1)  # not square
    expect("KF_ERR_SHAPE", kronfac.kfac_direction, v, a, spd(rng, 4), 0.1)
    expect("KF_ERR_SHAPE", kronfac.kfac_direction, v, spd(rng, 3), g, 0.1, exact=True)
    expect("KF_ERR_SHAPE", kronfac.pi, np.ones((2, 3)), g)
    expect("KF_ERR_SHAPE", kronfac.sym_eig, np.ones((2, 3)))
    expect("KF_ERR_SHAPE", kronfac.kronecker_apply, v, a, np.eye(4))
    eig_a, eig_g = kronfac.sym_eig(a), kronfac.sym_eig(g)
    expect("KF_ERR_SHAPE", kronfac.eigenbasis_apply, v, eig_g, eig_g, 0.1)
    expect("KF_ERR_SHAPE", kronfac.eigenbasis_apply, v, eig_a, eig_g, 0.1, scaling=np.ones((3, 4)))


def test_empty_batches_are_rejected_by_the_library():
    e = expect("KF_ERR_SHAPE", kronfac.activation_factor, np.ones((0, 3)))
    assert "kf_activation_factor" in e.message  # the C message names the function
    expect("KF_ERR_SHAPE", kronfac.activation_factor, np.ones((4, 0)), bias=False)
    expect("KF_ERR_SHAPE", kronfac.gradient_factor, np.ones((0, 2, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_leave_inputs_untouched(rng, bad):
    x = rng.standard_normal((5, 3))
    x[2, 1] = bad
    x32 = x.astype(np.float32)  # passed without a copy: the library reads the caller's memory
    snapshots = [x.copy(), x32.copy()]
    for arr in (x, x32):
        e = expect("KF_ERR_NON_FINITE", kronfac.activation_factor, arr)
        assert "x" in e.message
        expect("KF_ERR_NON_FINITE", kronfac.gradient_factor, arr)
    f = spd(rng, 3).astype(np.float32)
    f[0, 1] = bad
    f_copy = f.copy()
    expect("KF_ERR_NON_FINITE", kronfac.damped_inverse, f, 0.1)
    expect("KF_ERR_NON_FINITE", kronfac.sym_eig, f)
    v = np.ones((2, 3), np.float32)
    expect("KF_ERR_NON_FINITE", kronfac.foof_direction, v, f, 0.1)
    expect("KF_ERR_NON_FINITE", kronfac.kfac_direction, v, f, np.eye(2), 0.1)
    expect("KF_ERR_NON_FINITE", kronfac.kfac_direction, x32[1:3], np.eye(3), np.eye(2), 0.1)
    for arr, snap in zip((x, x32), snapshots):
        np.testing.assert_array_equal(arr, snap)
    np.testing.assert_array_equal(f, f_copy)
    np.testing.assert_array_equal(v, np.ones((2, 3)))


def test_out_of_range_values(rng):
    a, g, v = spd(rng, 3), spd(rng, 2), np.ones((2, 3))
    e = expect("KF_ERR_INVALID_ARGUMENT", kronfac.foof_direction, v, a, -0.1)
    assert "damping" in e.message
    expect("KF_ERR_INVALID_ARGUMENT", kronfac.foof_direction, v, a, float("nan"))
    expect("KF_ERR_INVALID_ARGUMENT", kronfac.kfac_direction, v, a, g, 0.0)  # needs damping > 0
    expect("KF_ERR_INVALID_ARGUMENT", kronfac.kfac_direction, v, a, g, 0.0, exact=True)
    expect("KF_ERR_INVALID_ARGUMENT", kronfac.damped_inverse, a, -1.0)
    expect("KF_ERR_INVALID_ARGUMENT", kronfac.gradient_factor, np.ones((2, 3)),
           loss_terms_per_example=0)


def test_numerical_failure_has_its_own_status():
    # -I is not positive definite and the jitter chain (up to 0.1 of the unit) cannot fix it.
    e = expect("KF_ERR_NOT_POSITIVE_DEFINITE", kronfac.damped_inverse, -np.eye(3), 0.0)
    assert e.message


def test_error_is_an_exception_with_fields():
    err = KronfacError(kronfac.Status.KF_ERR_IO, "disk on fire")
    assert isinstance(err, Exception)
    assert (err.status, err.name, err.message) == (kronfac.Status.KF_ERR_IO, "KF_ERR_IO",
                                                   "disk on fire")
    # Without a message the C library's description is used.
    assert KronfacError(-3).message == kronfac.status_string(-3)
