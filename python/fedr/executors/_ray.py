"""The Ray executor: client updates on a Ray cluster (one machine or many).

Ray (Moritz et al. 2018) is the engine Flower's simulation runs on; fedr uses
it rather than a scheduler of its own. Each worker is a warm Ray *actor*
holding a compiled replica of the model, rebuilt from the process's
serialisable :class:`~fedr.learning.ModelSpec` (a Ray worker cannot run the
user's ``model_fn``: from R it is an R function). A client's data goes into
Ray's object store once and stays there; every round ships only the weights
(once per round) and object references.

Failures: an actor whose process dies is restarted by Ray and its pending
clients are retried, so a killed worker does not lose the round; a client
that raises is reported as failed; with ``round_timeout``, clients that have
not answered in time are reported as failed and their actors replaced.
"""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from fedr.errors import FedValueError
from fedr.executors._local import Executor, default_workers

__all__ = ["RayExecutor", "ray"]

_WORKER_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _worker_env() -> dict[str, str]:
    """The workers' environment: fedr's defaults, and the driver's oneDNN switch (it decides float rounding)."""
    env = dict(_WORKER_ENV)
    if "TF_ENABLE_ONEDNN_OPTS" in os.environ:
        env["TF_ENABLE_ONEDNN_OPTS"] = os.environ["TF_ENABLE_ONEDNN_OPTS"]
    return env


class _ClientActor:
    """A Ray actor: one compiled model replica, and the clients' data it has seen (an LRU bounded in bytes)."""

    def __init__(self, spec: Any, optimizer: dict[str, Any], local_epochs: int, task: Any,
                 cache_bytes: int = 512 * 2**20) -> None:
        for key, value in _WORKER_ENV.items():
            os.environ.setdefault(key, value)
        # The client task comes with the job (the process's ClientTask): a carrier runs it, it knows no model code.
        self.task = task
        self.update = task.replica(spec, optimizer, local_epochs)
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._bytes = 0
        self._cache_bytes = cache_bytes
        # The round state of the clients this actor runs (their secrets: e.g.
        # secure aggregation's keys), by round and position; it never leaves
        # the actor. A restarted actor has lost it: those clients drop out.
        self._sessions: dict[str, dict[int, Any]] = {}

    def pid(self) -> int:
        """The actor's process id (tests kill it)."""
        return os.getpid()

    def _client(self, ref: Any) -> Any:
        import ray as ray_

        key = ref.hex()
        client = self._data.get(key)
        if client is None:
            client = ray_.get(ref)  # numpy arrays come zero-copy from the object store
            self._data[key] = client
            self._bytes += client.x.nbytes + client.y.nbytes
            while self._bytes > self._cache_bytes and len(self._data) > 1:
                _, old = self._data.popitem(last=False)
                self._bytes -= old.x.nbytes + old.y.nbytes
        else:
            self._data.move_to_end(key)
        return client

    def stage(self, aggregator: Any, stage: str, round_key: str, requests: dict[int, Any],
              client_ids: list[str]) -> dict[int, Any]:
        """The clients' side of a message stage, with the sessions this actor keeps for them."""
        from fedr.protocol.messages import carry_stage

        return carry_stage(aggregator, stage, requests, self._sessions.setdefault(round_key, {}), client_ids)

    def forget(self, round_key: str) -> None:
        """Drop the sessions of a finished round."""
        self._sessions.pop(round_key, None)

    def train(self, shared: Any, jobs: list[tuple[list[Any], Any, float, int, Any]]) -> list[Any]:
        """Run a chunk of clients' rounds; each job wraps a ClientData's object reference (not resolved by Ray)."""
        from fedr.protocol.messages import ClientFailure, describe_error

        weights, flat, aggregator, round_key, control = shared
        sessions = self._sessions.get(round_key, {}) if round_key is not None else {}
        results = []
        for data, seed, delay, position, view, own in jobs:
            client = self._client(data[0])
            if delay:
                time.sleep(delay)
            try:
                self.update.prepare(client, train=True)
            except Exception as err:  # noqa: BLE001 - the client's failure
                results.append(ClientFailure(client.client_id, describe_error(err)))
                continue
            # A SCAFFOLD client's own state comes with its job (from the store beside its data, in the
            # driver) and its new state goes back with its output: an actor that restarts loses nothing.
            results.append(self.task.run(self.update, weights, flat, client, seed, aggregator, view,
                                         sessions.get(position), control, own))
        return results


def _own_libpython_first() -> None:
    """Put this Python's library directory first on LD_LIBRARY_PATH, for Ray's child processes (see fedr._r)."""
    from fedr._env import own_libpython_first

    own_libpython_first(os.environ)


