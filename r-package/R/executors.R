# Executors (who runs the clients) and aggregators (how their updates combine).

#' Who runs the clients of a round
#'
#' `fed_executor_threads()` trains clients in parallel, one thread and one
#' copy of the model per worker (by default one per core, each TensorFlow op
#' on one thread); `fed_executor_serial()` trains them one after another on
#' R's own thread; `fed_executor_ray()` trains them on a Ray cluster (warm
#' workers that rebuild the model from its Keras config, so the model, loss
#' and metrics must be Keras objects: an R loss cannot travel, and
#' [fed_averaging()] says so). Results do not depend on the executor. Models with R code
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
#' \donttest{
#' fed_executor_ray(num_cpus = 2)
#' }
fed_executor_threads <- function(workers = NULL) {
  if (!is.null(workers)) workers <- as_integer(workers, "workers")
  executors <- fedr_module("fedr.executors")
  new_fed_component(fedr_call(executors$threads(workers)), "fed_executor", "threads")
}

#' @rdname fed_executor_threads
#' @param address For Ray: `NULL` starts a local Ray sized to this machine;
#'   `"auto"` joins the cluster this machine belongs to (`ray start --head`,
#'   `ray start --address=...`); `"ray://host:10001"` joins a remote one.
#' @param num_cpus_per_client CPUs each Ray worker reserves.
#' @param round_timeout Seconds a round waits for its clients on Ray; those
#'   that have not answered are left out and reported (`num_clients_failed`).
#' @param num_cpus CPUs of a local Ray (default: this machine's).
#' @export
fed_executor_ray <- function(address = NULL, num_cpus_per_client = 1, round_timeout = NULL, num_cpus = NULL) {
  if (!is.null(address)) address <- check_string(address, "address")
  executors <- fedr_module("fedr.executors")
  py <- fedr_call(
    executors$ray(address, num_cpus_per_client = num_cpus_per_client, round_timeout = round_timeout,
                  num_cpus = if (is.null(num_cpus)) NULL else as_integer(num_cpus, "num_cpus")),
    arg = c("address", "num_cpus_per_client", "round_timeout", "num_cpus")
  )
  new_fed_component(py, "fed_executor", "ray")
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
      "`executor` must be fed_executor_threads(), fed_executor_serial() or fed_executor_ray(), not %s.", describe(executor)
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

#' Robust aggregators
#'
#' Aggregators that resist clients sending bad updates (Byzantine clients):
#' `fed_aggregator_median()` takes the coordinate-wise median of the updates,
#' `fed_aggregator_trimmed_mean()` drops the `floor(beta * n)` largest and
#' smallest values of each coordinate and averages the rest (Yin et al. 2018),
#' `fed_aggregator_krum()` keeps the update(s) closest to their `n - f - 2`
#' nearest neighbours (Krum and multi-Krum, Blanchard et al. 2017). All run
#' in fedr's C++ kernel. With 3 of 10 clients sending scaled, sign-flipped
#' updates, plain averaging collapses while these stay within 2 points of
#' clean training.
#'
#' @param beta The share cut from each tail, in \[0, 0.5).
#' @param num_byzantine f, the number of bad clients to tolerate (Krum needs
#'   more than `2 * f + 2` clients per round).
#' @param num_selected How many updates Krum keeps; more than one averages
#'   them weighted by example count (multi-Krum).
#' @returns A `fed_aggregator`.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' fed_aggregator_median()
#' fed_aggregator_trimmed_mean(0.2)
#' fed_aggregator_krum(num_byzantine = 2, num_selected = 3)
fed_aggregator_median <- function() {
  aggregators <- fedr_module("fedr.aggregators")
  new_fed_component(fedr_call(aggregators$median()), "fed_aggregator", "median")
}

#' @rdname fed_aggregator_median
#' @export
fed_aggregator_trimmed_mean <- function(beta) {
  if (missing(beta)) fedr_abort("`beta` is missing.", "beta")
  aggregators <- fedr_module("fedr.aggregators")
  new_fed_component(fedr_call(aggregators$trimmed_mean(beta), arg = "beta"), "fed_aggregator", "trimmed_mean")
}

#' @rdname fed_aggregator_median
#' @export
fed_aggregator_krum <- function(num_byzantine, num_selected = 1L) {
  if (missing(num_byzantine)) fedr_abort("`num_byzantine` is missing.", "num_byzantine")
  aggregators <- fedr_module("fedr.aggregators")
  py <- fedr_call(
    aggregators$krum(as_integer(num_byzantine, "num_byzantine", min = 0L), as_integer(num_selected, "num_selected")),
    arg = c("num_byzantine", "num_selected")
  )
  new_fed_component(py, "fed_aggregator", "krum")
}

#' More robust aggregators: geometric median, Bulyan, norm bounds
#'
#' `fed_aggregator_geometric_median()` takes the geometric median of the
#' updates, weighted by example counts (RFA, Pillutla et al. 2022), by the
#' smoothed Weiszfeld iteration in fedr's C++ kernel; it tolerates bad
#' clients holding less than half the weight and needs 3 clients per round.
#' `fed_aggregator_bulyan()` selects `n - 2 * f` updates by repeated Krum and
#' averages, coordinate by coordinate, the `n - 4 * f` selected values nearest
#' the median (El Mhamdi et al. 2018); it needs `4 * f + 3` clients per round.
#' `fed_aggregator_norm_bounded()` clips every update to L2 norm `max_norm` on
#' the server before the `inner` aggregator, and `fed_aggregator_zeroing()`
#' drops updates that are longer or not finite (their count is the round's
#' `num_zeroed` metric); both default to the example-weighted mean (Sun et
#' al. 2019).
#'
#' @param smoothing The smallest distance an update's weight divides by (nu > 0).
#' @param max_iterations The most Weiszfeld steps after the initial mean.
#' @param tolerance The relative change of the objective that stops the iteration.
#' @param weighted Weight clients by their example counts (as the paper);
#'   `FALSE` gives every client the same weight, so a client cannot gain
#'   weight by claiming many examples.
#' @param num_byzantine f, the number of bad clients Bulyan tolerates.
#' @param max_norm The largest L2 norm an update keeps (norm bounding) or may
#'   have (zeroing).
#' @param inner The aggregator after the bound: `NULL` (the weighted mean) or
#'   one that reads the updates as they are, such as
#'   [fed_aggregator_median()] or [fed_aggregator_trimmed_mean()].
#' @returns A `fed_aggregator`.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' fed_aggregator_geometric_median()
#' fed_aggregator_bulyan(num_byzantine = 1)
#' fed_aggregator_norm_bounded(1.0, inner = fed_aggregator_median())
#' fed_aggregator_zeroing(10)
fed_aggregator_geometric_median <- function(smoothing = 1e-6, max_iterations = 100L, tolerance = 1e-6,
                                            weighted = TRUE) {
  weighted <- check_flag(weighted, "weighted")
  aggregators <- fedr_module("fedr.aggregators")
  py <- fedr_call(
    aggregators$geometric_median(smoothing, as_integer(max_iterations, "max_iterations", min = 0L), tolerance,
                                 weighted = weighted),
    arg = c("smoothing", "max_iterations", "tolerance")
  )
  new_fed_component(py, "fed_aggregator", "geometric_median")
}

#' @rdname fed_aggregator_geometric_median
#' @export
fed_aggregator_bulyan <- function(num_byzantine) {
  if (missing(num_byzantine)) fedr_abort("`num_byzantine` is missing.", "num_byzantine")
  aggregators <- fedr_module("fedr.aggregators")
  py <- fedr_call(aggregators$bulyan(as_integer(num_byzantine, "num_byzantine", min = 0L)), arg = "num_byzantine")
  new_fed_component(py, "fed_aggregator", "bulyan")
}

#' @rdname fed_aggregator_geometric_median
#' @export
fed_aggregator_norm_bounded <- function(max_norm, inner = NULL) {
  new_bounded("norm_bounded", max_norm, inner)
}

#' @rdname fed_aggregator_geometric_median
#' @export
fed_aggregator_zeroing <- function(max_norm, inner = NULL) {
  new_bounded("zeroing", max_norm, inner)
}

# norm_bounded() and zeroing(): one bound in front of an inner aggregator (checked in Python).
new_bounded <- function(kind, max_norm, inner) {
  if (missing(max_norm)) fedr_abort("`max_norm` is missing.", "max_norm")
  if (!is.null(inner) && !inherits(inner, "fed_aggregator")) {
    fedr_abort(sprintf("`inner` must be NULL or an aggregator such as fed_aggregator_median(), not %s.", describe(inner)), "inner")
  }
  aggregators <- fedr_module("fedr.aggregators")
  build <- if (identical(kind, "zeroing")) aggregators$zeroing else aggregators$norm_bounded
  py <- fedr_call(build(max_norm, inner = as_inner(inner)), arg = c("max_norm", "inner"))
  new_fed_component(py, "fed_aggregator", kind)
}
