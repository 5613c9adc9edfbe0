"""Load MNIST-like datasets, split them over clients and batch them as the reference does.

The reference workflow (a first look at federated learning with TensorFlow,
reproducing McMahan et al. 2016, "Communication-Efficient Learning of Deep
Networks from Decentralized Data") gives each of 10 clients a sequential 10%
range of Kuzushiji-MNIST (Clanuwat et al. 2018) as a list of
``OrderedDict(x=float32 (100, 784) in [0, 1], y=labels)`` batches. fedr keeps
that structure available (:func:`to_batches`) but trains on :class:`ClientData`,
one contiguous array per client plus batch offsets, so no Python object exists
per batch. Besides sequential ranges, clients can be split IID or with label
skew drawn from a Dirichlet distribution (Hsu et al. 2019, "Measuring the
Effects of Non-Identical Data Distribution for Federated Visual Classification").

The default dataset is Fashion-MNIST (Xiao et al. 2017) from Debian's
``dataset-fashion-mnist`` package, the same shape as Kuzushiji-MNIST. The file
readers and loaders live in :mod:`fedr._idx` and are re-exported here.
"""

from __future__ import annotations

import os
from itertools import pairwise
from typing import Any, Literal

import numpy as np

from fedr._idx import (
    FASHION_MNIST_CLASSES,
    KMNIST_CLASSES,
    Dataset,
    DatasetNotFoundError,
    load_dataset,
    load_fashion_mnist,
    load_kmnist,
    read_idx,
    read_npz,
)
from fedr._client_data import (
    Batch,
    ClientData,
    as_client_data,
    as_labels,
    check_finite,
    labels_1d,
    positive_int,
    writable_by_caller,
)
from fedr._seeds import check_seed
from fedr.errors import FedTypeError, FedValueError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "KMNIST_CLASSES",
    "ClientData",
    "Dataset",
    "DatasetNotFoundError",
    "as_client_data",
    "as_labels",
    "label_distribution",
    "load_dataset",
    "load_fashion_mnist",
    "load_kmnist",
    "make_clients",
    "make_federated_data",
    "prepare_images",
    "read_idx",
    "read_npz",
    "read_rds",
    "split_indices",
    "to_batches",
]

SplitMethod = Literal["sequential", "iid", "dirichlet"]
Seed = int | np.random.Generator | None

_SPLIT_METHODS = ("sequential", "iid", "dirichlet")
_DIRICHLET_TRIES = 1000


# --------------------------------------------------------------------------- arrays


