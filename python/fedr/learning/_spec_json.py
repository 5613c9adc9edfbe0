"""A :class:`~fedr.learning.ProcessSpec` as JSON: Keras configs, numbers, and aggregators by name.

What crosses a trust boundary as a process (a Flower run config read on the
SuperLink's machine) is data, never a pickle: unpickling runs whatever code
the sender chose. The model and optimizers are Keras configs (rebuilt with
Keras's safe mode), the seed and counts are numbers, and the aggregator is
``{"name": ..., "params": {...}}`` of one of fedr's built-in aggregator
builders (mean, sum, median, trimmed_mean, krum, geometric_median, bulyan,
norm_bounded, zeroing, gaussian_fixed, gaussian_adaptive, distributed_dp,
secure_sum, secure_mean); any other name is refused.

Fields added after version 1 was first written have a default and may be
missing from older senders' specs (``_OPTIONAL``: ``proximal_mu``, 0 being
FedAvg; ``scaffold``, False, and its ``num_clients``); every other field must be there, and unknown fields are refused.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fedr.errors import FedTypeError, FedValueError

__all__ = ["aggregator_from_data", "aggregator_to_data", "spec_from_json", "spec_to_json"]

FORMAT = "fedr-process-spec"
VERSION = 1
# Fields an older sender's spec may lack, and the value they then take.
_OPTIONAL: dict[str, Any] = {"proximal_mu": 0.0, "scaffold": False, "num_clients": None}


class _Builder(NamedTuple):
    cls: type
    build: Callable[..., Any]
    renames: dict[str, str]  # builder parameter -> attribute holding its value
    matches: Callable[[Any], bool]


def _builders() -> dict[str, _Builder]:
    from fedr import aggregators as agg
    from fedr import privacy

    def always(_: Any) -> bool:
        return True

    return {
        "mean": _Builder(agg.Mean, agg.mean, {}, always),
        "sum": _Builder(agg.Sum, agg.sum, {}, always),
        "median": _Builder(agg.Median, agg.median, {}, always),
        "trimmed_mean": _Builder(agg.TrimmedMean, agg.trimmed_mean, {}, always),
        "krum": _Builder(agg.Krum, agg.krum, {}, always),
        "geometric_median": _Builder(agg.GeometricMedian, agg.geometric_median, {}, always),
        "bulyan": _Builder(agg.Bulyan, agg.bulyan, {}, always),
        "norm_bounded": _Builder(agg.NormBounded, agg.norm_bounded, {}, always),
        "zeroing": _Builder(agg.Zeroing, agg.zeroing, {}, always),
        "gaussian_fixed": _Builder(privacy.GaussianDP, privacy.gaussian_fixed, {"clip": "initial_clip"},
                                   lambda a: not a.adaptive),
        "gaussian_adaptive": _Builder(privacy.GaussianDP, privacy.gaussian_adaptive, {}, lambda a: bool(a.adaptive)),
        "distributed_dp": _Builder(privacy.DistributedDP, privacy.distributed_dp, {}, always),
        "secure_sum": _Builder(privacy.SecureSum, privacy.secure_sum, {}, always),
        "secure_mean": _Builder(privacy.SecureMean, privacy.secure_mean, {}, always),
    }


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data (numpy scalars become numbers); FedTypeError for anything else."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, where) for k, v in value.items()}
    raise FedTypeError(f"{where}: a {type(value).__name__} cannot travel as data (JSON)")


def aggregator_to_data(aggregator: Any, where: str = "aggregator") -> dict[str, Any]:
    """``{"name": ..., "params": {...}}`` of a built-in aggregator (nested ``inner`` sums included).

    Raises:
        FedTypeError: not one of fedr's built-in aggregators (a subclass or your
            own), or it does not come back the same from its parameters.
    """
    from fedr.aggregators import Aggregator

    builders = _builders()
    found = [(n, b) for n, b in builders.items() if type(aggregator) is b.cls and b.matches(aggregator)]
    if not found:
        raise FedTypeError(
            f"{where}: {aggregator!r} ({type(aggregator).__name__}) cannot travel as data; a JSON process spec "
            f"holds only the aggregators {', '.join(builders)} (rebuilt by name and parameters on arrival)"
        )
    name, builder = found[0]
    params: dict[str, Any] = {}
    for parameter in inspect.signature(builder.build).parameters:
        attribute = builder.renames.get(parameter, parameter)
        if not hasattr(aggregator, attribute):
            raise FedTypeError(f"{where}: {aggregator!r} has no attribute {attribute!r} for its parameter {parameter!r}")
        value = getattr(aggregator, attribute)
        if isinstance(value, Aggregator):
            params[parameter] = aggregator_to_data(value, f"{where}.{parameter}")
        else:
            params[parameter] = _plain(value, f"{where} parameter {parameter!r}")
    data = {"name": name, "params": params}
    with warnings.catch_warnings():  # the builder's warnings were given when the aggregator was made
        warnings.simplefilter("ignore")
        rebuilt = aggregator_from_data(data, where)
    different = _difference(aggregator, rebuilt)
    if different:
        raise FedTypeError(
            f"{where}: {aggregator!r} does not come back the same from its parameters ({different} differs), "
            "so it cannot travel as data"
        )
    return data


def aggregator_from_data(data: Any, where: str = "aggregator") -> Any:
    """The aggregator of :func:`aggregator_to_data`'s ``data``, built by its builder.

    Raises:
        FedValueError: not ``{"name", "params"}``, an unknown name or parameter;
            the builder's own errors name a parameter out of range.
    """
    if not isinstance(data, dict) or set(data) != {"name", "params"} or not isinstance(data["params"], dict):
        raise FedValueError(f"{where}: expected {{\"name\": ..., \"params\": {{...}}}}, got {str(data)[:200]!r}")
    name = data["name"]
    builders = _builders()
    if name not in builders:
        raise FedValueError(
            f"{where}: unknown aggregator {str(name)[:100]!r}; expected one of fedr's built-in aggregators "
            f"({', '.join(builders)})"
        )
    builder = builders[name]
    accepted = inspect.signature(builder.build).parameters
    unknown = sorted(set(data["params"]) - set(accepted))
    if unknown:
        raise FedValueError(f"{where}: {name}() has no parameter {unknown[0]!r} (it takes: {', '.join(accepted)})")
    params = {
        k: aggregator_from_data(v, f"{where}.{k}") if isinstance(v, dict) else v for k, v in data["params"].items()
    }
    return builder.build(**params)


def _difference(a: Any, b: Any) -> str:
    """The first public attribute whose plain value differs between two aggregators ("" if none)."""
    from fedr.aggregators import Aggregator

    if type(a) is not type(b):
        return "its type"
    for key, value in vars(a).items():
        if key.startswith("_"):
            continue
        other = getattr(b, key, None)
        if isinstance(value, Aggregator):
            inner = _difference(value, other)
            if inner:
                return f"{key}.{inner}"
        elif value is None or isinstance(value, bool | int | float | str | np.generic):
            if value != other and not (value != value and other != other):  # NaN equals NaN here
                return key
    return ""


def spec_to_json(spec: Any) -> str:
    """The :class:`~fedr.learning.ProcessSpec` ``spec`` as JSON text.

    Raises:
        FedTypeError: a field is not plain data, or the aggregator is not a built-in one.
    """
    fields: dict[str, Any] = {}
    for name in type(spec)._fields:
        value = getattr(spec, name)
        if name == "model":
            fields[name] = {"model": _plain(value.model, "model"), "loss": _plain(value.loss, "loss"),
                            "metrics": _plain(list(value.metrics), "metrics"),
                            "feature_shape": [int(d) for d in value.feature_shape]}
        elif name == "aggregator":
            fields[name] = aggregator_to_data(value)
        else:
            fields[name] = _plain(value, f"process `{name}`")
    return json.dumps({"format": FORMAT, "version": VERSION, "spec": fields}, separators=(",", ":"))


def spec_from_json(text: str) -> Any:
    """The :class:`~fedr.learning.ProcessSpec` of :func:`spec_to_json`'s text.

    Raises:
        FedValueError: not JSON, not a fedr process spec, a missing or unknown
            field, or an unknown aggregator. A missing ``proximal_mu`` (a spec
            from a fedr without FedProx) reads as 0.0, FedAvg.
    """
    from fedr.learning.model import ModelSpec
    from fedr.learning.spec import ProcessSpec

    try:
        data = json.loads(text)
    except (TypeError, ValueError) as err:
        raise FedValueError(f"process spec: not JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("spec"), dict):
        raise FedValueError(f"process spec: not a {FORMAT} (JSON with \"format\": {FORMAT!r})")
    if data.get("version") != VERSION:
        raise FedValueError(f"process spec: version {data.get('version')!r}, this fedr reads version {VERSION}")
    fields = {**_OPTIONAL, **data["spec"]}
    expected = set(ProcessSpec._fields)
    if set(fields) != expected:
        missing, unknown = sorted(expected - set(fields)), sorted(set(fields) - expected)
        raise FedValueError(f"process spec: missing fields {missing}, unknown fields {unknown}")
    model = fields["model"]
    if not isinstance(model, dict) or set(model) != {"model", "loss", "metrics", "feature_shape"}:
        raise FedValueError("process spec `model`: expected model, loss, metrics and feature_shape")
    values = dict(fields)
    values["model"] = ModelSpec(model["model"], model["loss"], tuple(model["metrics"]),
                                tuple(int(d) for d in model["feature_shape"]))
    values["aggregator"] = aggregator_from_data(fields["aggregator"])
    return ProcessSpec(**values)
