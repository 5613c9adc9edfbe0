# The core's parts from R: whole state (BatchNorm), seeds (Dropout), checkpoints,
# executors, and failures that are named and never lose finished rounds.

# Small images for a CNN: 3 clients of 6 x 6 x 1 images, 3 classes.
image_clients <- function(sizes = c(20L, 12L, 16L), seed = 1L) {
  withr::with_seed(seed, {
    fed_clients(lapply(sizes, function(n) {
      list(x = array(stats::rnorm(n * 36, 1.5, 2), c(n, 6, 6, 1)), y = sample(0:2, n, replace = TRUE))
    }), batch_size = 8)
  })
}

cnn_model <- function() {
  keras <- reticulate::import("keras")
  fed_model(function() {
    keras$Sequential(list(
      keras$Input(shape = list(6L, 6L, 1L)),
      keras$layers$Conv2D(4L, 3L, activation = "relu"),
      keras$layers$BatchNormalization(),
      keras$layers$Flatten(),
      keras$layers$Dropout(0.3),
      keras$layers$Dense(3L, activation = "softmax")
    ))
  })
}

test_that("BatchNorm statistics are in the state and evaluation reads only the state", {
  skip_if_no_fedr()
  clients <- image_clients()
  test <- image_clients(c(10L, 14L), seed = 9L)
  model <- cnn_model()
  results <- list()
  for (workers in 1:2) {
    process <- fed_averaging(model, fed_optimizer("sgd", 0.05), seed = 5, executor = fed_executor_threads(workers))
    history <- fed_fit(process, clients, rounds = 2, verbose = FALSE)
    before <- fed_evaluate(process, history, test)
    fed_fit(process, image_clients(seed = 4L), rounds = 1, verbose = FALSE) # other training in between
    expect_identical(fed_evaluate(process, history, test), before)
    results[[workers]] <- before
  }
  expect_identical(results[[1]], results[[2]])
  expect_identical(results[[1]][["num_examples"]], 24)
  stats <- fed_weights(history, "non_trainable")
  expect_named(stats, c(
    "sequential/batch_normalization/moving_mean", "sequential/batch_normalization/moving_variance",
    "seed_generator/seed_generator_state"
  ))
  expect_gt(max(abs(stats[[1]])), 1e-3)
  expect_gt(max(abs(stats[[2]] - 1)), 1e-3)
  expect_output(print(attr(history, "state")), "<fed_state> round 2, weights .* 3 non-trainable variables")
})

test_that("a seeded Dropout model repeats bit for bit with any executor", {
  skip_if_no_fedr()
  clients <- image_clients()
  model <- cnn_model()
  run <- function(executor) {
    process <- fed_averaging(model, fed_optimizer("sgd", 0.05), seed = 11, executor = executor)
    fed_fit(process, clients, rounds = 2, verbose = FALSE)
  }
  serial <- run(fed_executor_serial())
  threads <- run(fed_executor_threads(2))
  again <- run(fed_executor_threads(2))
  expect_identical(fed_weights(threads), fed_weights(serial))
  expect_identical(fed_weights(again), fed_weights(serial))
  expect_identical(threads$loss, serial$loss)
  other <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.05), seed = 12), clients, rounds = 1, verbose = FALSE)
  expect_false(identical(fed_weights(other)[[1]], fed_weights(serial)[[1]]))
})

