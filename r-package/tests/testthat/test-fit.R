# fed_fit() as keras3 users expect it: validation each round, early stopping, ggplot2 and base plots.

test_that("validation_data adds val_ columns equal to fed_evaluate() of each round's state", {
  skip_if_no_fedr()
  clients <- small_clients()
  test <- fed_split(fashion(), n_clients = 50, split = "test")[1:2]
  process <- fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.02), seed = 1)
  history <- fed_fit(process, clients, rounds = 2, validation_data = test, verbose = FALSE)
  expect_true(all(c("val_sparse_categorical_accuracy", "val_loss") %in% names(history)))
  expect_equal(history$val_loss[[2]], fed_evaluate(process, history, test)[["loss"]])
  messages <- testthat::capture_messages(fed_fit(process, clients, rounds = 1, validation_data = test))
  expect_match(messages, "val_loss \\d\\.\\d{4}")
  expect_error(fed_fit(process, clients, rounds = 1, validation_data = "test"), "`validation_data` must be NULL or a fed_data object", class = "fedr_error")
})

test_that("early stopping stops after `patience` rounds without improvement and restores the best state", {
  skip_if_no_fedr()
  clients <- small_clients()
  # Server learning rate 5 overshoots: the loss rises after the first rounds.
  process <- fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.5), fed_optimizer("sgd", 5), seed = 1)
  full <- fed_fit(process, clients, rounds = 8, verbose = FALSE)
  best <- which.min(full$loss)
  expect_lt(best, 7L) # the run has a best round well before the end
  stopped <- fed_fit(process, clients, rounds = 8, patience = 2, verbose = FALSE)
  expect_identical(attr(stopped, "best_round"), best)
  expect_identical(nrow(stopped), min(8L, best + 2L))
  expect_identical(attr(stopped, "state")$round, best)
  expect_identical(fed_weights(attr(stopped, "state")), fed_weights(fed_fit(process, clients, rounds = best, verbose = FALSE)))
  last <- fed_fit(process, clients, rounds = 8, patience = 2, restore_best = FALSE, verbose = FALSE)
  expect_identical(attr(last, "state")$round, nrow(last))
  expect_error(fed_fit(process, clients, rounds = 2, monitor = "loss"), "`monitor` needs `patience`", class = "fedr_error")
  expect_error(fed_fit(process, clients, rounds = 2, patience = 1, monitor = "val_loss"), "no `validation_data` was given", class = "fedr_error")
  expect_error(fed_fit(process, clients, rounds = 2, patience = 1, monitor = "auc", verbose = FALSE), "`monitor` \"auc\" is not a metric of the round", class = "fedr_error")
})

test_that("plot() uses ggplot2 when installed and base graphics otherwise; autoplot() returns a ggplot", {
  skip_if_no_fedr()
  clients <- small_clients()
  test <- fed_split(fashion(), n_clients = 50, split = "test")[1:2]
  process <- fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.02), seed = 1)
  history <- fed_fit(process, clients, rounds = 2, validation_data = test, verbose = FALSE)
  for (engine in c("base", "ggplot2")) {
    if (engine == "ggplot2" && !requireNamespace("ggplot2", quietly = TRUE)) next
    path <- withr::local_tempfile(fileext = ".png")
    grDevices::png(path, width = 900, height = 400)
    expect_identical(plot(history, engine = engine), history)
    grDevices::dev.off()
    expect_gt(file.size(path), 1000)
  }
  if (requireNamespace("ggplot2", quietly = TRUE)) {
    p <- ggplot2::autoplot(history)
    expect_s3_class(p, "ggplot")
    expect_setequal(unique(p$data$set), c("training", "validation"))
    expect_identical(levels(p$data$metric), c("accuracy", "loss"))
  }
  expect_error(plot(history, engine = "lattice"), "`engine` must be one of", class = "fedr_error")
})

test_that("fed_fit() gives the rows of fedr.learning.fit() in Python for the same process, seed and data", {
  skip_if_no_fedr()
  clients <- small_clients()
  test <- fed_split(fashion(), n_clients = 50, split = "test")[1:2]
  process <- fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.5), fed_optimizer("sgd", 5), seed = 1)
  history <- fed_fit(process, clients, rounds = 6, clients_per_round = 2, validation_data = test, patience = 2, verbose = FALSE)
  learning <- reticulate::import("fedr.learning", convert = FALSE)
  py <- learning$fit(process$py, clients$py, 6L, clients_per_round = 2L, validation_data = test$py, patience = 2L)
  rows <- reticulate::py_to_r(py$rows)
  expect_identical(nrow(history), length(rows))
  expect_setequal(names(history), names(rows[[1]])) # R puts the counts after the metrics
  for (column in setdiff(names(history), "seconds")) {
    expect_equal(as.double(history[[column]]), vapply(rows, function(r) as.double(r[[column]]), numeric(1)),
                 tolerance = 1e-12, info = column)
  }
  expect_identical(attr(history, "best_round"), as.integer(reticulate::py_to_r(py$best_round)))
  expect_identical(fed_weights(history), fed_weights(new_fed_state(py$state)))
  # The loop's line is Python's round_line(), printed by R.
  line <- testthat::capture_messages(fed_fit(process, clients, rounds = 1))
  expect_match(line, "^round   1  accuracy 0\\.\\d{4}  loss \\d\\.\\d{4}  \\(\\d+\\.\\d{2} s\\)\n$")
})

test_that("an empty Poisson sample skips its round with a fedr_warning", {
  skip_if_no_fedr()
  clients <- small_clients()
  sample_of <- function(seed, round) fed_sample_clients(clients, 1, seed = seed, round = round, method = "poisson")
  seed <- Find(function(s) !is.null(sample_of(s, 1)) && is.null(sample_of(s, 2)) && !is.null(sample_of(s, 3)), 0:200)
  process <- fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.02), seed = 1)
  expect_warning(history <- fed_fit(process, clients, rounds = 3, clients_per_round = 1, sampling = "poisson",
                                    seed = seed, verbose = FALSE),
                 "^Round 2 sampled no client \\(Poisson sampling\\); it was skipped\\.$", class = "fedr_warning")
  expect_identical(history$round, 1:2)
})
