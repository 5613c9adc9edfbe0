# One list of the names a round writes (owned by the Python core's fedr.protocol),
# checked when the model is built; federated_sum/mean keep the members' type.

test_that("a metric named as the round writes is an R error naming `metrics` and the metric", {
  skip_if_no_fedr()
  keras <- reticulate::import("keras")
  for (name in c("num_clients_failed", "epsilon", "val_accuracy")) {
    err <- expect_error(
      fed_model(keras_model_fn(4L), metrics = list(keras$metrics$SparseCategoricalAccuracy(name = name))),
      class = "fedr_error_input"
    )
    expect_identical(err$arg, "metrics")
    expect_match(conditionMessage(err), sprintf("`metrics`: a metric named '%s' ", name), fixed = TRUE)
    expect_match(conditionMessage(err), sprintf("rename it (name=), e.g. 'my_%s'", name), fixed = TRUE)
  }
})

test_that("a history's count columns come from the core's one list and survive without Python", {
  skip_if_no_fedr()
  py_counts <- as.character(reticulate::import("fedr.protocol")$COUNT_COLUMNS)
  expect_true(all(py_counts %in% fedr:::count_columns()))
  expect_true("eval_num_clients_failed" %in% fedr:::count_columns())
  history <- fedr:::new_fed_history(list(c(round = 1, loss = 0.5, num_clients = 3, num_clients_failed = 1)), NULL)
  expect_type(history$num_clients_failed, "integer")
  expect_identical(attr(history, "count_columns"), fedr:::count_columns())
  expect_match(format(history)[[1]], "1 round of federated training", fixed = TRUE)
})

test_that("federated_sum keeps integers integer, refuses overflow and zero clients with the reason", {
  skip_if_no_fedr()
  total <- federated_sum(list(2L, 40L))
  expect_identical(as.list(total)[[1]], 42L)
  expect_identical(as.list(federated_sum(list(1.5, 2)))[[1]], 3.5)
  expect_identical(as.list(federated_mean(list(1, 13)))[[1]], 7)
  err <- expect_error(federated_sum(list(.Machine$integer.max, 1L)), class = "fedr_error_input")
  expect_identical(err$arg, "value")
  expect_match(conditionMessage(err), "overflows int32", fixed = TRUE)
  err <- expect_error(federated_sum(list()), class = "fedr_error")
  expect_match(conditionMessage(err), "zero clients", fixed = TRUE)
})

test_that("an R error names the R argument from the argument the Python error carries, not from its text", {
  skip_if_no_fedr()
  raise <- reticulate::py_run_string(paste(
    "from fedr.errors import FedValueError",
    "def raise_about(argument):",
    "    raise FedValueError('the sample is larger than the population', argument=argument)",
    sep = "\n"
  ), convert = FALSE)$raise_about
  err <- expect_error(fedr:::fedr_call(raise("clients_per_round"), arg = c(clients_per_round = "n_sampled", "seed")),
                      class = "fedr_error_input")
  expect_identical(err$arg, "n_sampled")
  expect_identical(conditionMessage(err), "`n_sampled`: the sample is larger than the population")
  # A message that starts with the name: the name is not repeated.
  rounds <- reticulate::py_run_string(paste(
    "from fedr.errors import FedValueError",
    "def bad():",
    "    raise FedValueError('rounds: expected a positive integer, got 0')",
    sep = "\n"
  ), convert = FALSE)$bad
  err <- expect_error(fedr:::fedr_call(rounds(), arg = c(rounds = "n_rounds", "seed")), class = "fedr_error")
  expect_identical(err$arg, "n_rounds")
  expect_identical(conditionMessage(err), "`n_rounds`: expected a positive integer, got 0")
})
