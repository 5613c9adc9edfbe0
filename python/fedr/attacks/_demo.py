"""The whole demonstration: the attacks with no defence, under secure aggregation and under DP."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedr.attacks._analytic import _class_column, recover_dense_input
from fedr.attacks._clients import _images, client_updates, mlp_model_fn, reference_model_fn
from fedr.attacks._defences import _dp_sum, _secure_sum
from fedr.attacks._dlg import deep_leakage
from fedr.attacks._png import _grid, write_png
from fedr.attacks._scores import similarity
from fedr.errors import FedValueError

__all__ = ["LeakageReport", "leakage_demo"]

_DEFENCES = ("none", "secure_aggregation", "differential_privacy")


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
