"""fedr's errors carry the argument they are about as data (R names its own argument from it)."""

import pickle

import pytest

from fedr.errors import FedError, FedTypeError, FedValueError


@pytest.mark.parametrize(("message", "argument"), [
    ("rounds: expected a positive integer, got 0", "rounds"),
    ("`monitor` is 'val_loss' but no validation_data was given", "monitor"),
    ("round 3: only 1 of 4 clients returned a usable update", None),
    ("client 'a': x has non-finite values", None),
    ("", None),
])
def test_the_argument_is_the_name_the_message_starts_with(message, argument):
    assert FedValueError(message).argument == argument
    assert FedTypeError(message).argument == argument


def test_an_explicit_argument_wins_and_the_error_still_pickles():
    err = FedValueError("the sample is larger than the population", argument="clients_per_round")
    assert err.argument == "clients_per_round"
    assert isinstance(err, ValueError) and isinstance(err, FedError)
    again = pickle.loads(pickle.dumps(FedValueError("seed: expected an integer")))  # Ray ships errors
    assert (type(again), again.argument, str(again)) == (FedValueError, "seed", "seed: expected an integer")
