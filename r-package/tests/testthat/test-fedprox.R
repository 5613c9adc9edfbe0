# FedProx (Li et al. 2020) from R: `fed_averaging(proximal_mu = )`. Its local step is
# tested against a numpy transcription of the paper in tests/test_fedprox.py.

test_that("fed_averaging(proximal_mu = 0.5) fits, and differs from proximal_mu = 0, which is FedAvg", {
  skip_if_no_fedr()
  clients <- small_clients()
  build <- function(...) {
    fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.1), local_epochs = 2, seed = 3, ...)
  }
  prox <- build(proximal_mu = 0.5)
  expect_identical(prox$proximal_mu, 0.5)
  expect_output(print(prox), "<fed_process> federated averaging, FedProx \\(proximal_mu = 0.5\\)")
  history <- fed_fit(prox, clients, rounds = 2, verbose = FALSE)
  expect_s3_class(history, c("fed_history", "data.frame"))
  expect_identical(history$round, 1:2)
  expect_identical(history$num_examples, c(1200L, 1200L))
  expect_true(all(is.finite(history$loss)))
  expect_lt(history$loss[[2]], history$loss[[1]])

  zero <- fed_fit(build(proximal_mu = 0), clients, rounds = 2, verbose = FALSE)
  plain <- fed_fit(build(), clients, rounds = 2, verbose = FALSE)
  expect_identical(fed_weights(zero), fed_weights(plain))
  expect_identical(zero$loss, plain$loss)
  expect_gt(max(abs(unlist(fed_weights(history)) - unlist(fed_weights(zero)))), 1e-5)
  expect_output(print(build(proximal_mu = 0)), "^<fed_process> federated averaging\n  model")
})

test_that("a bad `proximal_mu` is an R error naming it", {
  skip_if_no_fedr()
  model <- fed_model(keras_model_fn())
  sgd <- fed_optimizer("sgd", 0.1)
  expect_error(fed_averaging(model, sgd, proximal_mu = -1), "`proximal_mu`", class = "fedr_error")
  expect_error(fed_averaging(model, sgd, proximal_mu = -1),
    "^`proximal_mu`: expected a number >= 0, got -1(\\.0)?$", class = "fedr_error")
  expect_error(fed_averaging(model, sgd, proximal_mu = NA), "`proximal_mu`", class = "fedr_error")
  expect_error(fed_averaging(model, sgd, proximal_mu = Inf), "`proximal_mu`", class = "fedr_error")
  expect_error(fed_averaging(model, sgd, proximal_mu = "a"), "`proximal_mu`", class = "fedr_error")
  expect_error(fed_averaging(model, sgd, proximal_mu = c(0.1, 0.2)), "`proximal_mu`", class = "fedr_error")
})
