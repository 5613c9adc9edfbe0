#' The privacy report of a run
#'
#' One row per round of what the run's differentially private aggregator
#' released: epsilon after the round, the clip, the noise on the sum, how
#' many clients took part and dropped out and, for
#' [fed_aggregator_dp_distributed()], how many noise shares arrived of those
#' provisioned (`weakened` is `TRUE` for a round released with less noise
#' than planned: its epsilon is above plan). The columns are assembled by
#' `fedr.privacy.report()`, the same for Python and R.
#'
#' @param history A `fed_history` from [fed_fit()] or [fed_flower_run()]
#'   whose process had a DP aggregator.
#' @returns A `fed_privacy_report` data frame: `round`, `epsilon`, `clip`,
#'   `noise_stddev`, `unclipped_fraction`, `participants`, `dropped`,
#'   `failed`, `noise_shares`, `provisioned`, `weakened` (`NA` where the
#'   aggregator does not report a column).
#' @family privacy
#' @export
#' @examplesIf fedr_available()
#' keras <- reticulate::import("keras")
#' model <- fed_model(function() keras$Sequential(list(
#'   keras$Input(shape = list(784L)),
#'   keras$layers$Dense(10L, activation = "softmax", kernel_initializer = "zeros"))))
#' clients <- fed_split(fed_load_dataset(), n_clients = 4, batch_size = 100)
#' agg <- fed_aggregator_dp_distributed(1, clients_per_round = 4, clip = 0.5,
#'                                      population_size = 4, target_delta = 1e-5)
#' process <- fed_averaging(model, fed_optimizer("sgd", 0.02), fed_optimizer("sgd", 1), aggregator = agg)
#' history <- fed_fit(process, clients, rounds = 3, verbose = FALSE)
#' report <- fed_privacy_report(history)
#' report
#' plot(report)
fed_privacy_report <- function(history) {
  if (!inherits(history, "data.frame") || !"round" %in% names(history)) {
    fedr_abort(sprintf("`history` must be a fed_history from fed_fit() or fed_flower_run(), not %s.",
                       describe(history)), "history")
  }
  df <- as.data.frame(history)
  numeric <- names(df)[vapply(df, is.numeric, logical(1))]
  rows <- lapply(seq_len(nrow(df)), function(i) as.list(df[i, numeric, drop = FALSE]))
  out <- reticulate::py_to_r(fedr_call(fedr_module("fedr.privacy")$report(rows), arg = "history"))
  cols <- lapply(out, function(col) unlist(lapply(col, function(v) if (is.null(v)) NA else v)))
  report <- as.data.frame(cols, stringsAsFactors = FALSE)
  report$round <- as.integer(report$round)
  for (n in setdiff(names(report), c("round", "weakened"))) report[[n]] <- as.double(report[[n]])
  report$weakened <- as.logical(report$weakened)
  is.na(report$weakened) <- is.na(report$provisioned)  # not distributed DP: no shares to fall short
  structure(report, class = c("fed_privacy_report", "data.frame"))
}

#' @rdname fed_privacy_report
#' @param x A `fed_privacy_report`.
#' @param ... Passed to `print.data.frame()` (print) or unused (plot).
#' @export
print.fed_privacy_report <- function(x, ...) {
  n <- nrow(x)
  last <- x$epsilon[[n]]
  cat(sprintf("<fed_privacy_report> %d round%s; epsilon after the last: %s\n", n, if (n == 1L) "" else "s",
              if (is.na(last)) "not accounted" else format(signif(last, 4))))
  weak <- which(x$weakened %in% TRUE)
  if (length(weak)) {
    cat(sprintf("rounds released with less noise than provisioned (epsilon above plan): %s\n",
                paste(x$round[weak], collapse = ", ")))
  }
  shown <- names(x)[vapply(names(x), function(n) !all(is.na(x[[n]])), logical(1))]
  print(as.data.frame(unclass(x))[shown], row.names = FALSE, ...)
  invisible(x)
}

#' @rdname fed_privacy_report
#' @details `plot()` draws, in base graphics, epsilon against the round
#'   (weakened rounds marked), the clip and the noise standard deviation,
#'   and the clients that took part and dropped out per round.
#' @export
plot.fed_privacy_report <- function(x, ...) {
  old <- graphics::par(mfrow = c(1, 3), mar = c(4, 4, 2.5, 1))
  on.exit(graphics::par(old), add = TRUE)
  r <- x$round
  if (all(is.na(x$epsilon))) {
    graphics::plot.new()
    graphics::title(main = "epsilon: not accounted\n(give population_size and target_delta)", cex.main = 0.9)
  } else {
    graphics::plot(r, x$epsilon, type = "b", pch = 19, xlab = "round", ylab = "epsilon", main = "privacy spent")
    weak <- x$weakened %in% TRUE
    if (any(weak)) graphics::points(r[weak], x$epsilon[weak], col = "firebrick", pch = 4, cex = 2)
  }
  top <- max(c(x$clip, x$noise_stddev), na.rm = TRUE)
  graphics::plot(r, x$clip, type = "b", pch = 19, ylim = c(0, top * 1.1), xlab = "round", ylab = "",
                 main = "clip and noise stddev")
  graphics::lines(r, x$noise_stddev, type = "b", pch = 17, col = "steelblue")
  graphics::legend("bottomright", c("clip", "noise stddev"), col = c("black", "steelblue"), pch = c(19, 17),
                   bty = "n", cex = 0.8)
  counts <- rbind(took_part = x$participants, dropped = x$dropped)
  counts[is.na(counts)] <- 0
  graphics::barplot(counts, names.arg = r, col = c("grey60", "firebrick"), xlab = "round", ylab = "clients",
                    main = "clients", ylim = c(0, 1.3 * max(1, colSums(counts))),
                    legend.text = c("took part", "dropped"),
                    args.legend = list(x = "top", horiz = TRUE, bty = "n", cex = 0.8))
  invisible(x)
}
