# The federated averaging process: build, initialise, run rounds, evaluate.

#' Federated averaging
#'
#' Builds the federated averaging process (FedAvg, McMahan et al. 2016) of
#' the reference article: in every round each client starts from the server's
#' weights, trains on its batches in order with its own optimizer, and sends
#' back its weight change; the server averages the changes weighted by the
#' clients' example counts and applies the average with the server optimizer.
#' Server SGD with learning rate 1 (the default) is plain averaging; server
#' momentum gives FedAvgM, server Adam FedAdam. A `proximal_mu` above 0 gives
#' FedProx (Li et al. 2020).
#'
#' @param model A [fed_model()].
#' @param client_optimizer The clients' optimizer: a [fed_optimizer()] or a
#'   function with no arguments returning a Keras optimizer.
#' @param server_optimizer The server's optimizer, likewise; `NULL` is SGD
#'   with learning rate 1.
#' @param local_epochs Passes each client makes over its data per round.
#' @param seed `NULL` for fresh randomness, or a whole number: the initial
#'   weights and every client's randomness (Dropout, ...) then derive from
#'   (seed, round, client), so two runs give identical weights whatever the
#'   executor.
#' @param executor Who runs the clients: [fed_executor_threads()] (the
#'   default: one thread and model copy per core) or [fed_executor_serial()].
#'   A model with R code (a loss, metric or layer written in R) is safe with
#'   both: its R code runs only while the graphs are traced, on R's thread.
#' @param aggregator How client updates are combined: `NULL` (the default) is
#'   [fed_aggregator_mean()], the example-weighted mean.
#' @param min_clients How many clients must return a usable update for a
#'   round to count: a whole number (`5`; a round with fewer clients is
#'   refused before they train), or a fraction (below 1) of the round's
#'   clients. A client that fails (an error, a dead worker, no answer within
#'   Ray's `round_timeout`) is left out, counted in `num_clients_failed` and
#'   named in a warning; with fewer than `min_clients` left the round fails
#'   and the state is unchanged.
#' @param proximal_mu FedProx's proximal coefficient mu (Li et al. 2020,
#'   "Federated Optimization in Heterogeneous Networks"), a finite number of
#'   at least 0: each client minimises its loss plus
#'   `proximal_mu / 2 * ||w - w_server||^2` over the trainable weights, with
#'   `w_server` the round's starting weights, which keeps clients with
#'   heterogeneous data from drifting apart. The reported training `loss`
#'   stays the task loss, without the proximal term. `0` (the default) is
#'   federated averaging, bit for bit.
#' @returns A `fed_process` object, used by [fed_initialize()], [fed_next()],
#'   [fed_fit()] and [fed_evaluate()].
#' @section Whole model state:
#' The state holds every variable of the model, trainable and not: BatchNorm
#' statistics are averaged over the clients (weighted by example count) and
#' evaluation uses the state's values only, so the same state gives the same
#' metrics whatever trained before. Random-generator state is never averaged.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' keras <- reticulate::import("keras")
#' model <- fed_model(function() {
#'   keras$Sequential(list(
#'     keras$Input(shape = list(784L)),
#'     keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
#'   ))
#' })
#' process <- fed_averaging(model, fed_optimizer("sgd", 0.02), fed_optimizer("sgd", 1))
#' process
fed_averaging <- function(model, client_optimizer, server_optimizer = NULL, local_epochs = 1L,
                          seed = NULL, executor = NULL, aggregator = NULL, min_clients = 1L,
                          proximal_mu = 0) {
  new_fed_process("build_weighted_fed_avg", model, client_optimizer, server_optimizer, local_epochs, seed,
                  executor, aggregator, min_clients, proximal_mu)
}

