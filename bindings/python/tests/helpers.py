"""numpy float64 reference helpers shared by the tests."""

import numpy as np


def with_ones(x):
    """[x, 1]: the homogeneous coordinate of the bias, appended to the last axis."""
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1)


def spd(rng, n, cond_floor=0.1):
    """A random symmetric positive definite n x n matrix (float64)."""
    m = rng.standard_normal((n, n))
    return m @ m.T / n + cond_floor * np.eye(n)


def assert_close(actual, expected, rtol=1e-4):
    """Relative comparison scaled by the reference's largest entry (float32 results)."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)
