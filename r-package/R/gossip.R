# Gossip learning: the process, its fit loop and its history (graphs and mixing
# matrices are in gossip_graph.R). The algorithm is the Python core's fedr.gossip.

#' Gossip learning: training without a server
#'
#' `fed_gossip()` builds gossip learning on a peer graph: each round every
#' peer trains its own model on its own data with fedr's client update (the
#' same local training as [fed_averaging()]'s clients) and then averages with
#' its neighbours, `x_i <- sum_j W[i, j] x_j` (decentralised SGD, D-PSGD,
#' Lian et al. 2017; W from [fed_mixing_matrix()]). With `mode = "async"`
#' the round is `ticks` pairwise exchanges instead (Boyd et al. 2006): a
#' random link's two peers each train, then average their models. The whole
#' model state is mixed as FedAvg averages it (BatchNorm statistics too,
#' never random-generator state). With a seed, the initial model is
#' [fed_averaging()]'s for the same seed and every peer's randomness derives
#' from (seed, round, peer), whatever the executor.
#'
#' `fed_gossip_fit()` runs the rounds; `fed_gossip_evaluate()` evaluates the
#' average model or one peer's ([fed_evaluate()]'s federated evaluation).
#'
#' @inheritParams fed_averaging
#' @param graph A `fed_graph`, e.g. [fed_graph_ring()].
#' @param weights For `mode = "sync"`: `"metropolis_hastings"` (the default),
#'   `"uniform"` (the complete graph only) or your own symmetric doubly
#'   stochastic matrix (see [fed_mixing_matrix()]).
#' @param mode `"sync"` or `"async"`.
#' @param ticks For `"async"`: pairwise exchanges per round; `NULL` is
#'   `n_peers %/% 2`, so that each peer trains about once a round.
#' @param executor Who runs the peers' local training:
#'   [fed_executor_threads()] (default), [fed_executor_serial()] or
#'   [fed_executor_ray()]; the numbers do not depend on it.
#' @returns `fed_gossip()`: a `fed_gossip` process.
#' @family gossip
#' @export
#' @examplesIf fedr_available()
#' keras <- reticulate::import("keras")
#' model <- fed_model(function() {
#'   keras$Sequential(list(
#'     keras$Input(shape = list(784L)),
#'     keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
#'   ))
#' })
#' fashion <- fed_load_dataset()
#' peers <- fed_split(fashion, n_clients = 300)[1:4]
#' process <- fed_gossip(model, fed_optimizer("sgd", 0.02), fed_graph_ring(4), seed = 1)
#' history <- fed_gossip_fit(process, peers, rounds = 3)
#' history
#' plot(history)
#' fed_gossip_evaluate(process, history, fed_split(fashion, n_clients = 50, split = "test")[1:2])
fed_gossip <- function(model, client_optimizer, graph, weights = "metropolis_hastings", mode = c("sync", "async"),
                       ticks = NULL, local_epochs = 1L, seed = NULL, executor = NULL) {
  if (!inherits(model, "fed_model")) {
    fedr_abort(sprintf("`model` must be a fed_model() object, not %s.", describe(model)), "model")
  }
  if (missing(client_optimizer)) fedr_abort("`client_optimizer` is missing.", "client_optimizer")
  client <- as_py_optimizer(client_optimizer, "client_optimizer")
  graph <- check_graph(graph)
  mode <- check_string(mode[[1]], "mode", c("sync", "async"))
  if (mode == "async") {
    if (!identical(weights, "metropolis_hastings")) {
      fedr_abort("`weights` are for mode = \"sync\": a pairwise exchange averages two peers half and half.", "weights")
    }
    py_weights <- NULL
    ticks <- if (is.null(ticks)) NULL else as_integer(ticks, "ticks")
  } else {
    if (!is.null(ticks)) fedr_abort("`ticks` are for mode = \"async\".", "ticks")
    py_weights <- if (is.character(weights)) {
      check_string(weights, "weights", c("metropolis_hastings", "uniform"))
    } else {
      as_py_mixing(weights, graph)
    }
  }
  local_epochs <- as_integer(local_epochs, "local_epochs")
  seed <- as_seed(seed)
  executor <- as_executor(executor)
  py <- fedr_call(
    gossip_module()$build_gossip(model$py_fn, client, graph$py, weights = py_weights, mode = mode, ticks = ticks,
                                 local_epochs = local_epochs, executor = executor$py, seed = seed),
    c(model_fn = "model", client_optimizer_fn = "client_optimizer", "graph", "weights", "mode", "ticks",
      "local_epochs", "executor", "seed")
  )
  structure(
    list(py = py, model = model, client_optimizer = client_optimizer, graph = graph, mode = mode,
         weights = if (is.character(weights)) weights else "custom", local_epochs = local_epochs, seed = seed,
         executor = executor, model_bytes = as.double(reticulate::py_to_r(py$model_bytes))),
    class = "fed_gossip"
  )
}