def _ray_error(err: BaseException) -> str:
    """``Type: message`` of what went wrong in a Ray task, without Ray's colours and process listing."""
    from fedr.protocol.messages import describe_error

    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    text = re.sub(r"\x1b\[[0-9;]*m", "", describe_error(err))
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("ray::")]
    return lines[0] if lines else type(err).__name__


class _ActorSpec(NamedTuple):
    """What the actors are built from (the model spec, the client optimizer, epochs)."""

    spec: Any
    optimizer: dict[str, Any]
    local_epochs: int
    task: Any  # the process's client task (fedr.learning.client_task.ClientTask)


class RayCarrier:
    """Carries one round's message stages to the Ray actors; the clients' sessions stay on the actors."""

    def __init__(self, executor: RayExecutor, spec: _ActorSpec) -> None:
        self.executor = executor
        self.spec = spec
        self.round_key = os.urandom(8).hex()
        self.sessions: dict[int, Any] = {}  # none here: they are on the actors
        self._staged = False

    def stage(self, aggregator: Any, stage: str, requests: dict[int, Any], client_ids: Any) -> dict[int, Any]:
        self._staged = True
        return self.executor.run_stage(self.spec, aggregator, stage, self.round_key, requests, list(client_ids))

    def train(self, job: Any) -> list[Any]:
        """The round's client tasks (a RoundJob) on the actors that keep the clients' sessions."""
        return self.executor.run_round(job)

    def close(self) -> None:
        if self._staged:
            self.executor.forget(self.round_key)


