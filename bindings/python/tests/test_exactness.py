"""Exactness of the Kronecker factors (SPEC.md 4.3 and 7.6/7.7) against brute-force GGN blocks.

The references are float64 numpy: the Jacobian of the network output with respect to one layer's
W~ = [W b] is taken by complex-step differentiation (exact to rounding for analytic networks, and
independent of backpropagation), and the GGN block of the mean loss over T loss terms is
    GGN_l = (1/T) sum_t J_t^T H_t J_t     (H_t the loss Hessian with respect to the output).
The factors come from the C library (float32) through kronfac.activation_factor and
kronfac.gradient_factor, fed with the per-term type-2 output gradients g = J_s^T S[:, c]
(S S^T = H), one stack of N examples per column c of S. The claim checked is
    GGN_l = G (x) A  in row-major vec (C(rvec W~) = G (x) A),
with A, G normalised as in DESIGN.md section 2 (mean over the N R' loss terms). Negative controls
show the comparison can fail: the mismatched approximation is not exact.
"""

import numpy as np
import pytest

import kronfac
from helpers import assert_close

STEP = 1e-30  # complex step: no subtractive cancellation, so it can be tiny


def identity(s):
    return s


def identity_grad(s):
    return np.ones_like(s)


def tanh_grad(s):
    return 1.0 - np.tanh(s) ** 2


def init(rng, dims, bias=True):
    """W~ per layer, shape (out, in + bias), scaled like a fan-in initialisation."""
    return [rng.standard_normal((dims[l + 1], dims[l] + bias)) / np.sqrt(dims[l])
            for l in range(len(dims) - 1)]


def forward(params, x, act, bias=True, pool_at=None, pool="sum"):
    """Returns (output, layer inputs, pre-activations). x: (N, R, d0), or (N, d0).

    Layers act position-wise on the last axis; with pool_at = k the shared axis is summed or
    averaged just before layer k. Hidden layers apply act; the last layer is linear."""
    h, inputs, pre = x, [], []
    for l, wt in enumerate(params):
        if l == pool_at:
            h = h.sum(axis=1) if pool == "sum" else h.mean(axis=1)
        inputs.append(h)
        s = h @ wt[:, :h.shape[-1]].T
        if bias:
            s = s + wt[:, -1]
        pre.append(s)
        h = act(s) if l < len(params) - 1 else s
    return h, inputs, pre


def backprop(params, pre, v, act_grad, r=1, pool_at=None, pool="sum"):
    """The output vector v (shaped like the output) pulled back to every layer's pre-activation:
    g_l = J_{s_l}(f)^T v, per example (and position)."""
    deltas = [None] * len(params)
    d = v
    for l in reversed(range(len(params))):
        deltas[l] = d
        if l == 0:
            break
        d = d @ params[l][:, :pre[l - 1].shape[-1]]  # to the input of layer l
        if l == pool_at:
            d = np.repeat(d[:, None, :], r, axis=1) * (1.0 if pool == "sum" else 1.0 / r)
        d = d * act_grad(pre[l - 1])
    return deltas


def jacobian(params, layer, x, act, **kw):
    """d output / d rvec(W~_layer) by complex steps: shape output.shape + (P,)."""
    wt = params[layer]
    cols = []
    for k in range(wt.size):
        bumped = [p.astype(complex) for p in params]
        bumped[layer].reshape(-1)[k] += 1j * STEP
        cols.append(forward(bumped, x, act, **kw)[0].imag / STEP)
    return np.stack(cols, axis=-1)


def ggn_block(jac, hessians):
    """(1/T) sum_t J_t^T H_t J_t over the T loss terms; jac: (T, C, P), hessians: (T, C, C)."""
    return np.einsum("tcp,tcd,tdq->pq", jac, hessians, jac) / jac.shape[0]


def stacked_vectors(deltas_per_column):
    """Type-2 gradients of C columns, stacked as C*N examples: the factor's sum over columns
    becomes a mean over C times as many examples, undone by scale = sqrt(C)."""
    return np.concatenate(deltas_per_column, axis=0), np.sqrt(len(deltas_per_column))


def kfac_block(a_in, g_stack, scale, mode, terms):
    a = kronfac.activation_factor(a_in, bias=True, mode=mode)
    g = kronfac.gradient_factor(g_stack, mode=mode, loss_terms_per_example=terms, scale=scale)
    return np.kron(g.astype(np.float64), a.astype(np.float64))