#' @export
format.fed_gossip <- function(x, ...) {
  how <- if (x$mode == "sync") sprintf("synchronous (D-PSGD), %s weights", x$weights) else
    sprintf("asynchronous pairwise, %d ticks a round", as.integer(reticulate::py_to_r(x$py$ticks)))
  c(sprintf("<fed_gossip> gossip learning on %s: %d peers, %s", x$graph$name, x$graph$n_peers, how),
    sprintf("  model: %s", x$model$description),
    sprintf("  local epochs: %d, executor: %s, seed: %s, one model: %s bytes", x$local_epochs, format(x$executor),
            if (is.null(x$seed)) "none" else x$seed, format(x$model_bytes, big.mark = ",")))
}

#' @export
print.fed_gossip <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @rdname fed_gossip
#' @param process A `fed_gossip` process.
#' @param data The peers' data, one client per peer in peer order: a
#'   `fed_data` with as many clients as the graph has peers.
#' @param rounds The number of rounds.
#' @param state For `fed_gossip_fit()`: `NULL` (start from the initial
#'   model) or the `fed_gossip_history` of an earlier call, to continue. For
#'   `fed_gossip_evaluate()` and `fed_gossip_weights()`: the
#'   `fed_gossip_history` whose final models to use.
#' @param validation_data Held-out clients: after each round the average
#'   model is evaluated on them (`val_` columns).
#' @param absent Peers that sit rounds out: `NULL`, a list named by round
#'   (`list("3" = c(2, 5))`), or a function of the round returning peers. An
#'   absent peer keeps its model, its neighbours renormalise their weights,
#'   and it rejoins the next round it takes part in (a `rejoined` event).
#' @param evaluate_average After each round, evaluate the average model on
#'   `data` (`average_` columns).
#' @param verbose Print a line per round (and a progress bar in an
#'   interactive console), as [fed_fit()] does.
#' @returns `fed_gossip_fit()`: a `fed_gossip_history`, a data frame with one
#'   row per round: the peers' training metrics (`loss`, accuracy; weighted
#'   by example count, as [fed_fit()] reports FedAvg's clients),
#'   `average_` and `val_` metrics of the average model, `spectral_gap`,
#'   `consensus_distance` (mean distance of the peers' models to their
#'   average), `bytes_sent` (per peer this round) and `bytes_sent_total`, the
#'   counts `num_peers` (that trained), `num_peers_failed`, `num_peers_absent`
#'   and `seconds`. `attr(, "peers")` has one row per peer and round
#'   (`round`, `peer`, `client`, `status`, metrics, `num_examples`,
#'   `bytes_sent`, `distance`), `attr(, "events")` the absences, failures and
#'   rejoins (`round`, `peer`, `event`, `message`).
#' @export
fed_gossip_fit <- function(process, data, rounds, state = NULL, validation_data = NULL, absent = NULL,
                           evaluate_average = TRUE, verbose = TRUE) {
  check_gossip(process)
  check_data(data)
  n <- process$graph$n_peers
  if (length(data) != n) {
    fedr_abort(sprintf("`data` has %d clients but the graph has %d peers%s.", length(data), n,
                       if (length(data) < n) sprintf(": peer %d has no data", length(data) + 1L) else ""), "data")
  }
  if (missing(rounds)) fedr_abort("`rounds` is missing.", "rounds")
  rounds <- as_integer(rounds, "rounds")
  if (!is.null(validation_data) && !inherits(validation_data, "fed_data")) {
    fedr_abort(sprintf("`validation_data` must be NULL or a fed_data object, not %s.", describe(validation_data)), "validation_data")
  }
  evaluate_average <- check_flag(evaluate_average, "evaluate_average")
  verbose <- check_flag(verbose, "verbose")
  progress <- progress_callbacks(verbose, rounds, "Gossip learning")
  on.exit(progress$done(), add = TRUE)
  start <- if (is.null(state)) NULL else as_gossip_state(state)$py
  out <- fedr_call(
    fedr_module("fedr._r")$fit_with_warnings(
      process$py, data$py, rounds, state = start,
      validation_data = if (is.null(validation_data)) NULL else validation_data$py,
      absent = as_py_absent(absent, n), evaluate_average = evaluate_average, callbacks = progress$callbacks,
      loop = "gossip"
    ),
    c(federated_data = "data", "rounds", "state", "validation_data", "absent")
  )
  for (message in reticulate::py_to_r(reticulate::py_get_item(out, 2L))) {
    warning(structure(class = c("fedr_warning", "warning", "condition"), list(message = message, call = NULL)))
  }
  history <- new_gossip_history(reticulate::py_get_item(out, 0L), process)
  error <- reticulate::py_get_item(out, 1L)
  if (!inherits(error, "python.builtin.NoneType")) {
    # A failed round: its error, carrying the rounds that finished (e$history).
    e <- tryCatch(fedr_call(fedr_module("fedr._r")$raise_cause(error)), error = identity)
    abort_keeping(e, history, as.integer(reticulate::py_to_r(error$round_num)))
  }
  history
}

