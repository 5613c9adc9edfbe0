# The article's federated Keras workflow, small: 3 clients x 200 images, 2 rounds.

test_that("fed_model(), fed_optimizer() and fed_averaging() build and print", {
  skip_if_no_fedr()
  model <- fed_model(keras_model_fn(), sample_batch = small_clients())
  expect_output(print(model), "<fed_model> Model\\(input=\\(784,\\), trainable_params=7850, loss=sparse_categorical_crossentropy")
  expect_identical(model$metric_names, "sparse_categorical_accuracy")
  keras <- reticulate::import("keras")
  from_functions <- fed_model(keras_model_fn(),
    loss = function() keras$losses$SparseCategoricalCrossentropy(),
    metrics = function() list(keras$metrics$SparseCategoricalAccuracy(name = "acc"))
  )
  expect_identical(from_functions$metric_names, "acc")
  expect_output(print(fed_optimizer("sgd", 0.02)), "<fed_optimizer> sgd\\(learning_rate = 0.02\\)")
  expect_output(print(fed_optimizer("sgd", 1, momentum = 0.9)), "sgd\\(learning_rate = 1, momentum = 0.9\\)")
  expect_output(print(fed_optimizer("adam", 0.01, beta_1 = 0.8)), "adam\\(learning_rate = 0.01, beta_1 = 0.8\\)")
  process <- fed_averaging(model, fed_optimizer("sgd", 0.02), fed_optimizer("sgd", 1))
  expect_output(print(process), "<fed_process> federated averaging.*client optimizer: sgd\\(learning_rate = 0.02\\), 1 local epoch.*server optimizer: sgd\\(learning_rate = 1\\)")
  state <- fed_initialize(process)
  expect_output(print(state), "<fed_state> round 0, weights \\(784, 10\\) \\(10\\)")
  weights <- fed_weights(state)
  expect_identical(dim(weights[[1]]), c(784L, 10L))
  expect_identical(weights[[2]], rep(0, 10))
})

test_that("two rounds of fed_fit() learn, deterministically", {
  skip_if_no_fedr()
  clients <- small_clients()
  model <- fed_model(keras_model_fn(), metrics = "sparse_categorical_accuracy", sample_batch = clients)
  process <- fed_averaging(model, fed_optimizer("sgd", 0.02), fed_optimizer("sgd", 1))
  messages <- testthat::capture_messages(history <- fed_fit(process, clients, rounds = 2))
  expect_match(messages, "^round   [12]  accuracy 0\\.\\d{4}  loss \\d\\.\\d{4}  \\(\\d+\\.\\d{2} s\\)\n$", all = TRUE)
  expect_length(messages, 2)
  expect_s3_class(history, c("fed_history", "data.frame"))
  expect_identical(names(history), c("round", "sparse_categorical_accuracy", "loss", "num_examples", "num_clients", "num_clients_dropped", "num_clients_failed", "seconds"))
  expect_identical(history$num_clients_dropped, c(0L, 0L))
  expect_identical(history$round, 1:2)
  expect_identical(history$num_examples, c(600L, 600L))
  expect_identical(history$num_clients, c(3L, 3L))
  # Zero-initialised weights predict uniformly: the first batch's loss is log(10).
  expect_lt(history$loss[[2]], history$loss[[1]])
  expect_lt(history$loss[[1]], log(10))
  expect_gt(history$sparse_categorical_accuracy[[2]], 0.3)
  expect_gt(history$sparse_categorical_accuracy[[2]], history$sparse_categorical_accuracy[[1]])
  # The same rounds by hand give the same numbers.
  state <- fed_initialize(process)
  for (r in 1:2) {
    result <- fed_next(process, state, clients)
    state <- result$state
    expect_identical(unname(result$metrics[c("sparse_categorical_accuracy", "loss")]), unlist(history[r, 2:3], use.names = FALSE))
  }
  expect_identical(state$round, 2L)
  # fedr's objects pass into $-style Python calls as their Python values.
  first <- fed_initialize(process)
  py_out <- reticulate::r_to_py(process)$`next`(first, clients)
  py_metrics <- reticulate::py_to_r(reticulate::py_get_item(py_out, 1L))
  expect_identical(py_metrics$loss, history$loss[[1]])
  expect_identical(fed_weights(state), fed_weights(attr(history, "state")))
  # Training goes on from a history.
  more <- fed_fit(process, clients, rounds = 1, state = history, verbose = FALSE)
  expect_identical(more$round, 3L)
  # Federated evaluation on held-out clients.
  test <- fed_split(fashion(), n_clients = 50, split = "test")[1:2]
  evaluation <- fed_evaluate(process, history, test)
  expect_named(evaluation, c("sparse_categorical_accuracy", "loss", "num_examples", "num_clients"))
  expect_identical(evaluation[["num_examples"]], 400)
  expect_gt(evaluation[["sparse_categorical_accuracy"]], 0.3)
  row <- fed_evaluate(process, attr(history, "state"), test, as_data_frame = TRUE)
  expect_identical(dim(row), c(1L, 4L))
  expect_equal(row$loss, evaluation[["loss"]])
})

