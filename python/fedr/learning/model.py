"""Models and optimizers for federated learning: Keras models wrapped with their loss and metrics.

``from_keras_model`` plays the role of TFF's ``tff.learning.from_keras_model``:
it pairs a freshly built Keras model with the loss and metrics that local
training optimises and reports.  The federated process calls the user's
``model_fn`` to build it, as in the reference article.
"""

from __future__ import annotations

import re

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedr.errors import FedTypeError, FedValueError
from fedr.protocol.names import check_metric_names

__all__ = ["Model", "ModelSpec", "from_keras_model", "model_spec", "optimizer_fn"]


@dataclass(frozen=True, eq=False)
class Model:
    """A Keras model with its loss, metrics and the feature shape it takes."""

    keras_model: Any
    loss: Any
    metrics: tuple[Any, ...]
    feature_shape: tuple[int, ...]

    @property
    def trainable_variables(self) -> list[Any]:
        """The variables local training updates."""
        return list(self.keras_model.trainable_variables)

    @property
    def non_trainable_variables(self) -> list[Any]:
        """Variables kept but not trained (e.g. batch-norm statistics)."""
        return list(self.keras_model.non_trainable_variables)

    @property
    def metric_names(self) -> list[str]:
        """Names of the metrics, as reported per round."""
        return [m.name for m in self.metrics]

    def __repr__(self) -> str:
        n = sum(int(np.prod(v.shape)) for v in self.trainable_variables)
        return (
            f"Model(input={self.feature_shape}, trainable_params={n}, "
            f"loss={getattr(self.loss, 'name', self.loss)}, metrics={self.metric_names})"
        )


def _feature_shape(input_spec: Any, dummy_batch: Any) -> tuple[int, ...] | None:
    if dummy_batch is not None:
        if isinstance(dummy_batch, Mapping):
            x = dummy_batch.get("x")
        elif isinstance(dummy_batch, Sequence) and len(dummy_batch) == 2:
            x = dummy_batch[0]
        else:
            x = None
        if x is None:
            raise FedTypeError(
                "dummy_batch: expected a batch with an 'x' entry (OrderedDict(x=, y=)), "
                f"got {type(dummy_batch).__name__}"
            )
        shape = np.shape(x)
        if len(shape) < 2:
            raise FedValueError(f"dummy_batch: x must be a batch of rank >= 2, got shape {shape}")
        return tuple(int(d) for d in shape[1:])
    if input_spec is not None:
        spec = input_spec.get("x") if isinstance(input_spec, Mapping) else input_spec
        if isinstance(spec, Sequence) and not isinstance(spec, Mapping):
            if spec and not isinstance(spec[0], (int, np.integer)) and spec[0] is not None:
                spec = spec[0]  # (x_spec, y_spec)
        shape = tuple(getattr(spec, "shape", spec))
        # A TensorSpec has a batch dimension; a bare shape does not.
        if hasattr(spec, "shape"):
            shape = shape[1:]
        return tuple(int(d) for d in shape)
    return None


def _as_metric(metric: Any) -> Any:
    import keras

    if isinstance(metric, keras.metrics.Metric):
        return metric
    if isinstance(metric, str) or callable(metric):
        fn = keras.metrics.get(metric)
        if isinstance(fn, keras.metrics.Metric):
            return fn
        name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
        return keras.metrics.MeanMetricWrapper(fn, name=name)
    raise FedTypeError(f"metrics: expected Keras metrics or their names, got {type(metric).__name__}")


def _loss_by_name(keras: Any, name: str) -> Any:
    """A Keras loss object for a name: the class where one exists ("sparse_categorical_crossentropy"
    gives ``SparseCategoricalCrossentropy()``), so that it serialises for remote workers."""
    camel = "".join(part.capitalize() for part in name.split("_"))
    cls = getattr(keras.losses, camel, None)
    if isinstance(cls, type) and issubclass(cls, keras.losses.Loss):
        return cls()
    return keras.losses.get(name)


def _function_loss(keras: Any, fn: Callable[..., Any], name: str) -> Any:
    """Wrap a per-example loss function as a Keras Loss that averages over the batch.

    Keras's own ``LossFunctionWrapper``: a built-in Keras loss function so
    wrapped serialises (remote workers can rebuild it); a function of your own
    does not, which :func:`model_spec` reports.
    """
    from keras.src.losses.losses import LossFunctionWrapper  # not exported by keras.losses

    # A lambda's "<lambda>" is no valid TensorFlow name scope.
    return LossFunctionWrapper(fn, name=re.sub(r"[^A-Za-z0-9_.]", "", name) or "loss")