test_that("save, load and resume give the weights of training straight through", {
  skip_if_no_fedr()
  clients <- image_clients()
  process <- fed_averaging(cnn_model(), fed_optimizer("adam", 0.01), fed_optimizer("sgd", 1, momentum = 0.9), seed = 21)
  straight <- fed_fit(process, clients, rounds = 4, verbose = FALSE)
  two <- fed_fit(process, clients, rounds = 2, verbose = FALSE)
  path <- withr::local_tempfile(fileext = ".fedr")
  expect_identical(fed_save_state(two, path), path)
  loaded <- fed_load_state(path, process)
  other <- fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.02))
  expect_error(fed_load_state(path, other), "state: the model has 2 trainable variables", class = "fedr_error")
  expect_s3_class(loaded, "fed_state")
  expect_identical(loaded$round, 2L)
  resumed <- fed_fit(process, clients, rounds = 2, state = loaded, verbose = FALSE)
  expect_identical(resumed$round, 3:4)
  expect_identical(fed_weights(resumed), fed_weights(straight))
  expect_identical(fed_weights(resumed, "non_trainable"), fed_weights(straight, "non_trainable"))
  # In a new R session, as after a restart.
  out <- withr::local_tempfile(fileext = ".fedr")
  script <- withr::local_tempfile(fileext = ".R")
  writeLines(c(
    "library(fedr)",
    paste("image_clients <-", paste(deparse(image_clients), collapse = "\n")),
    paste("cnn_model <-", paste(deparse(cnn_model), collapse = "\n")),
    'process <- fed_averaging(cnn_model(), fed_optimizer("adam", 0.01), fed_optimizer("sgd", 1, momentum = 0.9), seed = 21)',
    sprintf('state <- fed_load_state("%s", process)', path),
    "history <- fed_fit(process, image_clients(), rounds = 2, state = state, verbose = FALSE)",
    sprintf('fed_save_state(history, "%s")', out)
  ), script)
  log <- suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), script, stdout = TRUE, stderr = TRUE))
  expect_null(attr(log, "status"), info = paste(utils::tail(log, 20), collapse = "\n"))
  restarted <- fed_load_state(out)
  expect_identical(restarted$round, 4L)
  expect_identical(fed_weights(restarted), fed_weights(straight))
  expect_identical(fed_weights(restarted, "non_trainable"), fed_weights(straight, "non_trainable"))
  broken <- withr::local_tempfile(fileext = ".fedr")
  writeBin(readBin(path, "raw", 200), broken)
  expect_error(fed_load_state(broken), "is not a readable fedr checkpoint: truncated or corrupt", class = "fedr_error")
  expect_error(fed_load_state(file.path(tempdir(), "nothing.fedr")), "`path`: no file at", class = "fedr_error")
  expect_error(fed_save_state("state", path), "`state` must be a fed_state", class = "fedr_error")
})

test_that("a state from another model is refused, naming the variable", {
  skip_if_no_fedr()
  clients <- small_clients()
  process <- fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.02))
  keras <- reticulate::import("keras")
  other <- fed_averaging(fed_model(function() {
    keras$Sequential(list(keras$Input(shape = list(784L)), keras$layers$Dense(10L, use_bias = FALSE), keras$layers$Dense(1L)))
  }, loss = "mean_squared_error", metrics = list()), fed_optimizer("sgd", 0.02))
  err <- tryCatch(fed_next(process, fed_initialize(other), clients), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_match(conditionMessage(err), "state: the model has 2 trainable variables \\(sequential/dense/kernel, sequential/dense/bias\\), the state has 3 .*is it from another model\\?")
  # The same numbers of weights in other shapes: named by variable.
  wide <- fed_averaging(fed_model(keras_model_fn(input = 785L)), fed_optimizer("sgd", 0.02))
  expect_error(
    fed_evaluate(process, fed_initialize(wide), clients),
    "trainable variable 0 is 'sequential/dense/kernel' float32\\[785, 10\\] but the model expects 'sequential/dense/kernel' float32\\[784, 10\\]",
    class = "fedr_error"
  )
})

test_that("labels that do not fit the model are named before TensorFlow sees them", {
  skip_if_no_fedr()
  process <- fed_averaging(fed_model(keras_model_fn(input = 3L)), fed_optimizer("sgd", 0.02))
  wide <- fed_split(matrix(runif(36), 12), 2, labels = 0:11)
  expect_error(
    fed_next(process, fed_initialize(process), wide),
    "client 'client_1': label 11 is outside the model's 10 classes; labels must be in \\[0, 10\\)",
    class = "fedr_error"
  )
})

regression_model <- function() {
  keras <- reticulate::import("keras")
  fed_model(function() {
    keras$Sequential(list(keras$Input(shape = list(6L)), keras$layers$Dense(1L, kernel_initializer = "ones")))
  }, loss = "mean_squared_error", metrics = list())
}

