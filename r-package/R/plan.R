# Planning a privacy budget before training: three of (epsilon, noise
# multiplier, rounds, clients per round) give the fourth; the plan's aggregator.

#' Plan a privacy budget
#'
#' Plans a run of differentially private federated averaging before it
#' starts: give three of `target_epsilon`, `noise_multiplier`, `rounds` and
#' `clients_per_round`, leave the fourth out (`NULL`), and the plan solves it
#' with Google's dp-accounting (its `calibrate_dp_mechanism()`, for the
#' sampling and the accountant chosen; the search is the Python core's
#' `fedr.privacy.plan()`). A solved noise multiplier is the smallest found
#' whose epsilon is within the target (to 1e-6); solved rounds and clients
#' per round are the largest within it; a solved `target_epsilon` is what the
#' other three spend. [fed_aggregator_dp_plan()] builds the aggregator that
#' runs the plan and ends the run when its budget is spent.
#'
#' With adaptive clipping (Andrew et al. 2021) each round releases two noised
#' sums, of the clipped updates and of the count of unclipped ones; the plan's
#' `noise_multiplier` is the one of the two together (as
#' [fed_aggregator_dp_adaptive()] takes it), and `update_noise_multiplier` is
#' the noise the updates get, `(z^-2 - (2 * clipped_count_stddev)^-2)^-1/2`.
#'
#' @param population_size The number of clients in the population.
#' @param target_delta The delta of (epsilon, delta)-differential privacy, in
#'   (0, 1); below one over the population size.
#' @param target_epsilon The epsilon the run may spend (> 0), or `NULL` to
#'   solve it.
#' @param noise_multiplier z > 0, the noise standard deviation over the clip,
#'   or `NULL` to solve it.
#' @param rounds The number of rounds, or `NULL` to solve it.
#' @param clients_per_round The number of clients per round (the expected
#'   number under Poisson sampling), or `NULL` to solve it (not under
#'   `sampling = "all"`, where it is `population_size`).
#' @param sampling How each round's clients are drawn: `"poisson"` (the
#'   default: each client with probability `clients_per_round /
#'   population_size`; `fed_fit(sampling = "poisson")`), `"fixed"` (a uniform
#'   sample of `clients_per_round`; `fed_fit(clients_per_round = )`) or
#'   `"all"` (every client every round).
#' @param clipping `"fixed"` ([fed_aggregator_dp_fixed()]) or `"adaptive"`
#'   ([fed_aggregator_dp_adaptive()]).
#' @param clipped_count_stddev For adaptive clipping: the noise on the count
#'   of unclipped updates; `NULL` is `clients_per_round / 20`.
#'   `noise_multiplier` must be below twice it.
#' @param mechanism `"gaussian"` (central DP: [fed_aggregator_dp_fixed()],
#'   [fed_aggregator_dp_adaptive()]) or `"distributed"` (distributed DP,
#'   [fed_aggregator_dp_distributed()]: fixed clipping, the RDP accountant,
#'   `"poisson"` or `"all"` sampling; solved by bisection on its epsilon, as
#'   dp-accounting has no event for the Skellam mechanism).
#' @param dropout_rate For `mechanism = "distributed"`: the dropouts the
#'   noise shares are sized for; `NULL` is 0.1.
#' @param dim For `mechanism = "distributed"`: the model's number of
#'   weights (stochastic rounding's sensitivity grows with it); `NULL` is
#'   2^30, which covers any model.
#' @inheritParams fed_aggregator_dp_fixed
#' @returns A `fed_privacy_plan`: a list of the plan's numbers,
#'   `target_epsilon`, `epsilon` (what the plan's rounds spend, at most
#'   `target_epsilon`), `target_delta`, `noise_multiplier`,
#'   `update_noise_multiplier`, `clipped_count_stddev` (`NA` for fixed
#'   clipping), `rounds`, `clients_per_round`, `population_size`, `sampling`,
#'   `clipping`, `accountant`, `solved` (which of the four was solved),
#'   `mechanism`, `dropout_rate` and `dim` (`NA` for the Gaussian mechanism),
#'   and `py`, the Python `fedr.privacy.PrivacyPlan`. It has `format()`,
#'   `print()`, `as.data.frame()` and `plot()` methods.
#' @section Errors:
#' A `fedr_error_input` naming the argument at fault: not exactly one of the
#' four left out (the message says which are), a value out of range, the
#' PLD accountant with fixed-size sampling (`accountant`), or a target that
#' nothing meets (one round, or one client, already spends more:
#' `target_epsilon`).
#' @family privacy
#' @export
#' @examplesIf fedr_available()
#' # 100 of 10,000 clients per round (Poisson), 200 rounds, delta = 1e-5:
#' # epsilon 1.0577 needs a noise multiplier of about 1.1.
#' plan <- fed_privacy_plan(population_size = 10000, target_delta = 1e-5, target_epsilon = 1.0577,
#'                          rounds = 200, clients_per_round = 100)
#' plan
#' plan$noise_multiplier
#' as.data.frame(plan)
#' plot(plan)
#' # How many rounds does z = 1.1 allow for epsilon = 2?
#' fed_privacy_plan(population_size = 10000, target_delta = 1e-5, target_epsilon = 2,
#'                  noise_multiplier = 1.1, clients_per_round = 100)$rounds
fed_privacy_plan <- function(population_size, target_delta, target_epsilon = NULL, noise_multiplier = NULL,
                             rounds = NULL, clients_per_round = NULL, sampling = "poisson", clipping = "fixed",
                             clipped_count_stddev = NULL, accountant = "rdp", mechanism = "gaussian",
                             dropout_rate = NULL, dim = NULL) {
  if (missing(population_size)) fedr_abort("`population_size` is missing.", "population_size")
  if (missing(target_delta)) fedr_abort("`target_delta` is missing.", "target_delta")
  # Which three are given is the core's rule (fedr.privacy.plan): its error names the one left out.
  population_size <- as_integer(population_size, "population_size")
  rounds <- as_count(rounds, "rounds")
  clients_per_round <- as_count(clients_per_round, "clients_per_round")
  sampling <- check_string(sampling, "sampling")
  clipping <- check_string(clipping, "clipping")
  accountant <- check_string(accountant, "accountant")
  mechanism <- check_string(mechanism, "mechanism")
  privacy <- fedr_module("fedr.privacy")
  py <- fedr_call(
    privacy$plan(
      population_size = population_size, target_delta = target_delta, target_epsilon = target_epsilon,
      noise_multiplier = noise_multiplier, rounds = rounds, clients_per_round = clients_per_round,
      sampling = sampling, clipping = clipping, clipped_count_stddev = clipped_count_stddev, accountant = accountant,
      mechanism = mechanism, dropout_rate = dropout_rate, dim = as_count(dim, "dim")
    ),
    arg = c("population_size", "target_delta", "target_epsilon", "noise_multiplier", "rounds", "clients_per_round",
            "sampling", "clipping", "clipped_count_stddev", "accountant", "mechanism", "dropout_rate", "dim")
  )
  new_privacy_plan(py)
}

