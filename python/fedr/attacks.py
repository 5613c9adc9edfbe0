"""Gradient leakage: why plain FedAvg is not private, and what the defences change.

The reference article warns that the updates clients send can be inverted into
their data: "the server starting from randomly generated fake data (resulting
in fake gradients) and then, iteratively updating that data to obtain
gradients more and more like the real ones" (Zhu, Liu and Han 2019, "Deep
Leakage from Gradients", NeurIPS). This module carries out that attack on
fedr's own client training, and a simpler exact one:

- :func:`recover_dense_input`: the analytic inversion of a dense layer with a
  bias. For ``y = x W + b`` and one example, ``dL/dW = x^T g`` and
  ``dL/db = g``, so after one SGD step ``x = ΔW[:, c] / Δb[c]`` for any unit
  ``c`` with ``Δb[c] != 0`` (Phong et al. 2017, "Privacy-Preserving Deep
  Learning via Additively Homomorphic Encryption"; Geiping et al. 2020,
  "Inverting Gradients - How easy is it to break privacy in federated
  learning?", Section 4). This recovers the input of the reference model (one
  dense softmax layer) exactly, and the input of any network whose first layer
  is dense with a bias.
- :func:`deep_leakage`: Deep Leakage from Gradients by gradient matching:
  L-BFGS (here L-BFGS-B from SciPy, bounded to the pixel range) on a dummy
  input, so that the gradients it produces match the observed ones. The label
  is inferred from the sign of the last layer's bias gradient (Zhao et al.
  2020, "iDLG: Improved Deep Leakage from Gradients") when not given, or
  optimised as a soft label as in the original DLG when it cannot be inferred.
- :func:`one_client_update` / :func:`client_updates`: the update a client
  sends after one SGD step on one image, from fedr's own FedAvg process.
- :func:`leakage_demo`: the whole demonstration: the attacks with no defence
  (the server sees the client's update), under secure aggregation (the server
  sees only the sum over the round's clients; Bonawitz et al. 2017), and under
  differential privacy (clip to ``C``, Gaussian noise of standard deviation
  ``z * C``, divide by the clients per round; McMahan et al. 2018). It writes a
  PNG of the original and recovered images and scores each recovery
  (:func:`similarity`).

What the defences do and do not do: secure aggregation hides one client's
update inside the sum, which still leaks a blend of the round's images (and
everything when the other clients' updates are known or absent). Differential
privacy as in McMahan et al. adds the noise at the server, so it protects what
the aggregate (and the released model) reveals; against a curious server it is
meant to be combined with secure aggregation or with noise added by clients.
The demo scores what an attacker recovers from the aggregate in each case.
"""

from __future__ import annotations

import math
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedr._seeds import check_seed
from fedr.errors import FedTypeError, FedValueError

__all__ = [
    "ClientUpdates",
    "LeakageReport",
    "LeakageResult",
    "client_updates",
    "deep_leakage",
    "infer_label",
    "leakage_demo",
    "mlp_model_fn",
    "one_client_update",
    "recover_dense_input",
    "reference_model_fn",
    "similarity",
    "write_png",
]

_DEFENCES = ("none", "secure_aggregation", "differential_privacy")


# --------------------------------------------------------------------------- analytic inversion