def prepare_images(x: Any) -> np.ndarray:
    """Flatten images to float32 rows, scaling integer pixels to [0, 1].

    As the reference does: cast to float32, reshape to ``(n, 784)``, divide by 255.

    Args:
        x: images of shape ``(n, ...)``; integers (pixels 0..255) are divided by
            255, floats are kept as they are.

    Returns:
        A C-contiguous float32 array of shape ``(n, prod(x.shape[1:]))``.

    Raises:
        FedTypeError: ``x`` is not numeric.
        FedValueError: ``x`` has fewer than 2 dimensions, integer pixels outside
            0..255 or non-finite floats.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise FedValueError(
            f"`x` must have shape (n, ...) with at least 2 dimensions; got shape {x.shape}"
        )
    flat = x.reshape(len(x), int(np.prod(x.shape[1:], dtype=np.int64)))
    if np.issubdtype(x.dtype, np.integer):
        if x.dtype != np.uint8 and x.size and (flat.min() < 0 or flat.max() > 255):
            raise FedValueError(
                f"`x` integer pixels must be in 0..255; got values in {flat.min()}..{flat.max()}"
            )
        out = flat.astype(np.float32)
        np.divide(out, np.float32(255), out=out)
        return out
    if np.issubdtype(x.dtype, np.floating):
        out = np.ascontiguousarray(flat, dtype=np.float32)
        check_finite(out, "`x`")
        return out
    raise FedTypeError(f"`x` must be an integer or float array; got dtype {x.dtype}")


def read_rds(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    batch_size: int | None = None,
) -> ClientData | list[ClientData]:
    """Read client data from an ``.rds`` file written by R's ``saveRDS()``.

    The file holds one client's data or a list of clients, each one of: a
    numeric matrix or array with a label column, a data frame of numeric
    columns plus a label column, or a ``list(x =, y =)``. Labels may be whole
    numbers or a factor (level 1 is class 0). The file is read by R itself
    through rpy2 (see :mod:`fedr.rdata`); rpy2 is imported only here.

    Args:
        path: The ``.rds`` file.
        label: The name of the label column of data frames and matrices;
            None means ``"label"`` for data frames.
        batch_size: Rows per batch; None makes one batch of all rows.

    Returns:
        A :class:`ClientData` for one client (its id is the file's name
        without ``.rds``), or a list of them for a list of clients (ids from
        the list's names, ``client_<i>`` where unnamed).

    Raises:
        ImportError: rpy2 or R is missing (``pip install 'rpy2==3.5.17'``).
        FileNotFoundError: there is no such file.
        FedTypeError: an object is not client data, or a column is not numeric.
        FedValueError: a file R cannot read (corrupt or not from ``saveRDS``),
            a missing label column, NA or NaN values, labels that are not
            class ids, or lengths that differ.
    """
    from fedr import rdata

    return rdata.read_rds(path, label=label, batch_size=batch_size)


# --------------------------------------------------------------------------- splits


def split_indices(
    y_or_n: Any,
    n_clients: int,
    method: SplitMethod = "sequential",
    *,
    seed: Seed = None,
    alpha: float = 0.5,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split example indices over clients.

    Args:
        y_or_n: the labels (1-D), or the number of examples when the method
            needs no labels.
        n_clients: number of clients, 1..n.
        method: ``"sequential"``: client i gets the i-th of ``n_clients``
            contiguous ranges in file order (boundaries ``floor(i * n / n_clients)``),
            as the reference's 10% ranges; ``"iid"``: a seeded permutation cut
            into the same sizes, each client's indices in shuffled order;
            ``"dirichlet"``: label skew, each class's examples shared over clients
            in proportions drawn from ``Dir(alpha)``, each client's indices in file
            order.
        seed: seed of ``np.random.default_rng``; the same seed gives the same split,
            None fresh randomness. Unused by ``"sequential"``.
        alpha: Dirichlet concentration; small values give few classes per client,
            large values approach IID.
        min_size: ``"dirichlet"`` redraws until every client has this many examples.

    Returns:
        One int64 index array per client.

    Raises:
        FedValueError: an argument is out of range, ``"dirichlet"`` got no labels,
            or no draw gave every client ``min_size`` examples.
    """
    if method not in _SPLIT_METHODS:
        raise FedValueError(
            f"`method` must be one of 'sequential', 'iid', 'dirichlet'; got {method!r}"
        )
    labels = None
    if isinstance(y_or_n, int | np.integer) and not isinstance(y_or_n, bool):
        n = int(y_or_n)
        if n < 1:
            raise FedValueError(
                f"`y_or_n` must be labels or a positive number of examples; got {n}"
            )
    else:
        labels = np.asarray(y_or_n)
        n = len(labels) if labels.ndim else 0
        if n < 1:
            raise FedValueError(f"`y_or_n` must hold at least one label; got shape {labels.shape}")
    n_clients = positive_int(n_clients, "n_clients")
    if n_clients > n:
        raise FedValueError(
            f"`n_clients` must be at most the number of examples ({n}); got {n_clients}"
        )
    ranges = list(pairwise((np.arange(n_clients + 1, dtype=np.int64) * n // n_clients).tolist()))
    if method == "sequential":
        return [np.arange(a, b, dtype=np.int64) for a, b in ranges]
    # A Generator is used as is; anything else is a seed (numpy's own message
    # for a bad one, "SeedSequence expects int ...", names no argument).
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(check_seed(seed))
    if method == "iid":
        order = rng.permutation(n).astype(np.int64)
        return [order[a:b].copy() for a, b in ranges]
    if labels is None:
        raise FedValueError(f"`method` 'dirichlet' needs labels in `y_or_n`; got the count {n}")
    if not (isinstance(alpha, int | float | np.number) and alpha > 0 and np.isfinite(alpha)):
        raise FedValueError(f"`alpha` must be a positive finite number; got {alpha!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 0:
        raise FedValueError(f"`min_size` must be a non-negative integer; got {min_size!r}")
    if min_size * n_clients > n:
        raise FedValueError(
            f"`min_size` times `n_clients` ({min_size} x {n_clients}) exceeds the {n} examples"
        )
    return _dirichlet_split(
        labels_1d(labels, "`y_or_n`"), n_clients, rng, float(alpha), int(min_size)
    )


def _dirichlet_split(
    labels: np.ndarray, n_clients: int, rng: np.random.Generator, alpha: float, min_size: int
) -> list[np.ndarray]:
    # Group indices by class once; each try reshuffles within classes and redraws proportions.
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0])
    groups = np.split(order.astype(np.int64), starts[1:])
    for _ in range(_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for group in groups:
            group = rng.permutation(group)
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(group)).astype(np.int64)
            for client, piece in enumerate(np.split(group, np.clip(cuts, 0, len(group)))):
                parts[client].append(piece)
        clients = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(c) for c in clients) >= min_size:
            return clients
    raise FedValueError(
        f"`method` 'dirichlet' gave some client fewer than {min_size} examples in "
        f"{_DIRICHLET_TRIES} draws with alpha={alpha}; raise `alpha` or lower `n_clients`"
    )


def make_clients(
    x: Any,
    y: Any,
    n_clients: int = 10,
    method: SplitMethod = "sequential",
    *,
    batch_size: int = 100,
    seed: Seed = None,
    alpha: float = 0.5,
) -> list[ClientData]:
    """Split images and labels over clients and batch them, as the reference's workflow does.

    Args:
        x: images ``(n, ...)``, prepared once with :func:`prepare_images`.
        y: labels ``(n,)``.
        n_clients: number of clients.
        method: ``"sequential"``, ``"iid"`` or ``"dirichlet"``; see :func:`split_indices`.
        batch_size: rows per batch, in order; a client's last batch may be smaller.
        seed: seed of the random splits.
        alpha: Dirichlet concentration of ``"dirichlet"``.

    Returns:
        One :class:`ClientData` per client, ids ``client_0`` ... Whatever the
        method, the clients' features are read-only views of ONE contiguous
        array holding the rows in client order (gathered once, not copied per
        client), so memory grows with the data, not with the number of
        clients: 10,000 clients cost about as much as 10. Integer images stay
        uint8 pixels (``ClientData.scale`` 255, divided in the training graph:
        the values :func:`prepare_images` gives, in a quarter of the memory;
        read-only input such as a loaded dataset is not copied at all); float
        features are float32.

    Raises:
        FedValueError: lengths differ or an argument is out of range.
    """
    batch_size = positive_int(batch_size, "batch_size")
    x = np.asarray(x)
    # Check the shape and dtype before splitting (no data is converted here).
    prepare_images(x[:0] if x.ndim >= 2 else x)
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != len(x):
        raise FedValueError(f"`x` has {len(x)} rows but `y` has shape {y.shape}")
    parts = split_indices(y, n_clients, method, seed=seed, alpha=alpha)
    pixels = np.issubdtype(x.dtype, np.integer)
    if pixels and x.dtype != np.uint8:
        prepare_images(x)  # the range check: pixels in 0..255
        x = x.astype(np.uint8)
    if method != "sequential":
        # Gather the rows once, in client order (each client's own order kept),
        # before converting: the raw rows (uint8 images) are the cheaper copy.
        order = np.concatenate(parts)
        x, y = x[order], y[order]
    elif writable_by_caller(x) and (pixels or np.may_share_memory(prepare_images(x[:1]), x[:1])):
        # The caller could still write the rows the clients would view: one copy
        # for all clients (ClientData would otherwise copy each client's rows).
        x = x.copy()
    # Integer pixels stay uint8 (a quarter of float32's memory), divided by 255
    # inside the training graph: the same float32 values prepare_images gives.
    xs = np.ascontiguousarray(x.reshape(len(x), -1)) if pixels else prepare_images(x)
    # Read-only, and so is every array behind it (all made here, or already
    # read-only), so ClientData keeps views of it without copying.
    base: Any = xs
    while isinstance(base, np.ndarray):
        base.flags.writeable = False
        base = base.base
    bounds = np.cumsum([0] + [len(index) for index in parts]).tolist()
    scale = 255.0 if pixels else None
    return [
        ClientData(xs[a:b], y[a:b], batch_size=batch_size, client_id=f"client_{i}", scale=scale)
        for i, (a, b) in enumerate(pairwise(bounds))
    ]


def make_federated_data(
    dataset: Dataset,
    n_clients: int = 10,
    method: SplitMethod = "sequential",
    *,
    batch_size: int = 100,
    seed: Seed = None,
    alpha: float = 0.5,
    split: Literal["train", "test"] = "train",
) -> list[ClientData]:
    """Split one split of a :class:`Dataset` over clients; see :func:`make_clients`.

    Args:
        dataset: a loaded dataset.
        n_clients, method, batch_size, seed, alpha: as in :func:`make_clients`.
        split: ``"train"`` or ``"test"``.

    Returns:
        One :class:`ClientData` per client.

    Raises:
        FedTypeError: ``dataset`` is not a Dataset.
        FedValueError: ``split`` or another argument is out of range.
    """
    if not isinstance(dataset, Dataset):
        raise FedTypeError(f"`dataset` must be a Dataset; got {type(dataset).__name__}")
    if split not in ("train", "test"):
        raise FedValueError(f"`split` must be one of 'train', 'test'; got {split!r}")
    x, y = (
        (dataset.x_train, dataset.y_train) if split == "train" else (dataset.x_test, dataset.y_test)
    )
    return make_clients(x, y, n_clients, method, batch_size=batch_size, seed=seed, alpha=alpha)


def to_batches(clients: Any) -> list[list[Batch]]:
    """Return the reference's nested structure: per client, a list of ``OrderedDict(x, y)`` batches."""
    return [client.batches() for client in as_client_data(clients)]


def label_distribution(clients: Any, num_classes: int | None = None) -> np.ndarray:
    """Count each client's examples per label.

    Args:
        clients: anything :func:`as_client_data` accepts, with 1-D labels.
        num_classes: number of columns; None uses the largest label plus one.

    Returns:
        An int64 array ``(n_clients, num_classes)`` of counts.

    Raises:
        FedValueError: a client has 2-D targets, or a label is ``>= num_classes``.
    """
    clients = as_client_data(clients)
    for client in clients:
        if client.y.ndim != 1:
            raise FedValueError(f"client {client.client_id!r}: y holds 2-D targets, not labels")
    top = max(int(client.y.max()) for client in clients) + 1
    if num_classes is None:
        num_classes = top
    num_classes = positive_int(num_classes, "num_classes")
    if top > num_classes:
        raise FedValueError(
            f"`num_classes` must exceed the largest label ({top - 1}); got {num_classes}"
        )
    return np.stack([np.bincount(client.y, minlength=num_classes) for client in clients]).astype(
        np.int64
    )
