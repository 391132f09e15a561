"""kronfac.Optimizer: the stateful C optimizer (kf_optimizer) driven from numpy."""

import ctypes
import os
from pathlib import Path

import numpy as np

from . import _lib
from ._arrays import (F32, as_float_array, as_rows, float_arg, leading_dim, ptr,
                      row_layout_ok, shape_error, size_arg)
from ._errors import KronfacError, Status, raise_for
from ._primitives import precision_value, require, shared_mode_value

# Names of kf_algorithm: the strings of kf_algorithm_name ("kfac_exact" is accepted for
# "kfac-exact" too).
ALGORITHMS = {
    "sgd": 0,
    "adam": 1,
    "foof": 2,
    "kfac": 3,
    "kfac-exact": 4,
    "ekfac": 5,
}
_ALGORITHM_NAMES = {v: k for k, v in ALGORITHMS.items()}

_FLOAT_PARAMS = ("learning_rate", "momentum", "weight_decay", "damping", "factor_decay",
                 "kl_clip", "adam_beta1", "adam_beta2", "adam_epsilon")
_INT_PARAMS = ("stats_interval", "inverse_interval")
_PRECISION_NAMES = {0: "double", 1: "float"}


def _algorithm_value(algorithm):
    try:
        return ALGORITHMS[algorithm.replace("_", "-")]
    except (KeyError, AttributeError):
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, "
                         f"got {algorithm!r}") from None


class _Layer:
    """What the binding needs to know of a registered layer to check numpy shapes."""

    def __init__(self, out, in_, bias, shared, mode):
        self.out, self.in_, self.bias, self.shared, self.mode = out, in_, bias, shared, mode

    @property
    def dim_a(self):
        return self.in_ + (1 if self.bias else 0)