def recover_dense_input(delta_kernel: Any, delta_bias: Any, *, unit: int | None = None) -> np.ndarray:
    """Recover the input of a dense layer from its update after one SGD step on one example.

    For ``y = x W + b`` trained one step of SGD with learning rate ``lr`` on one
    example, ``ΔW = -lr * x^T g`` and ``Δb = -lr * g`` with ``g = dL/dy``, so
    ``x = ΔW[:, c] / Δb[c]`` for every unit ``c`` with ``Δb[c] != 0``: the
    learning rate and the loss cancel, and the recovery is exact (Phong et al.
    2017; Geiping et al. 2020). The unit with the largest ``|Δb[c]|`` is used,
    which is the most accurate in floating point. Gradients instead of updates
    work the same (the sign and scale cancel).

    With several examples (a batch, several steps, or the sum over clients
    that secure aggregation reveals) the same formula gives
    ``sum_i g_ic x_i / sum_i g_ic``, a blend of the inputs.

    Args:
        delta_kernel: The kernel's update ``ΔW``, shape ``(inputs, units)``.
        delta_bias: The bias's update ``Δb``, shape ``(units,)``.
        unit: The unit ``c`` to divide by; default the one with the largest ``|Δb[c]|``.

    Returns:
        The recovered input, float64 of shape ``(inputs,)``.

    Raises:
        FedValueError: the shapes do not fit, a value is not finite, ``unit``
            is out of range, or ``Δb[c]`` is zero (nothing to divide by).
    """
    dw = np.asarray(delta_kernel, dtype=np.float64)
    db = np.asarray(delta_bias, dtype=np.float64)
    if dw.ndim != 2:
        raise FedValueError(f"delta_kernel: expected a 2-D array (inputs, units), got shape {dw.shape}")
    if db.ndim != 1 or db.shape[0] != dw.shape[1]:
        raise FedValueError(
            f"delta_bias: expected shape ({dw.shape[1]},) to match delta_kernel {dw.shape}, got {db.shape}"
        )
    if not (np.all(np.isfinite(dw)) and np.all(np.isfinite(db))):
        raise FedValueError("delta_kernel, delta_bias: values must be finite")
    if unit is None:
        c = int(np.argmax(np.abs(db)))
    else:
        if isinstance(unit, bool) or not isinstance(unit, int | np.integer) or not 0 <= unit < db.shape[0]:
            raise FedValueError(f"unit: expected an integer in [0, {db.shape[0]}), got {unit!r}")
        c = int(unit)
    if db[c] == 0:
        raise FedValueError(
            "delta_bias: the bias update is zero" + (f" at unit {c}" if unit is not None else "")
            + "; the layer did not learn from this example, there is nothing to divide by"
        )
    return dw[:, c] / db[c]


# --------------------------------------------------------------------------- scores


