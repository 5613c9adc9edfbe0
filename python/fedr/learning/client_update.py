"""One client's work in one round, as one compiled TensorFlow graph: local training and evaluation.

A :class:`ClientUpdate` owns one replica of the model. Each call loads the
whole server model (trainable and non-trainable variables) into it, sets the
random-generator state of its layers (Dropout, ...) from the client's seed,
loops over the client's batches inside the graph (``tf.range`` loops, no
Python per batch) and returns the flat model delta, the non-trainable float
variables after training (BatchNorm statistics), the example count and
Keras-style metrics, accumulated on the predictions made just before each
batch's update (McMahan et al. 2016, Algorithm 1, ClientUpdate).

With ``proximal_mu`` > 0 the client runs FedProx's local step instead (Li et
al. 2020, "Federated Optimization in Heterogeneous Networks"): it minimises
its loss plus ``mu / 2 * ||w - w_server||^2`` over the trainable weights,
which keeps heterogeneous clients from drifting far from the round's starting
weights. ``proximal_mu`` = 0 builds exactly FedAvg's graph.

With ``control_variates`` the client runs SCAFFOLD's local step
(Karimireddy et al. 2020, :mod:`fedr.learning.scaffold`): each step's
gradient gets the correction c - c_i added, a flat vector the call is given.

Nothing is carried from one call to the next: the same weights, data and seed
give the same output on any replica, in any order.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from fedr.datasets import ClientData
from fedr.errors import FedValueError
from fedr.learning._targets import check_targets
from fedr.learning.model import Model
from fedr.learning.state import ModelWeights
from fedr.protocol.messages import ClientFailure, ClientOutput, describe_error

__all__ = ["ClientFailure", "ClientOutput", "ClientUpdate", "check_proximal_mu", "client_tensors", "describe_error"]


_TENSORS: weakref.WeakKeyDictionary[ClientData, tuple[Any, Any, Any]] = weakref.WeakKeyDictionary()
_TENSORS_LOCK = threading.Lock()


def _scale(client: ClientData) -> np.ndarray:
    """The divisor of the client's stored pixels as a float32 scalar (1 for float features, unused then)."""
    return np.asarray(client.scale if client.scale is not None else 1.0, np.float32)


def client_tensors(client: ClientData) -> tuple[Any, Any, Any]:
    """Return the client's x, y and offsets as tensors, converted once per client.

    Converting copies the arrays (about 6 ms for 6000 images of 784 floats), so
    the tensors are kept for as long as the ClientData lives; a ClientData's
    arrays are read-only, so the copy cannot go stale.
    """
    with _TENSORS_LOCK:
        cached = _TENSORS.get(client)
    if cached is None:
        cached = (
            tf.convert_to_tensor(client.x),
            tf.convert_to_tensor(client.y),
            tf.convert_to_tensor(client.offsets),
        )
        with _TENSORS_LOCK:
            _TENSORS[client] = cached
    return cached


def check_proximal_mu(value: Any) -> float:
    """Return FedProx's ``proximal_mu`` as a float: a finite number >= 0 (0 is plain FedAvg).

    Raises:
        FedValueError: ``value`` is not a number (a bool, a text, None), not
            finite, or negative; the message starts with ``proximal_mu:``.
    """
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if not ok or not np.isfinite(value) or value < 0:
        raise FedValueError(f"proximal_mu: expected a number >= 0, got {value!r}")
    return float(value)


def _flat(tensors: list[Any]) -> Any:
    if not tensors:
        return tf.zeros([0], tf.float32)
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], axis=0)


def _compiled(method: Any) -> Any:
    """``tf.function`` of a replica's method, traced once per replica.

    TensorFlow counts traces per code object, not per instance, so many
    processes in one session (tests, R sessions) would warn of "retracing"
    although each replica traces once; that warning is turned off here.
    """
    fn = tf.function(method, reduce_retracing=True, autograph=False)
    fn._omit_frequent_tracing_warning = True
    return fn


def _seed_states(keras_model: Any) -> set[int]:
    """ids of the state variables of the model's random generators (Dropout and others)."""
    ids = set()
    layers = keras_model._flatten_layers(include_self=True, recursive=True)
    for layer in layers:
        for generator in getattr(layer, "_seed_generators", []) or []:
            ids.add(id(generator.state))
    return ids