# `absent` as the Python core takes it: a dict round -> 0-based peers, or a function.
as_py_absent <- function(absent, n) {
  peers <- function(p, what) {
    if (is.null(p) || !length(p)) {
      return(list())
    }
    ok <- is.numeric(p) && !anyNA(p) && all(p == round(p)) && all(p >= 1 & p <= n)
    if (!ok) fedr_abort(sprintf("`absent` %s must be peers between 1 and %d, not %s.", what, n, describe(p)), "absent")
    as.list(as.integer(p) - 1L)
  }
  if (is.null(absent)) {
    return(NULL)
  }
  if (is.function(absent)) {
    return(reticulate::py_func(function(round_num) peers(absent(as.integer(round_num)), "(what the function returned)")))
  }
  if (!is.list(absent) || is.null(names(absent)) || any(!grepl("^[0-9]+$", names(absent)))) {
    fedr_abort("`absent` must be NULL, a list named by round (list(\"3\" = c(2, 5))) or a function of the round.", "absent")
  }
  values <- lapply(names(absent), function(r) peers(absent[[r]], sprintf("for round %s", r)))
  reticulate::py_dict(lapply(as.integer(names(absent)), identity), values, convert = FALSE)
}

# A list of Python dicts as a data frame, `peer` numbered from 1, counts as integers.
rows_frame <- function(rows, integers = character()) {
  rows <- reticulate::py_to_r(rows)
  if (!length(rows)) {
    return(data.frame())
  }
  keys <- unique(unlist(lapply(rows, names)))
  columns <- lapply(keys, function(k) {
    values <- lapply(rows, function(r) r[[k]] %||% NA)
    if (all(vapply(values, is.character, logical(1)))) as.character(unlist(values)) else as.double(unlist(values))
  })
  names(columns) <- keys
  df <- list2DF(columns)
  if ("peer" %in% keys) df$peer <- as.integer(df$peer) + 1L
  if ("client_id" %in% keys) names(df)[names(df) == "client_id"] <- "client"
  for (k in intersect(c("round", integers), names(df))) df[[k]] <- as.integer(df[[k]])
  df
}

gossip_counts <- c("num_examples", "num_peers", "num_peers_failed", "num_peers_absent", "ticks", "ticks_skipped")

new_gossip_history <- function(out, process) {
  df <- rows_frame(out$rows, gossip_counts)
  last <- c(gossip_counts, "seconds")
  df <- df[c(setdiff(names(df), last), intersect(last, names(df)))]
  events <- rows_frame(out$events)
  if (!nrow(events)) {
    events <- data.frame(round = integer(), peer = integer(), event = character(), message = character())
  }
  state <- structure(list(py = out$state, round = as.integer(reticulate::py_to_r(out$state$round_num))),
                     class = "fed_gossip_state")
  structure(df, class = c("fed_gossip_history", "data.frame"), state = state,
            peers = rows_frame(out$peers, "num_examples"), events = events, graph = process$graph,
            weights = reticulate::py_to_r(out$weights), mode = process$mode, model_bytes = process$model_bytes)
}

check_gossip <- function(process) {
  if (!inherits(process, "fed_gossip")) {
    fedr_abort(sprintf("`process` must be a fed_gossip() process, not %s.", describe(process)), "process")
  }
}

as_gossip_state <- function(state) {
  if (inherits(state, "fed_gossip_history")) state <- attr(state, "state")
  if (!inherits(state, "fed_gossip_state")) {
    fedr_abort(sprintf("`state` must be a fed_gossip_history from fed_gossip_fit(), not %s.", describe(state)), "state")
  }
  state
}