def _ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004) of two 2-D images in [0, 1], uniform ``window``² windows."""
    from numpy.lib.stride_tricks import sliding_window_view

    if a.ndim != 2 or min(a.shape) < window:
        window = max(1, min(a.shape) if a.ndim == 2 else 1)
        if a.ndim != 2:
            a, b = a.reshape(1, -1), b.reshape(1, -1)
            window = 1
    c1, c2 = 0.01**2, 0.03**2

    def local_mean(z: np.ndarray) -> np.ndarray:
        return sliding_window_view(z, (window, window)).mean(axis=(-1, -2))

    mu_a, mu_b = local_mean(a), local_mean(b)
    n = window * window
    # Sample (co)variances, as skimage's default.
    scale = n / (n - 1) if n > 1 else 1.0
    var_a = (local_mean(a * a) - mu_a**2) * scale
    var_b = (local_mean(b * b) - mu_b**2) * scale
    cov = (local_mean(a * b) - mu_a * mu_b) * scale
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim.mean())


def similarity(original: Any, recovered: Any, *, shape: tuple[int, int] | None = (28, 28)) -> dict[str, float]:
    """Score a recovered image against the original.

    The recovered image is first clipped to the pixel range [0, 1] (an attacker
    knows it); then:

    - ``ncc``: normalised cross-correlation (Pearson correlation of the
      pixels), 1 for a perfect recovery, about 0 for an unrelated image;
    - ``ssim``: mean structural similarity (Wang et al. 2004) over 7x7 windows
      of the 2-D image, data range 1;
    - ``mse``: mean squared error of the pixels.

    Args:
        original: The original image, values in [0, 1], any shape with
            ``prod(shape)`` pixels.
        recovered: The recovered image, same number of pixels.
        shape: The 2-D shape for SSIM; ``None`` computes SSIM on the flat vector.

    Returns:
        ``{"ncc": ..., "ssim": ..., "mse": ...}``. ``ncc`` is 0 when either
        image is constant.

    Raises:
        FedValueError: the sizes differ or a value is not finite.
    """
    a = np.asarray(original, dtype=np.float64).ravel()
    b = np.asarray(recovered, dtype=np.float64).ravel()
    if a.size != b.size:
        raise FedValueError(f"recovered: expected {a.size} pixels like the original, got {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise FedValueError("original, recovered: values must be finite")
    b = np.clip(b, 0.0, 1.0)
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(da @ da) * float(db @ db))
    ncc = float(da @ db / denom) if denom > 0 else 0.0
    if shape is not None and int(np.prod(shape)) == a.size:
        ssim = _ssim(a.reshape(shape), b.reshape(shape))
    else:
        ssim = _ssim(a, b)
    return {"ncc": ncc, "ssim": ssim, "mse": float(np.mean((a - b) ** 2))}


# --------------------------------------------------------------------------- PNG


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: str | Path, image: Any) -> str:
    """Write a grayscale image to a PNG file (8-bit, no dependencies beyond zlib).

    Args:
        path: The file to write.
        image: A 2-D array of values in [0, 1] (clipped), row 0 at the top.

    Returns:
        The path written, as a string.

    Raises:
        FedValueError: ``image`` is not a non-empty 2-D array of finite values.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise FedValueError(f"image: expected a non-empty 2-D array, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise FedValueError("image: values must be finite")
    pixels = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    height, width = pixels.shape
    # Each scanline starts with filter type 0 (none).
    raw = np.concatenate([np.zeros((height, 1), np.uint8), pixels], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )
    path = Path(path)
    path.write_bytes(data)
    return str(path)


def _grid(rows: Sequence[Sequence[np.ndarray]], *, scale: int = 3, gap: int = 4) -> np.ndarray:
    """Tile 2-D images into one picture: rows of images, white gaps, each pixel ``scale``² pixels."""
    h, w = rows[0][0].shape
    cols = max(len(r) for r in rows)
    cell_h, cell_w = h * scale, w * scale
    out = np.ones((gap + len(rows) * (cell_h + gap), gap + cols * (cell_w + gap)))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            big = np.kron(np.clip(np.asarray(img, np.float64), 0, 1), np.ones((scale, scale)))
            top, left = gap + i * (cell_h + gap), gap + j * (cell_w + gap)
            # Dark pixels on white: Fashion-MNIST is white on black, so invert for the page.
            out[top : top + cell_h, left : left + cell_w] = 1.0 - big
    return out


# --------------------------------------------------------------------------- models and client updates


def reference_model_fn(input_dim: int = 784, classes: int = 10) -> Callable[[], Any]:
    """The reference article's model: one dense softmax layer, zero-initialised.

    Args:
        input_dim: Input features (784 pixels of a 28x28 image).
        classes: Output classes.

    Returns:
        A ``model_fn`` for :func:`fedr.learning.build_weighted_fed_avg` (sparse
        categorical cross-entropy loss).
    """

    def model_fn() -> Any:
        import keras

        from fedr.learning import from_keras_model

        model = keras.Sequential([
            keras.Input(shape=(input_dim,)),
            keras.layers.Dense(classes, activation="softmax", kernel_initializer="zeros"),
        ])
        return from_keras_model(model, loss="sparse_categorical_crossentropy")

    return model_fn


def mlp_model_fn(
    input_dim: int = 784, hidden: int = 32, classes: int = 10, activation: str = "sigmoid"
) -> Callable[[], Any]:
    """A small MLP as in Deep Leakage from Gradients: one hidden layer, softmax output.

    DLG needs a twice-differentiable network: Zhu et al. use sigmoid
    activations (ReLU's second derivative is zero almost everywhere).

    Args:
        input_dim: Input features.
        hidden: Hidden units.
        classes: Output classes.
        activation: The hidden layer's activation.

    Returns:
        A ``model_fn`` for :func:`fedr.learning.build_weighted_fed_avg` (sparse
        categorical cross-entropy loss; weights from Keras's default
        initialisers, seeded by the process's seed).
    """

    def model_fn() -> Any:
        import keras

        from fedr.learning import from_keras_model

        model = keras.Sequential([
            keras.Input(shape=(input_dim,)),
            keras.layers.Dense(hidden, activation=activation),
            keras.layers.Dense(classes, activation="softmax"),
        ])
        return from_keras_model(model, loss="sparse_categorical_crossentropy")

    return model_fn


@dataclass(frozen=True)
class ClientUpdates:
    """The updates of one-image clients after one SGD step each, from the same server state.

    Attributes:
        updates: One tuple of arrays per client, shaped as the model's
            trainable variables: the server's new weights minus the old.
        state: The server state every client started from.
        process: The FedAvg process (its ``model`` is a replica to attack with).
        learning_rate: The clients' SGD learning rate.
    """

    updates: list[tuple[np.ndarray, ...]]
    state: Any
    process: Any
    learning_rate: float


def _images(images: Any, what: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.dtype.kind not in "biuf":
        raise FedTypeError(f"{what}: expected numeric images, got dtype {x.dtype}")
    integers = x.dtype.kind in "biu"
    x = x.astype(np.float32)
    if integers or (x.size and float(np.max(x)) > 1.0):
        x = x / np.float32(255.0)
    if x.ndim == 1:
        x = x[None]
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if not np.all(np.isfinite(x)):
        raise FedValueError(f"{what}: values must be finite")
    return np.ascontiguousarray(x, dtype=np.float32)


def client_updates(
    model_fn: Callable[[], Any],
    images: Any,
    labels: Any,
    *,
    learning_rate: float = 0.02,
    seed: int = 0,
) -> ClientUpdates:
    """The update each of several one-image clients sends after one SGD step, with fedr's FedAvg.

    One process ``build_weighted_fed_avg(model_fn, optimizer_fn("sgd",
    learning_rate), workers=1, seed=seed)``; each image is its own client
    (batch size 1) and runs one round alone from the initial state, so the
    server's new weights minus the old are exactly that client's update (the
    default server optimizer is SGD with learning rate 1.0).

    Args:
        model_fn: A function returning ``fedr.learning.from_keras_model(...)``.
        images: ``(n, features)`` or ``(n, 28, 28)`` images, floats in [0, 1]
            (integers or values above 1 are divided by 255).
        labels: ``n`` class labels.
        learning_rate: The clients' SGD learning rate.
        seed: The process seed (initial weights).

    Returns:
        A :class:`ClientUpdates`.

    Raises:
        FedValueError: no images, or labels that do not match them.
    """
    from fedr import learning
    from fedr.datasets import ClientData, as_labels

    x = _images(images)
    if x.shape[0] == 0:
        raise FedValueError("images: expected at least one image")
    y = as_labels(labels, x.shape[0], what="labels")
    process = learning.build_weighted_fed_avg(
        model_fn, learning.optimizer_fn("sgd", learning_rate), workers=1, seed=seed
    )
    state = process.initialize()
    old = [np.asarray(a, np.float64) for a in state.model.trainable]
    updates = []
    for i in range(x.shape[0]):
        client = ClientData(x[i : i + 1], y[i : i + 1], batch_size=1, client_id=f"client_{i}")
        new_state, _ = process.next(state, [client])
        new = new_state.model.trainable
        updates.append(tuple(
            (np.asarray(n, np.float64) - o).astype(np.float32) for n, o in zip(new, old, strict=True)
        ))
    return ClientUpdates(updates, state, process, float(learning_rate))


def one_client_update(
    model_fn: Callable[[], Any], image: Any, label: int, *, learning_rate: float = 0.02, seed: int = 0
) -> ClientUpdates:
    """The update one client sends after one SGD step on one image (see :func:`client_updates`).

    Args:
        model_fn: A function returning ``fedr.learning.from_keras_model(...)``.
        image: One image (``(features,)`` or ``(28, 28)``), floats in [0, 1].
        label: Its class label.
        learning_rate: The client's SGD learning rate.
        seed: The process seed.

    Returns:
        A :class:`ClientUpdates` with one update (``.updates[0]``).
    """
    x = _images(image, "image")
    if x.shape[0] != 1:
        raise FedValueError(f"image: expected one image, got {x.shape[0]}")
    return client_updates(model_fn, x, np.asarray([label]), learning_rate=learning_rate, seed=seed)


# --------------------------------------------------------------------------- Deep Leakage from Gradients


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


# --------------------------------------------------------------------------- defences, as the server sees them


@dataclass(frozen=True)
class _Sent:
    client_id: str
    delta: Any
    num_examples: int


def _flatten(update: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float32).ravel() for a in update])