# The R object around a Python PrivacyPlan: its fields (None as NA), then `py`.
new_privacy_plan <- function(py) {
  fields <- reticulate::py_to_r(py$as_dict())
  fields <- lapply(fields, function(v) if (is.null(v)) NA_real_ else v)
  counts <- intersect(c("rounds", "clients_per_round", "population_size", "dim"), names(fields))
  fields[counts] <- lapply(fields[counts], function(v) if (is.na(v)) NA_integer_ else as.integer(v))
  structure(c(fields, list(py = py)), class = "fed_privacy_plan")
}

plan_fields <- function(x) unclass(x)[setdiff(names(unclass(x)), "py")]

#' @rdname fed_privacy_plan
#' @param x A `fed_privacy_plan`.
#' @param ... Unused by `format()`, `print()` and `as.data.frame()`; passed to
#'   [graphics::plot()] by `plot()` (base graphics).
#' @export
format.fed_privacy_plan <- function(x, ...) {
  f <- plan_fields(x)
  num <- function(v) sprintf("%.4f", v)
  mark <- function(name) if (identical(f$solved, name)) " (solved)" else ""
  noise <- paste0(num(f$noise_multiplier), mark("noise_multiplier"))
  rows <- c(
    epsilon = if (identical(f$solved, "target_epsilon")) paste0(num(f$epsilon), " (solved)") else
      sprintf("%s (target %s)", num(f$epsilon), format(signif(f$target_epsilon, 6))),
    delta = format(f$target_delta),
    noise_multiplier = noise
  )
  if (identical(f$clipping, "adaptive")) {
    rows <- c(rows, update_noise_multiplier = num(f$update_noise_multiplier),
              clipped_count_stddev = format(f$clipped_count_stddev))
  }
  rows <- c(rows,
    rounds = paste0(f$rounds, mark("rounds")),
    clients_per_round = sprintf("%d of %d%s", f$clients_per_round, f$population_size, mark("clients_per_round")),
    sampling = f$sampling,
    clipping = f$clipping,
    accountant = paste(f$accountant,
                       if (identical(f$accountant, "pld")) "(privacy loss distributions)" else "(Renyi DP)")
  )
  if (identical(f$mechanism, "distributed")) {
    rows <- c(rows, mechanism = sprintf("distributed (Skellam noise shares for %s dropout, model of %s weights)",
                                        format(f$dropout_rate), format(f$dim, big.mark = ",")))
  }
  c(sprintf("<fed_privacy_plan> %s solved", f$solved),
    sprintf("  %-*s  %s", max(nchar(names(rows))), names(rows), rows))
}

