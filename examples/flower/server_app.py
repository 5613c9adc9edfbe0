"""The ServerApp of the reference workflow: fedr's FedAvg of a 784 -> 10 softmax model.

Flower runs ``app`` on the SuperLink's machine (``flwr run``). The model is
built here, in the app's code, as a Python user would write it; the nodes get
it as Keras configs and train it with fedr's ClientApp on their own data.
"""

import keras

from fedr import executors, learning
from fedr.flower.apps import server_app_for


def build_process(config: dict) -> learning.FedAvgProcess:
    """The reference's process, with the learning rates, seed and epochs of the run config."""

    def model_fn() -> learning.Model:
        model = keras.Sequential(
            [keras.Input(shape=(784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")]
        )
        return learning.from_keras_model(
            model,
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy()],
        )

    return learning.build_weighted_fed_avg(
        model_fn,
        learning.optimizer_fn("sgd", float(config["client-learning-rate"])),
        learning.optimizer_fn("sgd", float(config["server-learning-rate"])),
        local_epochs=int(config["local-epochs"]),
        seed=int(config["seed"]),
        min_clients=int(config["min-clients"]),
        executor=executors.serial(),  # the nodes train; the server only aggregates
    )


app = server_app_for(build_process)
