# Real clients over the network: fedr on Flower's deployment engine (fedr.flower).

#' Federated learning over the network with Flower
#'
#' A fedr federation on real machines is a [Flower](https://flower.ai)
#' federation: a *SuperLink* on the server, one *SuperNode* per client that
#' keeps its data where it is, and Flower's own programs between them
#' (`flower-superlink`, `flower-supernode`, `flwr run`; TLS for anything but
#' loopback). These functions start those programs from R:
#'
#' * `fed_flower_superlink()` starts a SuperLink on this machine.
#' * `fed_flower_node()` starts a SuperNode that serves R data: a data frame
#'   or matrix with a label column, `list(x =, y =)`, one client of a
#'   `fed_data`, or the path of a `.rds`, `.npz`, `.csv` file or dataset
#'   folder. R objects are saved to an `.rds` file that the node reads with R
#'   itself (through rpy2): the node's owner writes no Python.
#' * `fed_flower_run()` runs a [fed_averaging()] process on the federation
#'   (`flwr run` of fedr's built-in app): the server aggregates with the
#'   process's aggregator (mean, robust, differential privacy, secure
#'   aggregation), nodes train with fedr's client update and run the
#'   aggregator's client step themselves (DP's clipping, secure
#'   aggregation's masking), and the result is a `fed_history` as
#'   [fed_fit()] returns, with the last good state.
#' * `fed_flower_certificates()` writes a test certificate authority and
#'   server certificate for TLS.
#'
#' Each node is one client, named by `client_id`; the server orders clients
#' by name. A node that dies or does not answer within `round_timeout` is
#' left out of the round and named (`num_clients_failed`, the `events`
#' column, a `fedr_warning`); a round with fewer usable updates than the
#' process's `min_clients` keeps the last good state and is reported.
#' Secure aggregation runs its key exchange as extra message rounds to the
#' nodes; each node keeps its keys on its own machine, and a node lost after
#' the keys were shared is recovered from the others' shares.
#'
#' @param host Address the SuperLink listens on: `"127.0.0.1"` (loopback)
#'   by default; any other address needs `certificates`.
#' @param port Its port (Flower 1.42 serves nodes, runs and apps on one
#'   port); `NULL` picks a free one.
#' @param certificates For TLS: the list `fed_flower_certificates()`
#'   returns. `NULL` runs without TLS, for loopback only.
#' @param root The folder runs may write to and resume from (their
#'   `out_dir`); a path outside it is refused. `NULL`: a new temporary
#'   folder, kept after the SuperLink stops.
#' @returns `fed_flower_superlink()` and `fed_flower_node()`: a
#'   `fed_flower_process` handle; `handle$stop()` (or
#'   `fed_flower_stop(handle)`) stops it, `handle$kill()` kills it at once,
#'   `handle$log()` returns its log. Both also stop when R exits.
#'   `fed_flower_run()`: a `fed_history` (see [fed_fit()]) whose
#'   `attr(, "state")` is the last good state, with `clients` and `events`
#'   columns. `fed_flower_certificates()`: a list of paths `ca`, `certfile`,
#'   `keyfile`.
#' @family flower
#' @export
#' @examplesIf fedr_available() && interactive()
#' link <- fed_flower_superlink()
#' clinic_a <- data.frame(age = runif(50), dose = runif(50), label = rbinom(50, 1, 0.5))
#' clinic_b <- data.frame(age = runif(40), dose = runif(40), label = rbinom(40, 1, 0.5))
#' a <- fed_flower_node(clinic_a, link, client_id = "clinic_a")
#' b <- fed_flower_node(clinic_b, link, client_id = "clinic_b")
#' keras <- reticulate::import("keras")
#' model <- fed_model(function() {
#'   keras$Sequential(list(keras$Input(shape = list(2L)), keras$layers$Dense(2L, activation = "softmax")))
#' })
#' history <- fed_flower_run(fed_averaging(model, fed_optimizer("sgd", 0.1), seed = 1), rounds = 3, superlink = link)
#' history
#' a$stop(); b$stop(); link$stop()
fed_flower_superlink <- function(host = "127.0.0.1", port = NULL, certificates = NULL, root = NULL) {
  host <- check_string(host, "host")
  if (!is.null(port)) port <- as_integer(port, "port")
  if (!is.null(root)) root <- check_string(root, "root")
  flower <- fedr_module("fedr.flower")
  py <- fedr_call(flower$superlink(host, port, certificates = as_certificates(certificates), root = root),
                  arg = c("host", "port", "certificates", "root"))
  new_fed_flower_process(py)
}