def from_keras_model(
    keras_model: Any,
    loss: Any,
    metrics: Sequence[Any] | Any = None,
    input_spec: Any = None,
    dummy_batch: Any = None,
) -> Model:
    """Wrap a Keras model for federated training.

    Args:
        keras_model: A ``keras.Model`` built freshly by the caller's ``model_fn``.
        loss: A Keras loss object, function or name.
        metrics: Keras metrics (objects or names), reported per round.
        input_spec: The shape of one example's features, or a ``tf.TensorSpec``
            of a batch (or a dict with such an ``x``).
        dummy_batch: A sample batch ``OrderedDict(x=, y=)``; used to build the model
            and to infer the input shape when ``input_spec`` is not given.

    Returns:
        A :class:`Model`.

    Raises:
        FedTypeError: ``keras_model`` is not a Keras model, or ``loss`` or
            ``metrics`` cannot be resolved.
        FedValueError: the input shape cannot be determined.
    """
    import keras

    if not isinstance(keras_model, keras.Model):
        raise FedTypeError(f"keras_model: expected a keras.Model, got {type(keras_model).__name__}")
    try:
        loss_fn = _loss_by_name(keras, loss) if isinstance(loss, str) else loss
    except ValueError as err:
        raise FedTypeError(f"loss: unknown Keras loss {loss!r} ({err})") from None
    if not callable(loss_fn):
        raise FedTypeError(f"loss: expected a Keras loss, got {type(loss).__name__}")
    if not isinstance(loss_fn, keras.losses.Loss):
        # A loss function returns one value per example; the wrapper averages the batch.
        name = loss if isinstance(loss, str) else getattr(loss_fn, "__name__", "loss")
        loss_fn = _function_loss(keras, loss_fn, str(name))
    if metrics is None:
        metrics = []
    elif not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    metric_objs = tuple(_as_metric(m) for m in metrics)
    check_metric_names(m.name for m in metric_objs)

    shape = _feature_shape(input_spec, dummy_batch)
    if shape is None:
        try:
            shape = tuple(int(d) for d in keras_model.input_shape[1:])
        except (AttributeError, ValueError, TypeError):
            raise FedValueError(
                "input_spec: the model has no input shape; give input_spec or dummy_batch"
            ) from None
    if not keras_model.built:
        keras_model.build((None, *shape))
    return Model(keras_model, loss_fn, metric_objs, shape)


# Keras's optimizers by class name; "fed*" are the server optimizers of Reddi et al. (fedr.learning.fedopt).
_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "fedadagrad": "adagrad", "fedyogi": "yogi", "fedadam": "adam"}
# Each optimizer's options and their rule: "unit" in [0, 1), "positive" > 0, "non_negative", "flag".
_OPTIONS = {
    "sgd": {"momentum": "unit", "nesterov": "flag", "weight_decay": "non_negative", "clipnorm": "positive"},
    "adam": {
        "beta_1": "unit", "beta_2": "unit", "epsilon": "positive", "amsgrad": "flag",
        "weight_decay": "non_negative", "clipnorm": "positive",
    },
    "fedadagrad": {"beta_1": "unit", "tau": "positive"},
    "fedyogi": {"beta_1": "unit", "beta_2": "unit", "tau": "positive"},
    "fedadam": {"beta_1": "unit", "beta_2": "unit", "tau": "positive"},
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value)


def _check_option(key: str, name: str, value: Any) -> Any:
    rule = _OPTIONS[key].get(name)
    if rule is None:
        raise FedValueError(
            f"{name}: unknown option of {key!r}; options are {', '.join(_OPTIONS[key])}"
        )
    if rule == "flag":
        if not isinstance(value, bool | np.bool_):
            raise FedValueError(f"{name}: expected True or False, got {value!r}")
        return bool(value)
    number = _number(value)
    ok = number is not None and np.isfinite(number) and {
        "unit": lambda v: 0 <= v < 1, "positive": lambda v: v > 0, "non_negative": lambda v: v >= 0
    }[rule](number)
    if not ok:
        expected = {"unit": "a number in [0, 1)", "positive": "a positive number", "non_negative": "a number >= 0"}
        raise FedValueError(f"{name}: expected {expected[rule]}, got {value!r}")
    return number


