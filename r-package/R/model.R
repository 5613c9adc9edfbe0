# Models and optimizers for federated training.

#' A Keras model for federated training
#'
#' Pairs a function that builds a fresh Keras model with the loss and metrics
#' that local training optimises and reports, as
#' `tff$learning$from_keras_model()` does in the reference article. The model
#' is built from R, with the keras3 R package where installed or with
#' `reticulate::import("keras")`.
#'
#' @param model_fn A function with no arguments returning a new, uncompiled
#'   Keras model. It is called when the model is checked here, by
#'   [fed_averaging()], and once more for each worker a round uses (each
#'   trains its own copy), so it must build a fresh model each time. A built
#'   Keras model is accepted too: each copy is then
#'   `keras$models$clone_model(model)` with the model's current weights, so
#'   training starts from them.
#' @param loss A Keras loss: a name such as
#'   `"sparse_categorical_crossentropy"`, a loss object, a function with no
#'   arguments returning one, or a loss written in R,
#'   `function(y_true, y_pred)` returning one loss per example from
#'   TensorFlow operations. A model with a loss or metrics written in R trains
#'   on R's own thread ([fed_executor_serial()]).
#' @param metrics Keras metrics, reported per round: a character vector of
#'   names, a list of metric objects, or a function with no arguments
#'   returning such a list (fresh metric objects for every model).
#' @param sample_batch Where the input shape comes from: a `fed_data` object
#'   (its first batch), a list `list(x = , y = )` of R values, or `NULL` when
#'   the model declares its input shape.
#' @returns A `fed_model` object with a `print()` method.
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
#' model
fed_model <- function(model_fn, loss = "sparse_categorical_crossentropy",
                      metrics = "sparse_categorical_accuracy", sample_batch = NULL) {
  if (is_keras_model(model_fn)) model_fn <- cloning_model_fn(model_fn)
  check_function(model_fn, "model_fn")
  if (!is_r_function(loss)) check_keras_spec(loss, "loss", single = TRUE)
  if (!is_r_function(metrics)) check_keras_spec(metrics, "metrics", single = FALSE)
  dummy_batch <- as_dummy_batch(sample_batch)
  learning <- fedr_module("fedr.learning")
  build <- function() {
    keras_model <- model_fn()
    if (!inherits(keras_model, "python.builtin.object")) {
      fedr_abort(sprintf("`model_fn` must return a Keras model, not %s.", describe(keras_model)), "model_fn")
    }
    # A loss name goes to the core as it is: its one map of names to Keras loss classes.
    loss_value <- if (is_loss_function(loss)) loss else if (is_r_function(loss)) loss() else loss
    metric_values <- if (is_r_function(metrics)) metrics() else metrics
    if (is.character(metric_values)) metric_values <- as.list(metric_values)
    learning$from_keras_model(keras_model,
      loss = loss_value, metrics = metric_values, dummy_batch = dummy_batch
    )
  }
  # Build once now: a wrong model, loss or shape fails here, in R, with its message.
  example <- fedr_call(build(), arg = c("metrics", "loss"))
  structure(
    list(
      py_fn = reticulate::py_func(build),
      description = reticulate::py_str(example),
      metric_names = as.character(reticulate::py_to_r(example$metric_names))
    ),
    class = "fed_model"
  )
}

# A built Keras model (callable, so it passes for a function; called with no
# inputs Keras would fail with "missing a required argument: 'inputs'").
is_keras_model <- function(x) {
  inherits(x, "python.builtin.object") &&
    reticulate::py_to_r(reticulate::import_builtins(convert = FALSE)$isinstance(x, fedr_module("keras")$Model))
}

# A built model as a model function, as keras3 users pass models: every call
# clones its architecture (keras.models.clone_model) and copies its current
# weights, so each worker trains its own copy, starting where the model is.
cloning_model_fn <- function(model) {
  force(model) # the caller rebinds its `model_fn` to this function
  keras <- fedr_module("keras")
  function() {
    copy <- keras$models$clone_model(model)
    copy$set_weights(model$get_weights())
    copy
  }
}

# Python callables (a Keras loss object) are R functions to reticulate too.
is_r_function <- function(x) is.function(x) && !inherits(x, "python.builtin.object")

# A loss written in R: function(y_true, y_pred), not a factory with no arguments.
is_loss_function <- function(x) is_r_function(x) && length(formals(x)) >= 2L

check_keras_spec <- function(x, arg, single) {
  ok <- if (is.character(x)) {
    !anyNA(x) && all(nzchar(x)) && (!single || length(x) == 1L)
  } else if (inherits(x, "python.builtin.object")) {
    TRUE
  } else {
    !single && is.list(x) && all(vapply(x, function(m) is.character(m) || inherits(m, "python.builtin.object"), logical(1)))
  }
  if (!ok || is.null(x)) {
    what <- if (single) "a Keras loss name, object or function" else "Keras metric names, objects or a function returning them"
    fedr_abort(sprintf("`%s` must be %s, not %s.", arg, what, describe(x)), arg)
  }
}

