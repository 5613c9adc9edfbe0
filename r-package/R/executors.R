# Executors (who runs the clients) and aggregators (how their updates combine).

#' Who runs the clients of a round
#'
#' `fed_executor_threads()` trains clients in parallel, one thread and one
#' copy of the model per worker (by default one per core, each TensorFlow op
#' on one thread); `fed_executor_serial()` trains them one after another on
#' R's own thread. Results do not depend on the executor. Models with R code
#' (a loss, metric or layer written in R) work with both: that code runs when
#' the training graph is traced, which always happens on R's thread before
#' any worker starts.
#'
#' @param workers Number of threads; `NULL` is one per core.
#' @returns A `fed_executor`, for `fed_averaging(executor = )`.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' fed_executor_threads(2)
#' fed_executor_serial()
fed_executor_threads <- function(workers = NULL) {
  if (!is.null(workers)) workers <- as_integer(workers, "workers")
  executors <- fedr_module("fedr.executors")
  new_fed_component(fedr_call(executors$threads(workers)), "fed_executor", "threads")
}

#' @rdname fed_executor_threads
#' @export
fed_executor_serial <- function() {
  executors <- fedr_module("fedr.executors")
  new_fed_component(fedr_call(executors$serial()), "fed_executor", "serial")
}

#' How client updates are combined
#'
#' `fed_aggregator_mean()` is FedAvg's aggregator and the default: the mean of
#' the clients' model updates, weighted by their numbers of examples (McMahan
#' et al. 2016), or unweighted.
#'
#' @param weighted Weight each client by its number of examples.
#' @returns A `fed_aggregator`, for `fed_averaging(aggregator = )`.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' fed_aggregator_mean()
#' fed_aggregator_mean(weighted = FALSE)
fed_aggregator_mean <- function(weighted = TRUE) {
  weighted <- check_flag(weighted, "weighted")
  aggregators <- fedr_module("fedr.aggregators")
  new_fed_component(fedr_call(aggregators$mean(weighted = weighted)), "fed_aggregator", "mean")
}

new_fed_component <- function(py, class, kind) {
  structure(list(py = py, kind = kind), class = c(class, "fed_component"))
}

#' @export
format.fed_component <- function(x, ...) reticulate::py_str(x$py)

#' @export
print.fed_component <- function(x, ...) {
  writeLines(paste0("<", class(x)[[1]], "> ", format(x)))
  invisible(x)
}

#' @export
r_to_py.fed_component <- function(x, convert = FALSE) x$py

# The executor of a process; the default uses every core. Models with R code
# (an R loss, metric or Lambda layer) may use threads too: the core runs all
# model code while tracing, on the calling thread (R's), before the workers
# start, and the workers only execute the compiled graphs.
as_executor <- function(executor) {
  if (is.null(executor)) {
    return(fed_executor_threads())
  }
  if (!inherits(executor, "fed_executor")) {
    fedr_abort(sprintf(
      "`executor` must be fed_executor_threads() or fed_executor_serial(), not %s.", describe(executor)
    ), "executor")
  }
  executor
}

as_aggregator <- function(aggregator) {
  if (is.null(aggregator)) {
    return(fed_aggregator_mean())
  }
  if (!inherits(aggregator, "fed_aggregator")) {
    fedr_abort(sprintf("`aggregator` must be an aggregator such as fed_aggregator_mean(), not %s.", describe(aggregator)), "aggregator")
  }
  aggregator
}
