# Clients on Ray from R: the threads executor's numbers, a failure report, a model that cannot travel.

test_that("fed_executor_ray() trains like threads, and an R loss is refused by name", {
  skip_if_no_fedr()
  if (!reticulate::py_module_available("ray")) {
    if (identical(Sys.getenv("FEDR_REQUIRE_PYTHON"), "1")) stop("Ray is not installed (make setup installs it)")
    skip("Ray is not installed")
  }
  clients <- small_clients()
  model <- fed_model(keras_model_fn())
  ray <- fed_executor_ray(num_cpus = 2)
  on.exit(reticulate::py_call(ray$py$close), add = TRUE)
  expect_output(print(ray), "<fed_executor> ray\\(address=local, num_cpus_per_client=1\\)")
  on_ray <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 3, executor = ray), clients, rounds = 2, verbose = FALSE)
  on_threads <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 3, executor = fed_executor_threads(2)),
                        clients, rounds = 2, verbose = FALSE)
  expect_identical(fed_weights(on_ray), fed_weights(on_threads))
  expect_identical(on_ray$loss, on_threads$loss)
  expect_identical(on_ray$num_clients_failed, c(0L, 0L))
  keras <- reticulate::import("keras")
  r_loss <- fed_model(keras_model_fn(), loss = function(y_true, y_pred) keras$losses$sparse_categorical_crossentropy(y_true, y_pred))
  expect_error(fed_averaging(r_loss, fed_optimizer("sgd", 0.02), executor = ray), "loss cannot travel to remote workers", class = "fedr_error")
  expect_error(fed_averaging(model, fed_optimizer("sgd", 0.02), min_clients = 0), "`min_clients`: expected a count >= 1 or a fraction", class = "fedr_error")
  expect_error(fed_executor_ray(round_timeout = -1), "`round_timeout`: expected a positive number of seconds", class = "fedr_error")
})
