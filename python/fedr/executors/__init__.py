"""Executors: who runs the clients' updates of a round: ``serial()``, ``threads()``, ``ray()``.

An executor maps a function over a round's clients and returns the results in
client order; the process sizes its pool of model replicas by
``executor.workers``. Results never depend on the executor: every client starts
from the same state with its own seed, and the aggregate is summed in client
order.

Threading policy (``threads()``, the default): one worker thread per core
(``os.sched_getaffinity``, else ``os.cpu_count()``), each with its own model
replica, and one TensorFlow thread per op (``TF_NUM_INTRAOP_THREADS=1``, set
when fedr is imported unless you set it): TensorFlow releases the GIL while a
client's graph runs, so clients train on separate cores, and per-op threads on
a client's small batches would only contend with the other workers
(bench/README.md). On a machine with more cores than a round has clients, the
extra workers idle; raise ``TF_NUM_INTRAOP_THREADS`` there to give each client
several cores.
"""

from fedr.executors._local import (
    Executor,
    SerialExecutor,
    ThreadsExecutor,
    check_executor,
    default_workers,
    serial,
    threads,
)
from fedr.executors._ray import RayExecutor, ray

__all__ = [
    "check_executor",
    "Executor", "RayExecutor", "SerialExecutor", "ThreadsExecutor", "default_workers", "ray", "serial", "threads",
]
