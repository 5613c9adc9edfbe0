# What the fit loops (fed_fit(), fed_gossip_fit()) share: progress lines and
# bar, the run's events, and a failed round's error that keeps the finished rounds.

# Progress of a fit loop (fed_fit(), fed_gossip_fit()): with `verbose`, a line
# per round (the core's ProgressLines) and, where the console redraws in
# place, a progress bar; `done()` closes the bar (call it on exit).
progress_callbacks <- function(verbose, rounds, title) {
  fit <- fedr_module("fedr.learning")
  callbacks <- list()
  done <- function() invisible(NULL)
  if (verbose) {
    callbacks <- c(callbacks, fit$ProgressLines(write = reticulate::py_func(function(line) {
      cli::cli_verbatim(line)
      NULL
    })))
  }
  # The bar only where it redraws in place; logs get the per-round lines alone.
  if (verbose && cli::is_dynamic_tty()) {
    bar <- cli::cli_progress_bar(title, total = rounds, clear = TRUE, .envir = parent.frame())
    callbacks <- c(callbacks, fit$LambdaCallback(on_round_end = reticulate::py_func(function(round_num, row, state) {
      cli::cli_progress_update(id = bar)
      NULL
    })))
    done <- function() cli::cli_progress_done(id = bar)
  }
  list(callbacks = callbacks, done = done)
}

# The run's events (rounds skipped, early stopping, the privacy budget exhausted) as a data frame.
history_events <- function(result) {
  events <- reticulate::py_to_r(result$events)
  data.frame(
    round = vapply(events, function(e) as.integer(e[["round"]]), integer(1)),
    event = vapply(events, function(e) as.character(e[["event"]]), character(1)),
    message = vapply(events, function(e) as.character(e[["message"]]), character(1)),
    stringsAsFactors = FALSE
  )
}

# A failed round: the error again, carrying the finished rounds and their state.
abort_with_history <- function(e, rows, state) {
  abort_keeping(e, new_fed_history(rows, state), state$round + 1L)
}

# The error `e` that ended round `failed`, carrying `history` (a data frame
# with a `round` column: fed_history, fed_gossip_history) as `e$history`.
abort_keeping <- function(e, history, failed) {
  n <- nrow(history)
  kept <- if (n) {
    first <- history$round[[1]]
    last <- history$round[[n]]
    done <- if (n == 1L) sprintf("Round %d finished and is", first) else sprintf("Rounds %d-%d finished and are", first, last)
    sprintf("%s kept: the error's `history` holds %s and the state (e$history, attr(e$history, \"state\")).", done, if (n == 1L) "it" else "them")
  } else {
    "No round of this call finished; the state passed in is unchanged."
  }
  # Keep the subclass of the error that ended the round (fedr_error_input, fedr_error_python).
  classes <- unique(c(grep("^fedr_error_", class(e), value = TRUE), "fedr_error", "error", "condition"))
  cnd <- structure(
    class = classes,
    list(
      message = paste0(sprintf("Round %d failed: ", failed), conditionMessage(e), "\n", kept),
      call = NULL, arg = e$arg, python_type = e$python_type, history = history, parent = e
    )
  )
  stop(cnd)
}
