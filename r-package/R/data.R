# Data sets and client data: loading, splitting over clients, R values in.

#' Load an image classification data set
#'
#' Reads Fashion-MNIST (the default, from Debian's `dataset-fashion-mnist`
#' package) or Kuzushiji-MNIST (the reference article's data set) from IDX or
#' `.npz` files: 60000 training and 10000 test images of 28 x 28 pixels in 10
#' classes. The images stay in Python; [fed_split()] splits them over clients.
#'
#' @param name `"fashion_mnist"` or `"kmnist"`.
#' @param path A folder holding the files, or `NULL` for the default places
#'   (the environment variable `FEDR_DATA_DIR`, then the system folder).
#' @returns A `fed_dataset` object with a `print()` method.
#' @family data
#' @export
#' @examplesIf fedr_available()
#' fashion <- fed_load_dataset("fashion_mnist")
#' fashion
fed_load_dataset <- function(name = c("fashion_mnist", "kmnist"), path = NULL) {
  name <- check_string(name[[1]], "name", c("fashion_mnist", "kmnist"))
  if (!is.null(path)) {
    check_string(path, "path")
    path <- path.expand(path)
  }
  datasets <- fedr_module("fedr.datasets")
  py <- fedr_call(datasets$load_dataset(name, path = path))
  shape <- function(a) as.integer(reticulate::py_to_r(reticulate::py_get_attr(py, a)$shape))
  structure(
    list(
      py = py,
      name = name,
      train_shape = shape("x_train"),
      test_shape = shape("x_test"),
      class_names = as.character(reticulate::py_to_r(py$class_names))
    ),
    class = "fed_dataset"
  )
}

#' @export
format.fed_dataset <- function(x, ...) {
  image <- paste(x$train_shape[-1], collapse = " x ")
  c(
    sprintf("<fed_dataset> %s", x$name),
    sprintf("  train: %d images of %s; test: %d", x$train_shape[[1]], image, x$test_shape[[1]]),
    sprintf("  classes (%d): %s", length(x$class_names), paste(x$class_names, collapse = ", "))
  )
}

#' @export
print.fed_dataset <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @export
r_to_py.fed_dataset <- function(x, convert = FALSE) x$py