def relative_error(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


# ---- E1: expand setting --------------------------------------------------------------------------

def test_expand_setting_deep_linear_network(rng):
    # Deep linear network applied position-wise, square loss 1/2 |f - y|^2 on each of the N R
    # positions, mean over the N R loss terms (R' = R). K-FAC-expand is exact for every layer:
    # J_{n,r} = B (x) a~_{n,r}^T with B independent of the data.
    n, r, dims = 4, 3, [3, 4, 3, 2]
    params = init(rng, dims)
    x = rng.standard_normal((n, r, dims[0]))
    out, inputs, pre = forward(params, x, identity)
    c = dims[-1]
    hess = np.broadcast_to(np.eye(c), (n * r, c, c))  # square loss: H = I = S S^T
    per_column = [backprop(params, pre, np.broadcast_to(np.eye(c)[k], out.shape), identity_grad)
                  for k in range(c)]
    for layer in range(len(params)):
        jac = jacobian(params, layer, x, identity).reshape(n * r, c, -1)
        exact = ggn_block(jac, hess)
        g_stack, scale = stacked_vectors([cols[layer] for cols in per_column])
        expand = kfac_block(inputs[layer], g_stack, scale, "expand", terms=r)
        assert_close(expand, exact, rtol=1e-4)
        # Negative control (Eschenhagen et al. Fig. 1): K-FAC-reduce is not exact here.
        reduce = kfac_block(inputs[layer], g_stack, scale, "reduce", terms=r)
        assert relative_error(reduce, exact) > 1e-2


# ---- R1: reduce setting --------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["sum", "mean"])
def test_reduce_setting_deep_linear_network(rng, pool):
    # Two position-wise layers, then the shared axis is summed or averaged, then two more linear
    # layers; square loss per example, mean over N terms (R' = 1). K-FAC-reduce is exact for
    # every layer; K-FAC-expand is exact only after the reduction.
    n, r, dims, pool_at = 5, 4, [3, 4, 3, 3, 2], 2
    kw = dict(pool_at=pool_at, pool=pool)
    params = init(rng, dims)
    x = rng.standard_normal((n, r, dims[0])) + 0.5
    out, inputs, pre = forward(params, x, identity, **kw)
    c = dims[-1]
    hess = np.broadcast_to(np.eye(c), (n, c, c))
    per_column = [backprop(params, pre, np.broadcast_to(np.eye(c)[k], out.shape), identity_grad,
                           r=r, **kw) for k in range(c)]
    for layer in range(len(params)):
        jac = jacobian(params, layer, x, identity, **kw).reshape(n, c, -1)
        exact = ggn_block(jac, hess)
        g_stack, scale = stacked_vectors([cols[layer] for cols in per_column])
        reduce = kfac_block(inputs[layer], g_stack, scale, "reduce", terms=1)
        assert_close(reduce, exact, rtol=1e-4)
        expand = kfac_block(inputs[layer], g_stack, scale, "expand", terms=1)
        if layer >= pool_at:
            assert_close(expand, exact, rtol=1e-4)  # no shared axis left: the modes coincide
        else:
            assert relative_error(expand, exact) > 1e-2


# ---- one example, nonlinear MLP ------------------------------------------------------------------

def loss_hessian_sqrt(loss, f):
    """S with S S^T = H, the Hessian of the loss with respect to the output f (one example)."""
    if loss == "square":
        return np.eye(f.shape[-1])
    p = np.exp(f - f.max())
    p /= p.sum()
    return np.diag(np.sqrt(p)) - np.outer(p, np.sqrt(p))


@pytest.mark.parametrize("loss", ["softmax_ce", "square"])
@pytest.mark.parametrize("bias", [True, False])
def test_single_example_mlp_type2(rng, loss, bias):
    # SPEC.md 7.6: with N = 1, K-FAC with type-2 vectors equals the GGN block of any MLP.
    dims = [4, 5, 3, 3]
    params = init(rng, dims, bias=bias)
    x = rng.standard_normal((1, dims[0]))
    out, inputs, pre = forward(params, x, np.tanh, bias=bias)
    s = loss_hessian_sqrt(loss, out[0])
    hess = (s @ s.T)[None]
    if loss == "softmax_ce":
        p = np.exp(out[0] - out[0].max())
        p /= p.sum()
        assert_close(hess[0], np.diag(p) - np.outer(p, p), rtol=1e-12)
    per_column = [backprop(params, pre, s[:, k][None, :], tanh_grad) for k in range(dims[-1])]
    for layer in range(len(params)):
        jac = jacobian(params, layer, x, np.tanh, bias=bias)
        exact = ggn_block(jac, hess)
        g_stack, scale = stacked_vectors([cols[layer] for cols in per_column])
        a = kronfac.activation_factor(inputs[layer], bias=bias)
        g = kronfac.gradient_factor(g_stack, scale=scale)
        assert_close(np.kron(g.astype(np.float64), a.astype(np.float64)), exact, rtol=1e-4)


def test_batch_mlp_kfac_is_only_an_approximation(rng):
    # Negative control for the single-example test: with N > 1 a nonlinear network's GGN block is
    # no longer a Kronecker product of these factors.
    dims, n = [4, 5, 3], 6
    params = init(rng, dims)
    x = rng.standard_normal((n, dims[0]))
    out, inputs, pre = forward(params, x, np.tanh)
    s = [loss_hessian_sqrt("softmax_ce", out[i]) for i in range(n)]
    hess = np.stack([si @ si.T for si in s])
    per_column = [backprop(params, pre, np.stack([si[:, k] for si in s]), tanh_grad)
                  for k in range(dims[-1])]
    jac = jacobian(params, 0, x, np.tanh)
    exact = ggn_block(jac, hess)
    g_stack, scale = stacked_vectors([cols[0] for cols in per_column])
    approx = kfac_block(inputs[0], g_stack, scale, "expand", terms=1)
    assert relative_error(approx, exact) > 1e-2


def test_foof_factor_matches_the_square_loss_ggn_of_a_single_layer(rng):
    # SPEC.md 7.2: one dense layer, mean over N of 1/2 |W~ x~ - y|^2: GGN = I (x) A, i.e. FOOF's
    # factor with G = I is exact (rvec order: kron(I, A)).
    n, d_in, d_out = 7, 3, 2
    params = init(rng, [d_in, d_out])
    x = rng.standard_normal((n, d_in))
    jac = jacobian(params, 0, x, identity)
    exact = ggn_block(jac, np.broadcast_to(np.eye(d_out), (n, d_out, d_out)))
    a = kronfac.activation_factor(x)
    assert_close(np.kron(np.eye(d_out), a.astype(np.float64)), exact, rtol=1e-4)
