"""2-D convolutions and weight tying: the conv primitives against numpy references, and the
exactness of the Kronecker factors for convolutions and tied layers against brute-force GGN blocks
(SPEC.md 4.3 R1-conv, E1 for convs, weight tying).

A convolution is a dense layer W~ = [W b] (C_out x (C_in KH KW + 1)) shared over its R = OH OW
output locations: s_{n,r} = W~ p~_{n,r} with p_{n,r} the patch of location r (im2col). The exact
GGN block of the mean loss over T terms is (1/T) sum_t J_t^T H_t J_t with J_t = d f_t / d rvec(W~)
taken by complex steps through a float64 numpy forward pass whose patches come from a reference
im2col written with slicing of the padded input (independent of the library's index arithmetic).
The factors come from the library: activation_factor of kronfac.im2col's patches and
gradient_factor of kronfac.conv2d_output_rows of the per-location type-2 output gradients, stacked
over the columns of S (S S^T = H) as in test_exactness.py. Claim checked: GGN = G (x) A (rvec).
"""

import numpy as np
import pytest

import kronfac
from helpers import assert_close

STEP = 1e-30  # complex step


# ---- numpy references ---------------------------------------------------------------------------

def pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def geometry(x_shape, kernel, stride, padding, dilation):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(pair, (kernel, stride, padding, dilation))
    h, w = x_shape[2], x_shape[3]
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), oh, ow


def taps(xp, i, j, oh, ow, stride, dilation):
    """xp[:, :, oh' * sh + i * dh, ow' * sw + j * dw] for all oh', ow': (N, C, OH, OW)."""
    (sh, sw), (dh, dw) = stride, dilation
    return xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]


def padded(x, padding):
    ph, pw = padding
    xp = np.zeros(x.shape[:2] + (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype)
    xp[:, :, ph: ph + x.shape[2], pw: pw + x.shape[3]] = x
    return xp


def ref_im2col(x, kernel, stride=1, padding=0, dilation=1):
    (kh, kw), st, pd, dl, oh, ow = geometry(x.shape, kernel, stride, padding, dilation)
    n, c = x.shape[:2]
    xp = padded(x, pd)
    cols = np.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[..., i, j] = taps(xp, i, j, oh, ow, st, dl).transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * kh * kw)