test_that("fed_history prints, plots and converts", {
  skip_if_no_fedr()
  clients <- small_clients()
  keras <- reticulate::import("keras")
  # Loss and metric objects, as the README passes them.
  model <- fed_model(keras_model_fn(),
    loss = keras$losses$SparseCategoricalCrossentropy(),
    metrics = list(keras$metrics$SparseCategoricalAccuracy())
  )
  process <- fed_averaging(model, fed_optimizer("sgd", 0.02))
  history <- fed_fit(process, clients, rounds = 2, verbose = FALSE)
  expect_output(print(history), paste0(
    "<fed_history> 2 rounds of federated training\n",
    " round accuracy   loss num_examples num_clients dropped failed seconds\n",
    "     1   0\\.\\d{4} \\d\\.\\d{4}          600           3       0      0 +\\d+\\.\\d{2}\n",
    "     2   0\\.\\d{4} \\d\\.\\d{4}          600           3       0      0 +\\d+\\.\\d{2}\n",
    "final: accuracy 0\\.\\d{4}, loss \\d\\.\\d{4}"
  ))
  plain <- as.data.frame(history)
  expect_identical(class(plain), "data.frame")
  expect_null(attr(plain, "state"))
  expect_identical(plain$loss, history$loss)
  path <- withr::local_tempfile(fileext = ".png")
  grDevices::png(path, width = 800, height = 400)
  expect_identical(plot(history), history)
  grDevices::dev.off()
  expect_gt(file.size(path), 1000)
  expect_error(plot(history, metrics = "precision"), "`metrics` must name columns", class = "fedr_error")
})

test_that("workflow arguments are checked in R, Python errors come back plain", {
  skip_if_no_fedr()
  clients <- small_clients()
  expect_error(fed_model("model"), "`model_fn` must be a function", class = "fedr_error")
  expect_error(fed_model(keras_model_fn(), loss = 3), "`loss` must be a Keras loss", class = "fedr_error")
  expect_error(fed_model(keras_model_fn(), metrics = list(1)), "`metrics` must be Keras metric", class = "fedr_error")
  expect_error(fed_model(keras_model_fn(), sample_batch = "batch"), "`sample_batch` must be", class = "fedr_error")
  expect_error(fed_model(function() 42), "`model_fn` must return a Keras model", class = "fedr_error")
  # The core's rules, with the argument named, reach R as fedr_error.
  err <- tryCatch(fed_optimizer("rmsprop", 0.1), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_identical(conditionMessage(err), "`name`: expected one of ['adam', 'fedadagrad', 'fedadam', 'fedyogi', 'sgd'], got 'rmsprop'")
  expect_identical(err$arg, "name")
  expect_error(fed_optimizer("sgd"), "`learning_rate` is missing", class = "fedr_error")
  expect_error(fed_optimizer("sgd", -1), "`learning_rate`: expected a positive number, got -1", class = "fedr_error")
  expect_error(fed_optimizer("sgd", 0.1, beta_1 = 0.9), "`beta_1`: unknown option of 'sgd'; options are momentum, nesterov, weight_decay, clipnorm", class = "fedr_error")
  expect_error(fed_optimizer("sgd", 0.1, 0.9), "Options in `...` must be named", class = "fedr_error")
  expect_error(fed_optimizer("fedadagrad", 0.1, beta_2 = 0.9),
               "`beta_2`: unknown option of 'fedadagrad'; options are beta_1, tau", class = "fedr_error")
  expect_error(fed_optimizer("fedyogi", 0.1, tau = 0), "`tau`: expected a positive number, got 0", class = "fedr_error")
  expect_error(fed_averaging(fed_model(keras_model_fn()), fed_optimizer("fedadam", 0.1)),
               "`client_optimizer`: fedadam is a server optimizer", class = "fedr_error")
  # NA is refused in R (it used to reach Python as True).
  expect_error(fed_optimizer("sgd", 0.1, momentum = NA), "`momentum` must not be NA or NaN, got NA (logical).", fixed = TRUE, class = "fedr_error_input")
  expect_error(fed_optimizer("sgd", 0.1, momentum = 1.5), "`momentum`: expected a number in \\[0, 1\\), got 1.5", class = "fedr_error")
  model <- fed_model(keras_model_fn())
  expect_error(fed_averaging("model", fed_optimizer("sgd", 0.02)), "`model` must be a fed_model", class = "fedr_error")
  expect_error(fed_averaging(model), "`client_optimizer` is missing", class = "fedr_error")
  expect_error(fed_averaging(model, "sgd"), "`client_optimizer` must be a fed_optimizer", class = "fedr_error")
  expect_error(fed_averaging(model, fed_optimizer("sgd", 0.02), local_epochs = 0), "`local_epochs` must be a positive integer", class = "fedr_error")
  process <- fed_averaging(model, function() reticulate::import("keras")$optimizers$SGD(learning_rate = 0.02))
  state <- fed_initialize(process)
  expect_error(fed_fit(process, clients), "`rounds` is missing", class = "fedr_error")
  expect_error(fed_fit(process, clients, rounds = 0), "`rounds` must be a positive integer", class = "fedr_error")
  expect_error(fed_fit(process, clients, rounds = 1, verbose = NA), "`verbose` must be TRUE or FALSE", class = "fedr_error")
  expect_error(fed_fit(process, list(), rounds = 1), "`data` must be a fed_data object", class = "fedr_error")
  expect_error(fed_next(process, "state", clients), "`state` must be a fed_state", class = "fedr_error")
  expect_error(fed_next("process", state, clients), "`process` must be a fed_averaging\\(\\) or fed_scaffold\\(\\) process", class = "fedr_error")
  expect_error(fed_evaluate(process, state, clients, as_data_frame = "yes"), "`as_data_frame` must be TRUE or FALSE", class = "fedr_error")
  # Data the model cannot take: the core's ValueError, its message only.
  narrow <- fed_split(matrix(runif(30), 10), 2, labels = rep(0:1, 5))
  err <- tryCatch(fed_next(process, state, narrow), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_identical(conditionMessage(err), "ValueError: client 'client_0': x has feature shape (3,) but the model expects (784,)")
})