# The one builder of a `fed_process` (fed_averaging(), fed_scaffold()): the
# arguments converted once, the Python builder `builder` called with every
# argument named, and the R object. `extra`: further arguments, converted by
# the caller, passed to Python and kept in the object (SCAFFOLD's num_clients).
new_fed_process <- function(builder, model, client_optimizer, server_optimizer, local_epochs, seed, executor,
                            aggregator, min_clients, proximal_mu, extra = list()) {
  if (!inherits(model, "fed_model")) {
    fedr_abort(sprintf("`model` must be a fed_model() object, not %s.", describe(model)), "model")
  }
  if (missing(client_optimizer)) fedr_abort("`client_optimizer` is missing.", "client_optimizer")
  client <- as_py_optimizer(client_optimizer, "client_optimizer")
  server <- if (is.null(server_optimizer)) NULL else as_py_optimizer(server_optimizer, "server_optimizer")
  local_epochs <- as_integer(local_epochs, "local_epochs")
  seed <- as_seed(seed)
  executor <- as_executor(executor)
  aggregator <- as_aggregator(aggregator)
  learning <- fedr_module("fedr.learning")
  min_clients <- as_count_or_fraction(min_clients, "min_clients")
  proximal_mu <- as_number(proximal_mu, "proximal_mu")  # one number here; its range is the core's rule
  # Every argument named, so that an error is blamed on the one its message
  # names (e.g. a model that cannot travel to Ray), not on `min_clients`.
  args <- c(list(model$py_fn, client, server, local_epochs = local_epochs, seed = seed, executor = executor$py,
                 aggregator = aggregator$py, min_clients = min_clients, proximal_mu = proximal_mu), extra)
  py <- fedr_call(do.call(learning[[builder]], args),
                  arg = c(model_fn = "model", client_optimizer_fn = "client_optimizer",
                          server_optimizer_fn = "server_optimizer", "local_epochs", "seed", "executor", "aggregator",
                          "min_clients", "proximal_mu", names(extra)))
  structure(
    c(list(
      py = py,
      model = model,
      client_optimizer = client_optimizer,
      server_optimizer = server_optimizer %||% "sgd(learning_rate = 1)",
      local_epochs = local_epochs,
      seed = seed,
      executor = executor,
      aggregator = aggregator,
      proximal_mu = proximal_mu
    ), extra),
    class = "fed_process"
  )
}

#' @export
format.fed_process <- function(x, ...) {
  describe_opt <- function(o) {
    if (inherits(o, "fed_optimizer")) sub("^<fed_optimizer> ", "", format(o)) else if (is.character(o)) o else "custom"
  }
  mu <- x$proximal_mu %||% 0
  algorithm <- if (isTRUE(x$scaffold)) {
    if (is.null(x$num_clients)) "SCAFFOLD" else sprintf("SCAFFOLD (num_clients = %d)", x$num_clients)
  } else {
    "federated averaging"
  }
  c(
    if (mu > 0) sprintf("<fed_process> %s, FedProx (proximal_mu = %s)", algorithm, format(mu))
    else paste("<fed_process>", algorithm),
    sprintf("  model: %s", x$model$description),
    sprintf("  client optimizer: %s, %d local epoch%s", describe_opt(x$client_optimizer), x$local_epochs, if (x$local_epochs == 1L) "" else "s"),
    sprintf("  server optimizer: %s", describe_opt(x$server_optimizer)),
    sprintf("  aggregator: %s, executor: %s, seed: %s",
      format(x$aggregator), format(x$executor), if (is.null(x$seed)) "none" else x$seed)
  )
}

#' @export
print.fed_process <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @export
r_to_py.fed_process <- function(x, convert = FALSE) x$py

#' Run federated averaging round by round
#'
#' `fed_initialize()` gives the starting server state (the model's initial
#' weights, round 0). `fed_next()` runs one round over the clients in `data`
#' and returns the new state with the round's training metrics: each client's
#' Keras metrics over its local training, averaged weighted by example count.
#' `fed_weights()` reads a state's weights into R.
#'
#' @param process A [fed_averaging()] process.
#' @param state A state from `fed_initialize()` or a previous round.
#' @param data The clients taking part: a `fed_data` object from [fed_split()]
#'   or [fed_clients()] (select clients with `data[i]`).
#' @returns `fed_initialize()`: a `fed_state`. `fed_next()`: a list with
#'   `state` (a `fed_state`) and `metrics` (a named numeric vector, e.g.
#'   `sparse_categorical_accuracy`, `loss`, `num_examples`, `num_clients`).
#'   `fed_weights()`: a list of numeric arrays, one per trainable variable.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' keras <- reticulate::import("keras")
#' model <- fed_model(function() {
#'   keras$Sequential(list(
#'     keras$Input(shape = list(784L)),
#'     keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
#'   ))
#' })
#' process <- fed_averaging(model, fed_optimizer("sgd", 0.02))
#' clients <- fed_split(fed_load_dataset(), n_clients = 300)[1:3]
#' state <- fed_initialize(process)
#' result <- fed_next(process, state, clients)
#' result$metrics
#' str(fed_weights(result$state))
fed_initialize <- function(process) {
  check_process(process)
  new_fed_state(fedr_call(process$py$initialize()))
}

