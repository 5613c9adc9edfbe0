"""Federated averaging (FedAvg) composed from its parts, and federated evaluation.

McMahan et al. 2016, "Communication-Efficient Learning of Deep Networks from
Decentralized Data": each selected client starts from the server's model,
trains locally, and reports its model delta and example count; the server
aggregates the deltas (by default their example-weighted mean) and applies the
aggregate with a server optimizer. The default server optimizer, SGD with
learning rate 1.0, adds the mean delta to the weights and so recovers the
original FedAvg.

FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks")
is the same process with ``proximal_mu`` > 0: each client minimises its loss
plus ``mu / 2 * ||w - w_server||^2`` (see
:class:`~fedr.learning.client_update.ClientUpdate`); ``proximal_mu`` = 0 is
FedAvg bit for bit.

SCAFFOLD (Karimireddy et al. 2020) is the same process with control
variates (:func:`build_scaffold`, :mod:`fedr.learning.scaffold`): the
server's c is in ``ServerState.client_work``; each client's c_i is kept
where the client runs (here and on Ray: ``process.client_states``, beside
the clients' data; on Flower: the node), never in the server's state.

One round is data flowing one way (../shared/DESIGN.md, README "How fedr is built")::

    begin_round -> [stages before training] -> client views -> client tasks (train, encode)
                -> [stages after training] -> aggregate -> server update -> ServerState

The parts live beside this module: the round's records and the local carrier
(``_round``), the local way of running many client tasks (``_local``),
argument checks (``_checks``), sampling (``sampling``), evaluation
(``evaluation``), the process as data (``spec``), the public builders
(``builders``: ``build_weighted_fed_avg``, ``build_scaffold``).

Everything a round needs is in the :class:`ServerState` it is given: the same
state and data give the same result whatever ran before, and a state saved
with :func:`fedr.learning.save_state` resumes bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedr import _seeds
from fedr.protocol.names import COUNT_COLUMNS
from fedr.aggregators import Aggregator, check_aggregator, reads_plain_updates, weighted_mean
from fedr.datasets import ClientData
from fedr.errors import FedTypeError, FedValueError
from fedr.executors import Executor, threads
from fedr.executors import check_executor
from fedr.learning._checks import (
    _build_model, _build_optimizer, _check_factory, _check_min_clients, _clients, _optimizer_config,
)
from fedr.learning._local import LocalCarrier, _group_jobs, _Replicas
from fedr.learning._round import (
    ClientsDroppedWarning,
    ClientsFailedWarning,
    LearningProcessOutput,
    RoundJob,
    RoundPlan,
    _client_seeds,
    combine_metrics,
    usable_outputs,
)
from fedr.learning import scaffold as _scaffold
from fedr.learning.client_state import ClientStates, take_client_states
from fedr.learning.client_task import ClientTask
from fedr.learning.client_update import ClientFailure, ClientOutput, ClientUpdate, check_proximal_mu
from fedr.learning.evaluation import FederatedEvaluation, build_fed_eval
from fedr.learning.sampling import sample_clients, sample_clients_poisson
from fedr.learning.spec import ProcessSpec
from fedr.learning.model import Model, model_spec
from fedr.learning.server_update import ServerOptimizer
from fedr.learning.state import ModelWeights, ServerState, check_weights

__all__ = [
    "ClientsDroppedWarning",
    "ClientsFailedWarning",
    "FedAvgProcess",
    "FederatedEvaluation",
    "LearningProcessOutput",
    "ProcessSpec",
    "RoundPlan",
    "build_fed_eval",
    "combine_metrics",
    "sample_clients",
    "sample_clients_poisson",
]


class FedAvgProcess:
    """The federated averaging process: ``initialize()`` then ``next(state, data)`` per round.

    Built by :func:`build_weighted_fed_avg`, whose arguments it takes (all but
    ``workers``); see there. ``proximal_mu`` > 0 makes it FedProx;
    ``scaffold`` makes it SCAFFOLD (see :func:`build_scaffold`, which takes
    ``num_clients``).

    Attributes:
        client_states: The states the clients keep between rounds
            (SCAFFOLD's c_i), for clients that run in this process or on
            Ray: the store beside their data (:class:`ClientStates`). Empty
            for FedAvg and FedProx, and for Flower nodes (which keep theirs).

    Raises:
        FedTypeError: an argument is not of the expected kind.
        FedValueError: ``local_epochs``, ``proximal_mu``, ``seed`` or
            ``min_clients`` is out of range.
    """

    def __init__(
        self,
        model_fn: Callable[[], Model],
        client_optimizer_fn: Callable[[], Any],
        server_optimizer_fn: Callable[[], Any],
        *,
        local_epochs: int = 1,
        aggregator: Aggregator | None = None,
        executor: Executor | None = None,
        seed: int | None = None,
        min_clients: int | float = 1,
        proximal_mu: float = 0.0,
        scaffold: bool = False,
        num_clients: int | None = None,
    ) -> None:
        if isinstance(local_epochs, bool) or not isinstance(local_epochs, int | np.integer) or local_epochs < 1:
            raise FedValueError(f"local_epochs: expected a positive integer, got {local_epochs!r}")
        self.proximal_mu = check_proximal_mu(proximal_mu)
        _check_factory(client_optimizer_fn, "client_optimizer_fn")
        _check_factory(server_optimizer_fn, "server_optimizer_fn")
        self.seed = _seeds.check_seed(seed)
        self.aggregator = check_aggregator(aggregator)
        self.executor = check_executor(executor)
        self.min_clients = _check_min_clients(min_clients)
        if not isinstance(scaffold, bool | np.bool_):
            raise FedTypeError(f"scaffold: expected True or False, got {type(scaffold).__name__}")
        self.scaffold = bool(scaffold)
        self.num_clients = _scaffold.check_num_clients(num_clients)
        if self.num_clients is not None and not self.scaffold:
            raise FedValueError("num_clients: is SCAFFOLD's N; give it with scaffold=True (build_scaffold)")
        if self.scaffold and not reads_plain_updates(self.aggregator):
            raise FedValueError(
                f"aggregator: SCAFFOLD's clients send their control deltas in plaintext, which would void what "
                f"{self.aggregator!r} protects; use an aggregator that reads the updates on the server (mean, "
                "median, trimmed_mean, krum, bulyan, geometric_median, norm_bounded, zeroing)"
            )
        self.client_states = ClientStates()
        self._client_optimizer_fn = client_optimizer_fn
        # Without a seed, fresh randomness: a base seed drawn from the OS.
        self._base_seed = (
            self.seed if self.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        )
        if self.seed is not None:
            import keras

            # The initial weights are the first replica's, built right after this.
            init = _seeds.derive(self.seed, _seeds.INIT).generate_state(1)[0]
            keras.utils.set_random_seed(int(init))
        def build() -> ClientUpdate:
            return ClientUpdate(
                _build_model(model_fn),
                _build_optimizer(client_optimizer_fn, "client_optimizer_fn"),
                local_epochs=int(local_epochs),
                proximal_mu=self.proximal_mu,
                control_variates=self.scaffold,
            )

        # The first replica now, for the initial weights; the others when a
        # round needs them (see _Replicas). A remote executor trains elsewhere:
        # here the replicas only check data and evaluate, on local threads.
        self._remote = bool(getattr(self.executor, "remote", False))
        self._local = threads() if self._remote else self.executor
        self._replicas = _Replicas(build, self._local.workers)
        self._first = self._replicas.first
        self._initial = self._first.weights()
        self._spec = None
        self._optimizer_config: dict[str, Any] | None = None  # set for carriers that rebuild the model elsewhere
        if self._remote:
            # Fail now, naming what cannot travel (and the argument it came from), not in the first round.
            try:
                self._spec = model_spec(self._first.model)
            except FedTypeError as err:
                raise FedTypeError(f"model_fn: {err}") from None
            self._optimizer_config = _optimizer_config(self._first.optimizer)
        self.server = ServerOptimizer(server_optimizer_fn, self._first.num_weights)
        self.local_epochs = int(local_epochs)
        self._evaluation = FederatedEvaluation(self._replicas, self._local, self._initial)
        self._metric_names = self._first.model.metric_names
        self._agg_names = tuple(name for name, _ in self.aggregator.init())
        self._work_names = (_scaffold.CONTROL,) if self.scaffold else ()
        if self._first.averaged and not self.aggregator.averages_non_trainable:
            names = [self._initial.non_trainable_names[i] for i in self._first.averaged]
            warnings.warn(
                f"aggregator {self.aggregator!r} does not aggregate non-trainable variables "
                f"({', '.join(names)}): they keep their initial values on the server",
                stacklevel=3,
            )

    @property
    def model(self) -> Model:
        """The first model replica (its variables are scratch space of the client updates)."""
        return self._first.model

    def __repr__(self) -> str:
        return (
            f"{'SCAFFOLD' if self.scaffold else 'FedAvg'}Process(model={self._first.model!r}, "
            f"client_optimizer={type(self._first.optimizer).__name__}, "
            f"server_optimizer={type(self.server.optimizer).__name__}, "
            f"local_epochs={self.local_epochs}, proximal_mu={self.proximal_mu:g}, aggregator={self.aggregator!r}, "
            f"executor={self.executor!r}, seed={self.seed}"
            + (f", num_clients={self.num_clients}" if self.scaffold else "") + ")"
        )

    def initialize(self) -> ServerState:
        """Return the starting state: the model's initial variables, round 0.

        A new run: for SCAFFOLD, the clients kept in ``client_states`` start
        again from c_i = 0 (their store is cleared), as the server's c does.
        """
        if self.scaffold:
            self.client_states.clear()
        work = _scaffold.init(self._first.num_weights) if self.scaffold else ()
        return ServerState(self._initial, self.server.init(), self.aggregator.init(), 0, work)

    def check_state(self, state: Any) -> ServerState:
        """Return ``state`` if it belongs to this process's model; raise naming what is wrong."""
        if not isinstance(state, ServerState):
            raise FedTypeError(f"state: expected a ServerState, got {type(state).__name__}")
        check_weights(self._initial, state.model)
        self.server.check(state.optimizer_state)
        names = tuple(name for name, _ in state.aggregator_state)
        if names != self._agg_names:
            raise FedValueError(
                f"state: aggregator state has {list(names)} but the aggregator {self.aggregator!r} "
                f"has {list(self._agg_names)}; is it from a process with another aggregator?"
            )
        work = tuple(name for name, _ in state.client_work)
        if work != self._work_names:
            mine = "SCAFFOLD's" if self.scaffold else "no"
            raise FedValueError(
                f"state: its client-work state has {list(work)} but this process has {mine} "
                f"{list(self._work_names)}; is it from a {'FedAvg' if self.scaffold else 'SCAFFOLD'} process?"
            )
        if self.scaffold:
            _scaffold.check_control(state.client_work, self._first.num_weights)
        return state

    def check_data(self, federated_data: Any, argument: str = "federated_data") -> None:
        """Raise when a client of ``federated_data`` does not fit the model; the message starts with ``argument``.

        For data used later (held-out clients of a fit loop): checked now, before
        any round trains, and named as the caller's argument, not only the client.

        Raises:
            FedTypeError: ``federated_data`` is not client data.
            FedValueError: a client's features or labels do not fit the model or its loss.
        """
        clients = _clients(federated_data, argument)
        for client in clients:
            try:
                self._first.check(client)
            except FedValueError as err:
                raise FedValueError(f"{argument}: {err}") from None

    def next(self, state: ServerState, federated_data: Any) -> LearningProcessOutput:
        """Run one round of FedAvg over the clients in ``federated_data``.

        Args:
            state: The server state from ``initialize()``, the previous round or
                :func:`fedr.learning.load_state`.
            federated_data: The selected clients: a list of ``ClientData`` or the
                reference's list over clients of lists of ``OrderedDict(x=, y=)``.

        Returns:
            ``LearningProcessOutput(state, metrics)``; ``result[0]`` and
            ``result[1]`` work as in the reference. ``metrics`` holds the
            model's metrics and ``loss`` over the clients kept,
            ``num_examples``, ``num_clients`` (kept), ``num_clients_dropped``
            (left out for a non-finite update; a
            :class:`ClientsDroppedWarning` names them) and the aggregator's
            metrics.

        Raises:
            FedTypeError: ``state`` is not a ServerState or the data has a wrong type.
            FedValueError: the state does not fit the model, a client's data does
                not fit the model or its loss, every client diverged, or the
                server update made the weights non-finite. The state passed in
                is never changed.
        """
        self.check_state(state)
        clients = _clients(federated_data, "federated_data")
        for client in clients:
            self._first.check(client)
        carry = self._carrier(clients)
        plan = self.begin_round(state, [c.client_id for c in clients])
        aggregator = self.aggregator
        try:
            lost = self.run_stages(plan, aggregator.stages_before, carry)
            # The same job for every carrier; only how it reaches the clients differs.
            control = dict(state.client_work).get(_scaffold.CONTROL) if self.scaffold else None
            own = self.client_states.states_for([c.client_id for c in clients]) if self.scaffold else None
            results = carry.train(RoundJob(
                self._spec, self._optimizer_config, self.local_epochs, state.model, state.flat_weights, clients,
                list(plan.seeds), aggregator, self.client_views(plan), lost, carry.round_key, self._task(),
                control, own,
            ))
            # The clients' new states stay on the clients' side, kept only if the round succeeds.
            results, kept_states = take_client_states(results)
            out = self.finish_round(plan, results, stacklevel=3, carry=carry)
            if kept_states:
                self.client_states.commit(kept_states, plan.round_num)
            return out
        finally:
            carry.close()

    def _task(self) -> ClientTask:
        """The client task carriers run, with this process's ``proximal_mu`` and SCAFFOLD (for their replicas)."""
        return ClientTask(self.proximal_mu, self.scaffold)

    def _carrier(self, clients: Sequence[ClientData]) -> Any:
        """Who carries this round to its clients: the Ray executor (sessions on its actors) or this process."""
        if self._remote:
            return self.executor.stage_carrier(self._spec, self._optimizer_config, self.local_epochs, self._task())
        # SCAFFOLD's clients each train with their own correction: one job per client.
        jobs = [[i] for i in range(len(clients))] if self.scaffold else _group_jobs(
            clients, self.local_epochs, self._local.workers)
        grouped = [clients[job[0]] for job in jobs if len(job) > 1]
        grow = self._replicas.prepare(clients, train=True, grouped=grouped, defer=True)
        return LocalCarrier(self.executor, self._replicas, jobs, grow)

    def run_stages(self, plan: RoundPlan, stages: Sequence[str], carry: Any,
                   outputs: Sequence[ClientOutput] | None = None) -> dict[int, ClientFailure]:
        """Carry the aggregator's message ``stages`` of ``plan`` with ``carry``; the clients that dropped out.

        Each stage: the server's requests (public), the clients' replies made
        where their sessions are, the server's take of them. A client that
        fails or does not answer drops out of the round (a ClientFailure by
        position); whether the round can go on is the aggregator's rule.
        """
        lost: dict[int, ClientFailure] = {}
        for stage in stages:
            requests = self.aggregator.stage_requests(stage, plan.context, outputs)
            replies = carry.stage(self.aggregator, stage, requests, plan.client_ids)
            lost.update({i: r for i, r in replies.items() if isinstance(r, ClientFailure)})
            self.aggregator.stage_results(stage, plan.context, replies)
        return lost

    def client_views(self, plan: RoundPlan) -> list[Any]:
        """The aggregator's public view of each client of ``plan`` (after the stages before training)."""
        agg_state = plan.state.aggregator_state
        return [self.aggregator.client_view(agg_state, plan.context, cid, i) for i, cid in enumerate(plan.client_ids)]

    def begin_round(self, state: ServerState, client_ids: Sequence[str]) -> RoundPlan:
        """Start a round for ``client_ids`` whose updates run elsewhere; :meth:`next` is both halves.

        For executors whose clients hold their own data (Flower nodes): the
        aggregator's ``start_round`` (which may refuse the round) runs here,
        and each client gets its seed from (seed, round, client id). Run the
        clients' updates (:func:`~fedr.learning.client_task.apply_client_step`
        on each finite output), then call :meth:`finish_round`.

        Raises:
            FedTypeError, FedValueError: a bad state, no clients, fewer clients
                than a ``min_clients`` count, or the aggregator refused the round.
        """
        self.check_state(state)
        ids = [str(c) for c in client_ids]
        if not ids:
            raise FedValueError("client_ids: expected at least one client, got none")
        if isinstance(self.min_clients, int) and len(ids) < self.min_clients:
            # Refused before anyone trains: running with fewer would quietly lower the user's limit.
            raise FedValueError(
                f"min_clients: the round has {len(ids)} client(s), fewer than min_clients = "
                f"{self.min_clients}; select at least {self.min_clients} clients or lower min_clients"
            )
        round_num = state.round_num + 1
        context = self.aggregator.start_round(
            state.aggregator_state, ids, seed=_seeds.derive(self._base_seed, _seeds.AGGREGATE, round_num, 0),
        )
        return RoundPlan(state, round_num, tuple(ids), tuple(_client_seeds(self._base_seed, round_num, ids)), context)

    def seed_words(self, seed: np.random.SeedSequence) -> np.ndarray:
        """The draws a client's model takes from its seed (what a remote node needs, not the seed itself)."""
        return self._first.seed_words(seed)

    def finish_round(
        self, plan: RoundPlan, results: Sequence[ClientOutput | ClientFailure], *, stacklevel: int = 2,
        carry: Any = None,
    ) -> LearningProcessOutput:
        """Aggregate a round's client results (one per client of ``plan``, in its order) into the next state.

        Failed clients are left out and named (:class:`ClientsFailedWarning`),
        non-finite updates dropped (:class:`ClientsDroppedWarning`); with fewer
        than ``min_clients`` usable updates the round raises and ``plan.state``
        stays the last good state.
        """
        state, round_num, context = plan.state, plan.round_num, plan.context
        weights, flat = state.model, state.flat_weights
        aggregator, agg_state = self.aggregator, state.aggregator_state
        if len(results) != len(plan.client_ids):
            raise FedValueError(
                f"round {round_num}: expected {len(plan.client_ids)} client results, got {len(results)}"
            )
        kept, failed, dropped = usable_outputs(round_num, len(plan.client_ids), results, self.min_clients,
                                               stacklevel + 1)
        if aggregator.stages_after:
            if carry is None:
                raise FedValueError(
                    f"aggregator {aggregator!r}: its stages after training ({', '.join(aggregator.stages_after)}) "
                    "need a carrier to reach the clients (finish_round(..., carry=))"
                )
            self.run_stages(plan, aggregator.stages_after, carry, kept)
        result = aggregator.aggregate(
            agg_state, kept, seed=_seeds.derive(self._base_seed, _seeds.AGGREGATE, round_num), context=context
        )
        update = result.update
        if not (isinstance(update, np.ndarray) and update.dtype == np.float32 and update.shape == flat.shape):
            raise FedValueError(
                f"aggregator {aggregator!r}: returned an update of "
                f"{getattr(update, 'dtype', type(update).__name__)} {getattr(update, 'shape', '')}, "
                f"expected float32 {flat.shape}"
            )
        clash = set(result.metrics) & {"loss", *COUNT_COLUMNS, *self._metric_names}
        if clash:
            raise FedValueError(f"aggregator {aggregator!r}: its metrics {sorted(clash)} clash with the round's")
        opt_state, new_flat = self.server.apply(state.optimizer_state, flat, update)
        # The statistics (and SCAFFOLD's control deltas) of the clients the aggregate is made of:
        # a robust rule may have left some out, and what it left out must not reach the model another way.
        selected = result.selected
        if selected is not None and (not selected or any(
                isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < len(kept) for i in selected)):
            raise FedValueError(f"aggregator {aggregator!r}: selected {list(selected)[:10]}, expected positions "
                                f"of the {len(kept)} updates it was given")
        chosen = kept if selected is None else [kept[int(i)] for i in selected]
        non_trainable = self._aggregate_non_trainable(weights, chosen)
        model = ModelWeights(
            weights.with_trainable(new_flat), non_trainable, weights.trainable_names, weights.non_trainable_names
        )
        if not np.isfinite(new_flat).all():
            raise FedValueError(
                f"round {round_num}: the server update made the model weights non-finite (NaN or Inf); "
                "training diverged: lower the client or server learning rate. The state passed in is unchanged"
            )
        work = state.client_work
        if self.scaffold:
            size = self._first.num_weights
            deltas = [_scaffold.check_parts(o.parts, size, o.client_id) for o in chosen]
            work = _scaffold.server_update(work, deltas, len(plan.client_ids), self.num_clients)
        new_state = ServerState(model, opt_state, result.state, round_num, work)
        metrics = combine_metrics(self._metric_names, [(o.metrics, o.loss_sum, o.num_examples) for o in kept])
        metrics["num_clients_dropped"] = len(dropped)
        metrics["num_clients_failed"] = len(failed)
        released = aggregator.released_metrics
        if released is not None:
            # E.g. differential privacy: report only what its guarantee covers.
            metrics = {name: value for name, value in metrics.items() if name in released}
        metrics.update(result.metrics)
        return LearningProcessOutput(new_state, metrics)

    def to_spec(self) -> ProcessSpec:
        """This process as plain data (:class:`ProcessSpec`), to rebuild it in another process or machine.

        Raises:
            FedTypeError: the model, its loss or metrics, or an optimizer cannot
                be serialised (a loss or layer written in R or Python); the
                message names which.
        """
        import keras

        return ProcessSpec(
            model_spec(self._first.model),
            _optimizer_config(self._first.optimizer),
            keras.saving.serialize_keras_object(self.server.optimizer),
            self.local_epochs,
            self.aggregator,
            self.seed,
            self.min_clients,
            self.proximal_mu,
            self.scaffold,
            self.num_clients,
        )

    @property
    def metric_names(self) -> list[str]:
        """The model's metric names, in the order of ``ClientOutput.metrics``."""
        return list(self._metric_names)

    def _aggregate_non_trainable(self, weights: ModelWeights, kept: list[ClientOutput]) -> tuple[np.ndarray, ...]:
        """Float non-trainable variables: the example-weighted mean of the clients' values."""
        values = list(weights.non_trainable)
        averaged = self._first.averaged
        if not averaged or not self.aggregator.averages_non_trainable:
            return tuple(values)
        mean = weighted_mean([o.non_trainable for o in kept], [float(o.num_examples) for o in kept])
        start = 0
        for i in averaged:
            ref = values[i]
            values[i] = mean[start : start + ref.size].reshape(ref.shape).astype(ref.dtype)
            start += ref.size
        return tuple(values)

    def evaluate(self, state: Any, federated_data: Any) -> dict[str, float]:
        """Evaluate ``state`` on held-out clients; see :class:`FederatedEvaluation`."""
        return self._evaluation(state, federated_data)

    def get_model_weights(self, state: ServerState) -> ModelWeights:
        """The model weights of ``state`` (as TensorFlow Federated's ``get_model_weights``)."""
        return self.check_state(state).model