def ref_conv2d(x, w, b=None, stride=1, padding=0, dilation=1):
    """Direct convolution: y[n,o] = sum_{c,i,j} w[o,c,i,j] x_pad[n, c, shifted by (i, j)] + b[o]."""
    (kh, kw), st, pd, dl, oh, ow = geometry(x.shape, w.shape[2:], stride, padding, dilation)
    xp = padded(x, pd)
    y = np.zeros((x.shape[0], w.shape[0], oh, ow), dtype=np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("oc,nchw->nohw", w[:, :, i, j], taps(xp, i, j, oh, ow, st, dl))
    if b is not None:
        y += b[None, :, None, None]
    return y


GEOMETRIES = [
    # (x shape, C_out, kernel, stride, padding, dilation)
    ((1, 1, 5, 5), 1, 3, 1, 0, 1),
    ((2, 3, 6, 7), 4, (3, 2), 1, (1, 0), 1),
    ((3, 2, 7, 5), 3, 3, (2, 1), (1, 2), 1),
    ((2, 2, 9, 8), 2, (3, 2), (2, 3), (2, 1), (2, 3)),
    ((2, 4, 4, 6), 5, 1, (1, 2), (0, 1), 1),
    ((2, 1, 3, 4), 2, (5, 6), 1, 1, 1),
]


# ---- (a) the primitives --------------------------------------------------------------------------

@pytest.mark.parametrize("shape,c_out,kernel,stride,padding,dilation", GEOMETRIES)
def test_im2col_and_col2im_match_numpy(rng, shape, c_out, kernel, stride, padding, dilation):
    x = rng.standard_normal(shape)
    geo = dict(stride=stride, padding=padding, dilation=dilation)
    col = kronfac.im2col(x, kernel, **geo)
    want = ref_im2col(x, kernel, **geo)
    assert col.shape == want.shape and col.dtype == np.float32
    np.testing.assert_array_equal(col, want.astype(np.float32))  # a copy: bit-exact
    assert kronfac.conv2d_output_size(shape, kernel, **geo) == geometry(shape, kernel, **geo)[4:]
    # col2im is the adjoint: <im2col(x), c> = <x, col2im(c)>.
    c = rng.standard_normal(col.shape)
    back = kronfac.col2im(c, shape, kernel, **geo)
    assert back.shape == shape
    lhs = np.vdot(want, c)
    rhs = np.vdot(x, back.astype(np.float64))
    assert abs(lhs - rhs) <= 1e-5 * (1 + abs(lhs))


@pytest.mark.parametrize("shape,c_out,kernel,stride,padding,dilation", GEOMETRIES)
def test_conv2d_forward_and_backward_match_numpy(rng, shape, c_out, kernel, stride, padding,
                                                 dilation):
    geo = dict(stride=stride, padding=padding, dilation=dilation)
    kh, kw = pair(kernel)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((c_out, shape[1], kh, kw))
    b = rng.standard_normal(c_out)
    y = kronfac.conv2d(x, w, b, **geo)
    assert_close(y, ref_conv2d(x, w, b, **geo), rtol=1e-5)
    assert_close(kronfac.conv2d(x, w, **geo), ref_conv2d(x, w, **geo), rtol=1e-5)
    # Backward of L = <dy, conv(x, w, b)>: dw and db against the patch form, dx through the
    # directional derivative <dx, v> = <dy, conv(v, w)> (L is linear in x).
    dy = rng.standard_normal(y.shape)
    dw, db, dx = kronfac.conv2d_backward(x, w, dy, **geo)
    rows = dy.transpose(0, 2, 3, 1).reshape(-1, c_out)
    assert_close(dw, (rows.T @ ref_im2col(x, kernel, **geo)).reshape(w.shape), rtol=1e-5)
    assert_close(db, dy.sum(axis=(0, 2, 3)), rtol=1e-5)
    for _ in range(3):
        v = rng.standard_normal(shape)
        assert abs(np.vdot(dx.astype(np.float64), v) - np.vdot(dy, ref_conv2d(v, w, **geo))) \
            <= 1e-4 * (1 + np.abs(dx).sum())
    dw2, db2, dx2 = kronfac.conv2d_backward(x, w, dy, bias=False, input_grad=False, **geo)
    assert db2 is None and dx2 is None
    np.testing.assert_array_equal(dw2, dw)
    # The dense-layer view the optimizer relies on: dW = (output rows)^T (patch rows).
    g = kronfac.conv2d_output_rows(dy)
    np.testing.assert_array_equal(g, rows.astype(np.float32))
    assert_close(dw.reshape(c_out, -1), g.astype(np.float64).T @ kronfac.im2col(x, kernel, **geo),
                 rtol=1e-5)


def test_conv_argument_errors(rng):
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    with pytest.raises(kronfac.KronfacError) as e:
        kronfac.im2col(x, 3, stride=0)
    assert e.value.status == kronfac.Status.KF_ERR_INVALID_ARGUMENT and "stride" in str(e.value)
    with pytest.raises(kronfac.KronfacError) as e:
        kronfac.im2col(x, 7)  # the kernel is larger than the unpadded input: no output
    assert e.value.status == kronfac.Status.KF_ERR_SHAPE and "output height" in str(e.value)
    with pytest.raises(kronfac.KronfacError) as e:
        kronfac.conv2d(x, rng.standard_normal((4, 2, 3, 3)))
    assert e.value.status == kronfac.Status.KF_ERR_SHAPE
    with pytest.raises(kronfac.KronfacError):
        kronfac.conv2d(x, w, b=np.zeros(3))
    with pytest.raises(kronfac.KronfacError):
        kronfac.conv2d_backward(x, w, np.zeros((2, 4, 2, 2)))
    with pytest.raises(kronfac.KronfacError):
        kronfac.im2col(x[0], 3)
    with pytest.raises(kronfac.KronfacError):
        kronfac.col2im(np.zeros((5, 27)), x.shape, 3)
    with pytest.raises(TypeError):
        kronfac.im2col(x.astype(np.int32), 3)
    with pytest.raises(ValueError):
        kronfac.im2col(x, 3, padding=-1)


# ---- brute-force GGN machinery --------------------------------------------------------------------

def with_one(a):
    return np.concatenate([a, np.ones(a.shape[:-1] + (1,))], axis=-1)


def jacobian(fun, wt):
    """d fun(W~) / d rvec(W~) by complex steps: fun's output shape + (P,)."""
    cols = []
    for k in range(wt.size):
        bumped = wt.astype(complex)
        bumped.reshape(-1)[k] += 1j * STEP
        cols.append(fun(bumped).imag / STEP)
    return np.stack(cols, axis=-1)


def ggn_block(jac, terms):
    """(1/T) sum_t J_t^T J_t for the square loss (H = I); jac: (T, C, P)."""
    jac = jac.reshape(terms, -1, jac.shape[-1])
    return np.einsum("tcp,tcq->pq", jac, jac) / terms


def factors(acts, grads_per_column, mode, terms):
    """G (x) A from the library: acts (N, R, in); grads_per_column: C arrays (N, R, out), one per
    column of S, stacked as C N examples (scale sqrt(C) restores the sum over columns)."""
    g_stack = np.concatenate(grads_per_column, axis=0)
    a = kronfac.activation_factor(acts, bias=True, mode=mode)
    g = kronfac.gradient_factor(g_stack, mode=mode, loss_terms_per_example=terms,
                                scale=np.sqrt(len(grads_per_column)))
    return np.kron(g.astype(np.float64), a.astype(np.float64))


def relative_error(actual, expected):
    """The error of actual as an approximation of expected, after the best rescaling of actual:
    a negative control must fail for a reason other than a normalisation constant."""
    alpha = np.vdot(actual, expected) / np.vdot(actual, actual)
    return np.abs(alpha * actual - expected).max() / np.abs(expected).max()


def dense(wt, h):
    """Position-wise dense layer with bias: h (..., in) -> (..., out)."""
    return h @ wt[:, :-1].T + wt[:, -1]


# ---- (b) convolutions: R1-conv and E1-conv -------------------------------------------------------

CONV_CASES = [
    # (x shape, C_out, kernel, stride, padding, dilation)
    ((4, 2, 5, 5), 3, 3, 1, 1, 1),
    ((3, 2, 7, 6), 2, (2, 3), 2, (1, 0), (1, 2)),
]


@pytest.mark.parametrize("pool", ["sum", "mean"])
@pytest.mark.parametrize("shape,c_out,kernel,stride,padding,dilation", CONV_CASES)
def test_reduce_is_exact_for_a_pooled_conv(rng, pool, shape, c_out, kernel, stride, padding,
                                           dilation):
    # R1-conv: conv (no nonlinearity) -> sum/mean pool over the R locations -> two linear layers,
    # square loss per example, mean over N. With c = 1 (sum) or 1/R (mean) and B = V2 V1,
    #   f_n = c B sum_r W~ p~_{n,r} + const,  so  J_n = c B (I (x) (sum_r p~_{n,r})^T)
    # and the per-location gradients c B^T e_k do not depend on n or r: K-FAC-reduce (patches
    # averaged, gradients summed over r) is exact; K-FAC-expand is not.
    geo = dict(stride=stride, padding=padding, dilation=dilation)
    n, c_in = shape[:2]
    kh, kw = pair(kernel)
    d1, c = 3, 2
    x = rng.standard_normal(shape) + 0.5
    wc = rng.standard_normal((c_out, c_in * kh * kw + 1)) / np.sqrt(c_in * kh * kw)
    v1 = rng.standard_normal((d1, c_out + 1)) / np.sqrt(c_out)
    v2 = rng.standard_normal((c, d1 + 1)) / np.sqrt(d1)
    oh, ow = kronfac.conv2d_output_size(shape, kernel, **geo)
    r = oh * ow
    patches = ref_im2col(x, kernel, **geo).reshape(n, r, -1)
    scale = 1.0 if pool == "sum" else 1.0 / r

    def net(wt):
        s = dense(wt, patches)  # (N, R, C_out)
        pooled = s.sum(axis=1) * scale
        return dense(v2, dense(v1, pooled))

    # The library's conv computes the same layer output as the reference forward pass.
    s_lib = kronfac.conv2d(x, wc[:, :-1].reshape(c_out, c_in, kh, kw), wc[:, -1], **geo)
    assert_close(s_lib.transpose(0, 2, 3, 1).reshape(n, r, c_out), dense(wc, patches), rtol=1e-5)

    exact = ggn_block(jacobian(net, wc), n)
    acts = kronfac.im2col(x, kernel, **geo).reshape(n, r, -1)
    back = v2[:, :-1] @ v1[:, :-1]  # d f / d pooled, (C, C_out)
    grads = []
    for k in range(c):
        # The per-location gradient c B^T e_k as an NCHW tensor, then the library's rows layout.
        dy = np.broadcast_to((scale * back[k])[None, :, None, None], (n, c_out, oh, ow))
        grads.append(kronfac.conv2d_output_rows(dy).reshape(n, r, c_out))
    assert_close(factors(acts, grads, "reduce", terms=1), exact, rtol=1e-4)
    # Negative control: the expand factors of the same statistics are not the GGN.
    assert relative_error(factors(acts, grads, "expand", terms=1), exact) > 1e-2


@pytest.mark.parametrize("shape,c_out,kernel,stride,padding,dilation", CONV_CASES)
def test_expand_is_exact_for_a_conv_with_a_loss_per_location(rng, shape, c_out, kernel, stride,
                                                             padding, dilation):
    # E1-conv (KFC's setting): conv -> a 1x1 linear map V at every location -> square loss at
    # every location, mean over the N R terms. J_{n,r} = V (I (x) p~_{n,r}^T) and the gradients
    # V^T e_k are the same everywhere: K-FAC-expand (KFC) is exact, K-FAC-reduce is not.
    geo = dict(stride=stride, padding=padding, dilation=dilation)
    n, c_in = shape[:2]
    kh, kw = pair(kernel)
    c = 2
    x = rng.standard_normal(shape) + 0.5
    wc = rng.standard_normal((c_out, c_in * kh * kw + 1)) / np.sqrt(c_in * kh * kw)
    v = rng.standard_normal((c, c_out + 1)) / np.sqrt(c_out)
    oh, ow = kronfac.conv2d_output_size(shape, kernel, **geo)
    r = oh * ow
    patches = ref_im2col(x, kernel, **geo).reshape(n, r, -1)

    def net(wt):
        return dense(v, dense(wt, patches))  # (N, R, C)

    exact = ggn_block(jacobian(net, wc), n * r)
    acts = kronfac.im2col(x, kernel, **geo).reshape(n, r, -1)
    grads = []
    for k in range(c):
        dy = np.broadcast_to(v[k, :-1][None, :, None, None], (n, c_out, oh, ow))
        grads.append(kronfac.conv2d_output_rows(dy).reshape(n, r, c_out))
    assert_close(factors(acts, grads, "expand", terms=r), exact, rtol=1e-4)
    assert relative_error(factors(acts, grads, "reduce", terms=r), exact) > 1e-2


def test_a_conv_layer_through_the_optimizer(rng):
    # A conv layer is registered as a dense layer (out = C_out, in = C_in KH KW, shared = R),
    # observed through its patches and output rows, and stepped with conv2d_backward's gradients.
    # FOOF with momentum 0 on the first step: W~ <- W~ - lr [dW db] (A + damping I)^{-1}.
    n, c_in, c_out, kernel, lr, damping = 3, 2, 4, 3, 0.5, 0.1
    x = rng.standard_normal((n, c_in, 6, 5))
    w = (rng.standard_normal((c_out, c_in * 9)) / 3).astype(np.float32)
    b = np.zeros(c_out, dtype=np.float32)
    oh, ow = kronfac.conv2d_output_size(x.shape, kernel, padding=1)
    r = oh * ow
    opt = kronfac.Optimizer("foof", learning_rate=lr, damping=damping)
    layer = opt.add_dense(c_out, c_in * 9, shared="reduce", shared_length=r)
    w4 = w.reshape(c_out, c_in, 3, 3)  # a view: the optimizer's update is the conv's weight
    y = kronfac.conv2d(x, w4, b, padding=1)
    target = rng.standard_normal(y.shape)
    dy = (y - target) / n  # gradient of the batch-mean of 1/2 |y_n - t_n|^2
    dw, db, _ = kronfac.conv2d_backward(x, w4, dy, padding=1, input_grad=False)
    patches = kronfac.im2col(x, kernel, padding=1)
    opt.observe(layer, patches)
    before = np.concatenate([w, b[:, None]], axis=1).astype(np.float64)
    opt.step([(w, b)], [(dw.reshape(c_out, -1), db)])
    a = kronfac.activation_factor(patches.reshape(n, r, -1), mode="reduce").astype(np.float64)
    assert_close(opt.layer_factor(layer, "A"), a, rtol=1e-6)
    grad = np.concatenate([dw.reshape(c_out, -1), db[:, None]], axis=1).astype(np.float64)
    want = before - lr * grad @ np.linalg.inv(a + damping * np.eye(a.shape[0]))
    assert_close(np.concatenate([w, b[:, None]], axis=1), want, rtol=1e-4)


# ---- (c) weight tying ----------------------------------------------------------------------------
# One dense layer W~ used twice in one forward pass (N = 1). Its uses are handed to the factor
# functions (and the optimizer) as the R = 2 positions of a shared axis: row u holds the input of
# use u, and the matching row of the gradients the output gradient of that use.

def tied_setup(rng, d_in=3, d_out=3, c=2):
    wt = rng.standard_normal((d_out, d_in + 1)) / np.sqrt(d_in)
    u = rng.standard_normal((c, d_out + 1)) / np.sqrt(d_out)
    return wt, u


def test_tied_layer_used_in_parallel_with_a_loss_per_use_expand_is_exact(rng):
    # f_u = U W~ x~_u (u = 1, 2), one square-loss term per use (T = 2): the E1 setting with the
    # uses as positions, so K-FAC-expand over the concatenated uses is exact (reduce is not).
    wt, u = tied_setup(rng)
    xs = rng.standard_normal((2, 3))

    def net(w):
        return dense(u, dense(w, xs))  # (2, C)

    exact = ggn_block(jacobian(net, wt), 2)
    acts = xs[None]  # (N = 1, R = 2, in)
    grads = [np.broadcast_to(u[k, :-1], (1, 2, wt.shape[0])) for k in range(u.shape[0])]
    assert_close(factors(acts, grads, "expand", terms=2), exact, rtol=1e-4)
    assert relative_error(factors(acts, grads, "reduce", terms=2), exact) > 1e-2


def test_tied_layer_used_in_parallel_and_summed_reduce_is_exact(rng):
    # f = U~ [W~ x~_1 + W~ x~_2; 1], one loss term: the R1 setting with the uses as positions, so
    # K-FAC-reduce over the concatenated uses is exact (expand is not).
    wt, u = tied_setup(rng)
    xs = rng.standard_normal((2, 3)) + 0.5

    def net(w):
        return dense(u, dense(w, xs).sum(axis=0))[None]  # (1, C)

    exact = ggn_block(jacobian(net, wt), 1)
    acts = xs[None]
    grads = [np.broadcast_to(u[k, :-1], (1, 2, wt.shape[0])) for k in range(u.shape[0])]
    assert_close(factors(acts, grads, "reduce", terms=1), exact, rtol=1e-4)
    assert relative_error(factors(acts, grads, "expand", terms=1), exact) > 1e-2


def test_tied_layer_along_a_path(rng):
    # h1 = W~ x~, h2 = W~ [h1; 1], f = U~ [h2; 1], square loss, N = 1. With B_u = d f / d s_u
    # (B_2 = U, B_1 = U W) and the use inputs a~_1 = x~, a~_2 = [h1; 1]:
    #   gradient  dL/dW~ = sum_u g_u a~_u^T  (g_u = B_u^T (f - y), one row per use),
    #   GGN       = sum_{u,u'} (B_u^T B_u') (x) (a~_u a~_u'^T)   (rvec order).
    # The GGN has rank <= C (it is J^T J with J of C rows), while K-FAC-expand over the two uses
    # has rank rank(G) rank(A) = rank(B_1^T B_1 + B_2^T B_2) * 2 > C (a~_1, a~_2 independent):
    # expand cannot be exact along a path, whatever its normalisation. K-FAC-reduce (rank <= C
    # here) is not exact either: it keeps only the mean of the uses' inputs. Checked: the traced
    # gradient and GGN against the use-wise formulas, and the factors' error.
    wt, u = tied_setup(rng, d_in=3, d_out=3, c=2)
    x = rng.standard_normal(3)
    y = rng.standard_normal(2)

    def net(w):
        return dense(u, dense(w, dense(w, x)))

    def loss(w):
        return 0.5 * np.sum((net(w) - y) ** 2)

    h1 = dense(wt, x)
    f = net(wt)
    uses = np.stack([with_one(x), with_one(h1)])  # (2, in + 1)
    b = [u[:, :-1] @ wt[:, :-1], u[:, :-1]]       # B_1, B_2: (C, out)
    jac = jacobian(lambda w: net(w)[None], wt)
    exact = ggn_block(jac, 1)
    formula = sum(np.kron(b[i].T @ b[j], np.outer(uses[i], uses[j]))
                  for i in range(2) for j in range(2))
    assert_close(formula, exact, rtol=1e-10)
    # The gradient of the tied weight is the sum over the uses: gs^T [x 1] over the R = 2 rows,
    # which is what kf_optimizer_step_batch computes for a layer registered with shared = 2.
    gs = np.stack([b[0].T @ (f - y), b[1].T @ (f - y)])  # (2, out)
    traced = jacobian(lambda w: np.array([loss(w)]), wt).reshape(wt.shape)
    assert_close(gs.T @ uses, traced, rtol=1e-8)
    acts = uses[None, :, :-1]
    grads = [np.stack([b[0][k], b[1][k]])[None] for k in range(2)]
    assert np.linalg.matrix_rank(exact) <= 2
    for mode, terms in (("expand", 2), ("expand", 1), ("reduce", 1)):
        approx = factors(acts, grads, mode, terms)
        if mode == "expand":
            assert np.linalg.matrix_rank(approx, tol=1e-6 * np.abs(approx).max()) == 6
        assert relative_error(approx, exact) > 1e-2


def test_tied_layer_uses_through_the_optimizer(rng):
    # The optimizer takes the uses of a tied layer as one observation with shared = number of
    # uses (rows ordered use by use within each example); its factors are those of the
    # concatenated uses. Two examples, two uses each.
    d_in, d_out = 3, 2
    uses = rng.standard_normal((2, 2, d_in))   # (N, uses, in)
    g = rng.standard_normal((2, 2, d_out))
    opt = kronfac.Optimizer("kfac")
    layer = opt.add_dense(d_out, d_in, shared="expand", shared_length=2)
    opt.observe(layer, uses, g, scale=1.0)
    w = np.zeros((d_out, d_in), dtype=np.float32)
    b = np.zeros(d_out, dtype=np.float32)
    opt.step([(w, b)], [(np.ones((d_out, d_in)), np.ones(d_out))])
    assert_close(opt.layer_factor(layer, "A"), kronfac.activation_factor(uses, mode="expand"),
                 rtol=1e-6)
    assert_close(opt.layer_factor(layer, "G"),
                 kronfac.gradient_factor(g, mode="expand", loss_terms_per_example=2), rtol=1e-6)
