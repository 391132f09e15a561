"""kronfac.activate / activation_gradient (kf_activation_forward / backward) against numpy."""

import numpy as np
import pytest

import kronfac


def reference(x, kind):
    x = x.astype(np.float64)
    if kind == "identity":
        return x
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "tanh":
        return np.tanh(x)
    e = np.exp(-np.abs(x))  # the logistic function without overflow or cancellation
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@pytest.mark.parametrize("kind", ["identity", "relu", "tanh", "sigmoid"])
def test_forward_matches_numpy(kind):
    x = np.concatenate([np.linspace(-30, 30, 60000), np.geomspace(1e-30, 1, 500),
                        -np.geomspace(1e-30, 1, 500)]).astype(np.float32).reshape(-1, 8)
    y = kronfac.activate(x, kind)
    assert y.shape == x.shape and y.dtype == np.float32
    exact = reference(x, kind)
    np.testing.assert_allclose(y, exact, rtol=3e-7, atol=1e-30)


@pytest.mark.parametrize("kind", ["identity", "relu", "tanh", "sigmoid"])
def test_gradient_matches_central_differences(kind):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 9)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    y = kronfac.activate(x, kind)
    h = 1e-4
    slope = (reference(x.astype(np.float64) + h, kind) - reference(x.astype(np.float64) - h, kind)) / (2 * h)
    np.testing.assert_allclose(kronfac.activation_gradient(y, dy, kind), slope * dy, rtol=1e-4, atol=1e-5)


def test_special_values_and_errors():
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype=np.float32)
    t = kronfac.activate(x, "tanh")
    assert np.isnan(t[0]) and t[1] == 1 and t[2] == -1 and np.signbit(t[3]) and not np.signbit(t[4])
    s = kronfac.activate(x, "sigmoid")
    assert np.isnan(s[0]) and s[1] == 1 and s[2] == 0 and s[3] == 0.5
    assert kronfac.activate(np.zeros((0, 3), np.float32), "relu").shape == (0, 3)
    with pytest.raises(ValueError, match="kind"):
        kronfac.activate(x, "gelu")
    with pytest.raises(TypeError):
        kronfac.activate(np.arange(3), "tanh")
    with pytest.raises(kronfac.KronfacError) as info:
        kronfac.activation_gradient(np.zeros(3, np.float32), np.zeros(4, np.float32), "tanh")
    assert info.value.status == kronfac.Status.KF_ERR_SHAPE