class RayExecutor(Executor):
    """Runs client updates as tasks of warm Ray actors; see :func:`ray`."""

    remote = True

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus_per_client: float = 1,
        num_workers: int | None = None,
        round_timeout: float | None = None,
        num_cpus: int | None = None,
        max_restarts: int = 2,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise FedValueError(f"address: expected None, 'auto' or a Ray address string, got {address!r}")
        if isinstance(num_cpus_per_client, bool) or not isinstance(num_cpus_per_client, int | float) or not num_cpus_per_client > 0:
            raise FedValueError(f"num_cpus_per_client: expected a positive number, got {num_cpus_per_client!r}")
        for name, value in (("num_workers", num_workers), ("num_cpus", num_cpus)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1):
                raise FedValueError(f"{name}: expected a positive integer or None, got {value!r}")
        if round_timeout is not None and (
            isinstance(round_timeout, bool) or not isinstance(round_timeout, int | float) or not round_timeout > 0
        ):
            raise FedValueError(f"round_timeout: expected a positive number of seconds or None, got {round_timeout!r}")
        self.address = address
        self.num_cpus_per_client = float(num_cpus_per_client)
        self.num_workers = None if num_workers is None else int(num_workers)
        self.round_timeout = None if round_timeout is None else float(round_timeout)
        self.num_cpus = None if num_cpus is None else int(num_cpus)
        self.max_restarts = int(max_restarts)
        self.workers = self.num_workers or 1
        self._actors: list[Any] = []
        self._actor_key: Any = None
        self._started_ray = False
        self._data: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        # For tests: seconds a client sleeps before training (client id -> seconds).
        self._delays: dict[str, float] = {}

    # ------------------------------------------------------------------ cluster

    def _ray(self) -> Any:
        try:
            import ray as ray_
        except ImportError:
            raise ImportError(
                "fedr.executors.ray() needs Ray: pip install 'ray==2.55.1' (make setup installs it)"
            ) from None
        if not ray_.is_initialized():
            # Keep Ray from rewriting CUDA_VISIBLE_DEVICES on CPU actors (and from warning about it).
            os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
            _own_libpython_first()
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
                "runtime_env": {"env_vars": _worker_env()},
            }
            if self.address is None:
                options["num_cpus"] = self.num_cpus or default_workers()
            else:
                options["address"] = self.address
            ray_.init(**options)
            self._started_ray = True
        return ray_

    def _ensure_actors(self, ray_: Any, job: Any, n_clients: int) -> None:
        key = (id(job.spec), job.local_epochs)  # job: a RoundJob or an _ActorSpec (spec, optimizer, epochs, task)
        if self._actors and self._actor_key == key:
            return
        self._kill_actors(ray_)
        cpus = float(ray_.cluster_resources().get("CPU", 1))
        count = self.num_workers or max(1, int(cpus // self.num_cpus_per_client))
        cls = ray_.remote(_ClientActor).options(
            num_cpus=self.num_cpus_per_client, max_restarts=self.max_restarts, max_task_retries=self.max_restarts
        )
        self._actors = [cls.remote(job.spec, job.optimizer, job.local_epochs, job.task) for _ in range(count)]
        self._actor_key = key
        self.workers = count

    def _kill_actors(self, ray_: Any, which: list[int] | None = None) -> None:
        indices = range(len(self._actors)) if which is None else which
        for i in indices:
            try:
                ray_.kill(self._actors[i], no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if which is None:
            self._actors = []
            self._actor_key = None

    def _ref(self, ray_: Any, client: Any) -> Any:
        ref = self._data.get(client)
        if ref is None:
            ref = ray_.put(client)  # once per client, kept while the ClientData lives
            self._data[client] = ref
        return ref

    # ------------------------------------------------------------------ rounds

    def map(self, fn: Any, items: Any) -> list[Any]:
        """Local work (evaluation): run on the calling thread."""
        return [fn(item) for item in items]

    def stage_carrier(self, spec: Any, optimizer: dict[str, Any], local_epochs: int, task: Any) -> RayCarrier:
        """The carrier of one round's message stages: the clients' sessions stay on the actors that run them."""
        return RayCarrier(self, _ActorSpec(spec, optimizer, local_epochs, task))

    def _owner(self, position: int) -> int:
        # A client's stages and its training go to the same actor: its session is there.
        return position % len(self._actors)

    def _gather(self, ray_: Any, refs: list[Any], owners: list[int], groups: list[list[int]],
                ids: list[str]) -> tuple[list[Any], set[int]]:
        """Each ref's result, or a list with a ClientFailure per client of its group; the owners late to answer."""
        from fedr.protocol.messages import ClientFailure

        ready, _ = ray_.wait(refs, num_returns=len(refs), timeout=self.round_timeout)
        done = set(ready)
        out: list[Any] = []
        late = set()
        for ref, owner, group in zip(refs, owners, groups, strict=True):
            if ref not in done:
                late.add(owner)
                out.append([ClientFailure(
                    ids[i], f"TimeoutError: no answer within round_timeout = {self.round_timeout:g} s"
                ) for i in group])
                continue
            try:
                out.append(ray_.get(ref))
            except Exception as err:  # noqa: BLE001 - a worker that died for good, a task error
                out.append([ClientFailure(ids[i], _ray_error(err)) for i in group])
        return out, late

    def run_stage(self, spec: Any, aggregator: Any, stage: str, round_key: str, requests: dict[int, Any],
                  client_ids: list[str]) -> dict[int, Any]:
        """Carry one message stage to the actors that run its clients; position -> reply, or a ClientFailure."""
        with self._lock:
            ray_ = self._ray()
            self._ensure_actors(ray_, spec, len(client_ids))
            by_owner: dict[int, list[int]] = {}
            for position in sorted(requests):
                by_owner.setdefault(self._owner(position), []).append(position)
            owners = sorted(by_owner)
            groups = [by_owner[o] for o in owners]
            refs = [self._actors[o].stage.remote(aggregator, stage, round_key, {p: requests[p] for p in g},
                                                 list(client_ids))
                    for o, g in zip(owners, groups, strict=True)]
            answers, late = self._gather(ray_, refs, owners, groups, list(client_ids))
            if late:
                self._replace_actors(ray_, spec, late)
            replies: dict[int, Any] = {}
            for group, answer in zip(groups, answers, strict=True):
                # An actor's dict of replies, or (it failed) one failure per client of its group.
                replies.update(answer if isinstance(answer, dict) else dict(zip(group, answer, strict=True)))
            return replies

    def forget(self, round_key: str) -> None:
        """Drop a finished round's sessions on every actor."""
        with self._lock:
            if not self._actors:
                return
            import ray as ray_

            refs = [actor.forget.remote(round_key) for actor in self._actors]
            try:
                ray_.wait(refs, num_returns=len(refs), timeout=10)
            except Exception:  # noqa: BLE001 - an actor already gone has nothing to forget
                pass

    def _replace_actors(self, ray_: Any, spec: Any, late: set[int]) -> None:
        # Their queues hold the stragglers: kill those actors (their tasks die
        # with them) and start fresh ones for the next round.
        self._kill_actors(ray_, sorted(late))
        cls = ray_.remote(_ClientActor).options(
            num_cpus=self.num_cpus_per_client, max_restarts=self.max_restarts,
            max_task_retries=self.max_restarts,
        )
        for owner in late:
            self._actors[owner] = cls.remote(spec.spec, spec.optimizer, spec.local_epochs, spec.task)

    def run_round(self, job: Any) -> list[Any]:
        """Train the round's clients on the actors; outputs (or failures) in client order."""
        with self._lock:
            ray_ = self._ray()
            self._ensure_actors(ray_, job, len(job.clients))
            shared = ray_.put((job.weights, job.flat, job.aggregator, job.round_key, job.control))
            # Each client goes to the actor that holds its session (by position);
            # an actor's clients go out in chunks, about four per actor and
            # round, so that thousands of tiny clients do not cost a remote call each.
            n, actors = len(job.clients), len(self._actors)
            size = max(1, -(-n // (4 * actors)))
            groups: list[list[int]] = []
            owners: list[int] = []
            for owner in range(actors):
                mine = [i for i in range(n) if self._owner(i) == owner and i not in job.lost]
                for start in range(0, len(mine), size):
                    groups.append(mine[start:start + size])
                    owners.append(owner)
            refs = []
            for owner, group in zip(owners, groups, strict=True):
                jobs = [
                    ([self._ref(ray_, job.clients[i])], job.seeds[i], self._delays.get(job.clients[i].client_id, 0.0),
                     i, job.views[i], None if job.client_states is None else job.client_states[i])
                    for i in group
                ]
                refs.append(self._actors[owner].train.remote(shared, jobs))
            ids = [c.client_id for c in job.clients]
            answers, late_owners = self._gather(ray_, refs, owners, groups, ids)
            results: list[Any] = [job.lost.get(i) for i in range(n)]
            for group, answer in zip(groups, answers, strict=True):
                for i, out in zip(group, answer, strict=True):
                    results[i] = out
            if late_owners:
                self._replace_actors(ray_, job, late_owners)
            return results

    def run_each(self, job: Any, models: Sequence[tuple[Any, np.ndarray]]) -> list[Any]:
        """Train ``job``'s clients each from its own model (gossip peers): client i from ``models[i]``.

        ``models[i]`` is ``(weights, flat)`` as a RoundJob's ``weights`` and
        ``flat``; the clients go to the actors as in :meth:`run_round` (by
        position), one remote call each, all in flight at once. Outputs (or
        failures) in client order.
        """
        if len(models) != len(job.clients):
            raise FedValueError(f"models: expected one (weights, flat) per client ({len(job.clients)}), "
                                f"got {len(models)}")
        with self._lock:
            ray_ = self._ray()
            self._ensure_actors(ray_, job, len(job.clients))
            ids = [c.client_id for c in job.clients]
            refs, owners, groups = [], [], []
            for i, (weights, flat) in enumerate(models):
                shared = ray_.put((weights, flat, job.aggregator, job.round_key, job.control))
                owner = self._owner(i)
                work = [([self._ref(ray_, job.clients[i])], job.seeds[i], self._delays.get(ids[i], 0.0), i,
                         job.views[i], None)]
                refs.append(self._actors[owner].train.remote(shared, work))
                owners.append(owner)
                groups.append([i])
            answers, late = self._gather(ray_, refs, owners, groups, ids)
            if late:
                self._replace_actors(ray_, job, late)
            return [answer[0] for answer in answers]

    def actor_pids(self) -> list[int]:
        """Process ids of the actors (for tests and monitoring)."""
        ray_ = self._ray()
        return [ray_.get(a.pid.remote()) for a in self._actors]

    def close(self) -> None:
        """Stop the actors, and the local Ray if this executor started it."""
        with self._lock:
            try:
                import ray as ray_
            except ImportError:
                return
            if ray_.is_initialized():
                self._kill_actors(ray_)
                if self._started_ray:
                    ray_.shutdown()
            self._started_ray = False
            self._data = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        where = "local" if self.address is None else repr(self.address)
        timeout = "" if self.round_timeout is None else f", round_timeout={self.round_timeout:g}"
        return f"ray(address={where}, num_cpus_per_client={self.num_cpus_per_client:g}{timeout})"


def ray(
    address: str | None = None,
    *,
    num_cpus_per_client: float = 1,
    num_workers: int | None = None,
    round_timeout: float | None = None,
    num_cpus: int | None = None,
) -> RayExecutor:
    """Run client updates on a Ray cluster, as warm actors holding compiled models.

    Args:
        address: ``None`` starts a local Ray sized to this machine (no
            dashboard); ``"auto"`` joins the cluster this machine belongs to
            (``ray start --head`` / ``ray start --address=...``); a
            ``"ray://host:10001"`` address joins a remote cluster.
        num_cpus_per_client: CPUs each actor reserves.
        num_workers: Actors to start; default the cluster's CPUs over
            ``num_cpus_per_client``.
        round_timeout: Seconds a round waits for its clients; those that have
            not answered are left out and named as failed (see ``min_clients``
            of :func:`fedr.learning.build_weighted_fed_avg`).
        num_cpus: CPUs of a local Ray (default: this machine's).

    Returns:
        An :class:`~fedr.executors.Executor` for ``build_weighted_fed_avg(executor=)``.
        The model must be serialisable (Keras objects only: no loss, metric or
        layer written in Python or R); the process says which part is not.

    Raises:
        FedValueError: an argument out of range.
    """
    return RayExecutor(
        address, num_cpus_per_client=num_cpus_per_client, num_workers=num_workers,
        round_timeout=round_timeout, num_cpus=num_cpus,
    )