#' @rdname fed_privacy_plan
#' @export
print.fed_privacy_plan <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @rdname fed_privacy_plan
#' @param row.names,optional Unused, for compatibility with the generic.
#' @export
as.data.frame.fed_privacy_plan <- function(x, row.names = NULL, optional = FALSE, ...) {
  as.data.frame(plan_fields(x), stringsAsFactors = FALSE)
}

#' @rdname fed_privacy_plan
#' @param noise_multipliers For `plot()`: the noise multipliers to draw a
#'   curve for; by default the plan's times 0.75, 1, 1.5 and 2. The plan's is
#'   always drawn (thicker).
#' @param max_rounds For `plot()`: the last round drawn; by default 1.5 times
#'   the plan's rounds.
#' @param points For `plot()`: how many rounds epsilon is computed at, evenly
#'   spaced from 1 to `max_rounds`; `NULL` is every round with the RDP
#'   accountant and 10 with PLD (each PLD value takes about a second).
#' @param engine For `plot()`: `"auto"` (ggplot2 when installed, else base
#'   graphics), `"ggplot2"` or `"base"`; the option `fedr.plot_engine` sets
#'   the default.
#' @details `plot()` draws epsilon against the rounds for a few noise
#'   multipliers around the plan's (`fedr.privacy.epsilon_curve()`, with the
#'   plan's population, clients per round, delta, sampling and accountant),
#'   with a horizontal line at `target_epsilon` and a vertical one at the
#'   plan's rounds: the plan's curve crosses where they meet.
#' @export
plot.fed_privacy_plan <- function(x, noise_multipliers = NULL, max_rounds = NULL, points = NULL, ...,
                                  engine = getOption("fedr.plot_engine", "auto")) {
  engine <- check_string(engine, "engine", c("auto", "ggplot2", "base"))
  f <- plan_fields(x)
  if (is.null(noise_multipliers)) noise_multipliers <- f$noise_multiplier * c(0.75, 1, 1.5, 2)
  if (!is.numeric(noise_multipliers) || !length(noise_multipliers) || anyNA(noise_multipliers) ||
      any(!is.finite(noise_multipliers)) || any(noise_multipliers <= 0)) {
    fedr_abort(sprintf("`noise_multipliers` must be positive numbers, not %s.", describe(noise_multipliers)),
               "noise_multipliers")
  }
  zs <- sort(unique(c(as.double(noise_multipliers), f$noise_multiplier)))
  max_rounds <- if (is.null(max_rounds)) {
    max(2L, as.integer(ceiling(1.5 * f$rounds)))
  } else {
    as_integer(max_rounds, "max_rounds")
  }
  if (is.null(points)) points <- if (identical(f$accountant, "pld")) 10L else max_rounds
  points <- as_integer(points, "points")
  curve <- plan_curve(f, zs, max_rounds, points)
  use_ggplot <- engine == "ggplot2" || (engine == "auto" && requireNamespace("ggplot2", quietly = TRUE))
  if (use_ggplot) {
    if (!requireNamespace("ggplot2", quietly = TRUE)) {
      fedr_abort("`engine` \"ggplot2\" needs the ggplot2 package (Debian: r-cran-ggplot2).", "engine")
    }
    print(plan_ggplot(f, curve, zs))
    return(invisible(x))
  }
  labels <- plan_labels(zs, f$noise_multiplier)
  cols <- class_colours(length(zs))
  ours <- zs == f$noise_multiplier
  top <- plan_ylim(f, curve)
  old <- graphics::par(mar = c(4, 4, 2.5, 1))
  on.exit(graphics::par(old), add = TRUE)
  graphics::plot(NA, xlim = c(1, max_rounds), ylim = c(0, top), xlab = "round", ylab = "epsilon",
                 main = plan_title(f), ...)
  graphics::grid(col = "grey85")
  for (i in seq_along(zs)) {
    at <- curve$noise_multiplier == zs[[i]]
    graphics::lines(curve$round[at], curve$epsilon[at], col = cols[[i]], lwd = if (ours[[i]]) 2.5 else 1.2)
  }
  graphics::abline(h = f$target_epsilon, lty = 2, col = "grey30")
  graphics::abline(v = f$rounds, lty = 3, col = "grey30")
  graphics::legend("topleft",
    legend = c(labels, sprintf("target epsilon %s", format(signif(f$target_epsilon, 4))),
               sprintf("plan: %d rounds", f$rounds)),
    col = c(cols, "grey30", "grey30"), lty = c(rep(1, length(zs)), 2, 3),
    lwd = c(ifelse(ours, 2.5, 1.2), 1, 1), bty = "n", cex = 0.8
  )
  invisible(x)
}

