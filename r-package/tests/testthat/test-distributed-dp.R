# Distributed DP from R: the aggregator, a fit with it, the privacy report and its plot, errors by argument.

dp_clients <- function() {
  set.seed(4)
  fed_clients(lapply(1:5, function(i) list(x = matrix(runif(40), 10, 4), y = rep(0:1, 5))), batch_size = 5)
}

test_that("a fit with distributed DP reports the Skellam epsilon the aggregator plans, and a privacy report", {
  skip_if_no_fedr()
  expect_warning(
    agg <- fed_aggregator_dp_distributed(1, 5, clip = 0.5, population_size = 5, target_delta = 1e-5,
                                         dropout_rate = 0.2, noise_seed = 3),
    "reproducible", class = "fedr_warning"
  )
  expect_s3_class(agg, "fed_aggregator")
  process <- fed_averaging(fed_model(keras_model_fn(4L)), fed_optimizer("sgd", 0.1), aggregator = agg, seed = 1)
  history <- fed_fit(process, dp_clients(), rounds = 3, verbose = FALSE)
  expect_identical(history$round, 1:3)
  expect_identical(history$ddp_noise_shares, c(5, 5, 5))
  expect_identical(history$ddp_provisioned, c(4, 4, 4))
  # The model has 4 x 10 + 10 = 50 weights: the planned epsilon (Python's accounting) after 1, 2, 3 rounds,
  # near the Gaussian mechanism's at the same noise (RDP at integer orders).
  planned <- vapply(1:3, function(r) reticulate::py_to_r(agg$py$epsilon_after(r, dim = 50L)), numeric(1))
  expect_equal(history$epsilon, planned, tolerance = 1e-12)
  expect_equal(history$epsilon, c(4.75286, 7.08808, 9.08819), tolerance = 1e-5)

  report <- fed_privacy_report(history)
  expect_s3_class(report, "fed_privacy_report")
  expect_identical(names(report), c("round", "epsilon", "clip", "noise_stddev", "unclipped_fraction",
                                    "participants", "dropped", "failed", "noise_shares", "provisioned",
                                    "weakened"))
  expect_identical(report$epsilon, history$epsilon)
  expect_identical(report$clip, c(0.5, 0.5, 0.5))
  expect_equal(report$noise_stddev, rep(0.5 * sqrt(5 / 4), 3), tolerance = 1e-12)
  expect_identical(report$participants, c(5, 5, 5))
  expect_identical(report$dropped, c(0, 0, 0))
  expect_identical(report$weakened, c(FALSE, FALSE, FALSE))
  expect_true(all(is.na(report$unclipped_fraction)))
  expect_output(print(report), "<fed_privacy_report> 3 rounds; epsilon after the last: ")
  png(tmp <- tempfile(fileext = ".png"))
  expect_invisible(plot(report))
  dev.off()
  expect_gt(file.size(tmp), 1000)
})

test_that("central DP histories report too, and bad input names its argument", {
  skip_if_no_fedr()
  agg <- fed_aggregator_dp_fixed(2, 5, clip = 0.5, sampling = "all", target_delta = 1e-5)
  history <- fed_fit(fed_averaging(fed_model(keras_model_fn(4L)), fed_optimizer("sgd", 0.1), aggregator = agg,
                                   seed = 1), dp_clients(), rounds = 2, verbose = FALSE)
  report <- fed_privacy_report(history)
  expect_equal(report$epsilon, fed_epsilon(2, 5, 5, 1:2, 1e-5, sampling = "all"), tolerance = 1e-12)
  expect_identical(report$participants, c(5, 5))
  expect_identical(report$noise_stddev, c(1, 1))
  expect_identical(report$weakened, c(NA, NA))

  plain <- fed_fit(fed_averaging(fed_model(keras_model_fn(4L)), fed_optimizer("sgd", 0.1), seed = 1),
                   dp_clients(), rounds = 1, verbose = FALSE)
  expect_error(fed_privacy_report(plain), "no round reports epsilon, clip or dp_noise_stddev", class = "fedr_error")
  expect_error(fed_privacy_report(list(1)), "`history` must be a fed_history", class = "fedr_error")
  expect_error(fed_aggregator_dp_distributed(1, 5, clip = 0.5, sampling = "fixed"),
               "distributed DP accounts sampling = 'poisson' or 'all'", class = "fedr_error")
  e <- tryCatch(fed_aggregator_dp_distributed(1, 5, clip = 0.5, dropout_rate = 1), error = identity)
  expect_identical(e$arg, "dropout_rate")
  e <- tryCatch(fed_aggregator_dp_distributed(1, 5, clip = 0.5, on_excess_dropout = "skip"), error = identity)
  expect_identical(e$arg, "on_excess_dropout")
})

test_that("fed_privacy_plan() plans distributed DP and its aggregator stops at the budget", {
  skip_if_no_fedr()
  plan <- fed_privacy_plan(population_size = 10000, target_delta = 1e-5, target_epsilon = 1.15, rounds = 200,
                           clients_per_round = 100, mechanism = "distributed")
  expect_identical(plan$mechanism, "distributed")
  expect_identical(plan$solved, "noise_multiplier")
  expect_identical(plan$dim, 2^30 |> as.integer())
  expect_equal(plan$dropout_rate, 0.1)
  expect_lte(plan$epsilon, 1.15)
  gaussian <- fed_privacy_plan(population_size = 10000, target_delta = 1e-5, target_epsilon = 1.15, rounds = 200,
                               clients_per_round = 100)
  expect_gt(plan$noise_multiplier, gaussian$noise_multiplier)
  expect_lt(plan$noise_multiplier, 1.1 * gaussian$noise_multiplier)
  expect_true(is.na(gaussian$dim) && is.na(gaussian$dropout_rate) && identical(gaussian$mechanism, "gaussian"))
  expect_match(paste(format(plan), collapse = "\n"), "mechanism +distributed \\(Skellam noise shares for 0.1 dropout")
  expect_warning(agg <- fed_aggregator_dp_plan(plan, clip = 0.5, noise_seed = 1, bits = 64), "reproducible")
  expect_identical(class(agg), class(fed_aggregator_dp_distributed(1, 10, clip = 0.5)))
  expect_equal(reticulate::py_to_r(agg$py$max_epsilon), 1.15)
  expect_identical(reticulate::py_to_r(agg$py$bits), 64L)
  png(tmp <- tempfile(fileext = ".png"))
  expect_invisible(plot(plan, max_rounds = 20))
  dev.off()
  e <- tryCatch(fed_privacy_plan(population_size = 100, target_delta = 1e-5, target_epsilon = 1, rounds = 10,
                                 clients_per_round = 10, mechanism = "distributed", accountant = "pld"),
                error = identity)
  expect_identical(e$arg, "accountant")
  e <- tryCatch(fed_privacy_plan(population_size = 100, target_delta = 1e-5, target_epsilon = 1, rounds = 10,
                                 clients_per_round = 10, dropout_rate = 0.2), error = identity)
  expect_identical(e$arg, "dropout_rate")
})