#' @rdname fed_flower_superlink
#' @param data What the node serves: a data frame or numeric matrix with a
#'   label column (`label`), `list(x =, y =)`, a `fed_data` (its client
#'   `client`), or the path of a `.rds`, `.npz` or `.csv` file or an
#'   MNIST-like dataset folder.
#' @param superlink The SuperLink: its handle or `"host:port"`.
#' @param client_id The client's name in the federation (default: `client`'s
#'   id for a `fed_data`, the file name for a path, else `"client"`).
#' @param label The label column of a data frame or matrix.
#' @param client For a `fed_data`: which client (position or id).
#' @param batch_size Rows per batch on the node (default 100).
#' @param rows For a dataset folder or file: `"a:b"`, rows a to b-1 only.
#' @param root_certificates The CA certificate (`certificates$ca`) to check
#'   the SuperLink's TLS certificate; `NULL` connects without TLS, which only
#'   a SuperLink on loopback (`127.0.0.1`) accepts.
#' @param worker_idle Seconds without a message after which the node's fedr
#'   worker (the long-lived process that keeps its data and model between
#'   messages) stops; default 600. The next message starts a new one.
#' @export
fed_flower_node <- function(data, superlink, client_id = NULL, label = "label", client = 1L,
                            batch_size = NULL, rows = NULL, root_certificates = NULL, worker_idle = NULL) {
  if (!is.null(client_id)) client_id <- check_string(client_id, "client_id")
  label <- check_string(label, "label")
  config <- list()
  if (!is.null(batch_size)) config[["batch-size"]] <- as_integer(batch_size, "batch_size")
  if (!is.null(rows)) config[["rows"]] <- check_string(rows, "rows")
  if (!is.null(worker_idle)) config[["worker-idle"]] <- worker_idle  # checked by the core, naming it
  if (!is.null(root_certificates)) root_certificates <- check_string(root_certificates, "root_certificates")
  if (inherits(data, "fed_data")) {
    if (is.character(client)) client <- match(check_string(client, "client", data$ids), data$ids)
    client <- as_integer(client, "client")
    if (client > length(data)) {
      fedr_abort(sprintf("`client` must be at most %d, not %d.", length(data), client), "client")
    }
    source <- reticulate::py_get_item(data$py, client - 1L)
  } else if (is.character(data)) {
    source <- check_string(data, "data")
    if (!file.exists(source)) fedr_abort(sprintf("`data`: no file or folder at '%s'.", source), "data")
    if (grepl("\\.rds$", source, ignore.case = TRUE)) {
      # Read here, where the error can name the file (R's own "unknown input
      # format" names none), not first on the node.
      tryCatch(readRDS(source), error = function(e) fedr_abort(sprintf(
        "`data`: '%s' is not an R data file that readRDS() can read (%s); write it with saveRDS().",
        source, conditionMessage(e)
      ), "data"))
    }
  } else if (is.data.frame(data) || is.matrix(data) || (is.list(data) && all(c("x", "y") %in% names(data)))) {
    if (is.data.frame(data) || is.matrix(data)) {
      columns <- colnames(data)
      if (!label %in% columns) {
        fedr_abort(sprintf("`data` has no label column '%s' (columns: %s); name it with `label`.",
                           label, paste(columns, collapse = ", ")), "data")
      }
      x <- data[, setdiff(columns, label), drop = FALSE]
      y <- if (is.data.frame(data)) data[[label]] else data[, label]
      config[["label"]] <- label
    } else {
      x <- data$x
      y <- data$y
    }
    # The node reads the file with R; check here what it would refuse, naming `data`.
    as_py_features(x, "data")
    as_py_labels(y, NROW(x), "data")
    name <- client_id %||% "client"
    folder <- tempfile("fedr-node-")
    dir.create(folder)
    source <- file.path(folder, paste0(name, ".rds"))
    saveRDS(data, source)
    client_id <- name
  } else {
    fedr_abort(sprintf(paste0("`data` must be a data frame, matrix, list(x =, y =), fed_data or a path, ",
                              "not %s."), describe(data)), "data")
  }
  flower <- fedr_module("fedr.flower")
  py <- fedr_call(
    flower$supernode(source, as_superlink(superlink), client_id = client_id, node_config = config,
                     root_certificates = root_certificates),
    arg = c("data", "superlink", "client_id", "root_certificates", "worker-idle" = "worker_idle")
  )
  new_fed_flower_process(py)
}