# Epsilon after rounds for each noise multiplier, as a data frame
# (noise_multiplier, round, epsilon): every round from the core's
# epsilon_curve(), or, for fewer points (PLD is slow), at those rounds.
plan_curve <- function(f, zs, max_rounds, points) {
  privacy <- fedr_module("fedr.privacy")
  if (points >= max_rounds) {
    distributed <- identical(f$mechanism, "distributed")
    out <- fedr_call(privacy$epsilon_curve(
      as.list(zs), max_rounds, population_size = f$population_size, clients_per_round = f$clients_per_round,
      target_delta = f$target_delta, sampling = f$sampling, accountant = f$accountant,
      mechanism = f$mechanism %||% "gaussian", dropout_rate = if (distributed) f$dropout_rate else NULL,
      dim = if (distributed) f$dim else NULL
    ), arg = c(noise_multipliers = "noise_multipliers", rounds = "max_rounds"))
    out <- reticulate::py_to_r(out)
    return(data.frame(noise_multiplier = as.double(unlist(out$noise_multiplier)),
                      round = as.integer(unlist(out$round)), epsilon = as.double(unlist(out$epsilon))))
  }
  at <- unique(as.integer(round(seq(1, max_rounds, length.out = max(2L, points)))))
  grid <- expand.grid(round = at, noise_multiplier = zs)
  grid$epsilon <- vapply(seq_len(nrow(grid)), function(i) {
    reticulate::py_to_r(fedr_call(privacy$epsilon(
      grid$noise_multiplier[[i]], f$clients_per_round, f$population_size, grid$round[[i]], f$target_delta,
      sampling = f$sampling, accountant = f$accountant
    )))
  }, numeric(1))
  grid[c("noise_multiplier", "round", "epsilon")]
}

plan_labels <- function(zs, z) {
  paste0("z = ", format(signif(zs, 3)), ifelse(zs == z, " (plan)", ""))
}

plan_title <- function(f) {
  sprintf("Privacy budget: %d of %d clients per round, delta = %s (%s)", f$clients_per_round, f$population_size,
          format(f$target_delta),
          if (identical(f$mechanism, "distributed")) "RDP, distributed DP" else toupper(f$accountant))
}

# The top of the epsilon axis: the curves, but no more than three times the
# budget (a small multiplier's epsilon would flatten the plan's curve).
plan_ylim <- function(f, curve) {
  ours <- curve$epsilon[curve$noise_multiplier == f$noise_multiplier]
  cap <- 3 * max(f$target_epsilon, ours)
  1.05 * min(max(curve$epsilon, f$target_epsilon), cap)
}

