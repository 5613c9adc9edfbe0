"""Client data from R objects through rpy2 (fedr.rdata): matrices, data frames, .rds files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fedr.datasets import ClientData, as_client_data
from fedr.errors import FedTypeError, FedValueError

ro = pytest.importorskip("rpy2.robjects", reason="rpy2 (and R) are needed to read R objects")
rdata = pytest.importorskip("fedr.rdata")


def r(code: str):
    """Evaluate plain R code (no reticulate: see TOOLCHAIN pitfall 3)."""
    return ro.r(code)


def test_matrix_with_labels_keeps_element_order():
    m = r("matrix(c(1.5, 2, 3, 4, 5, 6.25), nrow = 3)")  # column-major in R

    client = rdata.client_data_from_r(m, label=r("c(2L, 0L, 1L)"), client_id="alice")

    assert isinstance(client, ClientData)
    assert client.client_id == "alice"
    assert client.x.dtype == np.float32 and client.x.flags["C_CONTIGUOUS"]
    assert_array_equal(client.x, np.array([[1.5, 4], [2, 5], [3, 6.25]], np.float32))
    assert client.y.dtype == np.int32
    assert_array_equal(client.y, [2, 0, 1])
    assert client.num_batches == 1


def test_matrix_label_column_by_name_and_batches():
    m = r("cbind(a = c(0.1, 0.2, 0.3, 0.4, 0.5), label = c(1, 0, 1, 1, 0), b = 5:1)")

    client = rdata.client_data_from_r(m, label="label", batch_size=2)

    assert_array_equal(client.x, np.array([[0.1, 5], [0.2, 4], [0.3, 3], [0.4, 2], [0.5, 1]], np.float32))
    assert_array_equal(client.y, [1, 0, 1, 1, 0])
    assert_array_equal(client.offsets, [0, 2, 4, 5])


def test_integer_matrix_and_python_labels():
    client = rdata.client_data_from_r(r("matrix(1:6, 2)"), label=[0, 1])

    assert_array_equal(client.x, np.array([[1, 3, 5], [2, 4, 6]], np.float32))
    assert_array_equal(client.y, [0, 1])


def test_array_rows_are_examples():
    a = r("array(as.numeric(1:24), dim = c(4, 2, 3))")

    client = rdata.client_data_from_r(a, label=[0, 1, 0, 1])

    assert client.x.shape == (4, 2, 3)
    assert client.x[3, 1, 2] == 24.0  # R's a[4, 2, 3]
    assert client.x[0, 1, 0] == 5.0  # R's a[1, 2, 1]


def test_data_frame_with_label_column():
    df = r(
        "data.frame(f1 = c(0.5, 1, 2), f2 = c(3L, 4L, 5L), on = c(TRUE, FALSE, TRUE),"
        " label = factor(c('dog', 'cat', 'dog')))"
    )

    client = rdata.client_data_from_r(df, batch_size=2, client_id="shelter")

    assert_array_equal(client.x, np.array([[0.5, 3, 1], [1, 4, 0], [2, 5, 1]], np.float32))
    # Factor level 1 ("cat") is class 0, as in the R package.
    assert_array_equal(client.y, [1, 0, 1])
    assert client.num_batches == 2


def test_data_frame_label_name_and_list_of_x_y():
    df = r("data.frame(y = c(1L, 2L), v = c(0.25, 0.75))")
    assert_array_equal(rdata.client_data_from_r(df, label="y").y, [1, 2])

    pair = r("list(x = matrix(c(1, 2, 3, 4), 2), y = c(0, 1))")
    client = rdata.client_data_from_r(pair)
    assert_array_equal(client.x, np.array([[1, 3], [2, 4]], np.float32))
    assert_array_equal(client.y, [0, 1])


@pytest.mark.parametrize(
    ("code", "label", "error", "match"),
    [
        ("matrix(c(1, NA, 3, 4), 2)", [0, 1], FedValueError, r"client 'c': x has 1 missing value.*element 2"),
        ("matrix(c(1L, NA, 3L, 4L), 2)", [0, 1], FedValueError, r"x has 1 missing value"),
        ("matrix(c(1, NaN, 3, 4), 2)", [0, 1], FedValueError, r"missing value"),
        ("matrix(1:4, 2)", None, FedValueError, r"a matrix needs `label`"),
        ("matrix(1:4, 2)", [0, 1, 1], FedValueError, r"x has 2 rows but y has 3"),
        ("matrix(1:4, 2)", "label", FedValueError, r"no label column 'label'"),
        ("data.frame(a = 1:2, s = c('u', 'v'), label = 0:1)", None, FedTypeError, r"column 's' must be numeric"),
        ("data.frame(a = factor(1:2), label = 0:1)", None, FedTypeError, r"column 'a' is a factor"),
        ("data.frame(a = 1:2, lab = 0:1)", None, FedValueError, r"no label column 'label'; columns are \['a', 'lab'\]"),
        ("data.frame(a = 1:2, label = c(0L, NA))", None, FedValueError, r"column 'label' has 1 missing value"),
        ("data.frame(label = 0:1)", None, FedValueError, r"no feature columns"),
        # The rule on labels is fedr.datasets.as_labels's, named after the column.
        ("data.frame(a = 1:2, label = c(0.5, 1))", None, FedValueError,
         r"^client 'c': column 'label' must hold whole-number labels; got non-integer floats$"),
        ("data.frame(a = 1:2, label = c(-1L, 1L))", None, FedValueError,
         r"^client 'c': column 'label' must hold non-negative labels; got -1$"),
        ("data.frame(a = 1:2, label = c('u', 'v'))", None, FedTypeError,
         r"^client 'c': column 'label' must be integer labels; got dtype <U1$"),
        ("matrix(1:4, 2)", [0, -2], FedValueError, r"^client 'c': label must hold non-negative labels; got -2$"),
        ("1:3", None, FedTypeError, r"expected an R matrix, data frame or list"),
        ("list(x = 1:3, y = 1:3)", None, FedValueError, r"x must be a matrix or array"),
    ],
)
def test_bad_r_objects_raise_naming_the_client(code, label, error, match):
    with pytest.raises(error, match=match):
        rdata.client_data_from_r(r(code), label=label, client_id="c")


def test_read_rds_single_client_and_list_of_clients(tmp_path):
    single = tmp_path / "hospital_a.rds"
    many = tmp_path / "clients.rds"
    r(f"saveRDS(data.frame(x1 = c(1, 2, 3), label = c(0L, 1L, 0L)), '{single}')")
    r(
        "saveRDS(list(north = data.frame(x1 = c(1, 2), label = 0:1),"
        " list(x = matrix(c(5, 6, 7, 8), 2), y = c(1, 1))),"
        f" '{many}')"
    )

    one = rdata.read_rds(single, batch_size=2)
    clients = rdata.read_rds(many)

    assert isinstance(one, ClientData)
    assert one.client_id == "hospital_a"
    assert_array_equal(one.x[:, 0], [1, 2, 3])
    assert_array_equal(one.offsets, [0, 2, 3])
    assert [c.client_id for c in clients] == ["north", "client_1"]
    assert_array_equal(clients[1].x, np.array([[5, 7], [6, 8]], np.float32))
    assert as_client_data(clients) == clients


def test_read_rds_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .rds file"):
        rdata.read_rds(tmp_path / "nothing.rds")


def test_clients_from_r_rejects_non_lists_and_empty_lists():
    with pytest.raises(FedTypeError, match="expected an R list of clients"):
        rdata.clients_from_r(r("matrix(1:4, 2)"))
    with pytest.raises(FedValueError, match="empty R list"):
        rdata.clients_from_r(r("list()"))


def test_import_fedr_does_not_load_rpy2():
    code = "import sys, fedr, fedr.rdata; print('rpy2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