def _unflatten(flat: np.ndarray, like: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    out, start = [], 0
    for a in like:
        out.append(np.asarray(flat[start : start + a.size], np.float64).reshape(a.shape))
        start += a.size
    return tuple(out)


def _plain_sum(updates: Sequence[Sequence[np.ndarray]]) -> tuple[np.ndarray, ...]:
    return tuple(np.sum([np.asarray(u[i], np.float64) for u in updates], axis=0) for i in range(len(updates[0])))


def _secure_sum(updates: Sequence[Sequence[np.ndarray]], *, seed: int) -> tuple[tuple[np.ndarray, ...], str]:
    """The sum the server learns under secure aggregation, and how it was computed.

    Through ``fedr.privacy.secure_sum`` when fedr exports it (masked,
    quantized updates; the server unmasks only their sum), else the plain sum:
    secure aggregation reveals exactly the sum (up to its quantization), so
    the plain sum is a faithful simulation of what the server learns.
    """
    try:
        from fedr.privacy import secure_sum
    except ImportError:
        return _plain_sum(updates), "plain sum"
    flats = [_flatten(u) for u in updates]
    bound = max(float(np.max(np.abs(f))) for f in flats)
    agg = secure_sum(clip_range=max(1.0, bound))
    state = agg.init()
    ids = [f"client_{i}" for i in range(len(flats))]
    context = agg.start_round(state, ids, seed=np.random.SeedSequence(seed))
    sent = [
        _Sent(cid, agg.client_step(state, flat, client_id=cid, num_examples=1, context=context), 1)
        for cid, flat in zip(ids, flats, strict=True)
    ]
    result = agg.aggregate(state, sent, seed=np.random.SeedSequence(seed), context=context)
    return _unflatten(np.asarray(result.update, np.float64), updates[0]), "fedr.privacy.secure_sum"


def _dp_sum(
    updates: Sequence[Sequence[np.ndarray]],
    *,
    noise_multiplier: float,
    clients_per_round: int,
    clip: float,
    seed: int,
) -> tuple[tuple[np.ndarray, ...], str]:
    """The noised sum DP-FedAvg reveals: the aggregate (noised sum / clients_per_round) times clients_per_round.

    Through ``fedr.privacy.gaussian_fixed`` (clip each update to ``clip`` in
    the client step; sum, add N(0, (z·clip)²) per coordinate, divide by
    ``clients_per_round`` in the aggregate), or the same in numpy if that
    aggregator is not available.
    """
    flats = [_flatten(u) for u in updates]
    try:
        from fedr.privacy import gaussian_fixed
    except ImportError:
        gaussian_fixed = None
    if gaussian_fixed is not None:
        import warnings

        from fedr.privacy import ReproducibleNoiseWarning

        # A demonstration of what the server sees, repeatable by its seed: reproducible
        # noise on purpose (it would void a real guarantee, hence fedr's warning, silenced here).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReproducibleNoiseWarning)
            agg = gaussian_fixed(noise_multiplier, clients_per_round, clip, noise_seed=seed)
        state = agg.init()
        ids = [f"client_{i}" for i in range(len(flats))]
        context = agg.start_round(state, ids, seed=np.random.SeedSequence(seed))
        sent = [
            _Sent(cid, agg.client_step(state, flat, client_id=cid, num_examples=1, context=context), 1)
            for cid, flat in zip(ids, flats, strict=True)
        ]
        result = agg.aggregate(state, sent, seed=np.random.SeedSequence(seed), context=context)
        total = np.asarray(result.update, np.float64) * clients_per_round
        via = "fedr.privacy.gaussian_fixed"
    else:  # the same mechanism, in numpy
        total = np.zeros(flats[0].size)
        for flat in flats:
            norm = float(np.linalg.norm(flat.astype(np.float64)))
            total += flat * (min(1.0, clip / norm) if norm > 0 else 1.0)
        total += np.random.default_rng(seed).normal(0.0, noise_multiplier * clip, total.shape)
        via = "numpy clip + Gaussian noise"
    return _unflatten(total, updates[0]), via


def _class_column(delta_kernel: np.ndarray, unit: int) -> np.ndarray:
    """The kernel update's column of one class, scaled to [0, 1] (min to max).

    For the class ``c`` of a client that is alone with it in the round,
    ``ΔW[:, c]`` is ``lr (1 - p_c) x`` minus ``lr sum_i p_ic x_i`` over the
    others: that client's image over a blend of the round's.
    """
    col = np.asarray(delta_kernel, np.float64)[:, unit]
    span = float(col.max() - col.min())
    return (col - col.min()) / span if span > 0 else np.zeros_like(col)


# --------------------------------------------------------------------------- the demonstration


@dataclass
class LeakageReport:
    """What :func:`leakage_demo` found.

    Attributes:
        rows: One dict per (model, attack, defence): ``model``, ``attack``,
            ``defence``, ``ncc``, ``ssim``, ``mse`` (the recovered image
            against the target client's image, see :func:`similarity`),
            ``best_ncc`` and ``best_client`` (the round's image the recovery
            resembles most), ``label`` (used by DLG, -1 otherwise) and ``seconds``.
        path: The PNG written, or None.
        original: The target client's image.
        recovered: The recovered images, keyed ``"model/attack/defence"``.
        settings: The demo's parameters, and how the secure sum and DP were
            computed (``secure_via``, ``dp_via``).
    """

    rows: list[dict[str, Any]]
    path: str | None
    original: np.ndarray
    recovered: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> dict[str, list[Any]]:
        """The rows as columns (``{"model": [...], "ncc": [...], ...}``), as R's data frames want."""
        keys = list(self.rows[0]) if self.rows else []
        return {k: [row[k] for row in self.rows] for k in keys}

    def score(self, model: str, attack: str, defence: str, metric: str = "ncc") -> float:
        """One score, e.g. ``report.score("reference", "analytic", "none")``."""
        for row in self.rows:
            if (row["model"], row["attack"], row["defence"]) == (model, attack, defence):
                return float(row[metric])
        raise KeyError((model, attack, defence))

    def __str__(self) -> str:
        lines = [f"{'model':<10} {'attack':<13} {'defence':<21} {'ncc':>7} {'ssim':>7} {'mse':>8} {'best_ncc':>8}"]
        for r in self.rows:
            lines.append(
                f"{r['model']:<10} {r['attack']:<13} {r['defence']:<21} {r['ncc']:7.3f} "
                f"{r['ssim']:7.3f} {r['mse']:8.4f} {r['best_ncc']:8.3f}"
            )
        if self.path:
            lines.append(f"PNG: {self.path}")
        return "\n".join(lines)


def leakage_demo(
    images: Any = None,
    labels: Any = None,
    *,
    path: str | Path | None = "leakage.png",
    target: int = 0,
    clients_per_round: int = 10,
    learning_rate: float = 0.02,
    noise_multiplier: float = 1.0,
    clip: float = 0.5,
    hidden: int = 32,
    max_iter: int = 300,
    seed: int = 0,
) -> LeakageReport:
    """Show gradient leakage on fedr's FedAvg, with no defence, secure aggregation and DP.

    Every image is a client holding that one image; each runs one SGD step
    from the same server state (:func:`client_updates`). The attacker wants
    the ``target`` client's image and sees:

    - ``none``: that client's update, as the FedAvg server does;
    - ``secure_aggregation``: only the sum of all the round's updates
      (Bonawitz et al. 2017: the server learns the sum and nothing else),
      through ``fedr.privacy.secure_sum`` when fedr exports it, else the
      plain sum, which is exactly what the server learns;
    - ``differential_privacy``: the DP-FedAvg aggregate at the private
      example's settings (McMahan et al. 2018: each update L2-clipped to
      ``clip``, the sum noised with N(0, (noise_multiplier·clip)²) per
      coordinate, divided by ``clients_per_round``), through
      ``fedr.privacy.gaussian_fixed``.

    Attacks: on the reference model (one dense softmax layer of 10 units on
    784 pixels, zero-initialised), the analytic inversion
    :func:`recover_dense_input` (``analytic``) and, as an attacker reading the
    kernel update's column of the target's class would (``class_column``,
    under the defences); on a small MLP (784-``hidden``-10, sigmoid, Keras's
    seeded initialisation), Deep Leakage from Gradients (:func:`deep_leakage`,
    ``dlg``; L-BFGS-B from a seeded random dummy, the label inferred as in
    iDLG when the gradients single one out).

    What to expect: with no defence both attacks recover the image (NCC about
    1). Under secure aggregation the analytic formula returns a blend of the
    round's images; it can still resemble *some* client's image (``best_ncc``),
    and the class column shows the target's image wherever it is the only
    client of its class in the round: secure aggregation alone does not hide a
    single client's data from a model this small. DP's noise drowns both.

    The PNG (``path``) has three rows, images shown dark on white at 3x: the
    round's images (the target first); the reference model: original,
    analytic/none, analytic/secure, class_column/secure, analytic/DP,
    class_column/DP; the MLP: original, dlg/none, dlg/secure, dlg/DP.

    Args:
        images: The round's images, ``(n, 784)`` or ``(n, 28, 28)``, in [0, 1]
            (integers are divided by 255), or a :class:`fedr.datasets.Dataset`
            (its first ``clients_per_round`` test images); default
            Fashion-MNIST's.
        labels: Their labels (default the test labels).
        path: Where to write the PNG; None writes none.
        target: The index of the attacked client's image.
        clients_per_round: Clients of the DP round (its divisor); with the
            default images, also how many images are used.
        learning_rate: The clients' SGD learning rate (the article's 0.02).
        noise_multiplier: DP's noise multiplier z (the private example's 1.0).
        clip: DP's L2 clip C (the private example's 0.5).
        hidden: Hidden units of the MLP.
        max_iter: L-BFGS iterations of each DLG run at most.
        seed: Seeds the models' initial weights, DP noise and DLG's dummy input.

    Returns:
        A :class:`LeakageReport` (``print`` it for the table).

    Raises:
        FedValueError: fewer than two images, labels that do not match,
            ``target`` out of range, or a count that is not a positive integer.
    """
    from fedr.datasets import Dataset, as_labels, load_fashion_mnist

    if images is None or isinstance(images, Dataset):
        data = load_fashion_mnist() if images is None else images
        images = data.x_test[:clients_per_round]
        labels = data.y_test[:clients_per_round] if labels is None else labels
    x = _images(images)
    if labels is None:
        raise FedValueError("labels: give the images' labels")
    y = as_labels(labels, x.shape[0], what="labels")
    n = x.shape[0]
    if n < 2:
        raise FedValueError(f"images: expected at least 2 images (one round of clients), got {n}")
    if isinstance(target, bool) or not isinstance(target, int | np.integer) or not 0 <= target < n:
        raise FedValueError(f"target: expected an integer in [0, {n}), got {target!r}")
    for name, value in (("clients_per_round", clients_per_round), ("hidden", hidden), ("max_iter", max_iter)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise FedValueError(f"{name}: expected a positive integer, got {value!r}")
    side = int(round(math.sqrt(x.shape[1])))
    shape = (side, side) if side * side == x.shape[1] else None
    original = x[target].astype(np.float64)
    rows: list[dict[str, Any]] = []
    recovered: dict[str, np.ndarray] = {}

    def record(model: str, attack: str, defence: str, image: np.ndarray, seconds: float, label: int = -1) -> None:
        image = np.asarray(image, np.float64).ravel()
        score = similarity(original, image, shape=shape)
        others = [similarity(x[i], image, shape=shape)["ncc"] for i in range(n)]
        best = int(np.argmax(others))
        rows.append({
            "model": model, "attack": attack, "defence": defence, **score,
            "best_ncc": float(others[best]), "best_client": best, "label": int(label), "seconds": float(seconds),
        })
        recovered[f"{model}/{attack}/{defence}"] = np.clip(image, 0.0, 1.0)

    dp = {"noise_multiplier": noise_multiplier, "clients_per_round": clients_per_round, "clip": clip, "seed": seed}

    # The reference model: the analytic inversion of its dense layer.
    classes = max(10, int(y.max()) + 1)
    ref = client_updates(reference_model_fn(x.shape[1], classes), x, y, learning_rate=learning_rate, seed=seed)
    views = {"none": ref.updates[target]}
    views["secure_aggregation"], secure_via = _secure_sum(ref.updates, seed=seed)
    views["differential_privacy"], dp_via = _dp_sum(ref.updates, **dp)
    for defence in _DEFENCES:
        started = time.perf_counter()
        dw, db = views[defence]
        try:
            image = recover_dense_input(dw, db)
        except FedValueError:
            image = np.zeros_like(original)
        record("reference", "analytic", defence, image, time.perf_counter() - started)
        if defence != "none":
            started = time.perf_counter()
            record("reference", "class_column", defence, _class_column(dw, int(y[target])),
                   time.perf_counter() - started)

    # A small MLP: Deep Leakage from Gradients.
    mlp = client_updates(mlp_model_fn(x.shape[1], hidden, classes), x, y, learning_rate=learning_rate, seed=seed)
    views = {"none": mlp.updates[target]}
    views["secure_aggregation"], _ = _secure_sum(mlp.updates, seed=seed)
    views["differential_privacy"], _ = _dp_sum(mlp.updates, **dp)
    for defence in _DEFENCES:
        result = deep_leakage(
            mlp.process.model, [np.asarray(a) for a in views[defence]], weights=mlp.state,
            learning_rate=learning_rate, max_iter=max_iter, seed=seed,
        )
        record("mlp", "dlg", defence, result.image, result.seconds, result.label)

    written = None
    if path is not None:
        def pic(img: np.ndarray) -> np.ndarray:
            return np.asarray(img).reshape(shape) if shape else np.asarray(img).reshape(1, -1)

        order = [target] + [i for i in range(n) if i != target]
        grid = [
            [pic(x[i]) for i in order],
            [pic(original)] + [pic(recovered[k]) for k in (
                "reference/analytic/none", "reference/analytic/secure_aggregation",
                "reference/class_column/secure_aggregation", "reference/analytic/differential_privacy",
                "reference/class_column/differential_privacy")],
            [pic(original)] + [pic(recovered[f"mlp/dlg/{d}"]) for d in _DEFENCES],
        ]
        written = write_png(path, _grid(grid))
    settings = {
        "target": int(target), "target_label": int(y[target]), "clients": n,
        "clients_per_round": clients_per_round, "learning_rate": learning_rate,
        "noise_multiplier": noise_multiplier, "clip": clip, "hidden": hidden, "max_iter": max_iter,
        "seed": seed, "secure_via": secure_via, "dp_via": dp_via,
    }
    return LeakageReport(rows, written, original, recovered, settings)
