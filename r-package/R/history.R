# The training history of fed_fit(): a data frame with print, plot and as.data.frame.

# Columns of counts, not metrics: shown last, not plotted or averaged. The
# list has one owner, the Python core's fedr.protocol (with the names a user's
# metric may not take); a history keeps its own copy so that printing one
# read back from a file needs no Python.
count_columns <- function(x = NULL) {
  kept <- attr(x, "count_columns")
  if (!is.null(kept)) {
    return(kept)
  }
  if (is.null(.fedr$count_columns)) {
    base <- as.character(reticulate::py_to_r(fedr_module("fedr.protocol")$COUNT_COLUMNS))
    .fedr$count_columns <- c(base, paste0("eval_", setdiff(base, "round_failed")))
  }
  .fedr$count_columns
}

new_fed_history <- function(rows, state) {
  counted <- count_columns()
  names_all <- unique(unlist(lapply(rows, names)))
  columns <- lapply(names_all, function(n) vapply(rows, function(r) unname(r[n]), numeric(1)))
  names(columns) <- names_all
  df <- list2DF(columns)
  counts <- intersect(c("round", counted), names(df))
  df[counts] <- lapply(df[counts], as.integer)
  # Counts and time last, after the metrics.
  last <- c(counted, "seconds")
  df <- df[c(setdiff(names(df), last), intersect(last, names(df)))]
  structure(df, state = state, count_columns = counted, class = c("fed_history", "data.frame"))
}

#' Federated training history
#'
#' [fed_fit()] returns a `fed_history`: a data frame with one row per round.
#' `print()` shows the rounds and the final metrics, `plot()` draws accuracy
#' and loss per round (base graphics, one panel each, and a third for the
#' privacy budget `epsilon` when the process accounts one), `as.data.frame()`
#' gives the plain data frame.
#'
#' @param x A `fed_history`.
#' @param ... Unused by `format()` and `print()`; passed to [graphics::plot()]
#'   for each panel by `plot()`.
#' @param metrics For `plot()`: the columns to draw, one panel each. By
#'   default the accuracy metric and the loss.
#' @param row.names,optional Unused, for compatibility with the generic.
#' @returns `format()`: a character vector of lines. `print()` and `plot()`:
#'   `x`, invisibly. `as.data.frame()`: a data frame without the state.
#' @name fed_history
#' @family workflow
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
#' history <- fed_fit(process, clients, rounds = 3, verbose = FALSE)
#' history
#' plot(history)
#' as.data.frame(history)
NULL

#' @rdname fed_history
#' @export
format.fed_history <- function(x, ...) {
  df <- as.data.frame(x)
  n <- nrow(df)
  header <- sprintf("<fed_history> %d round%s of federated training", n, if (n == 1L) "" else "s")
  if (!n) {
    return(header)
  }
  # The noise level is fixed by the aggregator's settings: kept in the data, not printed.
  df <- df[setdiff(names(df), "dp_noise_stddev")]
  # Text columns (a Flower run's clients and events) are not in the table; events follow it.
  text_cols <- names(df)[!vapply(df, is.numeric, logical(1))]
  events <- if ("events" %in% text_cols) df$events else character()
  df <- df[setdiff(names(df), text_cols)]
  shown <- df
  metric_cols <- setdiff(names(df), c("round", count_columns(x), "seconds"))
  shown[metric_cols] <- lapply(df[metric_cols], function(v) sprintf("%.4f", v))
  if ("seconds" %in% names(df)) shown$seconds <- sprintf("%.2f", df$seconds)
  names(shown) <- short_metric_names(names(shown))
  names(shown)[names(shown) == "num_clients_dropped"] <- "dropped"
  names(shown)[names(shown) == "num_clients_failed"] <- "failed"
  table <- utils::capture.output(print.data.frame(shown, row.names = FALSE))
  last <- df[n, metric_cols, drop = FALSE]
  final <- paste(sprintf("%s %.4f", short_metric_names(metric_cols), unlist(last)), collapse = ", ")
  happened <- !is.na(events) & nzchar(events)
  notes <- events[happened]
  c(header, table, sprintf("final: %s", final), notes)
}

#' @rdname fed_history
#' @export
print.fed_history <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @rdname fed_history
#' @export
as.data.frame.fed_history <- function(x, row.names = NULL, optional = FALSE, ...) {
  attr(x, "state") <- NULL
  class(x) <- "data.frame"
  x
}