#' Split data over clients
#'
#' Gives each of `n_clients` clients a part of the data, batched, as the
#' reference article does with its ten 10% ranges of Kuzushiji-MNIST. The data
#' is converted once, here: images to float32 rows of 784 values in \[0, 1\],
#' R features to a float32 array (element `[i, j]` stays `[i, j]`), labels to
#' integers.
#'
#' @param data A `fed_dataset` from [fed_load_dataset()], or features: a
#'   numeric matrix, array or data frame with one row per example, used as
#'   given (scale them yourself). An array's examples are flattened to rows
#'   in row-major order, as the article's reshape of 28 x 28 images to 784.
#' @param n_clients The number of clients.
#' @param method How examples go to clients: `"sequential"` (contiguous
#'   ranges in order, as the article), `"iid"` (a seeded random permutation),
#'   `"dirichlet"` (label skew: class shares per client drawn from a Dirichlet
#'   distribution of concentration `alpha`).
#' @param batch_size Examples per batch; a client's last batch may be smaller.
#' @param seed `NULL` or a seed for the `"iid"` and `"dirichlet"` splits.
#' @param alpha The Dirichlet concentration: small values give clients few
#'   classes, large ones approach IID.
#' @param split For a `fed_dataset`: `"train"` or `"test"`.
#' @param labels For features: the labels, an integer vector or a factor
#'   (level 1 is class 0) with one element per example, or the name of the
#'   label column of a data frame.
#' @returns A `fed_data` object: the clients' data, held in Python, with
#'   `print()`, `length()` and `[` (select clients) methods.
#' @family data
#' @export
#' @examplesIf fedr_available()
#' fashion <- fed_load_dataset()
#' clients <- fed_split(fashion, n_clients = 10, batch_size = 100)
#' clients
#'
#' x <- matrix(runif(200 * 4), ncol = 4)
#' fed_split(x, n_clients = 4, method = "iid", seed = 1, labels = rep(0:1, 100))
fed_split <- function(data, n_clients = 10, method = c("sequential", "iid", "dirichlet"),
                      batch_size = 100, seed = NULL, alpha = 0.5,
                      split = c("train", "test"), labels = NULL) {
  n_clients <- as_integer(n_clients, "n_clients")
  method <- check_string(method[[1]], "method", c("sequential", "iid", "dirichlet"))
  batch_size <- as_integer(batch_size, "batch_size")
  seed <- as_seed(seed)
  alpha <- as_number(alpha, "alpha", min = 0, min_inclusive = FALSE)
  split <- check_string(split[[1]], "split", c("train", "test"))
  datasets <- fedr_module("fedr.datasets")
  if (inherits(data, "fed_dataset")) {
    if (!is.null(labels)) {
      fedr_abort("`labels` is for features given as R values; a fed_dataset has its own.", "labels")
    }
    n <- if (split == "train") data$train_shape[[1]] else data$test_shape[[1]]
    check_n_clients(n_clients, n)
    clients <- fedr_call(datasets$make_federated_data(
      data$py, n_clients, method,
      batch_size = batch_size, seed = seed, alpha = alpha, split = split
    ))
    source <- sprintf("%s (%s)", data$name, split)
  } else {
    if (is.character(labels) && length(labels) == 1L && is.data.frame(data)) {
      if (!labels %in% names(data)) {
        fedr_abort(sprintf("`labels`: no column \"%s\" in `data`.", labels), "labels")
      }
      y <- data[[labels]]
      data <- data[setdiff(names(data), labels)]
      labels <- y
    }
    if (is.null(labels)) {
      fedr_abort("`labels` must be given with features: a vector of labels or a column name.", "labels")
    }
    if (!is.data.frame(data) && (is.null(dim(data)) || !is.numeric(data) && !is.logical(data))) {
      fedr_abort(sprintf("`data` must be a fed_dataset, a numeric matrix, array or data frame, not %s.", describe(data)), "data")
    }
    n <- NROW(data)
    check_n_clients(n_clients, n)
    y <- as_py_labels(labels, n, "labels")
    x <- as_py_features(data, "data")
    clients <- fedr_call(datasets$make_clients(
      x, y, n_clients, method,
      batch_size = batch_size, seed = seed, alpha = alpha
    ))
    source <- "R data"
  }
  new_fed_data(clients, source)
}

check_n_clients <- function(n_clients, n) {
  if (n_clients > n) {
    fedr_abort(sprintf("`n_clients` (%d) must not exceed the number of examples (%d).", n_clients, n), "n_clients")
  }
}

#' Client data from R values
#'
#' Makes one client per element of a list, each the data that client holds,
#' converted once to the layout the core trains on (float32 features, integer
#' labels).
#'
#' @param clients A list with one element per client: `list(x = , y = )` with
#'   `x` a numeric matrix, array or data frame and `y` its labels (see
#'   [fed_split()]). Names of the list become client ids.
#' @param batch_size Examples per batch.
#' @returns A `fed_data` object.
#' @family data
#' @export
#' @examplesIf fedr_available()
#' a <- list(x = matrix(runif(20), 10), y = rep(0:1, 5))
#' b <- list(x = matrix(runif(8), 4), y = c(1, 1, 0, 1))
#' fed_clients(list(alice = a, bob = b), batch_size = 5)
fed_clients <- function(clients, batch_size = 100) {
  if (!is.list(clients) || is.data.frame(clients) || !length(clients)) {
    fedr_abort(sprintf("`clients` must be a non-empty list with one element per client, not %s.", describe(clients)), "clients")
  }
  batch_size <- as_integer(batch_size, "batch_size")
  ids <- names(clients)
  if (is.null(ids)) ids <- character(length(clients))
  ids[!nzchar(ids)] <- sprintf("client_%d", which(!nzchar(ids)) - 1L)
  datasets <- fedr_module("fedr.datasets")
  py <- lapply(seq_along(clients), function(i) {
    client <- clients[[i]]
    where <- sprintf("clients[[%d]]", i)
    if (!is.list(client) || is.data.frame(client) || !all(c("x", "y") %in% names(client))) {
      fedr_abort(sprintf("`%s` must be a list with elements `x` and `y`, not %s.", where, describe(client)), "clients")
    }
    x <- as_py_features(client$x, paste0(where, "$x"))
    y <- as_py_labels(client$y, NROW(client$x), paste0(where, "$y"))
    fedr_call(datasets$ClientData(x, y, batch_size = batch_size, client_id = ids[[i]]))
  })
  new_fed_data(reticulate::r_to_py(py), "R list")
}

