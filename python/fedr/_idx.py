"""Readers for the on-disk formats MNIST-like datasets ship in: IDX (plain or gzip) and npz.

IDX is the format of LeCun et al.'s MNIST files, reused by Fashion-MNIST (Xiao et
al. 2017) and Kuzushiji-MNIST (Clanuwat et al. 2018): a 4-byte magic number
``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 dimensions,
then the data in C order. Kuzushiji-MNIST also ships single-array ``.npz`` files.
The loaders look for the four files of a dataset in a list of directories and
read them into a :class:`Dataset`; :mod:`fedr.datasets` re-exports them.
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedr.errors import FedError, FedValueError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "KMNIST_CLASSES",
    "Dataset",
    "DatasetNotFoundError",
    "describe_array",
    "load_dataset",
    "load_fashion_mnist",
    "load_kmnist",
    "read_idx",
    "read_npz",
]

PathLike = str | os.PathLike[str]

# dtype codes of the IDX format; multi-byte types are big-endian on disk.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_PARTS = ("x_train", "y_train", "x_test", "y_test")
_IDX_NAMES = dict(
    zip(
        _PARTS,
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        strict=True,
    )
)  # fmt: skip
_NPZ_NAMES = dict(
    zip(
        _PARTS,
        ("kmnist-train-imgs.npz", "kmnist-train-labels.npz",
         "kmnist-test-imgs.npz", "kmnist-test-labels.npz"),
        strict=True,
    )
)  # fmt: skip


class DatasetNotFoundError(FedError, FileNotFoundError):
    """The files of a dataset are in none of the directories fedr looked in."""


def _read_bytes(path: Path) -> bytes:
    """Return the file's bytes, gunzipped if it starts with the gzip magic number."""
    data = path.read_bytes()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise FedValueError(f"{path}: corrupt or truncated gzip stream ({err})") from err


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into an array.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``. Compression is
            detected from the content, not the name.

    Returns:
        A read-only array with the header's shape and dtype, in native byte order
        (``uint8`` for the image and label files of MNIST-like datasets).

    Raises:
        FileNotFoundError: the file does not exist.
        FedValueError: the magic number is wrong, the dtype code is unknown, or the
            data size does not match the header (a truncated or padded file).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise FedValueError(
            f"{path}: not an IDX file: {len(data)} bytes, shorter than the 4-byte magic number"
        )
    if data[0] != 0 or data[1] != 0:
        raise FedValueError(
            f"{path}: not an IDX file: magic number 0x{data[:4].hex().upper()} "
            "does not start with two zero bytes"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise FedValueError(
            f"{path}: unknown IDX dtype code 0x{code:02X} (expected one of {known})"
        )
    if ndim == 0:
        raise FedValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FedValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, "
            f"file has {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(shape, dtype=np.int64))
    expected = count * dtype.itemsize
    got = len(data) - header
    if got != expected:
        problem = "truncated" if got < expected else "has trailing bytes"
        dims = "x".join(map(str, shape))
        raise FedValueError(
            f"{path}: IDX data {problem}: header says {dims} {dtype.name} = {expected} bytes, "
            f"file has {got}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
        array.flags.writeable = False
    return array


def read_npz(path: PathLike) -> np.ndarray:
    """Read the array of a single-array ``.npz`` file, such as Kuzushiji-MNIST's.

    Args:
        path: the file, e.g. ``kmnist-train-imgs.npz``.

    Returns:
        The array stored under ``arr_0``, or under the archive's only key.

    Raises:
        FileNotFoundError: the file does not exist.
        FedValueError: the file is not a zip archive, is corrupt or truncated, or
            holds several arrays none of which is ``arr_0``.
    """
    path = Path(path)
    # Open the file here: np.load leaks its own handle when the zip is unreadable.
    with path.open("rb") as handle:
        if handle.read(4) != _ZIP_MAGIC:
            raise FedValueError(
                f"{path}: not an npz file: it does not start with the zip magic number"
            )
        handle.seek(0)
        try:
            with np.load(handle, allow_pickle=False) as archive:
                keys = list(archive.files)
                if "arr_0" in keys:
                    key = "arr_0"
                elif len(keys) == 1:
                    key = keys[0]
                else:
                    raise FedValueError(
                        f"{path}: expected one array (or one named 'arr_0'), found keys {keys}"
                    )
                return archive[key]
        except FedValueError:
            raise
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:
            raise FedValueError(f"{path}: corrupt or truncated npz file ({err})") from err


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class Dataset:
    """An image classification dataset as read from disk.

    Attributes:
        name: the dataset's name, e.g. ``"fashion_mnist"``.
        x_train, x_test: ``uint8`` images of shape ``(n, 28, 28)``, as read (IDX
            images are read-only views of the decompressed file).
        y_train, y_test: ``int64`` labels of shape ``(n,)``.
        class_names: the name of each label, indexed by label.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, x_train={describe_array(self.x_train)}, "
            f"y_train={describe_array(self.y_train)}, x_test={describe_array(self.x_test)}, "
            f"y_test={describe_array(self.y_test)}, classes={len(self.class_names)})"
        )


def describe_array(array: np.ndarray) -> str:
    """``dtype(shape)`` of an array, for reprs: ``uint8(60000, 28, 28)``."""
    return f"{array.dtype}{tuple(array.shape)}"


def _find_files(
    directory: Path, names: dict[str, str], gz: bool
) -> tuple[dict[str, Path], list[str]]:
    """Return the files of ``names`` found in ``directory`` and the missing names."""
    found, missing = {}, []
    for part, name in names.items():
        candidates = [directory / (name + ".gz"), directory / name] if gz else [directory / name]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(name + ("[.gz]" if gz else ""))
        else:
            found[part] = hit
    return found, missing


def _search_dirs(path: PathLike | None, subdir: str, default: str | None) -> list[Path]:
    if path is not None:
        return [Path(path)]
    dirs = []
    env = os.environ.get("FEDR_DATA_DIR")
    if env:
        dirs += [Path(env) / subdir, Path(env)]
    if default is not None:
        dirs.append(Path(default))
    return dirs


def _load(
    name: str,
    dirs: list[Path],
    formats: list[tuple[dict[str, str], bool]],
    hint: str,
    class_names: tuple[str, ...],
) -> Dataset:
    """Load the first directory of ``dirs`` that holds a complete set of files in one format."""
    looked = []
    for directory in dirs:
        if not directory.is_dir():
            looked.append(f"  {directory} (no such directory)")
            continue
        for names, gz in formats:
            found, missing = _find_files(directory, names, gz)
            if not missing:
                return _read_dataset(name, found, class_names)
        lacks = [", ".join(_find_files(directory, *fmt)[1]) for fmt in formats]
        looked.append(f"  {directory} (missing {'; or missing '.join(lacks)})")
    where = (
        "\n".join(looked)
        if looked
        else "  (no directory: `path` is None and FEDR_DATA_DIR is unset)"
    )
    raise DatasetNotFoundError(f"{name} files not found. fedr looked in:\n{where}\n{hint}")


def _labels(array: np.ndarray, file: Path, name: str, num_classes: int) -> np.ndarray:
    """A label file's values as int64, each a whole number naming one of the ``num_classes`` classes.

    A label beyond the class names (or a fraction, which a cast would truncate)
    cannot be right: the file is not this dataset's, or it is corrupt.
    """
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            i = int(np.argmax(bad))
            raise FedValueError(f"{file}: label {array[i]!r} at index {i} is not a whole number (a class id)")
    labels = array.astype(np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise FedValueError(
            f"{file}: label {int(labels[i])} at index {i} is not a class of {name}, which has "
            f"{num_classes} classes (labels 0..{num_classes - 1}); {int(bad.sum())} label(s) out of range"
        )
    return labels


def _read_dataset(name: str, files: dict[str, Path], class_names: tuple[str, ...]) -> Dataset:
    arrays = {}
    for part, file in files.items():
        array = read_npz(file) if file.suffix == ".npz" else read_idx(file)
        want = 3 if part.startswith("x") else 1
        if array.ndim != want:
            raise FedValueError(f"{file}: expected a {want}-D array, got shape {array.shape}")
        arrays[part] = array if want == 3 else _labels(array, file, name, len(class_names))
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise FedValueError(
                f"{files[f'x_{split}']}: {len(x)} images but {files[f'y_{split}']} has {len(y)} labels"
            )
    return Dataset(name=name, class_names=class_names, **arrays)


def load_fashion_mnist(path: PathLike | None = None) -> Dataset:
    """Load Fashion-MNIST (60000 training and 10000 test images of 28x28, 10 classes).

    Args:
        path: a directory holding ``train-images-idx3-ubyte.gz``,
            ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and
            ``t10k-labels-idx1-ubyte.gz`` (or the same names without ``.gz``). If
            None, look in ``$FEDR_DATA_DIR/fashion-mnist``, ``$FEDR_DATA_DIR`` (if
            that variable is set) and then Debian's
            ``/usr/share/datasets/fashion-mnist``.

    Returns:
        The dataset, images ``uint8`` and labels ``int64``.

    Raises:
        DatasetNotFoundError: no directory holds the four files; the message lists
            every directory looked in.
        FedValueError: a file is corrupt or truncated, or a label is not one of the 10 classes.
    """
    hint = (
        "Install them with `apt-get install dataset-fashion-mnist` (or `make setup`), "
        "or pass `path=` / set FEDR_DATA_DIR to a directory holding them."
    )
    dirs = _search_dirs(path, "fashion-mnist", FASHION_MNIST_DIR)
    return _load("fashion_mnist", dirs, [(_IDX_NAMES, True)], hint, FASHION_MNIST_CLASSES)


def load_kmnist(path: PathLike | None = None) -> Dataset:
    """Load Kuzushiji-MNIST (60000 training and 10000 test images of 28x28, 10 classes).

    Args:
        path: a directory holding either the four npz files
            (``kmnist-train-imgs.npz``, ``kmnist-train-labels.npz``,
            ``kmnist-test-imgs.npz``, ``kmnist-test-labels.npz``) or the four IDX
            files, named as Fashion-MNIST's (``train-images-idx3-ubyte.gz``, ...).
            If None, look in ``$FEDR_DATA_DIR/kmnist`` and ``$FEDR_DATA_DIR``.

    Returns:
        The dataset, images ``uint8`` and labels ``int64``.

    Raises:
        DatasetNotFoundError: no directory holds the files; the message lists
            every directory looked in.
        FedValueError: a file is corrupt or truncated, or a label is not one of the 10 classes.
    """
    hint = (
        "Download the four files (kmnist-*-imgs.npz and kmnist-*-labels.npz, or the IDX "
        "*-ubyte.gz files) from https://github.com/rois-codh/kmnist, then pass `path=` "
        "or set FEDR_DATA_DIR to their directory."
    )
    dirs = _search_dirs(path, "kmnist", None)
    formats = [(_NPZ_NAMES, False), (_IDX_NAMES, True)]
    return _load("kmnist", dirs, formats, hint, KMNIST_CLASSES)


def load_dataset(name: str, path: PathLike | None = None) -> Dataset:
    """Load a dataset by name.

    Args:
        name: ``"fashion_mnist"`` (or ``"fashion-mnist"``) or ``"kmnist"``.
        path: the directory of the files; see :func:`load_fashion_mnist` and
            :func:`load_kmnist` for where fedr looks when it is None.

    Returns:
        The dataset.

    Raises:
        FedValueError: ``name`` is not a known dataset.
        DatasetNotFoundError: the files are missing.
    """
    loaders = {"fashion_mnist": load_fashion_mnist, "kmnist": load_kmnist}
    key = name.replace("-", "_") if isinstance(name, str) else None
    if key not in loaders:
        raise FedValueError(f"`name` must be one of 'fashion_mnist', 'kmnist'; got {name!r}")
    return loaders[key](path)
