"""Every module-level function against a float64 numpy reference."""

import re
from pathlib import Path

import numpy as np
import pytest

import kronfac
from helpers import assert_close, spd, with_ones


def expand_a(x, bias):
    rows = x.reshape(-1, x.shape[-1])
    if bias:
        rows = with_ones(rows)
    return rows.T @ rows / rows.shape[0]


def reduce_a(x, bias):
    mean = x.mean(axis=1)  # average over the shared axis, then append the 1
    if bias:
        mean = with_ones(mean)
    return mean.T @ mean / mean.shape[0]


# ---- activation factor -------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_activation_factor_dense(rng, bias):
    x = rng.standard_normal((7, 4))
    a = kronfac.activation_factor(x, bias=bias)
    assert a.dtype == np.float32 and a.shape == (4 + bias, 4 + bias)
    assert_close(a, expand_a(x, bias))
    if bias:
        # The bias entry of A is the mean of 1*1 and the last row the mean activation.
        assert a[-1, -1] == pytest.approx(1.0)
        assert_close(a[-1, :-1], x.mean(axis=0))


@pytest.mark.parametrize("bias", [True, False])
def test_activation_factor_expand_shared(rng, bias):
    x = rng.standard_normal((5, 3, 4))
    assert_close(kronfac.activation_factor(x, bias=bias, mode="expand"), expand_a(x, bias))


@pytest.mark.parametrize("bias", [True, False])
def test_activation_factor_reduce_shared(rng, bias):
    x = rng.standard_normal((5, 3, 4)) + 1.0
    a = kronfac.activation_factor(x, bias=bias, mode="reduce")
    assert_close(a, reduce_a(x, bias))
    # The two modes differ for R > 1 (the reduce factor loses the within-example spread).
    assert not np.allclose(a, expand_a(x, bias), rtol=1e-3)
    if bias:
        assert a[-1, -1] == pytest.approx(1.0)


def test_activation_factor_modes_agree_without_shared_axis(rng):
    x = rng.standard_normal((6, 3))
    e = kronfac.activation_factor(x, mode="expand")
    r = kronfac.activation_factor(x, mode="reduce")
    assert_close(r, e)
    # R = 1 given as a 3-D array is the same batch.
    assert_close(kronfac.activation_factor(x[:, None, :], mode="reduce"), e)


def test_layouts_and_dtypes_give_the_same_result(rng):
    wide = rng.standard_normal((6, 9)).astype(np.float32)
    base = kronfac.activation_factor(np.ascontiguousarray(wide[:, :5]))
    variants = {
        "row-strided view (passed with ld, no copy)": wide[:, :5],
        "float64": wide[:, :5].astype(np.float64),
        "Fortran order": np.asfortranarray(wide[:, :5]),
        "reversed rows": wide[::-1, :5],
        "nested list": wide[:, :5].tolist(),
    }
    for name, x in variants.items():
        assert np.allclose(kronfac.activation_factor(x), base, rtol=1e-6, atol=1e-6), name
    # A column-strided view (every other column) is copied once and equals its dense copy.
    cols = wide[:, ::2]
    assert_close(kronfac.activation_factor(cols), kronfac.activation_factor(cols.copy()), 1e-7)
    # A 3-D view whose rows are not evenly spaced is copied too.
    x3 = rng.standard_normal((4, 3, 8)).astype(np.float32)[:, :, :5]
    assert_close(kronfac.activation_factor(x3), kronfac.activation_factor(x3.copy()), 1e-7)


# ---- gradient factor ---------------------------------------------------------------------------

def test_gradient_factor_dense(rng):
    g = rng.standard_normal((8, 3))
    assert_close(kronfac.gradient_factor(g), g.T @ g / 8)


@pytest.mark.parametrize("terms", [1, 3])
def test_gradient_factor_expand_shared(rng, terms):
    g = rng.standard_normal((4, 3, 5))
    rows = g.reshape(-1, 5)
    ref = rows.T @ rows / (4 * terms)
    assert_close(kronfac.gradient_factor(g, mode="expand", loss_terms_per_example=terms), ref)


def test_gradient_factor_reduce_shared(rng):
    g = rng.standard_normal((4, 3, 5))
    summed = g.sum(axis=1)  # gradients are summed over the shared axis
    assert_close(kronfac.gradient_factor(g, mode="reduce"), summed.T @ summed / 4)


