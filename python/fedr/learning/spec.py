"""A process as data: :class:`ProcessSpec` (what travels to Ray workers and Flower's ServerApp)."""

from __future__ import annotations

from typing import Any, NamedTuple

from fedr.aggregators import Aggregator
from fedr.executors import Executor

__all__ = ["ProcessSpec"]


class ProcessSpec(NamedTuple):
    """A :class:`FedAvgProcess` as data (Keras configs, the aggregator object, numbers): no user code.

    What a Flower ServerApp needs to run the process an R or Python session
    built (:meth:`FedAvgProcess.to_spec`); picklable (between one's own
    processes), and JSON (:meth:`to_json`) wherever the receiver must not run
    the sender's code.

    ``proximal_mu`` is FedProx's proximal coefficient (0: FedAvg); it comes
    last, with a default, so that specs built without it (and JSON written
    before it existed) still work; so do ``scaffold`` (SCAFFOLD's control
    variates, :func:`~fedr.learning.build_scaffold`) and its ``num_clients``.
    """

    model: Any  # fedr.learning.model.ModelSpec
    client_optimizer: dict[str, Any]
    server_optimizer: dict[str, Any]
    local_epochs: int
    aggregator: Aggregator
    seed: int | None
    min_clients: int | float
    proximal_mu: float = 0.0
    scaffold: bool = False  # SCAFFOLD's control variates (fedr.learning.scaffold)
    num_clients: int | None = None  # SCAFFOLD's N, the federation's clients (None: each round's)

    def build(self, executor: Executor | None = None) -> Any:
        """Build the process again (with ``executor``, default threads)."""
        import keras

        import fedr.learning.fedopt  # noqa: F401 - registers fedr>FedOpt for the configs below

        def client_optimizer() -> Any:
            return keras.saving.deserialize_keras_object(self.client_optimizer)

        def server_optimizer() -> Any:
            return keras.saving.deserialize_keras_object(self.server_optimizer)

        from fedr.learning.process import FedAvgProcess

        return FedAvgProcess(
            self.model.build, client_optimizer, server_optimizer, local_epochs=self.local_epochs,
            aggregator=self.aggregator, executor=executor, seed=self.seed, min_clients=self.min_clients,
            proximal_mu=self.proximal_mu, scaffold=self.scaffold, num_clients=self.num_clients,
        )

    def to_json(self) -> str:
        """This spec as JSON: Keras configs, numbers, the aggregator by name and parameters (no pickle).

        Raises:
            FedTypeError: the aggregator is not one of fedr's built-in ones, or a field is not plain data.
        """
        from fedr.learning._spec_json import spec_to_json

        return spec_to_json(self)

    @staticmethod
    def from_json(text: str) -> ProcessSpec:
        """The spec of :meth:`to_json`'s text.

        Raises:
            FedValueError: not a fedr process spec, or an unknown aggregator or field.
        """
        from fedr.learning._spec_json import spec_from_json

        return spec_from_json(text)