class ClientUpdate:
    """Local training and evaluation of one model replica, each one compiled graph.

    Args:
        model: The replica's model (its variables are scratch space: every
            call loads the server's weights into them).
        optimizer: The client's Keras optimizer, built fresh (state reset)
            for every call; None for a replica that only evaluates.
        local_epochs: Passes over the client's batches per call.
        proximal_mu: FedProx's proximal coefficient mu (Li et al. 2020): each
            step's gradient of every trainable variable ``v`` gets
            ``mu * (v - v_server)`` added, the exact gradient of
            ``mu / 2 * ||w - w_server||^2``, where ``w_server`` are the
            weights the call starts from. The reported loss stays the task
            loss (the model's loss and its regularisation losses, without the
            proximal term), so that FedProx and FedAvg report comparable
            losses. 0 (the default) is FedAvg, with the very same graph.
        control_variates: SCAFFOLD's local step: :meth:`train` takes a
            ``correction`` (c - c_i, flat like the trainable weights) added
            to every step's gradient. The optimizer must be plain SGD at a
            constant learning rate (``learning_rate`` holds it). False (the
            default) builds FedAvg's graph.

    Raises:
        FedValueError: ``proximal_mu`` is not a finite number >= 0; with
            ``control_variates``, the optimizer is not plain SGD.
    """

    def __init__(
        self, model: Model, optimizer: Any = None, *, local_epochs: int = 1, proximal_mu: float = 0.0,
        control_variates: bool = False,
    ) -> None:
        self.proximal_mu = check_proximal_mu(proximal_mu)
        self.control_variates = bool(control_variates)
        self.learning_rate: float | None = None
        if self.control_variates and optimizer is not None:
            from fedr.learning.scaffold import client_learning_rate

            self.learning_rate = client_learning_rate(optimizer)
        self.model = model
        keras_model = model.keras_model
        self.trainable = model.trainable_variables
        self.non_trainable = model.non_trainable_variables
        self.sizes = [int(np.prod(v.shape)) for v in self.trainable]
        self.num_weights = int(sum(self.sizes))
        seeds = _seed_states(keras_model)
        # Float non-trainable variables are averaged over clients; integer and
        # random-generator state never is (it stays the server's).
        self.averaged = [
            i for i, v in enumerate(self.non_trainable)
            if np.dtype(v.dtype).kind == "f" and id(v) not in seeds
        ]
        self.seeded = [i for i, v in enumerate(self.non_trainable) if id(v) in seeds]
        self.local_epochs = int(local_epochs)
        self.optimizer = optimizer
        self._opt_state: list[Any] = []
        if optimizer is not None:
            optimizer.build(self.trainable)
            lr = getattr(optimizer, "_learning_rate", None)
            # A fresh client optimizer every round: reset its state, not its learning rate.
            self._opt_state = [v for v in optimizer.variables if v is not lr]
        out = keras_model.compute_output_shape((None, *model.feature_shape))
        self.output_shape = tuple(out[1:])
        self._output_shape = tf.TensorShape([None, *out[1:]])
        self._train = _compiled(self._train_graph)
        self._train_cv = _compiled(self._train_cv_graph)
        self._train_group = _compiled(self._train_group_graph)
        self._eval = _compiled(self._eval_graph)
        self._traced: set[tuple[Any, ...]] = set()

    # ------------------------------------------------------------------ checks

    def weights(self) -> ModelWeights:
        """The replica's current variables as :class:`ModelWeights`."""
        return ModelWeights.from_model(self.model)

    def check(self, client: ClientData) -> None:
        """Raise FedValueError when the client's data does not fit the model and its loss.

        The message names the client, the value found and what was expected,
        before any TensorFlow graph sees the data.
        """
        check_targets(client, tuple(self.model.feature_shape), self.output_shape, self.model.loss)

    def prepare(self, client: ClientData, *, train: bool = True, group: bool = False) -> None:
        """Trace the graph that ``client``'s data needs, on the calling thread, if not yet traced.

        The graphs are traced for any number of examples, so one trace serves
        every client whose arrays have the same feature shape and dtypes.
        ``group`` traces the graph of :meth:`train_group` instead. Tracing runs the Python of the model, its loss and metrics; doing it
        here, before the executor hands clients to worker threads, means no
        user code (which from R is R code) ever runs on a worker thread: the
        workers only execute compiled graphs.
        """
        key = (train, group, client.x.shape[1:], client.x.dtype.str, client.y.shape[1:], client.y.dtype.str)
        if key in self._traced:
            return
        weights = tf.TensorSpec([self.num_weights], tf.float32)
        non_trainable = [tf.TensorSpec(v.shape, v.dtype) for v in self.non_trainable]
        x = tf.TensorSpec([None, *client.x.shape[1:]], client.x.dtype)
        y = tf.TensorSpec([None, *client.y.shape[1:]], client.y.dtype)
        offsets = tf.TensorSpec([None], tf.int64)
        scale = tf.TensorSpec([], tf.float32)
        if group:
            draws = tf.TensorSpec([None, 2 * len(self.seeded)], tf.int64)
            self._train_group.get_concrete_function(
                weights, non_trainable, draws, x, y, offsets, offsets, offsets, scale
            )
        elif train and self.control_variates:
            self._train_cv.get_concrete_function(weights, weights, non_trainable, x, y, offsets, scale)
        else:
            (self._train if train else self._eval).get_concrete_function(weights, non_trainable, x, y, offsets, scale)
        self._traced.add(key)

    # ------------------------------------------------------------------ graphs

    def _load(self, trainable: Any, non_trainable: list[Any]) -> None:
        parts = tf.split(trainable, self.sizes) if self.sizes else []
        for var, part in zip(self.trainable, parts, strict=True):
            var.assign(tf.reshape(part, var.shape))
        for var, value in zip(self.non_trainable, non_trainable, strict=True):
            var.assign(value)

    def _anchors(self, trainable: Any) -> list[Any]:
        """The flat server weights ``trainable`` as one tensor per trainable variable (split as :meth:`_load`)."""
        parts = tf.split(trainable, self.sizes) if self.sizes else []
        return [
            tf.cast(tf.reshape(part, var.shape), var.dtype) for var, part in zip(self.trainable, parts, strict=True)
        ]

    def _batches(self, x: Any, y: Any, offsets: Any, epochs: int, step: Any, scale: Any) -> Any:
        """Loop ``step(xb, yb)`` over the batches, ``epochs`` times; sum losses and counts.

        Integer pixels (``ClientData.scale``) become float32 ``x / scale`` batch
        by batch here, the same values as dividing the whole array beforehand.

        The predictions of every step are kept and fed to the metrics once after
        the loop: Keras metrics accumulate sums, so one update over all batches
        gives what batch-by-batch updates give, with far fewer graph nodes per step.
        """
        num_batches = tf.shape(offsets, out_type=tf.int64)[0] - 1
        preds_seen = tf.TensorArray(
            tf.float32, size=0, dynamic_size=True, infer_shape=False, element_shape=self._output_shape
        )

        def body(k: Any, loss_sum: Any, count: Any, preds_seen: Any) -> Any:
            # Step k is batch k mod num_batches of epoch k div num_batches: epochs in order, batches in order.
            i = k % num_batches
            start, stop = offsets[i], offsets[i + 1]
            xb = x[start:stop]
            if xb.dtype != tf.float32:
                xb = tf.cast(xb, tf.float32) / scale
            preds, loss = step(xb, y[start:stop])
            preds_seen = preds_seen.write(tf.cast(k, tf.int32), tf.cast(preds, tf.float32))
            n = stop - start
            loss_sum += tf.cast(loss, tf.float64) * tf.cast(n, tf.float64)
            return k + 1, loss_sum, count + n, preds_seen

        total = num_batches * epochs
        _, loss_sum, count, preds_seen = tf.while_loop(
            lambda k, *_: k < total, body,
            (tf.constant(0, tf.int64), tf.constant(0.0, tf.float64), tf.constant(0, tf.int64), preds_seen),
        )
        results = []
        if self.model.metrics:
            preds_all = tf.ensure_shape(preds_seen.concat(), self._output_shape)
            y_all = tf.tile(y, tf.concat([[epochs], tf.ones(tf.rank(y) - 1, tf.int32)], 0))
            for m in self.model.metrics:
                m.reset_state()
                m.update_state(y_all, preds_all)
                results.append(tf.cast(m.result(), tf.float64))
        metrics = tf.stack(results) if results else tf.zeros([0], tf.float64)
        return metrics, loss_sum, count

    def _train_graph(
        self, trainable: Any, non_trainable: list[Any], x: Any, y: Any, offsets: Any, scale: Any
    ) -> Any:
        return self._train_body(trainable, non_trainable, x, y, offsets, scale)

    def _train_cv_graph(
        self, trainable: Any, correction: Any, non_trainable: list[Any], x: Any, y: Any, offsets: Any, scale: Any
    ) -> Any:
        return self._train_body(trainable, non_trainable, x, y, offsets, scale, correction)

    def _train_group_graph(
        self, trainable: Any, non_trainable: list[Any], draws: Any, x: Any, y: Any, rows: Any, offsets: Any,
        bounds: Any, scale: Any,
    ) -> Any:
        """Many clients in one graph call: client g is rows ``rows[g]:rows[g+1]`` of ``x`` and ``y`` with
        batch offsets ``offsets[bounds[g]:bounds[g+1]]`` and seed draws ``draws[g]``; each runs exactly
        :meth:`_train_body`, one after another, so each result equals its own call's."""
        n = tf.shape(rows)[0] - 1
        outs = [tf.TensorArray(dtype, size=n, element_shape=shape) for dtype, shape in (
            (tf.float32, [self.num_weights]), (tf.float32, [None]), (tf.int64, []),
            (tf.float64, [None]), (tf.float64, []), (tf.bool, []),
        )]

        def body(g: Any, *outs: Any) -> Any:
            values = list(non_trainable)
            for k, i in enumerate(self.seeded):
                values[i] = tf.cast(draws[g, 2 * k : 2 * k + 2], self.non_trainable[i].dtype)
            a, b = rows[g], rows[g + 1]
            result = self._train_body(trainable, values, x[a:b], y[a:b], offsets[bounds[g] : bounds[g + 1]], scale)
            return (g + 1, *(ta.write(g, value) for ta, value in zip(outs, result, strict=True)))

        _, *outs = tf.while_loop(lambda g, *_: g < n, body, (tf.constant(0), *outs))
        return tuple(ta.stack() for ta in outs)

    def _train_body(
        self, trainable: Any, non_trainable: list[Any], x: Any, y: Any, offsets: Any, scale: Any,
        correction: Any = None,
    ) -> Any:
        self._load(trainable, non_trainable)
        for v in self._opt_state:
            v.assign(tf.zeros_like(v))
        keras_model, loss_fn, variables = self.model.keras_model, self.model.loss, self.trainable
        mu = self.proximal_mu
        # Decided here, in Python: with mu == 0 the graph is FedAvg's, op for op.
        anchors = self._anchors(trainable) if mu > 0 else []
        # SCAFFOLD: c - c_i split like the weights (None: FedAvg's graph).
        corrections = self._anchors(correction) if correction is not None else []

        def step(xb: Any, yb: Any) -> Any:
            with tf.GradientTape() as tape:
                preds = keras_model(xb, training=True)
                loss = loss_fn(yb, preds)
                if keras_model.losses:
                    loss += tf.add_n(keras_model.losses)
            grads = tape.gradient(loss, variables)
            if mu > 0:
                # FedProx (Li et al. 2020): the gradient of mu/2 * ||w - w_server||^2 added by hand,
                # so the loss returned (and reported) stays the task loss.
                grads = [
                    (0.0 if g is None else tf.convert_to_tensor(g)) + mu * (v - a)
                    for g, v, a in zip(grads, variables, anchors, strict=True)
                ]
            if corrections:
                # SCAFFOLD (Karimireddy et al. 2020): y <- y - lr * (g(y) + c - c_i).
                grads = [
                    (0.0 if g is None else tf.convert_to_tensor(g)) + k
                    for g, k in zip(grads, corrections, strict=True)
                ]
            self.optimizer.apply_gradients(zip(grads, variables))
            return preds, loss

        metrics, loss_sum, count = self._batches(x, y, offsets, self.local_epochs, step, scale)
        delta = _flat(variables) - trainable
        stats = _flat([self.non_trainable[i] for i in self.averaged])
        finite = tf.reduce_all(tf.math.is_finite(delta)) & tf.reduce_all(tf.math.is_finite(stats))
        finite = finite & tf.math.is_finite(loss_sum)
        return delta, stats, count, metrics, loss_sum, finite

    def _eval_graph(
        self, trainable: Any, non_trainable: list[Any], x: Any, y: Any, offsets: Any, scale: Any
    ) -> Any:
        self._load(trainable, non_trainable)
        keras_model, loss_fn = self.model.keras_model, self.model.loss

        def step(xb: Any, yb: Any) -> Any:
            preds = keras_model(xb, training=False)
            return preds, loss_fn(yb, preds)

        return self._batches(x, y, offsets, 1, step, scale)

    # ------------------------------------------------------------------ calls

    def seed_words(self, seed: np.random.SeedSequence) -> np.ndarray:
        """The uint32 words the model's random generators take from a client's seed (two per generator).

        A remote node gets these words rather than the seed: the seed's
        entropy holds the process's base seed, which must stay on the server
        (it also seeds differential privacy's noise).
        """
        return seed.generate_state(2 * len(self.seeded), np.uint32)

    def _non_trainable(self, weights: ModelWeights, seed: np.random.SeedSequence | np.ndarray | None) -> list[np.ndarray]:
        values = list(weights.non_trainable)
        if seed is not None and self.seeded:
            words = seed if isinstance(seed, np.ndarray) else self.seed_words(seed)
            if words.shape != (2 * len(self.seeded),):
                raise FedValueError(
                    f"seed: the model has {len(self.seeded)} random generators and takes "
                    f"{2 * len(self.seeded)} seed words, got {words.shape[0] if words.ndim == 1 else words.shape}"
                )
            # Keras seeds are pairs of int64 holding 32-bit values.
            draws = words.astype(np.uint32).astype(np.int64) >> 1
            for k, i in enumerate(self.seeded):
                values[i] = draws[2 * k : 2 * k + 2].astype(values[i].dtype)
        return values

    def train(
        self, weights: ModelWeights, flat: np.ndarray, client: ClientData,
        seed: np.random.SeedSequence | np.ndarray | None, correction: np.ndarray | None = None,
    ) -> ClientOutput:
        """Train on ``client`` from ``weights`` for the local epochs; one graph call.

        Args:
            weights: The server's model weights.
            flat: ``weights.flat_trainable()``, computed once per round.
            client: The client's data (checked with :meth:`check` beforehand).
            seed: The client's seed for this round, or its :meth:`seed_words`;
                sets every random generator of the model (Dropout and others).
            correction: SCAFFOLD's c - c_i (float32, like ``flat``), required
                with ``control_variates`` and refused without.
        """
        if self.control_variates != (correction is not None):
            raise FedValueError("correction: SCAFFOLD's replica trains with a correction (c - c_i), any other "
                                "replica without one")
        if correction is not None:
            delta, stats, count, metrics, loss_sum, finite = self._train_cv(
                flat, np.asarray(correction, np.float32), self._non_trainable(weights, seed),
                *client_tensors(client), _scale(client),
            )
        else:
            delta, stats, count, metrics, loss_sum, finite = self._train(
                flat, self._non_trainable(weights, seed), *client_tensors(client), _scale(client)
            )
        return ClientOutput(
            client.client_id, delta.numpy(), stats.numpy(), int(count), metrics.numpy(),
            float(loss_sum), bool(finite),
        )

    def train_group(
        self, weights: ModelWeights, flat: np.ndarray, clients: Sequence[ClientData],
        seeds: Sequence[np.random.SeedSequence | np.ndarray | None],
    ) -> list[ClientOutput]:
        """Train several (small) clients in one graph call; each output equals :meth:`train`'s for it.

        The clients' rows are copied into one array and the graph runs each
        client's local training in turn: the same operations in the same order
        as one call per client, without the per-call cost (about a millisecond
        of Python and TensorFlow dispatch), which dominates for clients of a
        few examples. All clients must share feature shape and dtypes.
        SCAFFOLD's replicas train one client per call (each has its own correction).
        """
        if self.control_variates:
            raise FedValueError("train_group: SCAFFOLD's clients train one per call")
        x = np.concatenate([c.x for c in clients])
        y = np.concatenate([c.y for c in clients])
        rows = np.cumsum([0] + [len(c.x) for c in clients], dtype=np.int64)
        offsets = np.concatenate([c.offsets for c in clients]).astype(np.int64, copy=False)
        bounds = np.cumsum([0] + [len(c.offsets) for c in clients], dtype=np.int64)
        base = [np.asarray(v) for v in weights.non_trainable]
        draws = np.zeros((len(clients), 2 * len(self.seeded)), np.int64)
        for g, seed in enumerate(seeds):
            values = self._non_trainable(weights, seed)
            for k, i in enumerate(self.seeded):
                draws[g, 2 * k : 2 * k + 2] = np.asarray(values[i], np.int64) if seed is not None else base[i]
        delta, stats, count, metrics, loss_sum, finite = (
            t.numpy() for t in self._train_group(flat, base, draws, x, y, rows, offsets, bounds, _scale(clients[0]))
        )
        return [
            ClientOutput(c.client_id, delta[g], stats[g], int(count[g]), metrics[g], float(loss_sum[g]), bool(finite[g]))
            for g, c in enumerate(clients)
        ]

    def evaluate(
        self, weights: ModelWeights, flat: np.ndarray, client: ClientData
    ) -> tuple[np.ndarray, float, int]:
        """Evaluate ``weights`` on ``client``: metrics, loss sum and example count."""
        metrics, loss_sum, count = self._eval(
            flat, list(weights.non_trainable), *client_tensors(client), _scale(client)
        )
        return metrics.numpy(), float(loss_sum), int(count)
