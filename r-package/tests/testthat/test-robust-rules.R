# Geometric median, Bulyan, norm bounding and zeroing from R: the same numbers as their rules on each client's update.

test_that("the geometric median, Bulyan and the norm bounds combine the clients' updates as their rules say", {
  skip_if_no_fedr()
  clients <- fed_split(fashion(), n_clients = 600)[1:7]
  model <- fed_model(keras_model_fn())
  sgd <- fed_optimizer("sgd", 0.02)
  solo <- fed_averaging(model, sgd, seed = 1)
  start <- fed_initialize(solo)
  flat <- function(state) unlist(lapply(fed_weights(state), as.vector))
  w0 <- flat(start)
  # Each client's whole update (every variable), alone: the same as in a round (seeded).
  x <- t(vapply(seq_len(7), function(i) flat(fed_next(solo, start, clients[i])$state) - w0, numeric(length(w0))))
  run <- function(aggregator) {
    result <- fed_next(fed_averaging(model, sgd, seed = 1, aggregator = aggregator), start, clients)
    list(update = flat(result$state) - w0, metrics = result$metrics)
  }
  dist <- function(z) sqrt(rowSums(sweep(x, 2, z)^2))

  # Smoothed Weiszfeld from the mean (every client has 100 examples: equal weights).
  z <- colMeans(x)
  objective <- mean(dist(z))
  for (i in 1:100) {
    b <- 1 / pmax(1e-6, dist(z))
    z <- colSums(x * b) / sum(b)
    previous <- objective
    objective <- mean(dist(z))
    if (abs(previous - objective) <= 1e-6 * objective) break
  }
  gm <- run(fed_aggregator_geometric_median())
  expect_equal(gm$update, z, tolerance = 1e-5)
  expect_identical(gm$metrics[["geometric_median_iterations"]], as.numeric(i))

  # Norm bounding at half the median norm, then the mean; zeroing between the norms.
  norms <- sqrt(rowSums(x^2))
  bound <- stats::median(norms) / 2
  clipped <- x * pmin(1, bound / norms)
  nb <- run(fed_aggregator_norm_bounded(bound))
  expect_equal(nb$update, colMeans(clipped), tolerance = 1e-5)
  expect_identical(nb$metrics[["num_clipped"]], as.numeric(sum(norms > bound)))
  cut <- sort(norms)[5]
  zero <- run(fed_aggregator_zeroing(cut, inner = fed_aggregator_median()))
  expect_equal(zero$update, apply(x[norms <= cut, ], 2, stats::median), tolerance = 1e-5)
  expect_identical(zero$metrics[["num_zeroed"]], 2)

  # Bulyan with f = 1 of 7: 5 selected, each coordinate the mean of the 3 values nearest its median.
  by <- run(fed_aggregator_bulyan(1))
  expect_identical(by$metrics[["bulyan_selected"]], 5)
  expect_true(all(by$update >= apply(x, 2, min) - 1e-7 & by$update <= apply(x, 2, max) + 1e-7))
  expect_error(
    fed_next(fed_averaging(model, sgd, aggregator = fed_aggregator_bulyan(2)), start, clients),
    "Bulyan needs at least 4 \\* num_byzantine \\+ 3 = 11 clients", class = "fedr_error"
  )
})

test_that("the new aggregators check their arguments in R and print as Python names them", {
  skip_if_no_fedr()
  expect_output(print(fed_aggregator_bulyan(1)), "<fed_aggregator> bulyan\\(num_byzantine=1\\)")
  expect_output(
    print(fed_aggregator_zeroing(10, inner = fed_aggregator_median())),
    "<fed_aggregator> zeroing\\(max_norm=10.0, inner=median\\(\\)\\)"
  )
  expect_output(print(fed_aggregator_norm_bounded(1)), "norm_bounded\\(max_norm=1.0, inner=mean\\(weighted=True\\)\\)")
  expect_output(print(fed_aggregator_geometric_median(weighted = FALSE)), "geometric_median\\(.*weighted=False\\)")
  expect_error(fed_aggregator_bulyan(), "`num_byzantine` is missing", class = "fedr_error")
  expect_error(fed_aggregator_bulyan(-1), "`num_byzantine` must be an integer >= 0", class = "fedr_error")
  expect_error(fed_aggregator_norm_bounded(0), "`max_norm`", class = "fedr_error")
  expect_error(fed_aggregator_zeroing(1, inner = "mean"), "`inner` must be NULL or an aggregator", class = "fedr_error")
  expect_error(fed_aggregator_geometric_median(smoothing = 0), "`smoothing`", class = "fedr_error")
  expect_error(fed_aggregator_geometric_median(weighted = NA), "`weighted` must be TRUE or FALSE", class = "fedr_error")
})