plan_ggplot <- function(f, curve, zs) {
  labels <- plan_labels(zs, f$noise_multiplier)
  curve$z <- factor(labels[match(curve$noise_multiplier, zs)], levels = labels)
  curve$plan <- curve$noise_multiplier == f$noise_multiplier
  ggplot2::ggplot(curve, ggplot2::aes(x = .data$round, y = .data$epsilon, colour = .data$z)) +
    ggplot2::geom_line(ggplot2::aes(linewidth = .data$plan)) +
    ggplot2::scale_linewidth_manual(values = c(`FALSE` = 0.5, `TRUE` = 1.2), guide = "none") +
    ggplot2::geom_hline(yintercept = f$target_epsilon, linetype = 2, colour = "grey30") +
    ggplot2::geom_vline(xintercept = f$rounds, linetype = 3, colour = "grey30") +
    ggplot2::scale_colour_manual(values = stats::setNames(class_colours(length(zs)), labels)) +
    ggplot2::coord_cartesian(ylim = c(0, plan_ylim(f, curve))) +
    ggplot2::labs(x = "round", y = "epsilon", colour = "noise multiplier", title = plan_title(f),
                  subtitle = sprintf("dashed: target epsilon %s; dotted: the plan's %d rounds",
                                     format(signif(f$target_epsilon, 4)), f$rounds)) +
    ggplot2::theme_minimal()
}

#' The DP aggregator of a privacy plan
#'
#' Builds the differentially private aggregator that runs a
#' [fed_privacy_plan()]: [fed_aggregator_dp_fixed()] or
#' [fed_aggregator_dp_adaptive()] (the plan's `clipping`) with the plan's
#' noise multiplier, clients per round, population, delta, sampling and
#' accountant, and `max_epsilon = target_epsilon`. Pass it to
#' `fed_averaging(aggregator = )`; every round reports `epsilon`, and when
#' the next round would spend more than the plan's budget, [fed_fit()] ends
#' the run there with a warning (class `fedr_warning`, "privacy budget
#' exhausted") and returns the rounds that ran.
#'
#' @param plan A `fed_privacy_plan`.
#' @param clip The clip (fixed clipping) or the first round's clip
#'   (`initial_clip` of adaptive clipping).
#' @param ... Further arguments of the aggregator, by name: `inner`,
#'   `noise_seed`, and for adaptive clipping `target_quantile` and
#'   `clip_learning_rate`; for a distributed plan
#'   ([fed_aggregator_dp_distributed()]) `bits`, `threshold`, `neighbors`,
#'   `on_excess_dropout` and `noise_seed`. The plan's own numbers cannot be given here: plan
#'   again to change them.
#' @returns A `fed_aggregator`, as [fed_aggregator_dp_fixed()] returns.
#' @family privacy
#' @export
#' @examplesIf fedr_available()
#' plan <- fed_privacy_plan(population_size = 10000, target_delta = 1e-5, target_epsilon = 1.0577,
#'                          rounds = 200, clients_per_round = 100)
#' fed_aggregator_dp_plan(plan, clip = 0.5)
fed_aggregator_dp_plan <- function(plan, clip, ...) {
  if (!inherits(plan, "fed_privacy_plan")) {
    fedr_abort(sprintf("`plan` must be a fed_privacy_plan from fed_privacy_plan(), not %s.", describe(plan)), "plan")
  }
  if (missing(clip)) fedr_abort("`clip` is missing.", "clip")
  options <- list(...)
  if (length(options) && (is.null(names(options)) || !all(nzchar(names(options))))) {
    fedr_abort("The arguments in `...` must be named (e.g. `inner = fed_aggregator_secure_sum()`).", "...")
  }
  owned <- c("noise_multiplier", "clients_per_round", "population_size", "target_delta", "max_epsilon", "sampling",
             "accountant", "clipped_count_stddev", "initial_clip")
  taken <- intersect(names(options), owned)
  if (length(taken)) {
    what <- if (taken[[1]] == "initial_clip") "give it as `clip`" else "plan again to change it"
    fedr_abort(sprintf("`%s` is the plan's (see `plan`); %s.", taken[[1]], what), taken[[1]])
  }
  if ("inner" %in% names(options)) options$inner <- as_inner(options$inner)
  if ("noise_seed" %in% names(options)) options$noise_seed <- as_seed(options$noise_seed, "noise_seed")
  for (name in intersect(c("bits", "neighbors"), names(options))) options[[name]] <- as_count(options[[name]], name)
  if ("threshold" %in% names(options)) options$threshold <- as_count_or_fraction(options$threshold, "threshold")
  # The clip is `clip` (fixed) or `initial_clip` (adaptive) in Python: both name R's `clip`.
  py <- dp_build(plan$py$aggregator, c(list(clip), options), c(clip = "clip", initial_clip = "clip", names(options)))
  kind <- if (identical(plan$mechanism, "distributed")) "dp_distributed" else
    if (identical(plan$clipping, "adaptive")) "dp_adaptive" else "dp_fixed"
  new_fed_component(py, "fed_aggregator", kind)
}