new_fed_data <- function(py, source) {
  info <- reticulate::py_to_r(reticulate::py_call(client_summary(), py))
  structure(
    list(
      py = py,
      source = source,
      ids = as.character(unlist(info$ids)),
      sizes = as.integer(unlist(info$sizes)),
      batches = as.integer(unlist(info$batches)),
      batch_size = as.integer(unlist(info$batch_size))
    ),
    class = "fed_data"
  )
}

client_summary <- function() {
  if (is.null(.fedr$client_summary)) {
    .fedr$client_summary <- reticulate::py_eval(paste(
      "lambda cs: {'ids': [c.client_id for c in cs], 'sizes': [c.num_examples for c in cs],",
      "'batches': [c.num_batches for c in cs], 'batch_size': [c.batch_size for c in cs]}"
    ), convert = FALSE)
  }
  .fedr$client_summary
}

#' @export
length.fed_data <- function(x) length(x$ids)

#' @export
`[.fed_data` <- function(x, i) {
  n <- length(x)
  index <- seq_len(n)[i]
  if (anyNA(index) || !length(index)) {
    fedr_abort(sprintf("Client indices must select among the %d clients.", n), "i")
  }
  pick <- reticulate::py_eval("lambda cs, idx: [cs[j] for j in idx]", convert = FALSE)
  new_fed_data(reticulate::py_call(pick, x$py, as.list(index - 1L)), x$source)
}

#' @export
format.fed_data <- function(x, ...) {
  sizes <- x$sizes
  per_client <- if (length(unique(sizes)) == 1L) {
    sprintf("%d each", sizes[[1]])
  } else {
    sprintf("%d to %d per client", min(sizes), max(sizes))
  }
  c(
    sprintf(
      "<fed_data> %d client%s, %d examples (%s), batch size %d",
      length(x), if (length(x) == 1L) "" else "s", sum(sizes), per_client, max(x$batch_size)
    ),
    sprintf("  from %s; clients %s", x$source, paste(abbreviate_ids(x$ids), collapse = ", "))
  )
}

abbreviate_ids <- function(ids, n = 4L) {
  if (length(ids) <= n + 1L) ids else c(ids[seq_len(n)], sprintf("... (%d more)", length(ids) - n))
}

#' @export
print.fed_data <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @export
r_to_py.fed_data <- function(x, convert = FALSE) x$py

#' One client's data as R values
#'
#' Reads back what a client holds, for checks and plots.
#'
#' @param data A `fed_data` object.
#' @param client The client's position (1-based) or id.
#' @returns A list: `id`, `x` (a numeric matrix or array, one row per
#'   example), `y` (an integer vector of labels) and `batch_sizes`.
#' @family data
#' @export
#' @examplesIf fedr_available()
#' clients <- fed_split(matrix(1:12, 6), n_clients = 2, labels = c(0, 1, 0, 1, 1, 0))
#' fed_client(clients, 2)
fed_client <- function(data, client = 1L) {
  if (!inherits(data, "fed_data")) {
    fedr_abort(sprintf("`data` must be a fed_data object, not %s.", describe(data)), "data")
  }
  if (is.character(client)) {
    check_string(client, "client", data$ids)
    client <- match(client, data$ids)
  }
  client <- as_integer(client, "client")
  if (client > length(data)) {
    fedr_abort(sprintf("`client` must be at most %d, not %d.", length(data), client), "client")
  }
  py <- reticulate::py_get_item(data$py, client - 1L)
  offsets <- reticulate::py_to_r(py$offsets)
  list(
    id = data$ids[[client]],
    x = reticulate::py_to_r(py$features()),
    y = as.integer(reticulate::py_to_r(py$y)),
    batch_sizes = as.integer(diff(offsets))
  )
}
