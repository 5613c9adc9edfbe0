# What users see when they print fedr objects (snapshots), and keras3-built models.

test_that("printed objects read as documented", {
  skip_if_no_fedr()
  model <- fed_model(keras_model_fn())
  expect_snapshot({
    print(model)
    print(fed_optimizer("sgd", 0.02, momentum = 0.9))
    print(fed_executor_threads(2))
    print(fed_aggregator_trimmed_mean(0.1))
    print(fed_aggregator_dp_adaptive(0.5, 10, clipped_count_stddev = 1))
    print(fed_averaging(model, fed_optimizer("sgd", 0.02), executor = fed_executor_threads(2), seed = 7))
    print(fed_initialize(fed_averaging(model, fed_optimizer("sgd", 0.02), executor = fed_executor_serial())))
  })
})

test_that("a failed round's message is stable", {
  skip_if_no_fedr()
  keras <- reticulate::import("keras")
  process <- fed_averaging(fed_model(function() {
    keras$Sequential(list(keras$Input(shape = list(6L)), keras$layers$Dense(1L, kernel_initializer = "ones")))
  }, loss = "mean_squared_error", metrics = list()), fed_optimizer("sgd", 0.1), executor = fed_executor_serial())
  wild <- fed_clients(list(wild = list(x = matrix(1e18, 4, 6), y = rep(1, 4))), batch_size = 4)
  expect_snapshot(error = TRUE, fed_fit(process, wild, rounds = 3, verbose = FALSE))
})

test_that("keras3-built models work as model_fn output", {
  skip_if_no_fedr()
  skip_if_not_installed("keras3") # not in Debian; not installable here (no CRAN)
  model <- fed_model(function() {
    keras3::keras_model_sequential(input_shape = 784) |>
      keras3::layer_dense(10, activation = "softmax")
  })
  history <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02)), small_clients(), rounds = 1, verbose = FALSE)
  expect_identical(history$num_examples, 600L)
})