def optimizer_fn(name: str, learning_rate: float, **kwargs: Any) -> Callable[[], Any]:
    """Return a function that builds a fresh Keras optimizer.

    Args:
        name: ``"sgd"`` (options ``momentum``, ``nesterov``, ``weight_decay``,
            ``clipnorm``), ``"adam"`` (Keras's Adam: options ``beta_1``,
            ``beta_2``, ``epsilon``, ``amsgrad``, ``weight_decay``,
            ``clipnorm``), or a server optimizer of Reddi et al. 2021
            (:mod:`fedr.learning.fedopt`): ``"fedadagrad"`` (options
            ``beta_1``, ``tau``), ``"fedyogi"`` and ``"fedadam"`` (options
            ``beta_1``, ``beta_2``, ``tau``; defaults 0.9, 0.99, 1e-3).
        learning_rate: A positive learning rate.
        **kwargs: The options above.

    Returns:
        A zero-argument callable, as ``client_optimizer_fn`` and
        ``server_optimizer_fn`` expect.

    Raises:
        FedValueError: unknown name or option, or a value out of range; the
            message names the argument and lists the valid options.
    """
    key = str(name).lower()
    if key not in _OPTIMIZERS:
        raise FedValueError(f"name: expected one of {sorted(_OPTIMIZERS)}, got {name!r}")
    lr = _number(learning_rate)
    if lr is None or not np.isfinite(lr) or lr <= 0:
        raise FedValueError(f"learning_rate: expected a positive number, got {learning_rate!r}")
    options = {option: _check_option(key, option, value) for option, value in kwargs.items()}

    def build() -> Any:
        if key.startswith("fed"):
            from fedr.learning.fedopt import FedOpt

            return FedOpt(_OPTIMIZERS[key], learning_rate=lr, **options)
        import keras

        return getattr(keras.optimizers, _OPTIMIZERS[key])(learning_rate=lr, **options)

    build.__name__ = f"{key}_optimizer"
    build()  # fail now, not in the first round
    return build


# ----------------------------------------------------------------------------- a model that travels


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a :class:`Model` in another process: Keras configs, no code.

    Ray workers and Flower nodes cannot run the user's ``model_fn`` (from R it
    is an R function): they rebuild the model from this spec, which holds the
    Keras model's config, the loss's and metrics' configs (plain data, as
    ``keras.saving.serialize_keras_object`` gives them) and the input shape.
    """

    model: dict[str, Any]
    loss: dict[str, Any]
    metrics: tuple[dict[str, Any], ...]
    feature_shape: tuple[int, ...]

    def build(self) -> Model:
        """Build a fresh :class:`Model` from the spec (new weights; the state supplies the values)."""
        import keras

        if self.model.get("class_name") == "Sequential":
            # A Sequential built in code places its variables under its name
            # ("sequential/dense/kernel"); from a config Keras builds them
            # outside it ("dense/kernel"). Same scope, same names as the original.
            with keras.name_scope(self.model.get("config", {}).get("name", "sequential")):
                keras_model = keras.saving.deserialize_keras_object(self.model)
        else:
            keras_model = keras.saving.deserialize_keras_object(self.model)
        if not keras_model.built:
            keras_model.build((None, *self.feature_shape))
        loss = keras.saving.deserialize_keras_object(self.loss)
        metrics = tuple(keras.saving.deserialize_keras_object(m) for m in self.metrics)
        return Model(keras_model, loss, metrics, self.feature_shape)


def _serialize(obj: Any, what: str) -> dict[str, Any]:
    import keras

    try:
        config = keras.saving.serialize_keras_object(obj)
        keras.saving.deserialize_keras_object(config)  # it must also come back
    except Exception as err:  # noqa: BLE001 - any failure means it cannot travel
        raise FedTypeError(
            f"{what} cannot travel to remote workers: {type(err).__name__}: {str(err).splitlines()[0]} "
            "(remote executors rebuild the model from Keras configs, so the model, loss and metrics "
            "must be Keras objects without Python or R functions of your own; use the threads executor)"
        ) from None
    return config


def model_spec(model: Model) -> ModelSpec:
    """Return the :class:`ModelSpec` of ``model``.

    Raises:
        FedTypeError: the model, its loss or a metric cannot be serialised (a
            loss written in R or Python, a Lambda layer, a custom layer not
            registered with Keras); the message names which.
    """
    return ModelSpec(
        _serialize(model.keras_model, "model"),
        _serialize(model.loss, "loss"),
        tuple(_serialize(m, f"metrics[{i}] ({m.name})") for i, m in enumerate(model.metrics)),
        tuple(model.feature_shape),
    )