#' @rdname fed_gossip
#' @param peer `NULL` for the average model, or a peer (from 1).
#' @param as_data_frame Return a one-row data frame instead of a vector.
#' @returns `fed_gossip_evaluate()`: a named numeric vector of metrics
#'   (`loss`, the model's metrics, `num_examples`, `num_clients`), or a
#'   one-row data frame.
#' @export
fed_gossip_evaluate <- function(process, state, data, peer = NULL, as_data_frame = FALSE) {
  check_gossip(process)
  state <- as_gossip_state(state)
  check_data(data)
  peer <- as_peer(peer, process$graph$n_peers)
  as_data_frame <- check_flag(as_data_frame, "as_data_frame")
  metrics <- as_metrics(fedr_call(process$py$evaluate(state$py, data$py, peer = peer)))
  if (as_data_frame) as.data.frame(as.list(metrics)) else metrics
}

#' @rdname fed_gossip
#' @returns `fed_gossip_weights()`: the trainable weights of the average
#'   model or of `peer`'s, a list of numeric arrays named by variable.
#' @export
fed_gossip_weights <- function(state, peer = NULL) {
  state <- as_gossip_state(state)
  n <- as.integer(reticulate::py_to_r(state$py$num_peers))
  peer <- as_peer(peer, n)
  weights <- if (is.null(peer)) state$py$average() else state$py$peer(peer)
  values <- reticulate::py_to_r(weights$trainable)
  names(values) <- as.character(reticulate::py_to_r(weights$trainable_names))
  lapply(values, function(w) if (length(dim(w)) == 1L) as.vector(w) else w)
}

as_peer <- function(peer, n) {
  if (is.null(peer)) {
    return(NULL)
  }
  peer <- as_integer(peer, "peer")
  if (peer > n) fedr_abort(sprintf("`peer` must be between 1 and %d, not %d.", n, peer), "peer")
  peer - 1L
}

#' Gossip training history
#'
#' [fed_gossip_fit()] returns a `fed_gossip_history`: a data frame with one
#' row per round. `print()` shows the rounds; `plot()` draws the consensus
#' distance and the average model's accuracy per round (or per byte sent),
#' with a FedAvg [fed_history] on the same axes when given, or (`which =
#' "graph"`) the peer graph.
#'
#' @param x A `fed_gossip_history`.
#' @param ... Unused by `format()` and `print()`; passed to
#'   [graphics::plot()] for each panel by `plot()`.
#' @param fedavg For `plot()`: `NULL`, or the [fed_history] of FedAvg on the
#'   same data, drawn on the same axes (its accuracy; per byte, a client
#'   sends one model a round).
#' @param x_axis For `plot()`: `"round"` or `"bytes"` (bytes a peer sent).
#' @param which For `plot()`: `"history"` or `"graph"`.
#' @param row.names,optional Unused, for compatibility with the generic.
#' @returns `format()`: lines of text. `print()` and `plot()`: `x`,
#'   invisibly. `as.data.frame()`: the plain data frame.
#' @name fed_gossip_history
#' @family gossip
NULL

#' @rdname fed_gossip_history
#' @export
format.fed_gossip_history <- function(x, ...) {
  df <- as.data.frame(x)
  graph <- attr(x, "graph")
  header <- sprintf("<fed_gossip_history> %d round%s of %s gossip on %s (%d peers)", nrow(df),
                    if (nrow(df) == 1L) "" else "s", attr(x, "mode"), graph$name, graph$n_peers)
  if (!nrow(df)) {
    return(header)
  }
  keep <- setdiff(names(df), c(gossip_counts, "seconds", "bytes_sent", "ticks", "ticks_skipped"))
  shown <- df[keep]
  for (k in setdiff(keep, "round")) shown[[k]] <- sprintf("%.4f", df[[k]])
  if ("bytes_sent_total" %in% keep) shown$bytes_sent_total <- format(df$bytes_sent_total, big.mark = ",", scientific = FALSE)
  names(shown) <- short_metric_names(names(shown))
  names(shown) <- sub("^average_(sparse_categorical_|categorical_|binary_)?", "avg_", names(shown))
  names(shown) <- sub("^val_(sparse_categorical_|categorical_|binary_)", "val_", names(shown))
  names(shown)[names(shown) == "consensus_distance"] <- "consensus"
  names(shown)[names(shown) == "bytes_sent_total"] <- "bytes_total"
  events <- attr(x, "events")
  c(header, utils::capture.output(print.data.frame(shown, row.names = FALSE)),
    if (nrow(events)) sprintf("events: %s", paste(sprintf("round %d peer %d %s", events$round, events$peer, events$event),
                                                  collapse = "; ")))
}

