# Checkpoints: a server state to one file and back.

#' Save and load a training state
#'
#' `fed_save_state()` writes a state (every model variable, the server
#' optimizer's state, the aggregator's state and the round) to one file;
#' `fed_load_state()` reads it back. Writing is atomic: the file is written
#' under a temporary name and renamed, so a crash never leaves a half-written
#' checkpoint. Training 2 rounds, saving, loading in a new R session and
#' training 2 more gives the same weights, bit for bit, as 4 rounds straight
#' (with the same `seed` in [fed_averaging()]).
#'
#' A loaded state is checked against the model when it is used: a state from
#' another model is refused, naming the first variable that differs.
#'
#' @param state A `fed_state`, or a `fed_history` (its final state).
#' @param path The file (by convention `*.fedr`); its directory must exist.
#' @param process Optionally the [fed_averaging()] process that will train the
#'   state: it is then checked against the process's model now (each
#'   variable's name, shape and type, and finite values), not at first use.
#' @returns `fed_save_state()`: `path`, invisibly. `fed_load_state()`: a
#'   `fed_state`.
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
#' process <- fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 1)
#' clients <- fed_split(fed_load_dataset(), n_clients = 300)[1:3]
#' history <- fed_fit(process, clients, rounds = 2, verbose = FALSE)
#' path <- tempfile(fileext = ".fedr")
#' fed_save_state(history, path)
#' state <- fed_load_state(path)
#' more <- fed_fit(process, clients, rounds = 2, state = state, verbose = FALSE)
#' more$round
fed_save_state <- function(state, path) {
  state <- as_state(state)
  path <- check_string(path, "path")
  learning <- fedr_module("fedr.learning")
  fedr_call(learning$save_state(state$py, path.expand(path)), arg = "path")
  invisible(path)
}

#' @rdname fed_save_state
#' @export
fed_load_state <- function(path, process = NULL) {
  path <- check_string(path, "path")
  if (!file.exists(path)) fedr_abort(sprintf("`path`: no file at \"%s\".", path), "path")
  if (!is.null(process)) check_process(process)
  learning <- fedr_module("fedr.learning")
  new_fed_state(fedr_call(learning$load_state(path.expand(path), process$py)))
}
