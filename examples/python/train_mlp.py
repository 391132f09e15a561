#!/usr/bin/env python3
"""Train a small numpy MLP with Kronfac's FOOF and K-FAC, and with plain SGD for comparison.

The network (inputs 20 -> 64 tanh -> 64 tanh -> 5 logits, softmax cross-entropy) is written in
numpy: forward and backward passes are ours; Kronfac only sees each layer's inputs (and, for
K-FAC, output gradients) and updates the weights in place:

    opt.observe(layer, inputs, output_grads)     # per-example, on statistics steps
    opt.step([(W1, b1), ...], [(dW1, db1), ...])  # gradients of the batch-mean loss

K-FAC's output gradients come from a second backward pass with sampled targets: for softmax
cross-entropy, y~ ~ softmax(logits) and g = softmax - onehot(y~) per example (the Monte-Carlo
Fisher). FOOF needs no gradient statistics.

The data: 20-dimensional Gaussian inputs labelled by a random "teacher" network, so the task is
learnable but not linear. Prints the training loss as it goes, and exits with status 1 unless
FOOF and K-FAC both end below SGD (each with the best setting of a small grid, see main()).

Run after `pip install ./bindings/python` (or from the source tree), with KRONFAC_LIBRARY set if
libkronfac is not found on its own:  python3 examples/python/train_mlp.py [--steps 300]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    import kronfac
except ImportError:  # run from a checkout without installing: use the source tree's package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bindings" / "python"))
    import kronfac

SIZES = [20, 64, 64, 5]
CLASSES = SIZES[-1]


def make_data(rng, n):
    """Inputs and the labels a random tanh teacher network gives them."""
    x = rng.standard_normal((n, SIZES[0])).astype(np.float32)
    w1 = rng.standard_normal((SIZES[0], 32)) / np.sqrt(SIZES[0])
    w2 = rng.standard_normal((32, CLASSES)) * 2.0 / np.sqrt(32)
    y = np.argmax(np.tanh(x @ w1 * 2.0) @ w2, axis=1)
    return x, y


def init_params(rng):
    """(W, b) per layer; float32 and C-contiguous, as the in-place update requires."""
    return [((rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32), np.zeros(o, np.float32))
            for i, o in zip(SIZES[:-1], SIZES[1:])]


def forward(params, x):
    """Layer inputs (h_0 = x, h_1, h_2) and the logits."""
    inputs, h = [], x
    for k, (w, b) in enumerate(params):
        inputs.append(h)
        s = h @ w.T + b
        h = np.tanh(s) if k < len(params) - 1 else s
    return inputs, h


def softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def mean_loss(params, x, y):
    p = softmax(forward(params, x)[1])
    return float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))


def backward(params, inputs, g_out):
    """Per-example gradients at every layer's output (pre-activation), from those of the logits."""
    grads = [None] * len(params)
    g = g_out
    for k in reversed(range(len(params))):
        grads[k] = g
        if k > 0:
            g = (g @ params[k][0]) * (1.0 - inputs[k] ** 2)  # inputs[k] = tanh(s_{k-1})
    return grads


def train(algorithm, steps, data, seed, batch=100, **hyper):
    rng = np.random.default_rng(seed)
    x_train, y_train = data
    params = init_params(np.random.default_rng(0))  # the same start for every optimizer
    history = []
    with kronfac.Optimizer(algorithm, **hyper) as opt:
        for i, o in zip(SIZES[:-1], SIZES[1:]):
            opt.add_dense(o, i)
        for t in range(steps):
            idx = rng.choice(len(y_train), batch, replace=False)
            x, y = x_train[idx], y_train[idx]
            inputs, logits = forward(params, x)
            p = softmax(logits)
            onehot = np.eye(CLASSES)[y]
            # Per-example output gradients of the per-example loss; the batch mean divides by N.
            deltas = backward(params, inputs, p - onehot)
            grads = [(d.T @ h / batch, d.mean(axis=0)) for d, h in zip(deltas, inputs)]
            if opt.needs_statistics:
                if algorithm == "kfac":
                    # Curvature pass: targets sampled from the model's own predictive distribution.
                    sampled = np.array([rng.choice(CLASSES, p=row) for row in p])
                    fisher = backward(params, inputs, p - np.eye(CLASSES)[sampled])
                    for k, h in enumerate(inputs):
                        opt.observe(k, h, fisher[k])
                elif algorithm != "sgd":
                    for k, h in enumerate(inputs):
                        opt.observe(k, h)
            opt.step(params, grads)
            if t % 50 == 0 or t == steps - 1:
                history.append((t, mean_loss(params, x_train, y_train)))
    return history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    data = make_data(np.random.default_rng(42), 4000)
    print(f"kronfac {kronfac.version()} ({kronfac.build_info()})")
    print(f"MLP {'-'.join(map(str, SIZES))}, tanh, softmax cross-entropy; 4000 examples, "
          f"batch 100, {args.steps} steps; training loss:")
    # Each optimizer's best setting of a small grid on this problem (300 steps): SGD learning
    # rate {0.03, 0.1, 0.3, 1} x momentum {0, 0.9}; FOOF learning rate {0.1, 0.3, 1} x damping
    # {0.03, 0.1, 0.3, 1}; K-FAC learning rate {0.03, 0.1, 0.3, 1} x damping {0.01, ..., 0.3}.
    runs = {
        "sgd": dict(learning_rate=0.3, momentum=0.9),
        "foof": dict(learning_rate=1.0, damping=0.1, inverse_interval=10),
        "kfac": dict(learning_rate=0.1, damping=0.01, inverse_interval=10),
    }
    final = {}
    for name, hyper in runs.items():
        history = train(name, args.steps, data, args.seed, **hyper)
        final[name] = history[-1][1]
        print(f"  {name:5s} " + "  ".join(f"{t:4d}: {loss:.4f}" for t, loss in history))
    ok = final["foof"] < final["sgd"] and final["kfac"] < final["sgd"]
    print("final: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
    print("FOOF and K-FAC beat SGD" if ok else "FAILED: FOOF or K-FAC did not beat SGD")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