#' @rdname fed_initialize
#' @export
fed_next <- function(process, state, data) {
  check_process(process)
  check_state(state)
  check_data(data)
  out <- fedr_call_warning(process$py$`next`, state$py, data$py)
  list(
    state = new_fed_state(reticulate::py_get_item(out, 0L)),
    metrics = as_metrics(reticulate::py_get_item(out, 1L))
  )
}

# Call a Python function; the fedr warnings it issues become R warnings of
# class `fedr_warning` (e.g. clients left out of a round).
fedr_call_warning <- function(fn, ...) {
  out <- fedr_call(fedr_module("fedr._r")$call_with_warnings(fn, ...))
  for (message in reticulate::py_to_r(reticulate::py_get_item(out, 1L))) {
    warning(structure(
      class = c("fedr_warning", "warning", "condition"),
      list(message = message, call = NULL)
    ))
  }
  reticulate::py_get_item(out, 0L)
}

#' @rdname fed_initialize
#' @param which For `fed_weights()`: `"trainable"` (the default) or
#'   `"non_trainable"` variables (e.g. BatchNorm statistics).
#' @export
fed_weights <- function(state, which = c("trainable", "non_trainable")) {
  state <- as_state(state)
  which <- check_string(which[[1]], "which", c("trainable", "non_trainable"))
  model <- state$py$model
  values <- reticulate::py_to_r(reticulate::py_get_attr(model, which))
  names(values) <- as.character(reticulate::py_to_r(reticulate::py_get_attr(model, paste0(which, "_names"))))
  lapply(values, function(w) if (length(dim(w)) == 1L) as.vector(w) else w)
}

new_fed_state <- function(py) {
  structure(
    list(py = py, round = as.integer(reticulate::py_to_r(py$round_num))),
    class = "fed_state"
  )
}

#' @export
format.fed_state <- function(x, ...) {
  shapes <- reticulate::py_to_r(x$py$shapes)
  shapes <- vapply(shapes, function(s) sprintf("(%s)", paste(unlist(s), collapse = ", ")), character(1))
  n_other <- as.integer(reticulate::py_len(x$py$model$non_trainable))
  other <- if (n_other) sprintf(", %d non-trainable variable%s", n_other, if (n_other == 1L) "" else "s") else ""
  sprintf("<fed_state> round %d, weights %s%s", x$round, paste(shapes, collapse = " "), other)
}

#' @export
print.fed_state <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @export
r_to_py.fed_state <- function(x, convert = FALSE) x$py

#' Evaluate the server's model on held-out clients
#'
#' Federated evaluation, the step the reference article leaves open: the
#' model with the state's weights is evaluated on every client in `data`,
#' and the metrics are averaged weighted by example count.
#'
#' @param process A [fed_averaging()] process.
#' @param state A `fed_state`, or a `fed_history` from [fed_fit()] (its final
#'   state).
#' @param data Held-out clients, a `fed_data` object (e.g.
#'   `fed_split(dataset, split = "test")`).
#' @param as_data_frame Return a one-row data frame instead of a vector.
#' @returns A named numeric vector of metrics (`loss`, the model's metrics,
#'   `num_examples`, `num_clients`), or a one-row data frame.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' keras <- reticulate::import("keras")
#' model <- fed_model(function() {
#'   keras$Sequential(list(
#'     keras$Input(shape = list(784L)),
#'     keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
#'   ))
#' })
#' process <- fed_averaging(model, fed_optimizer("sgd", 0.02))
#' fashion <- fed_load_dataset()
#' history <- fed_fit(process, fed_split(fashion, n_clients = 300)[1:3], rounds = 2)
#' fed_evaluate(process, history, fed_split(fashion, n_clients = 50, split = "test")[1:2])
fed_evaluate <- function(process, state, data, as_data_frame = FALSE) {
  check_process(process)
  state <- as_state(state)
  check_data(data)
  as_data_frame <- check_flag(as_data_frame, "as_data_frame")
  metrics <- as_metrics(fedr_call(process$py$evaluate(state$py, data$py)))
  if (as_data_frame) as.data.frame(as.list(metrics)) else metrics
}

check_process <- function(process) {
  if (!inherits(process, "fed_process")) {
    fedr_abort(sprintf("`process` must be a fed_averaging() or fed_scaffold() process, not %s.", describe(process)), "process")
  }
}

