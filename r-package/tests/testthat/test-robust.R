# Robust aggregators from R: the same numbers as the coordinate-wise rule on each client's update.

test_that("median, trimmed mean and Krum combine the clients' updates as their rules say", {
  skip_if_no_fedr()
  clients <- fed_split(fashion(), n_clients = 600)[1:5]
  model <- fed_model(keras_model_fn())
  sgd <- fed_optimizer("sgd", 0.02)
  solo <- fed_averaging(model, sgd, seed = 1)
  start <- fed_initialize(solo)
  w0 <- fed_weights(start)[[1]]
  # Each client's update to the kernel, alone (seeded: the same as in a round).
  deltas <- lapply(seq_len(5), function(i) fed_weights(fed_next(solo, start, clients[i])$state)[[1]] - w0)
  stack <- simplify2array(deltas)
  check <- function(aggregator, rule) {
    process <- fed_averaging(model, sgd, seed = 1, aggregator = aggregator)
    result <- fed_next(process, fed_initialize(process), clients)
    expect_equal(fed_weights(result$state)[[1]] - w0, apply(stack, c(1, 2), rule), tolerance = 1e-5)
    result
  }
  check(fed_aggregator_median(), stats::median)
  trimmed <- check(fed_aggregator_trimmed_mean(0.2), function(v) mean(sort(v)[2:4]))
  expect_identical(trimmed$metrics[["trimmed_per_side"]], 1)
  krum <- fed_next(fed_averaging(model, sgd, seed = 1, aggregator = fed_aggregator_krum(1)), start, clients)
  expect_identical(krum$metrics[["krum_selected"]], 1)
  # Krum keeps one client's update whole.
  kept <- fed_weights(krum$state)[[1]] - w0
  expect_true(any(vapply(deltas, function(d) isTRUE(all.equal(d, kept, tolerance = 1e-6)), logical(1))))
  expect_output(print(fed_aggregator_krum(1, num_selected = 2)), "<fed_aggregator> krum\\(num_byzantine=1, num_selected=2\\)")
  expect_error(fed_aggregator_trimmed_mean(0.5), "`beta`", class = "fedr_error")
  expect_error(fed_aggregator_krum(-1), "`num_byzantine` must be an integer >= 0", class = "fedr_error")
  expect_error(fed_next(fed_averaging(model, sgd, aggregator = fed_aggregator_krum(2)), start, clients), "num_byzantine", class = "fedr_error")
})