#' @rdname fed_flower_superlink
#' @param process A [fed_averaging()] process whose model is made of Keras
#'   objects (an R loss or layer cannot travel to the nodes).
#' @param rounds Rounds to run.
#' @param state The state to start from (default: the process's initial
#'   state), e.g. from [fed_load_state()] or an earlier run.
#' @param out_dir Where the server writes `state.npz` (after every round)
#'   and `history.csv`; on the SuperLink's machine, inside its `root`
#'   (default a new folder there).
#' @param min_nodes Nodes that must be connected before a round starts.
#' @param fraction Share of the nodes that train each round (seeded).
#' @param evaluate Also evaluate each round's model on the nodes (`eval_`
#'   columns).
#' @param round_timeout Seconds a round (and each of its message stages)
#'   waits for its nodes.
#' @param trusted_server `FALSE` (default): the aggregator's client step runs
#'   on each node, so under differential privacy the server receives only
#'   clipped updates. `TRUE`: the nodes send their raw updates and the server
#'   clips them: central DP with a trusted server, which then sees every
#'   node's update (whoever runs or breaks into it does too). The numbers are
#'   the same; every round's `events` says so. Not with secure aggregation.
#' @param verbose Print each round's line as the server reports it.
#' @export
fed_flower_run <- function(process, rounds, superlink, state = NULL, out_dir = NULL, min_nodes = 2L,
                           fraction = 1, evaluate = FALSE, round_timeout = 600, root_certificates = NULL,
                           verbose = TRUE, trusted_server = FALSE) {
  check_process(process)
  rounds <- as_integer(rounds, "rounds")
  min_nodes <- as_integer(min_nodes, "min_nodes")
  fraction <- as_number(fraction, "fraction", min = 0, max = 1, min_inclusive = FALSE)
  round_timeout <- as_number(round_timeout, "round_timeout", min = 0, min_inclusive = FALSE)
  check_flag(evaluate, "evaluate")
  check_flag(verbose, "verbose")
  check_flag(trusted_server, "trusted_server")
  if (!is.null(out_dir)) out_dir <- check_string(out_dir, "out_dir")
  if (!is.null(root_certificates)) root_certificates <- check_string(root_certificates, "root_certificates")
  start <- if (is.null(state)) NULL else as_state(state)$py
  flower <- fedr_module("fedr.flower")
  # What the aggregator's client step needs of the nodes (or of a trusted server): checked in Python.
  fedr_call(flower$check_flower_aggregator(process$py$aggregator, trusted_server),
            arg = c("trusted_server", aggregator = "process"))
  superlink <- as_superlink(superlink)
  # TLS for a remote SuperLink and out_dir inside its root: checked once, in Python, named here.
  out_dir <- fedr_call(flower$check_run_target(superlink, root_certificates, out_dir),
                       arg = c("superlink", "root_certificates", "out_dir"))
  progress <- if (verbose) {
    function(line) {
      shown <- reticulate::py_to_r(flower$progress_line(line))
      if (!is.null(shown)) message(shown)
    }
  }
  out <- fedr_call_warning(
    flower$run, process$py, rounds, superlink, state = start, out_dir = out_dir,
    min_nodes = min_nodes, fraction = fraction, evaluate = evaluate, round_timeout = round_timeout,
    trusted_server = trusted_server, root_certificates = root_certificates, progress = progress
  )
  rows <- reticulate::py_to_r(reticulate::py_get_attr(out, "history"))
  text <- c("clients", "events")
  numeric_rows <- lapply(rows, function(r) unlist(r[setdiff(names(r), text)]))
  history <- new_fed_history(numeric_rows, new_fed_state(reticulate::py_get_attr(out, "state")))
  for (column in text) {
    values <- vapply(rows, function(r) if (is.null(r[[column]])) NA_character_ else as.character(r[[column]]), "")
    if (!all(is.na(values))) history[[column]] <- values
  }
  attr(history, "out_dir") <- reticulate::py_to_r(reticulate::py_get_attr(out, "out_dir"))
  history
}