#' @rdname fed_gossip_history
#' @export
print.fed_gossip_history <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @rdname fed_gossip_history
#' @export
as.data.frame.fed_gossip_history <- function(x, row.names = NULL, optional = FALSE, ...) {
  for (a in c("state", "peers", "events", "graph", "weights", "mode", "model_bytes")) attr(x, a) <- NULL
  class(x) <- "data.frame"
  x
}

#' @rdname fed_gossip_history
#' @export
plot.fed_gossip_history <- function(x, fedavg = NULL, x_axis = c("round", "bytes"), which = c("history", "graph"), ...) {
  which <- check_string(which[[1]], "which", c("history", "graph"))
  if (which == "graph") {
    plot(attr(x, "graph"), ...)
    return(invisible(x))
  }
  x_axis <- check_string(x_axis[[1]], "x_axis", c("round", "bytes"))
  if (!is.null(fedavg) && !inherits(fedavg, "fed_history")) {
    fedr_abort(sprintf("`fedavg` must be NULL or a fed_history from fed_fit(), not %s.", describe(fedavg)), "fedavg")
  }
  df <- as.data.frame(x)
  if (!nrow(df)) fedr_abort("`x` is an empty history: there is nothing to plot.", "x")
  accuracy <- grep("accuracy", names(df), value = TRUE)
  trained <- setdiff(accuracy, grep("^(val_|average_)", accuracy, value = TRUE))[1]
  validated <- grep("^val_", accuracy, value = TRUE)[1]
  gx <- if (x_axis == "round") df$round else df$bytes_sent_total
  fx <- fy <- NULL
  if (is.null(fedavg)) {
    # The average model's accuracy: on validation data, else on the training data, else the peers' own.
    column <- c(validated, grep("^average_", accuracy, value = TRUE), trained)
    column <- column[!is.na(column)][1]
  } else {
    # Like with like: both on validation data, else both as measured during the local steps.
    f <- as.data.frame(fedavg)
    fed_acc <- grep("accuracy", names(f), value = TRUE)
    fed_val <- grep("^val_", fed_acc, value = TRUE)[1]
    both_val <- !is.na(validated) && !is.na(fed_val)
    column <- if (both_val) validated else trained
    fy <- f[[if (both_val) fed_val else setdiff(fed_acc, grep("^val_", fed_acc, value = TRUE))[1]]]
    fx <- if (x_axis == "round") f$round else f$round * attr(x, "model_bytes")
  }
  title <- if (is.na(column %||% NA)) "" else if (startsWith(column, "val_")) "accuracy, validation" else
    if (startsWith(column, "average_")) "accuracy of the average model, training data" else "accuracy, during training"
  old <- graphics::par(mfrow = c(1L, if (is.na(column)) 1L else 2L), mar = c(4, 4, 2.5, 1))
  on.exit(graphics::par(old), add = TRUE)
  xlab <- if (x_axis == "round") "round" else "bytes sent per peer"
  graphics::plot(gx, df$consensus_distance, type = "o", pch = 19, cex = 0.6, col = "steelblue4", xlab = xlab,
                 ylab = "mean ||x_i - x_bar||", main = "consensus distance", ...)
  graphics::grid(col = "grey85")
  if (!is.na(column)) {
    graphics::plot(gx, df[[column]], type = "o", pch = 19, cex = 0.6, col = "steelblue4", xlab = xlab,
                   ylab = short_metric_names(sub("^(val_|average_)", "", column)),
                   xlim = range(c(gx, fx)), ylim = range(c(df[[column]], fy), na.rm = TRUE),
                   main = title, ...)
    labels <- if (startsWith(column, "val_") || startsWith(column, "average_")) "gossip (average model)" else "gossip (peers)"
    if (!is.null(fy)) {
      graphics::lines(fx, fy, type = "o", pch = 17, cex = 0.6, col = "darkorange3")
      labels <- c(labels, "FedAvg")
    }
    graphics::legend("bottomright", labels, col = c("steelblue4", "darkorange3")[seq_along(labels)],
                     pch = c(19, 17)[seq_along(labels)], lty = 1, bty = "n", cex = 0.8)
    graphics::grid(col = "grey85")
  }
  invisible(x)
}