class Optimizer:
    """A Kronecker-factored optimizer (FOOF, K-FAC, ...) over dense layers.

    Optimizer(algorithm="foof", **params): algorithm is one of ALGORITHMS; params override the
    algorithm's defaults (kf_optimizer_params_init) and are the fields of kf_optimizer_params:
    learning_rate, momentum, weight_decay, damping, factor_decay, stats_interval,
    inverse_interval, inverse_precision ("double" or "float"), kl_clip, adam_beta1, adam_beta2,
    adam_epsilon. An unknown name raises TypeError; an out-of-range value KronfacError.

    Per training step:
        if opt.needs_statistics:                      # optional: observations are ignored else
            opt.observe(i, layer_input, output_grads)  # output_grads only for K-FAC/EKFAC layers
        opt.step([(W1, b1), (W2, b2)], [(dW1, db1), (dW2, db2)])   # W, b updated in place

    The object owns the C handle: close() (or a `with` block) frees it; it is also freed when the
    object is garbage collected.
    """

    def __init__(self, algorithm="foof", **params):
        p = _lib.kf_optimizer_params()
        self._check(require("kf_optimizer_params_init")(ctypes.byref(p),
                                                        _algorithm_value(algorithm)),
                    "kf_optimizer_params_init")
        for key, value in params.items():
            if key in _FLOAT_PARAMS:
                setattr(p, key, float_arg(value, key))
            elif key in _INT_PARAMS:
                v = size_arg(value, key)
                if v > 0xFFFFFFFF:
                    raise ValueError(f"{key} must fit in 32 bits, got {v}")
                setattr(p, key, v)
            elif key == "inverse_precision":
                p.inverse_precision = precision_value(value)
            else:
                raise TypeError(f"Optimizer() got an unexpected keyword argument {key!r}")
        handle = _lib.kf_optimizer_p()
        status = require("kf_optimizer_params_validate")(ctypes.byref(p), None, 0)
        if status != 0:
            # No handle exists yet to hold the message: ask for it into a buffer.
            message = ctypes.create_string_buffer(256)
            _lib.lib.kf_optimizer_params_validate(ctypes.byref(p), message, 256)
            raise KronfacError(status, "kf_optimizer_create: " + message.value.decode())
        self._check(require("kf_optimizer_create")(ctypes.byref(p), None, ctypes.byref(handle)),
                    "kf_optimizer_create")
        self._adopt(handle, [])

    def _adopt(self, handle, layers):
        self._handle = handle
        self._layers = layers
        self._destroy = _lib.lib.kf_optimizer_destroy  # kept for __del__ at interpreter exit

    # ---- lifecycle ----------------------------------------------------------------------------

    def close(self):
        """Frees the C optimizer; later calls raise KronfacError(KF_ERR_STATE). Idempotent."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._destroy(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        self.close()

    @property
    def closed(self):
        return not self._handle

    def _h(self):
        if not self._handle:
            raise KronfacError(Status.KF_ERR_STATE, "the optimizer is closed")
        return self._handle

    def _check(self, status, what=""):
        if status != 0:
            handle = getattr(self, "_handle", None)
            message = _lib.lib.kf_optimizer_last_error(handle) if handle else b""
            raise_for(status, message, what)

    def _call(self, name, *args):
        self._check(require(name)(self._h(), *args), name)

    # ---- layers -------------------------------------------------------------------------------

    def add_dense(self, out, in_, bias=True, shared=None, shared_length=None,
                  loss_terms_per_example=None, algorithm=None):
        """Registers a dense layer with weight (out, in_) and, when bias, a bias of length out;
        returns its index (0, 1, ... in order). Allowed before the first step only.

        in_ is the input width (`in` is a Python keyword). A layer applied at R positions of a
        shared axis (tokens, locations) takes shared="expand" or "reduce" and shared_length=R;
        then observe() takes (N, R, in_) activations. loss_terms_per_example: R' of
        gradient_factor; None picks R for expand and 1 for reduce. algorithm overrides the
        optimizer's algorithm for this layer.
        """
        out = size_arg(out, "out", 1)
        in_ = size_arg(in_, "in_", 1)
        lp = _lib.kf_layer_params()
        self._check(require("kf_layer_params_init")(ctypes.byref(lp), out, in_),
                    "kf_layer_params_init")
        lp.bias = 1 if bias else 0
        if shared is None:
            if shared_length not in (None, 1):
                raise ValueError("shared_length needs shared='expand' or 'reduce'")
            r, mode = 1, 0
        else:
            mode = shared_mode_value(shared, "shared")
            if shared_length is None:
                raise ValueError(f"shared={shared!r} needs shared_length=R, the length of the "
                                 "shared axis")
            r = size_arg(shared_length, "shared_length", 1)
        lp.shared, lp.shared_mode = r, mode
        if loss_terms_per_example is not None:
            lp.loss_terms_per_example = size_arg(loss_terms_per_example,
                                                 "loss_terms_per_example", 1)
        if algorithm is not None:
            lp.algorithm = _algorithm_value(algorithm)
        index = ctypes.c_size_t()
        self._call("kf_optimizer_add_layer", ctypes.byref(lp), ctypes.byref(index))
        self._layers.append(_Layer(out, in_, bool(bias), r, mode))
        return index.value

    def _layer(self, layer):
        i = size_arg(layer, "layer")
        if i >= len(self._layers):
            raise KronfacError(Status.KF_ERR_INVALID_ARGUMENT,
                               f"layer {i} does not exist ({len(self._layers)} registered)")
        return i, self._layers[i]

    def _batch(self, x, name, width, r):
        """(rows, ld, N) of a (N, width), (N, R, width) or (N*R, width) batch for R = r."""
        arr = as_float_array(x, name)
        if arr.ndim == 3 and arr.shape[1] == r and arr.shape[2] == width:
            n = arr.shape[0]
        elif arr.ndim == 2 and arr.shape[1] == width and arr.shape[0] % r == 0:
            n = arr.shape[0] // r
        else:
            want = f"(N, {width})" if r == 1 else f"(N, {r}, {width}) or (N*{r}, {width})"
            raise shape_error(f"{name} must have shape {want}, got {arr.shape}")
        m, ld = as_rows(arr, n * r, width)
        return m, ld, n

    def observe(self, layer, activations, output_grads=None, scale=1.0):
        """Hands over one layer's inputs for the next step and, for K-FAC / EKFAC layers, the
        output gradients of the curvature backward pass (sampled targets).

        activations: (N, in_) or, with a shared axis, (N, R, in_) (or (N*R, in_)).
        output_grads: (N, out) or (N, R, out): per-example gradients of the per-example loss;
        each is multiplied by scale (pass scale=N for gradients of a batch-mean loss).
        Ignored by the C library when the next step is not a statistics step. Both arrays are
        checked before either is handed over; a second observe() before the step replaces the
        first.
        """
        i, spec = self._layer(layer)
        x, ldx, n = self._batch(activations, "activations", spec.in_, spec.shared)
        g = None
        if output_grads is not None:
            g, ldg, ng = self._batch(output_grads, "output_grads", spec.out, spec.shared)
        scale = float_arg(scale, "scale")
        # The library takes what it needs from the arrays during the call (nothing is kept).
        self._call("kf_optimizer_observe_activations", i, n, ptr(x), ldx)
        if g is not None:
            self._call("kf_optimizer_observe_gradients", i, ng, ptr(g), ldg, scale)

    def observe_gradients(self, layer, output_grads, scale=1.0):
        """Only the output gradients (see observe), e.g. after a separate curvature pass."""
        i, spec = self._layer(layer)
        g, ldg, n = self._batch(output_grads, "output_grads", spec.out, spec.shared)
        self._call("kf_optimizer_observe_gradients", i, n, ptr(g), ldg, float_arg(scale, "scale"))

    def reserve_batch(self, n):
        """Grows the workspace for batches of up to n examples now (observations then do not
        allocate)."""
        self._call("kf_optimizer_reserve_batch", size_arg(n, "n"))

    # ---- the step -----------------------------------------------------------------------------

    @staticmethod
    def _param(x, name, shape):
        """A parameter array updated in place: float32, rows contiguous, writeable; never copied.
        Returns (array, ld)."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy array (it is updated in place), "
                            f"got {type(x).__name__}")
        if x.dtype != F32:
            raise TypeError(f"{name} must be float32 to be updated in place, got {x.dtype}")
        if x.shape != shape:
            raise shape_error(f"{name} must have shape {shape}, got {x.shape}")
        if not x.flags.writeable:
            raise ValueError(f"{name} is read-only and cannot be updated in place")
        m = x.reshape(1, -1) if x.ndim == 1 else x
        # A 1-D view keeps its stride under reshape, so one check covers W and b.
        if not row_layout_ok(m):
            raise ValueError(f"{name} must be C-contiguous (rows contiguous) to be updated "
                             "in place")
        return x, leading_dim(m)

    @staticmethod
    def _grad(x, name, shape):
        arr = as_float_array(x, name)
        if arr.shape != shape:
            raise shape_error(f"{name} must have shape {shape}, got {arr.shape}")
        if arr.ndim == 1:
            return np.ascontiguousarray(arr, dtype=F32), shape[0]
        return as_rows(arr, shape[0], shape[1])

    @staticmethod
    def _pair(item, name):
        if isinstance(item, np.ndarray):  # would unpack into its rows
            raise TypeError(f"{name} must be a (weight, bias) pair, got an array")
        try:
            w, b = item
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a (weight, bias) pair (bias None without a "
                            "bias)") from None
        return w, b

    def step(self, params, grads):
        """One optimization step: params[i] = (W, b) of layer i, updated in place; grads[i] =
        (dW, db), the gradients of the batch-mean loss. b and db are None for a layer without a
        bias. W and b must be float32 with contiguous rows (else TypeError / ValueError, as they
        could not be updated in place); gradients are converted like any input. A failing step
        raises KronfacError and changes nothing."""
        params, grads = list(params), list(grads)
        if len(params) != len(self._layers) or len(grads) != len(self._layers):
            raise KronfacError(Status.KF_ERR_INVALID_ARGUMENT,
                               f"step got {len(params)} parameter and {len(grads)} gradient "
                               f"pairs for {len(self._layers)} registered layers")
        tensors = (_lib.kf_layer_tensors * max(len(params), 1))()
        keep = []  # converted gradients must outlive the call
        for i, (spec, p, g) in enumerate(zip(self._layers, params, grads)):
            w, b = self._pair(p, f"params[{i}]")
            dw, db = self._pair(g, f"grads[{i}]")
            w, ldw = self._param(w, f"params[{i}] weight", (spec.out, spec.in_))
            dw, lddw = self._grad(dw, f"grads[{i}] weight", (spec.out, spec.in_))
            t = tensors[i]
            t.weight, t.ld_weight = ptr(w), ldw
            t.grad_weight, t.ld_grad_weight = ptr(dw), lddw
            keep += [w, dw]
            # None is passed through as NULL: the C library rejects a bias that does not match
            # the layer's registration.
            if b is not None:
                b, _ = self._param(b, f"params[{i}] bias", (spec.out,))
                t.bias = ptr(b)
                keep.append(b)
            if db is not None:
                db, _ = self._grad(db, f"grads[{i}] bias", (spec.out,))
                t.grad_bias = ptr(db)
                keep.append(db)
        self._call("kf_optimizer_step", tensors, len(params))

    # ---- schedules and queries ----------------------------------------------------------------

    @property
    def params(self):
        """The parameters in force, as a dict (algorithm and inverse_precision as names)."""
        p = _lib.kf_optimizer_params()
        self._call("kf_optimizer_get_params", ctypes.byref(p))
        d = {name: getattr(p, name) for name, _ in _lib.kf_optimizer_params._fields_}
        d["algorithm"] = _ALGORITHM_NAMES.get(p.algorithm, p.algorithm)
        d["inverse_precision"] = _PRECISION_NAMES.get(p.inverse_precision, p.inverse_precision)
        return d

    @property
    def learning_rate(self):
        return self.params["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, value):
        self._call("kf_optimizer_set_learning_rate", float_arg(value, "learning_rate"))

    @property
    def damping(self):
        return self.params["damping"]

    @damping.setter
    def damping(self, value):
        """A new damping refreshes the inverses on the next step."""
        self._call("kf_optimizer_set_damping", float_arg(value, "damping"))

    @property
    def layer_count(self):
        n = ctypes.c_size_t()
        self._call("kf_optimizer_layer_count", ctypes.byref(n))
        return n.value

    def __len__(self):
        return self.layer_count

    @property
    def step_count(self):
        n = ctypes.c_uint64()
        self._call("kf_optimizer_step_count", ctypes.byref(n))
        return n.value

    @property
    def memory_bytes(self):
        """Total bytes held by the C optimizer (state and planned workspace)."""
        n = ctypes.c_size_t()
        self._call("kf_optimizer_memory_bytes", ctypes.byref(n))
        return n.value

    @property
    def needs_statistics(self):
        """True when the next step is a statistics step (observations are used)."""
        v = ctypes.c_int()
        self._call("kf_optimizer_needs_statistics", ctypes.byref(v))
        return bool(v.value)

    def inverse_count(self, layer):
        """Number of steps on which the layer's inverses (or eigenbases) were recomputed."""
        v = ctypes.c_uint64()
        self._call("kf_optimizer_inverse_count", size_arg(layer, "layer"), ctypes.byref(v))
        return v.value

    def layer_pi(self, layer):
        """The pi of the layer's last refresh (1 for algorithms without pi)."""
        v = ctypes.c_float()
        self._call("kf_optimizer_layer_pi", size_arg(layer, "layer"), ctypes.byref(v))
        return v.value

    def layer_damping(self, layer):
        """The damping of the layer's current inverses."""
        v = ctypes.c_float()
        self._call("kf_optimizer_layer_damping", size_arg(layer, "layer"), ctypes.byref(v))
        return v.value

    def layer_algorithm(self, layer):
        """The layer's algorithm name (the optimizer's unless overridden in add_dense)."""
        v = _lib.c_enum()
        self._call("kf_optimizer_layer_algorithm", size_arg(layer, "layer"), ctypes.byref(v))
        return _ALGORITHM_NAMES.get(v.value, v.value)

    def layer_factor(self, layer, which="A"):
        """A copy of the layer's moving-average factor: "A" ((in + bias) square) or "G" (out x
        out). KF_ERR_STATE before the first statistics; KF_ERR_INVALID_ARGUMENT for a factor the
        layer's algorithm does not keep."""
        i, spec = self._layer(layer)
        if which not in ("A", "G"):
            raise ValueError(f"which must be 'A' or 'G', got {which!r}")
        dim = spec.dim_a if which == "A" else spec.out
        f = np.empty((dim, dim), dtype=F32)
        self._call("kf_optimizer_layer_factor", i, 0 if which == "A" else 1, ptr(f), dim)
        return f

    # ---- checkpoints --------------------------------------------------------------------------

    def to_bytes(self):
        """The checkpoint (parameters, layers and all state) as bytes."""
        size = ctypes.c_size_t()
        self._call("kf_optimizer_checkpoint_size", ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        written = ctypes.c_size_t()
        self._call("kf_optimizer_save", buf, size.value, ctypes.byref(written))
        return buf.raw[:written.value]

    def save(self, path):
        """Writes the checkpoint to path (atomically: PATH.tmp, then renamed over PATH).
        Observations pending for the next step are not included."""
        self._call("kf_optimizer_save_file", os.fsencode(path))

    def restore(self, source):
        """Restores state from a checkpoint (a path, or bytes from to_bytes) into this optimizer,
        whose layers must match. On failure (KF_ERR_FORMAT, KF_ERR_IO) nothing changes."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            self._call("kf_optimizer_restore", data, len(data))
        else:
            self._call("kf_optimizer_restore_file", os.fsencode(source))

    @classmethod
    def load(cls, path):
        """A new optimizer, layers included, from a checkpoint file written by save()."""
        handle = _lib.kf_optimizer_p()
        status = require("kf_optimizer_create_from_file")(os.fsencode(path), None,
                                                           ctypes.byref(handle))
        return cls._from_handle(status, handle, lambda: Path(path).read_bytes(),
                                f"kf_optimizer_create_from_file({path!r})")

    @classmethod
    def from_bytes(cls, data):
        """A new optimizer, layers included, from checkpoint bytes (to_bytes())."""
        data = bytes(data)
        handle = _lib.kf_optimizer_p()
        status = require("kf_optimizer_create_from_checkpoint")(data, len(data), None,
                                                                 ctypes.byref(handle))
        return cls._from_handle(status, handle, lambda: data, "kf_optimizer_create_from_checkpoint")

    @classmethod
    def _from_handle(cls, status, handle, read_checkpoint, what):
        if status != 0:
            # No handle, so no handle message: the status string says what kind of failure.
            raise KronfacError(status, f"{what} failed")
        self = cls.__new__(cls)
        self._adopt(handle, [])
        try:
            self._layers = self._read_layers(read_checkpoint)
        except BaseException:
            self.close()
            raise
        return self

    def _read_layers(self, read_checkpoint):
        """The registered layers' shapes, which step() needs to check numpy arrays."""
        count = self.layer_count
        if "kf_optimizer_layer_params" not in _lib.missing:
            layers = []
            for i in range(count):
                lp = _lib.kf_layer_params()
                self._call("kf_optimizer_layer_params", i, ctypes.byref(lp))
                layers.append(_Layer(lp.out, lp.in_, bool(lp.bias), lp.shared, lp.shared_mode))
            return layers
        raise KronfacError(Status.KF_ERR_UNSUPPORTED,
                           "this libkronfac lacks kf_optimizer_layer_params; rebuild it")