#' @rdname fed_history
#' @param engine For `plot()`: `"auto"` (ggplot2 when installed, else base
#'   graphics), `"ggplot2"` or `"base"`; the option `fedr.plot_engine` sets
#'   the default.
#' @export
plot.fed_history <- function(x, metrics = NULL, ..., engine = getOption("fedr.plot_engine", "auto")) {
  engine <- check_string(engine, "engine", c("auto", "ggplot2", "base"))
  df <- as.data.frame(x)
  metrics <- history_metrics(df, metrics)
  use_ggplot <- engine == "ggplot2" || (engine == "auto" && requireNamespace("ggplot2", quietly = TRUE))
  if (use_ggplot) {
    if (!requireNamespace("ggplot2", quietly = TRUE)) {
      fedr_abort("`engine` \"ggplot2\" needs the ggplot2 package (Debian: r-cran-ggplot2).", "engine")
    }
    print(history_ggplot(df, metrics))
    return(invisible(x))
  }
  old <- graphics::par(mfrow = c(1L, length(metrics)), mar = c(4, 4, 2.5, 1))
  on.exit(graphics::par(old), add = TRUE)
  for (metric in metrics) {
    val <- paste0("val_", metric)
    has_val <- val %in% names(df)
    range_y <- range(c(df[[metric]], if (has_val) df[[val]]), na.rm = TRUE)
    graphics::plot(df$round, df[[metric]],
      type = "o", pch = 19, cex = 0.6, col = "steelblue4", ylim = range_y,
      xlab = "round", ylab = short_metric_names(metric), main = short_metric_names(metric), ...
    )
    if (has_val) {
      graphics::lines(df$round, df[[val]], type = "o", pch = 17, cex = 0.6, col = "darkorange3")
      graphics::legend("topright", c("training", "validation"), col = c("steelblue4", "darkorange3"),
                       pch = c(19, 17), lty = 1, bty = "n", cex = 0.8)
    }
    graphics::grid(col = "grey85")
  }
  invisible(x)
}

# The metrics to draw: by default the accuracy, the loss and (when accounted) epsilon;
# validation columns go with their training metric.
history_metrics <- function(df, metrics, arg = "x") {
  if (!nrow(df)) {
    # Else the message would be about `metrics`, listing no column at all.
    fedr_abort(sprintf("`%s` is an empty history (no round finished): there is nothing to plot.", arg), arg)
  }
  if (is.null(metrics)) {
    accuracy <- grep("accuracy", setdiff(names(df), grep("^val_", names(df), value = TRUE)), value = TRUE)
    metrics <- c(utils::head(accuracy, 1L), intersect(c("loss", "epsilon"), names(df)))
  }
  missing_cols <- setdiff(metrics, names(df))
  if (!length(metrics) || length(missing_cols)) {
    fedr_abort(sprintf(
      "`metrics` must name columns of the history (%s).",
      paste(setdiff(names(df), "round"), collapse = ", ")
    ), "metrics")
  }
  metrics
}

# One facet per metric, training and validation as two lines.
history_ggplot <- function(df, metrics) {
  long <- do.call(rbind, lapply(metrics, function(metric) {
    parts <- list(data.frame(round = df$round, metric = short_metric_names(metric), value = df[[metric]], set = "training"))
    val <- paste0("val_", metric)
    if (val %in% names(df)) {
      parts[[2]] <- data.frame(round = df$round, metric = short_metric_names(metric), value = df[[val]], set = "validation")
    }
    do.call(rbind, parts)
  }))
  long$metric <- factor(long$metric, levels = unique(short_metric_names(metrics)))
  ggplot2::ggplot(long, ggplot2::aes(x = .data$round, y = .data$value, colour = .data$set)) +
    ggplot2::geom_line() +
    ggplot2::geom_point(size = 1.2) +
    ggplot2::facet_wrap(~metric, scales = "free_y") +
    ggplot2::scale_colour_manual(values = c(training = "steelblue4", validation = "darkorange3")) +
    ggplot2::labs(x = "round", y = NULL, colour = NULL) +
    ggplot2::theme_minimal()
}

#' ggplot2 plot of a training history
#'
#' With ggplot2 installed, `ggplot2::autoplot(history)` returns the plot of a
#' [fed_history] as a ggplot object, one facet per metric, training and
#' validation (`val_` columns) as two lines.
#'
#' @param object A `fed_history`.
#' @param metrics The columns to draw; by default the accuracy, the loss and
#'   `epsilon` when the process accounts a privacy budget.
#' @param ... Unused.
#' @returns A ggplot object.
#' @family workflow
#' @exportS3Method ggplot2::autoplot
autoplot.fed_history <- function(object, metrics = NULL, ...) {
  if (!requireNamespace("ggplot2", quietly = TRUE)) {
    fedr_abort("autoplot() needs the ggplot2 package (Debian: r-cran-ggplot2).")
  }
  history_ggplot(as.data.frame(object), history_metrics(as.data.frame(object), metrics, "object"))
}

# `.data` for ggplot2's aes() without a global-variable NOTE.
utils::globalVariables(".data")
