"""Deep Leakage from Gradients (Zhu et al. 2019) and iDLG's label inference (Zhao et al. 2020)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedr._seeds import check_seed
from fedr.errors import FedTypeError, FedValueError

__all__ = ["LeakageResult", "deep_leakage", "infer_label"]


@dataclass(frozen=True)
class LeakageResult:
    """What :func:`deep_leakage` recovered.

    Attributes:
        image: The recovered input, shaped as one example of the model's input.
        label: The label used (given, inferred, or the argmax of the soft label).
        label_inferred: Whether the label was inferred from the gradients (iDLG).
        distance: The final gradient-matching distance, relative to the
            observed gradients' squared norm (0 is a perfect match).
        iterations: L-BFGS iterations run.
        seconds: Wall time.
    """

    image: np.ndarray
    label: int
    label_inferred: bool
    distance: float
    iterations: int
    seconds: float


def infer_label(gradients: Sequence[Any]) -> int | None:
    """Infer a single example's label from its gradients (iDLG, Zhao et al. 2020).

    With softmax cross-entropy, the gradient of the output bias is
    ``softmax(logits) - onehot(label)``: only the true class is negative. The
    last trainable variable is taken to be the output layer's: its bias
    when it is 1-D, else the column sums of its kernel (``h^T g`` summed over
    ``h``, which has the sign of ``g`` for non-negative hidden activations
    such as sigmoid and ReLU).

    Args:
        gradients: The loss gradients of the trainable variables, in order (not
            the update: an SGD update is ``-learning_rate`` times the gradients).

    Returns:
        The class index, or None when no negative entry singles out a class.
    """
    grads = [np.asarray(g, np.float64) for g in gradients]
    if not grads or grads[-1].ndim not in (1, 2):
        return None
    last = grads[-1] if grads[-1].ndim == 1 else grads[-1].sum(axis=0)
    if last.size < 2 or np.sum(last < 0) != 1:
        return None
    return int(np.argmin(last))


def _keras_model(model: Any) -> tuple[Any, Any]:
    """(keras model, loss) from a fedr Model, a model_fn, or a Keras model."""
    import keras

    from fedr.learning import Model

    if callable(model) and not isinstance(model, keras.Model | Model):
        model = model()
    if isinstance(model, Model):
        return model.keras_model, model.loss
    if isinstance(model, keras.Model):
        return model, keras.losses.SparseCategoricalCrossentropy()
    raise FedTypeError(
        "model: expected a fedr.learning.Model, a function returning one, or a keras.Model, "
        f"got {type(model).__name__}"
    )


def deep_leakage(
    model: Any,
    gradients: Any,
    *,
    weights: Any = None,
    learning_rate: float | None = None,
    label: int | None = None,
    soft_label: bool = False,
    max_iter: int = 300,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    seed: int = 0,
) -> LeakageResult:
    """Recover one training example from its gradients by gradient matching (DLG).

    Zhu et al. 2019, "Deep Leakage from Gradients": start from a random dummy
    input and move it, with L-BFGS, to minimise
    ``sum_l ||grad_l(dummy) - grad_l(observed)||^2`` over the trainable
    variables. Here the dummy is bounded to ``bounds`` (L-BFGS-B), the
    objective is divided by the observed gradients' squared norm, and its
    gradient with respect to the dummy comes from nested ``tf.GradientTape``
    (second derivatives of the model). The label is the given one, else the
    one inferred from the gradients (:func:`infer_label`, iDLG), else (or
    with ``soft_label``) a soft label optimised along with the input as in
    the original DLG.

    Args:
        model: A ``fedr.learning.Model`` (its loss is used), a function
            returning one, or a ``keras.Model`` (sparse categorical
            cross-entropy). Its variables are overwritten with ``weights``.
        gradients: The observed gradients, or with ``learning_rate`` the
            observed one-step SGD update (converted as ``-update /
            learning_rate``): a list of arrays shaped as the trainable
            variables, or one flat vector of them in order.
        weights: The weights the client started from (a list of arrays, a
            ``ModelWeights`` or a ``ServerState``); default the model's own.
        learning_rate: The client's SGD learning rate when ``gradients`` is an update.
        label: The example's label, if known.
        soft_label: Optimise a soft label along with the input, as the
            original DLG, instead of inferring the label (ignored when
            ``label`` is given).
        max_iter: L-BFGS iterations at most.
        bounds: The range of the input values, or None for unbounded.
        seed: Seeds the dummy input (uniform over ``bounds``, or standard normal).

    Returns:
        A :class:`LeakageResult`.

    Raises:
        FedTypeError: ``model`` is not a model.
        FedValueError: the gradients or weights do not fit the model.
    """
    import tensorflow as tf
    from scipy.optimize import minimize

    started = time.perf_counter()
    keras_model, loss_fn = _keras_model(model)
    variables = list(keras_model.trainable_variables)
    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(s)) for s in shapes]

    def as_arrays(value: Any, what: str) -> list[np.ndarray]:
        if hasattr(value, "model") and hasattr(value.model, "trainable"):  # ServerState
            value = value.model
        if hasattr(value, "trainable"):  # ModelWeights
            value = value.trainable
        if isinstance(value, np.ndarray) and value.ndim == 1 and len(variables) > 0 and value.size == sum(sizes):
            parts = np.split(value, np.cumsum(sizes)[:-1])
            return [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]
        arrays = [np.asarray(a, np.float32) for a in value]
        if [a.shape for a in arrays] != shapes:
            raise FedValueError(f"{what}: expected arrays of shapes {shapes}, got {[a.shape for a in arrays]}")
        return arrays

    # numpy's own message ("SeedSequence expects int ...") would not name the argument.
    seed = check_seed(seed)
    observed = [np.asarray(g, np.float64) for g in as_arrays(gradients, "gradients")]
    if learning_rate is not None:
        if not learning_rate > 0:
            raise FedValueError(f"learning_rate: expected a positive number, got {learning_rate!r}")
        observed = [-g / float(learning_rate) for g in observed]
    if not all(np.all(np.isfinite(g)) for g in observed):
        raise FedValueError("gradients: values must be finite")
    norm2 = float(sum(np.sum(g * g) for g in observed))
    if norm2 == 0:
        raise FedValueError("gradients: all zero; the example left no trace to recover")
    if weights is not None:
        for var, value in zip(variables, as_arrays(weights, "weights"), strict=True):
            var.assign(value)

    inferred = False
    if label is None and not soft_label:
        label = infer_label(observed)
        inferred = label is not None
    feature_shape = tuple(int(d) for d in keras_model.input_shape[1:])
    n_x = int(np.prod(feature_shape))
    classes = int(keras_model.output_shape[-1])
    soft = label is None

    targets = [tf.constant(g / math.sqrt(norm2), tf.float32) for g in observed]
    inv_norm = tf.constant(1.0 / math.sqrt(norm2), tf.float32)
    y_true = tf.constant([int(label) if label is not None else 0])

    @tf.function(reduce_retracing=True)
    def objective(z: Any) -> Any:
        with tf.GradientTape() as outer:
            outer.watch(z)
            x = tf.reshape(z[:n_x], (1, *feature_shape))
            with tf.GradientTape() as inner:
                pred = keras_model(x, training=False)
                if soft:
                    p = tf.nn.softmax(z[n_x:])[None]
                    loss = -tf.reduce_sum(p * tf.math.log(tf.clip_by_value(pred, 1e-12, 1.0)))
                else:
                    loss = loss_fn(y_true, pred)
            grads = inner.gradient(loss, variables)
            dist = tf.add_n([
                tf.reduce_sum(tf.square(g * inv_norm - t)) for g, t in zip(grads, targets, strict=True)
            ])
        return dist, outer.gradient(dist, z)

    rng = np.random.default_rng(seed)
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        x0 = rng.uniform(lo, hi, n_x)
        box = [(lo, hi)] * n_x
    else:
        x0 = rng.standard_normal(n_x)
        box = [(None, None)] * n_x
    if soft:
        x0 = np.concatenate([x0, rng.standard_normal(classes)])
        box += [(None, None)] * classes

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = objective(tf.constant(z, tf.float32))
        return float(value), np.asarray(grad, np.float64)

    result = minimize(
        fun, x0, jac=True, method="L-BFGS-B", bounds=box,
        options={"maxiter": int(max_iter), "ftol": 1e-14, "gtol": 1e-12, "maxcor": 50},
    )
    z = result.x
    if soft:
        label = int(np.argmax(z[n_x:]))
    return LeakageResult(
        image=z[:n_x].reshape(feature_shape),
        label=int(label),
        label_inferred=inferred,
        distance=float(result.fun),
        iterations=int(result.nit),
        seconds=time.perf_counter() - started,
    )