test_that("diverging clients are dropped with a warning, and a failed round keeps the finished ones", {
  skip_if_no_fedr()
  process <- fed_averaging(regression_model(), fed_optimizer("sgd", 0.1))
  calm <- fed_clients(list(list(x = matrix(runif(24), 4), y = rep(1, 4))), batch_size = 2)
  # Features of 1e18: one step makes the weights about -1e36, the next step's loss is Inf.
  wild <- fed_clients(list(list(x = matrix(1e18, 4, 6), y = rep(1, 4))), batch_size = 4)
  both <- fed_clients(list(calm = list(x = matrix(runif(24), 4), y = rep(1, 4)), wild = list(x = matrix(1e18, 4, 6), y = rep(1, 4))), batch_size = 2)
  state <- fed_initialize(process)
  expect_warning(result <- fed_next(process, state, both), "1 client\\(s\\) left out of the aggregate .*: wild", class = "fedr_warning")
  expect_identical(result$metrics[["num_clients_dropped"]], 1)
  expect_identical(result$metrics[["num_clients"]], 1)
  # Round 1 trains (weights about -1e36), round 2 diverges: the error keeps round 1.
  err <- tryCatch(fed_fit(process, wild, rounds = 3, verbose = FALSE), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_match(conditionMessage(err), "^Round 2 failed: ValueError: round 2: every client's update was non-finite")
  expect_match(conditionMessage(err), "lower the client learning rate")
  expect_match(conditionMessage(err), "Round 1 finished and is kept: the error's `history` holds it and the state")
  expect_s3_class(err$history, "fed_history")
  expect_identical(err$history$round, 1L)
  expect_identical(attr(err$history, "state")$round, 1L)
  expect_lt(fed_weights(err$history)[[1]][[1]], -1e30)
  # Resuming from round 1, the message counts the rounds as they are numbered.
  calm2 <- fed_clients(list(list(x = matrix(runif(24), 4), y = rep(1, 4))), batch_size = 4)
  good <- fed_fit(process, calm2, rounds = 2, verbose = FALSE)
  both_bad <- tryCatch(fed_fit(process, wild, rounds = 3, state = good, verbose = FALSE), error = identity)
  expect_match(conditionMessage(both_bad), "^Round 4 failed: .*\nRound 3 finished and is kept")
  # The history's state is a good state: it saves.
  path <- withr::local_tempfile(fileext = ".fedr")
  fed_save_state(err$history, path)
  expect_identical(fed_load_state(path)$round, 1L)
  first <- tryCatch(fed_fit(fed_averaging(regression_model(), fed_optimizer("sgd", 3e38)), calm, rounds = 2, verbose = FALSE), error = identity)
  expect_match(conditionMessage(first), "No round of this call finished; the state passed in is unchanged")
  expect_identical(nrow(first$history), 0L)
})

test_that("R code in the model (a loss, a Lambda layer) trains with threads, without crashing R", {
  skip_if_no_fedr()
  keras <- reticulate::import("keras")
  clients <- small_clients()
  r_loss <- function(y_true, y_pred) keras$losses$sparse_categorical_crossentropy(y_true, y_pred)
  model_fn <- function() {
    keras$Sequential(list(
      keras$Input(shape = list(784L)),
      keras$layers$Lambda(function(x) x * 1),
      keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
    ))
  }
  in_r <- fed_model(model_fn, loss = r_loss)
  threads <- fed_fit(fed_averaging(in_r, fed_optimizer("sgd", 0.02), executor = fed_executor_threads(2)), clients, rounds = 2, verbose = FALSE)
  serial <- fed_fit(fed_averaging(in_r, fed_optimizer("sgd", 0.02), executor = fed_executor_serial()), clients, rounds = 2, verbose = FALSE)
  expect_identical(fed_weights(threads), fed_weights(serial))
  # The same numbers as the reference model without R code.
  reference <- fed_fit(fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.02)), clients, rounds = 2, verbose = FALSE)
  expect_equal(threads$loss, reference$loss, tolerance = 1e-6)
  expect_equal(unname(fed_weights(threads)), unname(fed_weights(reference)), tolerance = 1e-6)
})

test_that("seed, executor and aggregator arguments are checked", {
  skip_if_no_fedr()
  model <- fed_model(keras_model_fn())
  sgd <- fed_optimizer("sgd", 0.02)
  expect_error(fed_averaging(model, sgd, seed = -1), "`seed` must be an integer >= 0", class = "fedr_error")
  expect_error(fed_averaging(model, sgd, executor = "threads"), "`executor` must be fed_executor_threads\\(\\), fed_executor_serial\\(\\) or fed_executor_ray\\(\\)", class = "fedr_error")
  expect_error(fed_averaging(model, sgd, aggregator = mean), "`aggregator` must be an aggregator such as fed_aggregator_mean\\(\\)", class = "fedr_error")
  expect_error(fed_executor_threads(0), "`workers` must be a positive integer", class = "fedr_error")
  expect_error(fed_aggregator_mean(NA), "`weighted` must be TRUE or FALSE", class = "fedr_error")
  expect_output(print(fed_executor_threads(2)), "<fed_executor> threads\\(workers=2\\)")
  expect_output(print(fed_aggregator_mean(weighted = FALSE)), "<fed_aggregator> mean\\(weighted=False\\)")
  process <- fed_averaging(model, sgd, seed = 3, aggregator = fed_aggregator_mean(weighted = FALSE))
  expect_output(print(process), "aggregator: mean\\(weighted=False\\), executor: threads\\(workers=\\d+\\), seed: 3")
})