def test_gradient_factor_scale_undoes_a_mean_loss(rng):
    g = rng.standard_normal((10, 4))
    # Gradients of a batch-mean loss are g / N; scale = N restores the per-example factor.
    assert_close(kronfac.gradient_factor(g / 10, scale=10), kronfac.gradient_factor(g), 1e-5)
    assert_close(kronfac.gradient_factor(g, scale=0.5), 0.25 * g.T @ g / 10)


# ---- pi, inverses, eigendecomposition ---------------------------------------------------------

def test_pi(rng):
    a, g = spd(rng, 5), spd(rng, 3)
    ref = np.sqrt((np.trace(a) / 5) / (np.trace(g) / 3))
    assert kronfac.pi(a, g) == pytest.approx(ref, rel=1e-5)
    # Scale covariance (SPEC 7.9): pi(cA, G) = sqrt(c) pi(A, G).
    assert kronfac.pi(4 * a, g) == pytest.approx(2 * ref, rel=1e-5)
    # Fallback to 1 when a trace is zero.
    assert kronfac.pi(np.zeros((5, 5)), g) == 1.0


@pytest.mark.parametrize("precision", ["double", "float"])
def test_damped_inverse(rng, precision):
    f = spd(rng, 6)
    f_asym = f + np.triu(rng.standard_normal((6, 6)) * 0.01, 1)  # symmetrised by the library
    sym = (f_asym + f_asym.T) / 2
    inv, jitter = kronfac.damped_inverse(f_asym, 0.3, precision=precision, return_jitter=True)
    assert_close(inv, np.linalg.inv(sym + 0.3 * np.eye(6)))
    assert jitter == 0.0


def test_damped_inverse_jitter_rescues_a_singular_factor():
    f = np.zeros((3, 3))
    f[0, 0] = 1.0  # rank 1: Cholesky fails without damping
    inv, jitter = kronfac.damped_inverse(f, 0.0, return_jitter=True)
    assert jitter > 0.0
    assert_close(inv, np.linalg.inv(f + jitter * np.eye(3)), rtol=1e-3)


def test_sym_eig(rng):
    f = rng.standard_normal((5, 5))
    sym = (f + f.T) / 2
    w, q = kronfac.sym_eig(f)
    assert w.dtype == np.float32 and q.shape == (5, 5)
    assert np.all(np.diff(w) >= 0)
    assert_close(w, np.linalg.eigvalsh(sym))
    assert_close(q.T @ q, np.eye(5))
    assert_close(q @ np.diag(w) @ q.T, sym)


# ---- directions --------------------------------------------------------------------------------

def test_foof_direction(rng):
    v, a = rng.standard_normal((3, 5)), spd(rng, 5)
    assert_close(kronfac.foof_direction(v, a, 0.2), v @ np.linalg.inv(a + 0.2 * np.eye(5)))


def test_foof_benzing_toy_example():
    # SPEC.md 7.5: two data a1 = (3, 1) -> +1, a2 = (1, 0) -> -1, w = 0, square loss. One
    # undamped FOOF step with learning rate 1 fits both exactly; plain SGD cannot.
    a = np.array([[3.0, 1.0], [1.0, 0.0]])
    y = np.array([1.0, -1.0])
    w = np.zeros(2)
    grad = ((a @ w - y)[:, None] * a).mean(axis=0)  # gradient of the mean loss
    factor = kronfac.activation_factor(a, bias=False)
    d = kronfac.foof_direction(grad[None, :], factor, 0.0)
    assert_close(d[0], [1.0, -4.0])
    w_new = w - d[0]
    assert_close(a @ w_new, y)


def test_kfac_direction_pi_damping(rng):
    v, a, g = rng.standard_normal((3, 5)), spd(rng, 5), spd(rng, 3)
    lam = 0.05
    gamma = np.sqrt(lam)
    p = np.sqrt((np.trace(a) / 5) / (np.trace(g) / 3))
    ref = np.linalg.inv(g + gamma / p * np.eye(3)) @ v @ np.linalg.inv(a + p * gamma * np.eye(5))
    assert_close(kronfac.kfac_direction(v, a, g, lam), ref)


def test_kfac_direction_exact_damping(rng):
    v, a, g = rng.standard_normal((3, 5)), spd(rng, 5), spd(rng, 3)
    lam = 0.05
    # Row-major vec: the curvature of rvec(W) is G (x) A.
    ref = np.linalg.solve(np.kron(g, a) + lam * np.eye(15), v.ravel()).reshape(3, 5)
    assert_close(kronfac.kfac_direction(v, a, g, lam, exact=True), ref)


