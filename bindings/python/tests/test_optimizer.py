"""kronfac.Optimizer: steps against numpy references, schedules, queries, checkpoints, errors."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kronfac
from helpers import assert_close, with_ones
from kronfac import KronfacError, _lib
from kronfac._errors import Status


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def dense(rng, out, in_, bias=True):
    return f32(rng, out, in_), (np.zeros(out, np.float32) + f32(rng, out) if bias else None)


def bias_grad(rng, out, bias=True):
    return f32(rng, out) if bias else None


def applied_update(before, after):
    return before.astype(np.float64) - after.astype(np.float64)


def grad_tilde(dw, db):
    return np.hstack([dw, db[:, None]]) if db is not None else np.asarray(dw, np.float64)


# ---- parameters ----------------------------------------------------------------------------------

def test_defaults_follow_the_algorithm():
    with kronfac.Optimizer("foof") as opt:
        p = opt.params
        assert p["algorithm"] == "foof" and p["inverse_precision"] == "double"
        assert p["learning_rate"] == pytest.approx(0.3) and p["damping"] == pytest.approx(0.3)
        assert p["factor_decay"] == pytest.approx(0.95) and p["inverse_interval"] == 20
    with kronfac.Optimizer("sgd") as opt:
        assert opt.params["momentum"] == pytest.approx(0.9)


def test_keyword_parameters_are_applied():
    with kronfac.Optimizer("kfac", learning_rate=0.05, damping=0.2, momentum=0.5,
                           stats_interval=3, inverse_interval=7, inverse_precision="float",
                           kl_clip=0.01, weight_decay=1e-4) as opt:
        p = opt.params
        assert p["algorithm"] == "kfac"
        assert p["learning_rate"] == pytest.approx(0.05) and p["damping"] == pytest.approx(0.2)
        assert p["momentum"] == pytest.approx(0.5) and p["kl_clip"] == pytest.approx(0.01)
        assert (p["stats_interval"], p["inverse_interval"]) == (3, 7)
        assert p["inverse_precision"] == "float"
        opt.learning_rate = 0.01
        opt.damping = 0.4
        assert opt.learning_rate == pytest.approx(0.01) and opt.damping == pytest.approx(0.4)


def test_algorithm_names_are_the_c_names():
    from kronfac import _lib
    for name, value in kronfac.ALGORITHMS.items():
        assert _lib.lib.kf_algorithm_name(value).decode() == name
        with kronfac.Optimizer(name) as opt:
            opt.add_dense(2, 3)
            assert opt.layer_algorithm(0) == name
    with kronfac.Optimizer("kfac_exact") as opt:  # the underscore spelling is accepted
        assert opt.params["algorithm"] == "kfac-exact"


def test_bad_parameters():
    with pytest.raises(TypeError):
        kronfac.Optimizer("foof", learning_rat=0.1)  # a typo is not silently ignored
    with pytest.raises(ValueError):
        kronfac.Optimizer("newton")
    with pytest.raises(TypeError):
        kronfac.Optimizer("foof", damping="lots")
    with pytest.raises(ValueError):
        kronfac.Optimizer("foof", inverse_precision="quad")
    with pytest.raises(ValueError):
        kronfac.Optimizer("foof", stats_interval=-1)
    for bad in (dict(learning_rate=-1.0), dict(stats_interval=0), dict(momentum=1.0),
                dict(damping=float("nan"))):
        with pytest.raises(KronfacError) as e:
            kronfac.Optimizer("kfac", **bad)
        assert e.value.name == "KF_ERR_INVALID_ARGUMENT"
    with kronfac.Optimizer("foof") as opt:
        with pytest.raises(KronfacError) as e:
            opt.learning_rate = 0.0
        assert e.value.name == "KF_ERR_INVALID_ARGUMENT" and "learning_rate" in e.value.message


# ---- steps against references --------------------------------------------------------------------

def test_layers_of_different_shapes_step_safely():
    # Regression: the step workspace must hold the largest layer matrix three times plus the
    # largest factorisation scratch, which may belong to different layers (here a square layer
    # and a wide one-output layer). Run in a child process: a heap overflow crashes it (at the
    # latest when the optimizer is freed) instead of taking the test session down.
    code = textwrap.dedent('''
        import numpy as np, kronfac
        rng = np.random.default_rng(0)
        x0, x1 = rng.standard_normal((64, 50)), rng.standard_normal((64, 200))
        with kronfac.Optimizer("foof", learning_rate=1.0, damping=0.5) as opt:
            opt.add_dense(50, 50)
            opt.add_dense(1, 200)
            params = [(np.zeros((50, 50), np.float32), np.zeros(50, np.float32)),
                      (np.zeros((1, 200), np.float32), np.zeros(1, np.float32))]
            opt.observe(0, x0)
            opt.observe(1, x1)
            opt.step(params, [(np.ones((50, 50)), np.ones(50)), (np.ones((1, 200)), np.ones(1))])
        xt = np.hstack([x1, np.ones((64, 1))])
        ref = -np.ones(201) @ np.linalg.inv(xt.T @ xt / 64 + 0.5 * np.eye(201))
        got = np.append(params[1][0][0], params[1][1])
        print("max error", np.abs(got - ref).max() / np.abs(ref).max())
    ''')
    env = dict(os.environ, PYTHONPATH=str(Path(kronfac.__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert float(r.stdout.split()[-1]) < 1e-4, r.stdout


@pytest.mark.parametrize("bias", [True, False])
def test_foof_step(rng, bias):
    lr, lam, n = 0.3, 0.2, 9
    opt = kronfac.Optimizer("foof", learning_rate=lr, damping=lam)
    assert opt.add_dense(3, 4, bias=bias) == 0
    assert opt.add_dense(2, 3, bias=bias) == 1
    params = [dense(rng, 3, 4, bias), dense(rng, 2, 3, bias)]
    before = [(w.copy(), None if b is None else b.copy()) for w, b in params]
    xs = [rng.standard_normal((n, 4)), rng.standard_normal((n, 3))]
    grads = [(f32(rng, 3, 4), bias_grad(rng, 3, bias)), (f32(rng, 2, 3), bias_grad(rng, 2, bias))]
    assert opt.needs_statistics
    for i, x in enumerate(xs):
        opt.observe(i, x)
    opt.step(params, grads)
    for (w, b), (w0, b0), (dw, db), x in zip(params, before, grads, xs):
        xt = with_ones(x) if bias else x
        a = xt.T @ xt / n
        d = grad_tilde(dw, db) @ np.linalg.inv(a + lam * np.eye(a.shape[0]))
        assert_close(applied_update(w0, w), lr * d[:, :w.shape[1]])
        if bias:
            assert_close(applied_update(b0, b), lr * d[:, -1])
    assert opt.step_count == 1
    assert opt.inverse_count(0) == 1 and opt.layer_damping(0) == pytest.approx(lam)
    assert opt.layer_pi(0) == 1.0  # FOOF has no pi
    assert_close(opt.layer_factor(0, "A"), kronfac.activation_factor(xs[0], bias=bias), 1e-6)
    with pytest.raises(KronfacError) as e:
        opt.layer_factor(0, "G")  # FOOF keeps no gradient factor
    assert e.value.name == "KF_ERR_INVALID_ARGUMENT"
    opt.close()


def test_kfac_step(rng):
    lr, lam, n = 0.1, 0.05, 12
    opt = kronfac.Optimizer("kfac", learning_rate=lr, damping=lam)
    opt.add_dense(3, 5)
    w, b = dense(rng, 3, 5)
    w0, b0 = w.copy(), b.copy()
    x, g = rng.standard_normal((n, 5)), rng.standard_normal((n, 3))
    dw, db = f32(rng, 3, 5), f32(rng, 3)
    # Gradients of a batch-mean loss (g / n) handed over with scale = n.
    opt.observe(0, x, g / n, scale=n)
    opt.step([(w, b)], [(dw, db)])
    xt = with_ones(x)
    a, gf = xt.T @ xt / n, g.T @ g / n
    p = np.sqrt((np.trace(a) / 6) / (np.trace(gf) / 3))
    gamma = np.sqrt(lam)
    d = (np.linalg.inv(gf + gamma / p * np.eye(3)) @ grad_tilde(dw, db)
         @ np.linalg.inv(a + p * gamma * np.eye(6)))
    assert_close(applied_update(w0, w), lr * d[:, :5])
    assert_close(applied_update(b0, b), lr * d[:, 5])
    assert opt.layer_pi(0) == pytest.approx(p, rel=1e-5)
    assert_close(opt.layer_factor(0, "G"), gf, 1e-5)


def test_sgd_with_momentum(rng):
    lr, mu = 0.03, 0.9
    opt = kronfac.Optimizer("sgd", learning_rate=lr, momentum=mu)
    opt.add_dense(2, 3)
    w, b = dense(rng, 2, 3)
    w0 = w.copy()
    g1, g2 = f32(rng, 2, 3), f32(rng, 2, 3)
    opt.step([(w, b)], [(g1, np.zeros(2))])  # SGD needs no observations
    opt.step([(w, b)], [(g2, np.zeros(2))])
    # v1 = g1, v2 = mu g1 + g2; W2 = W0 - lr (v1 + v2).
    assert_close(applied_update(w0, w), lr * (g1 + mu * g1 + g2), 1e-5)


def test_one_foof_step_solves_linear_least_squares(rng):
    # SPEC.md 7.3: for L = mean 1/2 |W x - y|^2, undamped FOOF with learning rate 1 lands on the
    # least-squares solution in one step.
    n, d_in, d_out = 20, 4, 2
    x = rng.standard_normal((n, d_in))
    y = rng.standard_normal((n, d_out))
    w = np.zeros((d_out, d_in), np.float32)
    with kronfac.Optimizer("foof", learning_rate=1.0, damping=0.0) as opt:
        opt.add_dense(d_out, d_in, bias=False)
        opt.observe(0, x)
        grad = (x @ w.T - y).T @ x / n
        opt.step([(w, None)], [(grad, None)])
    assert_close(w.T, np.linalg.lstsq(x, y, rcond=None)[0], rtol=1e-3)


def test_one_kfac_step_solves_linear_least_squares(rng):
    # The same Newton step for K-FAC with the type-2 gradient factor: square loss, S = I, so the
    # C = d_out vectors per example are e_c, handed over as C*N examples with scale sqrt(C).
    n, d_in, d_out = 20, 4, 2
    x = rng.standard_normal((n, d_in))
    y = rng.standard_normal((n, d_out))
    w = np.zeros((d_out, d_in), np.float32)
    with kronfac.Optimizer("kfac", learning_rate=1.0, damping=1e-8) as opt:
        opt.add_dense(d_out, d_in, bias=False)
        vectors = np.repeat(np.eye(d_out), n, axis=0)  # (C*N, d_out)
        opt.observe(0, np.tile(x, (d_out, 1)), vectors, scale=np.sqrt(d_out))
        grad = (x @ w.T - y).T @ x / n
        opt.step([(w, None)], [(grad, None)])
        assert_close(opt.layer_factor(0, "G"), np.eye(d_out), 1e-5)
    assert_close(w.T, np.linalg.lstsq(x, y, rcond=None)[0], rtol=1e-3)


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_shared_axis_layers(rng, mode):
    n, r = 4, 3
    x, g = rng.standard_normal((n, r, 5)), rng.standard_normal((n, r, 2))
    terms = r if mode == "expand" else 1  # the automatic R'
    factors = []
    for layout in ("3-D", "flat"):
        with kronfac.Optimizer("kfac") as opt:
            opt.add_dense(2, 5, shared=mode, shared_length=r)
            if layout == "3-D":
                opt.observe(0, x, g)
            else:
                opt.observe(0, x.reshape(n * r, 5), g.reshape(n * r, 2))
            w, b = dense(rng, 2, 5)
            opt.step([(w, b)], [(f32(rng, 2, 5), f32(rng, 2))])
            factors.append((opt.layer_factor(0, "A"), opt.layer_factor(0, "G")))
    for a, gf in factors:
        assert_close(a, kronfac.activation_factor(x, mode=mode), 1e-6)
        assert_close(gf, kronfac.gradient_factor(g, mode=mode, loss_terms_per_example=terms), 1e-6)
    with kronfac.Optimizer("kfac") as opt:
        with pytest.raises(ValueError):
            opt.add_dense(2, 5, shared=mode)  # R is required
        opt.add_dense(2, 5, shared=mode, shared_length=r)
        with pytest.raises(KronfacError) as e:
            opt.observe(0, x[:, :2])  # R = 2 positions for a layer registered with R = 3
        assert e.value.name == "KF_ERR_SHAPE"


def test_schedules_and_counters(rng):
    opt = kronfac.Optimizer("kfac", stats_interval=2, inverse_interval=3)
    opt.add_dense(3, 4)
    w, b = dense(rng, 3, 4)
    seen, inverses = [], []
    for _ in range(7):
        seen.append(opt.needs_statistics)
        if seen[-1]:
            opt.observe(0, rng.standard_normal((6, 4)), rng.standard_normal((6, 3)))
        opt.step([(w, b)], [(f32(rng, 3, 4), f32(rng, 3))])
        inverses.append(opt.inverse_count(0))
    assert seen == [True, False, True, False, True, False, True]
    # Inverses on steps t % 3 == 0 (t = 0, 3, 6).
    assert inverses == [1, 1, 1, 2, 2, 2, 3]
    assert opt.step_count == 7
    # A new damping refreshes the inverses on the next step, which then use it.
    opt.damping = 0.5
    opt.observe(0, rng.standard_normal((6, 4)), rng.standard_normal((6, 3)))
    opt.step([(w, b)], [(f32(rng, 3, 4), f32(rng, 3))])
    assert opt.inverse_count(0) == 4 and opt.layer_damping(0) == pytest.approx(0.5)
    opt.close()


def test_memory_bytes_and_layer_count(rng):
    with kronfac.Optimizer("kfac") as opt:
        empty = opt.memory_bytes
        opt.add_dense(50, 40)
        one = opt.memory_bytes
        # At least the factors, inverses and momentum of the layer: (41^2 + 50^2) * 2 + 50 * 41.
        assert one - empty >= 4 * (2 * (41 * 41 + 50 * 50) + 50 * 41)
        opt.add_dense(3, 50, bias=False)
        assert opt.layer_count == len(opt) == 2


@pytest.mark.parametrize("algorithm", sorted(kronfac.ALGORITHMS))
def test_every_algorithm_reduces_a_regression_loss(rng, algorithm):
    n, d_in, d_out = 64, 6, 3
    x = rng.standard_normal((n, d_in))
    y = x @ rng.standard_normal((d_in, d_out)) + 0.5
    w, b = np.zeros((d_out, d_in), np.float32), np.zeros(d_out, np.float32)
    lr = {"sgd": 0.05, "adam": 0.05}.get(algorithm, 0.5)
    with kronfac.Optimizer(algorithm, learning_rate=lr, inverse_interval=1) as opt:
        opt.add_dense(d_out, d_in)

        def loss():
            return 0.5 * np.mean(np.sum((x @ w.T + b - y) ** 2, axis=1))

        start = loss()
        for _ in range(10):
            err = x @ w.T + b - y  # per-example output gradients of the per-example loss
            # Square loss: type-2 curvature vectors would be e_c; here one sampled v ~ N(0, I).
            opt.observe(0, x, rng.standard_normal((n, d_out)))
            opt.step([(w, b)], [(err.T @ x / n, err.mean(axis=0))])
        assert loss() < 0.5 * start, (algorithm, start, loss())


# ---- errors change nothing -----------------------------------------------------------------------

def test_step_errors_leave_everything_untouched(rng):
    opt = kronfac.Optimizer("foof")
    opt.add_dense(3, 4)
    opt.add_dense(2, 3, bias=False)
    p0, p1 = dense(rng, 3, 4), dense(rng, 2, 3, bias=False)
    good_grads = [(f32(rng, 3, 4), f32(rng, 3)), (f32(rng, 2, 3), None)]
    snapshot = [p0[0].copy(), p0[1].copy(), p1[0].copy()]

    def unchanged():
        return all(np.array_equal(a, s) for a, s in zip([p0[0], p0[1], p1[0]], snapshot))

    # First step, statistics due, nothing observed: the layers have no factors yet.
    with pytest.raises(KronfacError) as e:
        opt.step([p0, p1], good_grads)
    assert e.value.name == "KF_ERR_STATE" and unchanged()
    opt.observe(0, rng.standard_normal((5, 4)))
    opt.observe(1, rng.standard_normal((5, 3)))
    nan_grad = good_grads[0][0].copy()
    nan_grad[1, 2] = np.nan
    cases = [
        (KronfacError, "KF_ERR_NON_FINITE", [p0, p1],
         [(nan_grad, good_grads[0][1]), good_grads[1]]),
        (KronfacError, "KF_ERR_SHAPE", [p0, p1], [(f32(rng, 3, 5), f32(rng, 3)), good_grads[1]]),
        (KronfacError, "KF_ERR_SHAPE", [(p0[0], f32(rng, 4)), p1], good_grads),
        (KronfacError, "KF_ERR_NULL_POINTER", [(p0[0], None), p1], good_grads),
        (KronfacError, None, [p0, (p1[0], f32(rng, 2))], good_grads),  # bias on a no-bias layer
        (KronfacError, "KF_ERR_INVALID_ARGUMENT", [p0], good_grads[:1]),
        (TypeError, None, [(p0[0].astype(np.float64), p0[1]), p1], good_grads),
        (TypeError, None, [(p0[0].tolist(), p0[1]), p1], good_grads),
        (TypeError, None, [p0, p1], [(good_grads[0][0].astype(np.int32), good_grads[0][1]),
                                     good_grads[1]]),
        (TypeError, None, [p0[0], p1], good_grads),  # not a (W, b) pair
    ]
    for exc, name, params, grads in cases:
        with pytest.raises(exc) as e:
            opt.step(params, grads)
        if name:
            assert e.value.name == name, (name, e.value)
        assert unchanged(), (name, params)
    assert opt.step_count == 0
    # The same optimizer still steps normally afterwards.
    opt.step([p0, p1], good_grads)
    assert opt.step_count == 1 and not unchanged()
    opt.close()


def test_parameters_must_be_updatable_in_place(rng):
    with kronfac.Optimizer("sgd") as opt:
        opt.add_dense(3, 4)
        grads = [(f32(rng, 3, 4), f32(rng, 3))]
        w_t = f32(rng, 4, 3).T  # shape (3, 4), but column-major
        with pytest.raises(ValueError):
            opt.step([(w_t, f32(rng, 3))], grads)
        ro = f32(rng, 3, 4)
        ro.flags.writeable = False
        with pytest.raises(ValueError):
            opt.step([(ro, f32(rng, 3))], grads)
        # Rows of a wider array are fine: the row stride is passed as the leading dimension.
        wide = f32(rng, 3, 7)
        view = wide[:, 1:5]
        before = wide.copy()
        b = f32(rng, 3)
        opt.step([(view, b)], grads)
        assert_close(applied_update(before[:, 1:5], view), 0.03 * grads[0][0], 1e-5)
        assert np.array_equal(wide[:, [0, 5, 6]], before[:, [0, 5, 6]])  # nothing outside


def test_float64_gradients_are_converted(rng):
    results = []
    for dtype in (np.float32, np.float64):
        local = np.random.default_rng(5)
        with kronfac.Optimizer("foof") as opt:
            opt.add_dense(2, 3)
            w, b = f32(local, 2, 3), f32(local, 2)
            x = local.standard_normal((4, 3))
            opt.observe(0, x.astype(dtype))
            g = f32(local, 2, 3)
            opt.step([(w, b)], [(g.astype(dtype), np.ones(2, dtype))])
            results.append(w)
    assert np.array_equal(results[0], results[1])


def test_observe_errors(rng):
    with kronfac.Optimizer("kfac") as opt:
        opt.add_dense(3, 4)
        with pytest.raises(KronfacError) as e:
            opt.observe(0, rng.standard_normal((5, 3)))
        assert e.value.name == "KF_ERR_SHAPE"
        with pytest.raises(KronfacError) as e:
            opt.observe(0, rng.standard_normal((5, 4)), rng.standard_normal((5, 4)))
        assert e.value.name == "KF_ERR_SHAPE"
        with pytest.raises(KronfacError) as e:
            opt.observe(1, rng.standard_normal((5, 4)))
        assert e.value.name == "KF_ERR_INVALID_ARGUMENT"
        x = rng.standard_normal((5, 4))
        x[0, 0] = np.inf
        x_copy = x.copy()
        with pytest.raises(KronfacError) as e:
            opt.observe(0, x)
        assert e.value.name == "KF_ERR_NON_FINITE" and "kf_optimizer_observe" in e.value.message
        assert np.array_equal(x, x_copy)
        with pytest.raises(TypeError):
            opt.observe(0, np.ones((5, 4), dtype=np.int64))


def test_close_and_with():
    with kronfac.Optimizer("foof") as opt:
        opt.add_dense(2, 2)
        assert not opt.closed
    assert opt.closed
    opt.close()  # idempotent
    with pytest.raises(KronfacError) as e:
        opt.step_count
    assert e.value.name == "KF_ERR_STATE"
    with pytest.raises(KronfacError):
        opt.add_dense(2, 2)


# ---- checkpoints ---------------------------------------------------------------------------------

def make_run(rng_seed, algorithm):
    """A small two-layer problem with its data stream, so that two runs see the same batches.
    (The second layer's matrix is as large as the first's: layers of unequal sizes are covered
    by test_layers_of_different_shapes_step_safely.)"""
    data = np.random.default_rng(rng_seed)
    batches = [(data.standard_normal((8, 5)), data.standard_normal((8, 4)),
                data.standard_normal((8, 6)), data.standard_normal((8, 4)))
               for _ in range(12)]
    init = np.random.default_rng(1)
    params = [(f32(init, 4, 5), f32(init, 4)), (f32(init, 4, 6), None)]

    def build():
        opt = kronfac.Optimizer(algorithm, learning_rate=0.05, momentum=0.5, inverse_interval=2,
                                stats_interval=1, weight_decay=1e-3)
        opt.add_dense(4, 5)
        opt.add_dense(4, 6, bias=False, algorithm="foof" if algorithm != "sgd" else None)
        return opt

    def train(opt, params, steps):
        for t in steps:
            x0, g0, x1, g1 = batches[t]
            if opt.needs_statistics:
                opt.observe(0, x0, g0)
                opt.observe(1, x1, g1)
            # Gradients need not be consistent with the data for a bit-exactness test.
            grads = [(np.tanh(x0[:4] + t), np.cos(g0[0] + t)), (np.sin(x1[:4] * (t + 1)), None)]
            opt.step(params, grads)

    return params, build, train


def copy_params(params):
    return [(w.copy(), None if b is None else b.copy()) for w, b in params]


@pytest.mark.parametrize("algorithm", ["foof", "kfac", "kfac-exact", "ekfac", "adam", "sgd"])
def test_save_load_continue_bit_exactly(tmp_path, algorithm):
    params, build, train = make_run(3, algorithm)
    opt = build()
    train(opt, params, range(0, 5))
    path = tmp_path / "run.kfck"
    opt.save(path)
    saved = copy_params(params)
    blob = opt.to_bytes()
    train(opt, params, range(5, 12))  # the uninterrupted run

    for resumed in (kronfac.Optimizer.load(path), kronfac.Optimizer.from_bytes(blob)):
        with resumed:
            assert resumed.step_count == 5 and resumed.params == opt.params
            p2 = copy_params(saved)
            train(resumed, p2, range(5, 12))
            for (w, b), (w2, b2) in zip(params, p2):
                assert np.array_equal(w, w2)
                assert (b is None and b2 is None) or np.array_equal(b, b2)
            assert resumed.to_bytes() == opt.to_bytes()

    # restore() into a freshly built optimizer with the same layers does the same.
    fresh = build()
    fresh.restore(path)
    p3 = copy_params(saved)
    train(fresh, p3, range(5, 12))
    assert np.array_equal(p3[0][0], params[0][0])
    fresh.close()
    opt.close()


def test_checkpoint_errors(tmp_path, rng):
    params, build, train = make_run(4, "kfac")
    opt = build()
    train(opt, params, range(3))
    blob = bytearray(opt.to_bytes())
    with pytest.raises(KronfacError) as e:
        kronfac.Optimizer.load(tmp_path / "missing.kfck")
    assert e.value.name == "KF_ERR_IO"
    corrupt = bytearray(blob)
    corrupt[len(corrupt) // 2] ^= 0xFF
    (tmp_path / "corrupt.kfck").write_bytes(bytes(corrupt))
    for bad in (bytes(corrupt), bytes(blob[:-9]), b"not a checkpoint at all, clearly"):
        with pytest.raises(KronfacError) as e:
            kronfac.Optimizer.from_bytes(bad)
        assert e.value.name == "KF_ERR_FORMAT"
    with pytest.raises(KronfacError) as e:
        kronfac.Optimizer.load(tmp_path / "corrupt.kfck")
    assert e.value.name == "KF_ERR_FORMAT"
    # Restoring into an optimizer with other layers is refused and changes nothing.
    other = kronfac.Optimizer("kfac")
    other.add_dense(3, 3)
    before = other.to_bytes()
    with pytest.raises(KronfacError) as e:
        other.restore(bytes(blob))
    assert e.value.name == "KF_ERR_FORMAT" and other.to_bytes() == before
    # A failed save (a folder that does not exist) is an I/O error.
    with pytest.raises(KronfacError) as e:
        opt.save(tmp_path / "no" / "such" / "dir" / "x.kfck")
    assert e.value.name == "KF_ERR_IO"
    other.close()
    opt.close()


def test_load_without_the_layer_query(monkeypatch):
    # A library too old to report its layers' shapes is refused with a clear error: the binding
    # does not guess shapes it would then write numpy arrays through.
    params, build, train = make_run(6, "kfac")
    opt = build()
    train(opt, params, range(2))
    blob = opt.to_bytes()
    monkeypatch.setattr(_lib, "missing", _lib.missing | {"kf_optimizer_layer_params"})
    with pytest.raises(KronfacError) as err:
        kronfac.Optimizer.from_bytes(blob)
    assert err.value.status == Status.KF_ERR_UNSUPPORTED
    assert "kf_optimizer_layer_params" in str(err.value)
    opt.close()