as_dummy_batch <- function(sample_batch) {
  if (is.null(sample_batch)) {
    return(NULL)
  }
  if (inherits(sample_batch, "fed_data")) {
    first <- reticulate::py_get_item(sample_batch$py, 0L)
    return(reticulate::py_get_item(first$batches(), 0L))
  }
  if (is.list(sample_batch) && !is.data.frame(sample_batch) && all(c("x", "y") %in% names(sample_batch))) {
    x <- as_py_features(sample_batch$x, "sample_batch$x")
    y <- as_py_labels(sample_batch$y, NROW(sample_batch$x), "sample_batch$y")
    return(reticulate::dict(x = x, y = y, convert = FALSE))
  }
  if (inherits(sample_batch, "python.builtin.object")) {
    return(sample_batch)
  }
  fedr_abort(sprintf(
    "`sample_batch` must be a fed_data object, a list(x = , y = ) or NULL, not %s.", describe(sample_batch)
  ), "sample_batch")
}

#' @export
format.fed_model <- function(x, ...) paste0("<fed_model> ", x$description)

#' @export
print.fed_model <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' Optimizers for clients and server
#'
#' Describes a Keras optimizer that the federated process builds fresh where
#' it needs one: each client's local optimizer in every round, and the
#' server's optimizer that applies the averaged update.
#'
#' @param name `"sgd"`, `"adam"` (Keras's Adam), or for the server one of
#'   the adaptive optimizers of Reddi et al. 2021 ("Adaptive Federated
#'   Optimization"): `"fedadagrad"`, `"fedyogi"`, `"fedadam"`.
#' @param learning_rate A positive learning rate.
#' @param ... Options of the optimizer: `momentum` (in \[0, 1)),
#'   `nesterov`, `weight_decay` and `clipnorm` for SGD; `beta_1`, `beta_2`,
#'   `epsilon`, `amsgrad`, `weight_decay` and `clipnorm` for Adam; `beta_1`
#'   (default 0.9), `beta_2` (0.99; not for `"fedadagrad"`) and the adaptivity
#'   `tau` (1e-3) for the `fed*` ones. A wrong name or value is an error
#'   naming it and listing the valid options.
#' @returns A `fed_optimizer` object with a `print()` method.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' fed_optimizer("sgd", learning_rate = 0.02)
#' fed_optimizer("sgd", learning_rate = 1, momentum = 0.9)
#' fed_optimizer("adam", learning_rate = 0.01)
#' fed_optimizer("fedyogi", learning_rate = 0.01, tau = 1e-3) # as server_optimizer
fed_optimizer <- function(name = c("sgd", "adam", "fedadagrad", "fedyogi", "fedadam"), learning_rate, ...) {
  if (missing(learning_rate)) fedr_abort("`learning_rate` is missing.", "learning_rate")
  options <- list(...)
  if (length(options) && (is.null(names(options)) || any(!nzchar(names(options))))) {
    fedr_abort("Options in `...` must be named.", "...")
  }
  # The rules on names, options and their values are the core's (fedr.learning.optimizer_fn).
  name <- if (is.character(name) && length(name) >= 1L) tolower(name[[1]]) else name
  learning <- fedr_module("fedr.learning")
  py <- fedr_call(
    do.call(learning$optimizer_fn, c(list(name, learning_rate), options)),
    arg = c("name", "learning_rate", names(options))
  )
  structure(list(py = py, name = name, learning_rate = learning_rate, options = options), class = "fed_optimizer")
}

#' @export
format.fed_optimizer <- function(x, ...) {
  args <- c(list(learning_rate = x$learning_rate), x$options)
  values <- vapply(args, format, character(1))
  sprintf("<fed_optimizer> %s(%s)", x$name, paste(names(args), values, sep = " = ", collapse = ", "))
}

#' @export
print.fed_optimizer <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @export
r_to_py.fed_optimizer <- function(x, convert = FALSE) x$py

# An optimizer argument as the zero-argument Python callable the core takes.
as_py_optimizer <- function(x, arg) {
  if (inherits(x, "fed_optimizer")) {
    return(x$py)
  }
  if (inherits(x, "python.builtin.object")) {
    return(x)
  }
  if (is.function(x)) {
    return(reticulate::py_func(function() x()))
  }
  fedr_abort(sprintf(
    "`%s` must be a fed_optimizer() or a function returning a Keras optimizer, not %s.", arg, describe(x)
  ), arg)
}