def test_kfac_damping_closed_forms(rng):
    # SPEC.md 7.9: A = aI, G = bI: pi damping gives eigenvalue (sqrt(ab) + gamma)^2, exact ab + lam.
    v = rng.standard_normal((2, 3))
    a_, b_, lam = 4.0, 0.25, 0.09
    A, G = a_ * np.eye(3), b_ * np.eye(2)
    assert_close(kronfac.kfac_direction(v, A, G, lam), v / (np.sqrt(a_ * b_) + 0.3) ** 2)
    assert_close(kronfac.kfac_direction(v, A, G, lam, exact=True), v / (a_ * b_ + lam))


def test_kronecker_apply(rng):
    v = rng.standard_normal((3, 4))
    a_inv, g_inv = spd(rng, 4), spd(rng, 3)
    assert_close(kronfac.kronecker_apply(v, a_inv, g_inv), g_inv @ v @ a_inv)
    assert_close(kronfac.kronecker_apply(v, a_inv), v @ a_inv)


def test_eigenbasis_apply(rng):
    v, a, g = rng.standard_normal((3, 4)), spd(rng, 4), spd(rng, 3)
    eig_a, eig_g = kronfac.sym_eig(a), kronfac.sym_eig(g)
    # Without a scaling: K-FAC with exact damping.
    assert_close(kronfac.eigenbasis_apply(v, eig_a, eig_g, 0.1),
                 kronfac.kfac_direction(v, a, g, 0.1, exact=True), rtol=1e-4)
    # With an EKFAC scaling S: Q_G [(Q_G^T V Q_A) / (S + lam)] Q_A^T.
    s = rng.uniform(0.5, 2.0, size=(3, 4))
    qa, qg = eig_a[1].astype(np.float64), eig_g[1].astype(np.float64)
    ref = qg @ ((qg.T @ v @ qa) / (s + 0.1)) @ qa.T
    assert_close(kronfac.eigenbasis_apply(v, eig_a, eig_g, 0.1, scaling=s), ref)


def test_bias_column_convention(rng):
    # Gradient of a dense layer with bias: [dW db] of shape (out, in + 1) against A of x~.
    x = rng.standard_normal((6, 3))
    a = kronfac.activation_factor(x, bias=True)
    grad = rng.standard_normal((2, 4))
    assert kronfac.foof_direction(grad, a, 0.1).shape == (2, 4)
    with pytest.raises(kronfac.KronfacError) as e:
        kronfac.foof_direction(grad[:, :3], a, 0.1)  # the bias column forgotten
    assert e.value.name == "KF_ERR_SHAPE"


def test_threads_use_their_own_contexts(rng):
    # The C library wants one context per thread; the binding keeps one per thread, so
    # concurrent calls (the GIL is released during ctypes calls) do not share a workspace.
    from concurrent.futures import ThreadPoolExecutor
    # Reduce mode with R > 1 collapses the shared axis in the context's workspace.
    batches = [rng.standard_normal((256, 4, 30)) for _ in range(4)]
    expected = [kronfac.activation_factor(x, mode="reduce") for x in batches]

    def work(k):
        return all(np.array_equal(kronfac.activation_factor(batches[k], mode="reduce"),
                                  expected[k]) for _ in range(200))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(work, range(4)))


# ---- version, build, status names ------------------------------------------------------------

def test_version_and_build_info():
    v = kronfac.version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", v)
    assert v == kronfac.__version__  # the binding is released with the library it binds
    info = kronfac.build_info()
    assert v in info and "backend=" in info
    assert kronfac.has_blas() == ("backend=openblas" in info)


def test_status_names_match_the_c_library():
    for status in kronfac.Status:
        assert kronfac.status_string(status).startswith(status.name + ":"), status


def test_every_header_function_is_declared():
    header = Path(__file__).resolve().parents[3] / "csrc" / "include" / "kronfac.h"
    names = set(re.findall(r"KF_API\s+[^;(]*?\b(kf_\w+)\s*\(", header.read_text()))
    assert len(names) > 50
    from kronfac import _lib
    assert names <= set(_lib.FUNCTIONS), names - set(_lib.FUNCTIONS)
    for name in names - _lib.missing:
        fn = getattr(_lib.lib, name)
        assert fn.argtypes is not None, name


def test_every_header_function_is_in_the_library():
    from kronfac import _lib
    header = Path(__file__).resolve().parents[3] / "csrc" / "include" / "kronfac.h"
    names = set(re.findall(r"KF_API\s+[^;(]*?\b(kf_\w+)\s*\(", header.read_text()))
    assert not (names & _lib.missing), sorted(names & _lib.missing)