check_state <- function(state) {
  if (!inherits(state, "fed_state")) {
    fedr_abort(sprintf("`state` must be a fed_state from fed_initialize() or fed_next(), not %s.", describe(state)), "state")
  }
}

as_state <- function(state) {
  if (inherits(state, "fed_history")) state <- attr(state, "state")
  check_state(state)
  state
}

check_data <- function(data) {
  if (!inherits(data, "fed_data")) {
    fedr_abort(sprintf("`data` must be a fed_data object from fed_split() or fed_clients(), not %s.", describe(data)), "data")
  }
}

#' Train for several rounds
#'
#' Runs `rounds` rounds of [fed_next()] over `data`, showing a progress bar
#' and one line per round, and collects the metrics in a history. The loop is
#' the Python core's `fedr.learning.fit()`, the one Python users call: the
#' same rounds, samples and numbers from R and Python.
#'
#' @inheritParams fed_initialize
#' @param rounds The number of rounds.
#' @param state The state to start from; `NULL` starts from
#'   `fed_initialize(process)`. Pass the `fed_history` of an earlier call to
#'   continue training.
#' @param verbose Show a line per round (as messages) and, in a terminal
#'   that redraws in place, a progress bar.
#' @param clients_per_round `NULL` trains every client of `data` every round;
#'   a number samples that many clients each round (see [fed_sample_clients()]),
#'   seeded by `seed` and the round, so that runs repeat.
#' @param sampling `"uniform"` (exactly `clients_per_round` clients) or
#'   `"poisson"` (each client with probability `clients_per_round / length(data)`;
#'   an empty sample skips the round with a warning, and the next round draws
#'   the sample of the following round number). A differentially private
#'   aggregator must account the same: `sampling = "fixed"` for `"uniform"`,
#'   `"poisson"` for `"poisson"`, `"all"` without `clients_per_round`, with the
#'   same `clients_per_round` and `population_size = length(data)`; otherwise
#'   `fed_fit()` refuses to start (its epsilon would be wrong).
#' @param seed The sampling seed; `NULL` takes the process's `seed`.
#' @param validation_data Held-out clients (a `fed_data`): after each round
#'   the new state is evaluated on them ([fed_evaluate()]) and the metrics
#'   join the history as `val_` columns (`val_loss`, `val_...accuracy`),
#'   drawn next to the training metrics by `plot()`.
#' @param patience Early stopping: stop when `monitor` has not improved for
#'   this many rounds (`NULL`: train all `rounds`).
#' @param monitor The metric early stopping watches; default `"val_loss"`
#'   with `validation_data`, else `"loss"`. Losses must fall; accuracy, AUC,
#'   precision and recall must rise.
#' @param restore_best With early stopping, the history's state is the best
#'   round's (its number in `attr(, "best_round")`), not the last.
#' @returns A `fed_history`: a data frame with one row per round (`round`,
#'   each metric, `num_examples`, `num_clients`, `num_clients_dropped`,
#'   `num_clients_failed`, `seconds`) and the final state in `attr(, "state")`; it has `print()`,
#'   `plot()` and `as.data.frame()` methods. `attr(, "events")` is a data frame
#'   (`round`, `event`, `message`) of what happened besides training: a round
#'   `skipped` (an empty Poisson sample), `early_stopping`, `budget_exhausted`
#'   (a DP aggregator's `max_epsilon`, e.g. from [fed_aggregator_dp_plan()],
#'   refused the next round: the run ends there with a warning and keeps its rounds).
#' @section Failures:
#' Clients whose update is not finite (NaN or Inf) are left out of their
#' round: they are counted in `num_clients_dropped` and named in a warning of
#' class `fedr_warning`. When a round fails (e.g. every client diverged)
#' or is interrupted, finished rounds are not lost: the `fedr_error` says so
#' and carries them in `e$history`, a `fed_history` whose `attr(, "state")`
#' is the last good state (save it with [fed_save_state()], or go on with
#' `fed_fit(state = )`).
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' keras <- reticulate::import("keras")
#' model <- fed_model(function() {
#'   keras$Sequential(list(
#'     keras$Input(shape = list(784L)),
#'     keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
#'   ))
#' })
#' process <- fed_averaging(model, fed_optimizer("sgd", 0.02))
#' clients <- fed_split(fed_load_dataset(), n_clients = 300)[1:3]
#' history <- fed_fit(process, clients, rounds = 2)
#' history
fed_fit <- function(process, data, rounds, state = NULL, verbose = TRUE, clients_per_round = NULL,
                    sampling = c("uniform", "poisson"), seed = NULL, validation_data = NULL,
                    patience = NULL, monitor = NULL, restore_best = TRUE) {
  # R's own checks coerce R values at the boundary; the loop's rules (a sample
  # no larger than the data, early stopping's, the DP sampling) are Python's,
  # fedr.learning.fit(), whose errors name the R argument.
  check_process(process)
  check_data(data)
  if (missing(rounds)) fedr_abort("`rounds` is missing.", "rounds")
  rounds <- as_integer(rounds, "rounds")
  verbose <- check_flag(verbose, "verbose")
  sampling <- check_string(sampling[[1]], "sampling", c("uniform", "poisson"))
  clients_per_round <- as_count(clients_per_round, "clients_per_round")
  if (!is.null(validation_data) && !inherits(validation_data, "fed_data")) {
    fedr_abort(sprintf("`validation_data` must be NULL or a fed_data object, not %s.", describe(validation_data)), "validation_data")
  }
  patience <- as_count(patience, "patience")
  if (!is.null(monitor)) monitor <- check_string(monitor, "monitor")
  restore_best <- check_flag(restore_best, "restore_best")
  seed <- as_seed(seed)
  start <- if (is.null(state)) NULL else as_state(state)
  fit <- fedr_module("fedr.learning")
  # The finished rounds as R sees them, for an interrupt that reaches R rather than Python.
  seen <- new.env(parent = emptyenv())
  seen$rows <- list()
  seen$state <- start
  callbacks <- list(fit$LambdaCallback(on_round_end = reticulate::py_func(function(round_num, row, state) {
    seen$rows[[length(seen$rows) + 1L]] <- unlist(lapply(row, as.double))
    seen$state <- new_fed_state(reticulate::r_to_py(state))
    NULL
  })))
  progress <- progress_callbacks(verbose, rounds, "Federated training")
  callbacks <- c(callbacks, progress$callbacks)
  on.exit(progress$done(), add = TRUE)
  out <- tryCatch(
    fedr_call(fedr_module("fedr._r")$fit_with_warnings(
      process$py, data$py, rounds,
      state = if (is.null(start)) NULL else start$py, validation_data = if (is.null(validation_data)) NULL else validation_data$py,
      clients_per_round = clients_per_round, sampling = sampling, seed = seed, patience = patience,
      monitor = monitor, restore_best = restore_best, callbacks = callbacks
    ), arg = c(train = "data", "rounds", "clients_per_round", "sampling", "validation_data", "patience", "monitor",
               "restore_best", "seed")),
    interrupt = function(e) {
      abort_with_history(simpleError("interrupted."), seen$rows, seen$state %||% fed_initialize(process))
    }
  )
  for (message in reticulate::py_to_r(reticulate::py_get_item(out, 2L))) {
    warning(structure(class = c("fedr_warning", "warning", "condition"), list(message = message, call = NULL)))
  }
  result <- reticulate::py_get_item(out, 0L)
  rows <- lapply(reticulate::py_to_r(result$rows), function(row) unlist(lapply(row, as.double)))
  error <- reticulate::py_get_item(out, 1L)
  if (!inherits(error, "python.builtin.NoneType")) {
    last <- new_fed_state(result$last_state)
    if (!reticulate::py_has_attr(error, "cause")) {
      abort_with_history(simpleError("interrupted."), rows, last)
    }
    # The round's own error, as fedr_call() makes it from any Python call.
    e <- tryCatch(fedr_call(fedr_module("fedr._r")$raise_cause(error)), error = identity)
    argument <- reticulate::py_to_r(error$argument)
    if (identical(argument, "validation_data")) {
      e <- tryCatch(fedr_abort(paste0("`validation_data`: ", conditionMessage(e)), "validation_data", python_type = e$python_type),
                    error = identity)
    }
    abort_with_history(e, rows, last)
  }
  history <- new_fed_history(rows, new_fed_state(result$state))
  best <- reticulate::py_to_r(result$best_round)
  if (!is.null(best)) attr(history, "best_round") <- as.integer(best)
  attr(history, "events") <- history_events(result)
  history
}

short_metric_names <- function(x) sub("^sparse_categorical_|^categorical_|^binary_", "", x)