#' @rdname fed_flower_superlink
#' @param directory Folder for the certificate files.
#' @param hosts Names and addresses the server certificate is valid for.
#' @export
fed_flower_certificates <- function(directory = tempfile("fedr-certs-"), hosts = c("127.0.0.1", "localhost")) {
  directory <- check_string(directory, "directory")
  if (!is.character(hosts) || !length(hosts) || anyNA(hosts)) {
    fedr_abort(sprintf("`hosts` must be a character vector of names or addresses, not %s.", describe(hosts)), "hosts")
  }
  flower <- fedr_module("fedr.flower")
  paths <- fedr_call(flower$make_certificates(directory, as.list(hosts)), arg = "directory")
  reticulate::py_to_r(paths)
}

#' @rdname fed_flower_superlink
#' @param handle A `fed_flower_process`.
#' @export
fed_flower_stop <- function(handle) {
  if (!inherits(handle, "fed_flower_process")) {
    fedr_abort(sprintf("`handle` must be a fed_flower_process, not %s.", describe(handle)), "handle")
  }
  handle$stop()
}

new_fed_flower_process <- function(py) {
  structure(
    list(
      py = py,
      name = reticulate::py_to_r(py$name),
      address = reticulate::py_to_r(py$address),
      stop = function() invisible(reticulate::py_call(py$stop)),
      kill = function() invisible(reticulate::py_call(py$kill)),
      log = function(last = 20L) reticulate::py_to_r(py$log_text(as.integer(last))),
      alive = function() reticulate::py_to_r(py$alive)
    ),
    class = "fed_flower_process"
  )
}

#' @export
format.fed_flower_process <- function(x, ...) {
  status <- if (x$alive()) "running" else "stopped"
  sprintf("<fed_flower_process> %s %s (%s)", x$name, x$address, status)
}

#' @export
print.fed_flower_process <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

as_superlink <- function(superlink) {
  if (inherits(superlink, "fed_flower_process")) return(superlink$py)
  if (!is.character(superlink) || length(superlink) != 1L || !grepl(":[0-9]+$", superlink)) {
    fedr_abort(sprintf("`superlink` must be a SuperLink handle or \"host:port\", not %s.", describe(superlink)),
               "superlink")
  }
  superlink
}

as_certificates <- function(certificates) {
  if (is.null(certificates)) return(NULL)
  if (!is.list(certificates) || !all(c("ca", "certfile", "keyfile") %in% names(certificates))) {
    fedr_abort("`certificates` must be the list fed_flower_certificates() returns (ca, certfile, keyfile).",
               "certificates")
  }
  certificates[c("ca", "certfile", "keyfile")]
}
