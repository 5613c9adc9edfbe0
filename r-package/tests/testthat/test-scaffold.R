# SCAFFOLD (Karimireddy et al. 2020) from R: `fed_scaffold()` and the clients' control
# variates, `fed_client_states()`. Its option II arithmetic is tested against a numpy
# transcription of the paper on the Python side.

test_that("fed_scaffold() fits 2 rounds, and each client keeps a control variate", {
  skip_if_no_fedr()
  clients <- small_clients()
  process <- fed_scaffold(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.1), seed = 3)
  expect_s3_class(process, "fed_process")
  expect_true(process$scaffold)
  expect_null(process$num_clients)
  expect_true(reticulate::py_to_r(process$py$scaffold))
  expect_output(print(process), "^<fed_process> SCAFFOLD\n  model")
  empty <- fed_client_states(process)
  expect_identical(names(empty), c("client", "round", "control_norm"))
  expect_identical(nrow(empty), 0L)
  expect_type(empty$client, "character")
  expect_type(empty$round, "integer")
  expect_type(empty$control_norm, "double")

  history <- fed_fit(process, clients, rounds = 2, verbose = FALSE)
  expect_s3_class(history, c("fed_history", "data.frame"))
  expect_identical(nrow(history), 2L)
  expect_identical(history$round, 1:2)
  expect_true(all(is.finite(history$loss)))
  states <- fed_client_states(process)
  expect_identical(nrow(states), 3L)
  expect_setequal(states$client, clients$ids)
  expect_identical(states$round, rep(2L, 3))
  expect_type(states$control_norm, "double")
  expect_true(all(is.finite(states$control_norm) & states$control_norm > 0))
  # The norms are the stored arrays' own.
  store <- process$py$client_states
  c1 <- reticulate::py_to_r(store$get(states$client[[1]]))[["scaffold/control"]]
  expect_equal(states$control_norm[[1]], sqrt(sum(as.double(c1)^2)), tolerance = 1e-12)
  expect_identical(fed_evaluate(process, history, clients)[["num_clients"]], 3)

  # SCAFFOLD is not FedAvg: the same seed and data give other weights.
  fedavg <- fed_fit(fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.1), seed = 3),
                    clients, rounds = 2, verbose = FALSE)
  expect_gt(max(abs(unlist(fed_weights(history)) - unlist(fed_weights(fedavg)))), 1e-6)
  expect_identical(nrow(fed_client_states(fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.1)))), 0L)

  expect_output(print(fed_scaffold(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.1), num_clients = 10,
                                   proximal_mu = 0.5)),
                "^<fed_process> SCAFFOLD \\(num_clients = 10\\), FedProx \\(proximal_mu = 0.5\\)\n")
})

test_that("fed_scaffold() gives the numbers of build_scaffold() in Python for the same seed and data", {
  skip_if_no_fedr()
  clients <- small_clients()
  process <- fed_scaffold(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.1), local_epochs = 2, seed = 7,
                          num_clients = 3)
  history <- fed_fit(process, clients, rounds = 2, verbose = FALSE)

  # The same process written in Python, through the module fedr_python() gives.
  py_model <- reticulate::py_run_string(paste(
    "import keras",
    "from fedr.learning import from_keras_model",
    "def model_fn():",
    "    model = keras.Sequential([keras.Input(shape=(784,)),",
    "                              keras.layers.Dense(10, activation='softmax', kernel_initializer='zeros')])",
    "    return from_keras_model(model, loss='sparse_categorical_crossentropy',",
    "                            metrics=['sparse_categorical_accuracy'])",
    sep = "\n"
  ), convert = FALSE)$model_fn
  # fedr_python() converts results to R, as $-style code in R sees them.
  learning <- fedr_python()$learning
  py_process <- learning$build_scaffold(py_model, learning$optimizer_fn("sgd", 0.1), local_epochs = 2L, seed = 7L,
                                        num_clients = 3L)
  py <- learning$fit(py_process, clients$py, 2L)
  expect_identical(length(py$rows), 2L)
  expect_equal(history$loss, vapply(py$rows, function(r) as.double(r[["loss"]]), numeric(1)), tolerance = 1e-6)
  r_weights <- unlist(fed_weights(history))
  py_weights <- unlist(py$state$model$trainable)
  expect_identical(length(r_weights), length(py_weights))
  expect_gt(max(abs(py_weights)), 1e-3) # trained away from the zero start
  expect_lt(max(abs(r_weights - py_weights)), 1e-6)
  # And the clients' control variates.
  states <- fed_client_states(process)
  expect_identical(states$client, as.character(unlist(py_process$client_states$ids())))
  py_norms <- vapply(states$client, function(id) {
    control <- py_process$client_states$get(id)[["scaffold/control"]]
    sqrt(sum(as.double(control)^2))
  }, numeric(1), USE.NAMES = FALSE)
  expect_lt(max(abs(states$control_norm - py_norms)), 1e-6)
})

test_that("bad `num_clients` and a client optimizer that is not plain SGD are R errors naming them", {
  skip_if_no_fedr()
  model <- fed_model(keras_model_fn())
  sgd <- fed_optimizer("sgd", 0.1)
  err <- expect_error(fed_scaffold(model, sgd, num_clients = 0), "`num_clients`", class = "fedr_error")
  expect_identical(err$arg, "num_clients")
  err <- expect_error(fed_scaffold(model, sgd, num_clients = "a"), "`num_clients`", class = "fedr_error")
  expect_identical(err$arg, "num_clients")
  expect_error(fed_scaffold(model, sgd, num_clients = 2.5), "`num_clients`", class = "fedr_error")
  expect_error(fed_scaffold(model, sgd, num_clients = NA), "`num_clients`", class = "fedr_error")
  expect_identical(fed_scaffold(model, sgd, num_clients = 100)$num_clients, 100L)
  # A round with more clients than the federation's `num_clients` fails, saying so.
  err <- expect_error(fed_fit(fed_scaffold(model, sgd, num_clients = 2), small_clients(), rounds = 1, verbose = FALSE),
                      "num_clients", class = "fedr_error")
  expect_match(conditionMessage(err), "more than the federation's num_clients = 2", fixed = TRUE)

  err <- expect_error(fed_scaffold(model, fed_optimizer("adam", 0.01)), "`client_optimizer`", class = "fedr_error_input")
  expect_identical(err$arg, "client_optimizer")
  expect_match(conditionMessage(err), "plain SGD", fixed = TRUE)
  err <- expect_error(fed_scaffold(model, fed_optimizer("sgd", 0.1, momentum = 0.9)), "`client_optimizer`",
                      class = "fedr_error_input")
  expect_identical(err$arg, "client_optimizer")
  expect_error(fed_scaffold(model), "`client_optimizer` is missing", class = "fedr_error")
  expect_error(fed_scaffold("model", sgd), "`model`", class = "fedr_error")
  expect_error(fed_scaffold(model, sgd, proximal_mu = -1), "`proximal_mu`", class = "fedr_error")
})

test_that("fed_client_states() of something that is not a process is an R error naming `process`", {
  err <- expect_error(fed_client_states("process"), "`process`", class = "fedr_error")
  expect_identical(err$arg, "process")
  expect_error(fed_client_states(NULL), "`process`", class = "fedr_error")
})
