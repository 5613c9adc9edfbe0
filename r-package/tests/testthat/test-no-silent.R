# No silent results from R (issue 18, section 3; issue 17, item 8): bad input is
# an error naming the argument, and a limit the user set is never lowered.

tiny_model_fn <- function(features = 4L) {
  keras <- reticulate::import("keras")
  function() {
    keras$Sequential(list(
      keras$Input(shape = list(as.integer(features))),
      keras$layers$Dense(units = 2L, activation = "softmax")
    ))
  }
}

tiny_clients <- function(n = 2L, features = 4L, prefix = "c") {
  set.seed(1)
  clients <- lapply(seq_len(n), function(i) list(x = matrix(runif(4 * features), 4), y = c(0, 1, 0, 1)))
  names(clients) <- paste0(prefix, seq_len(n) - 1L)
  fed_clients(clients, batch_size = 4)
}

tiny_process <- function(...) {
  fed_averaging(fed_model(tiny_model_fn()), fed_optimizer("sgd", 0.1), executor = fed_executor_serial(), ...)
}

# The condition signalled by `expr` (a test fails when there is none).
caught <- function(expr) {
  e <- tryCatch({
    expr
    NULL
  }, error = function(e) e)
  expect_false(is.null(e), info = "an error was expected")
  e
}

test_that("NA in any argument is an R error naming it, never Python's True", {
  skip_if_no_fedr()
  e <- caught(fed_aggregator_dp_fixed(NA, 10, clip = 1))
  expect_s3_class(e, "fedr_error_input")
  expect_identical(e$arg, "noise_multiplier")
  expect_identical(conditionMessage(e), "`noise_multiplier` must not be NA or NaN, got NA (logical).")
  expect_error(fed_aggregator_dp_fixed(1, 10, clip = NA_real_), "^`clip` must not be NA or NaN, got NA \\(double\\)\\.$",
               class = "fedr_error_input")
  expect_error(fed_aggregator_dp_adaptive(1, 10, target_quantile = NaN),
               "^`target_quantile` must not be NA or NaN, got NaN \\(double\\)\\.$", class = "fedr_error_input")
  # Arguments in `...` too.
  e <- caught(fed_optimizer("sgd", 0.1, momentum = NA))
  expect_identical(e$arg, "momentum")
  expect_identical(conditionMessage(e), "`momentum` must not be NA or NaN, got NA (logical).")
  expect_error(fed_aggregator_trimmed_mean(NA), "^`beta` must not be NA or NaN", class = "fedr_error_input")
  expect_error(fed_aggregator_secure_sum(clip_range = c(1, NA)),
               "^`clip_range` must not contain NA or NaN; a double vector of length 2 does", class = "fedr_error_input")
  # Where NA means something (an unknown dimension) it still does.
  expect_output(print(tensor_type("float32", c(NA, 3))), "float32\\[\\?,3\\]")
})

test_that("a whole number given as a double is a count, for min_clients and the secure threshold alike", {
  skip_if_no_fedr()
  # `threshold = 3` was refused and `threshold = 1` read as the fraction 1.0.
  expect_output(print(fed_aggregator_secure_mean(threshold = 3)), "threshold=3,")
  expect_output(print(fed_aggregator_secure_sum(threshold = 0.75)), "threshold=0.75\\)")
  e <- caught(fed_aggregator_secure_mean(threshold = 1))
  expect_s3_class(e, "fedr_error_input")
  expect_identical(e$arg, "threshold")
  expect_match(conditionMessage(e), paste0(
    "^`threshold`: expected an integer >= 2, got 1; secure aggregation needs t > n/2 survivors ",
    "\\(Bonawitz et al\\. 2017\\)"
  ))
  expect_error(fed_aggregator_secure_sum(threshold = 0.5), "^`threshold`: a fraction must be in \\(0\\.5, 1\\], got 0\\.5",
               class = "fedr_error_input")
  expect_error(fed_aggregator_secure_sum(threshold = "3"), "^`threshold` must be a whole number of clients or a fraction",
               class = "fedr_error_input")
  # min_clients has the same shape and the same helper.
  expect_identical(reticulate::py_to_r(tiny_process(min_clients = 2)$py$min_clients), 2L)
  expect_identical(reticulate::py_to_r(tiny_process(min_clients = 0.5)$py$min_clients), 0.5)
})

test_that("min_clients above the round's clients is refused, not lowered to them", {
  skip_if_no_fedr()
  process <- tiny_process(min_clients = 5)
  start <- fed_initialize(process)
  expect_error(fed_next(process, start, tiny_clients(2)),
               "min_clients: the round has 2 client\\(s\\), fewer than min_clients = 5; select at least 5 clients",
               class = "fedr_error_input")
  expect_identical(fed_next(process, start, tiny_clients(5))$metrics[["num_clients"]], 5)
})

test_that("a robust aggregator that cannot outvote anyone refuses the round", {
  skip_if_no_fedr()
  trimmed <- tiny_process(aggregator = fed_aggregator_trimmed_mean(0.3))
  expect_error(fed_next(trimmed, fed_initialize(trimmed), tiny_clients(3)),
               "beta=0.3: the trimmed mean of 3 client\\(s\\) trims floor\\(0.3 \\* 3\\) = 0 values from each side, so it cannot outvote a single bad client; it needs at least 4 clients",
               class = "fedr_error_input")
  expect_identical(fed_next(trimmed, fed_initialize(trimmed), tiny_clients(4))$metrics[["trimmed_per_side"]], 1)
  median <- tiny_process(aggregator = fed_aggregator_median())
  expect_error(fed_next(median, fed_initialize(median), tiny_clients(2)),
               "median\\(\\): a round of 2 client\\(s\\) cannot outvote a single bad client", class = "fedr_error_input")
})

test_that("an error building a remote process names the model, not min_clients", {
  skip_if_no_fedr()
  # An executor that says it trains elsewhere: the process builds the model's spec at once (as for Ray).
  main <- reticulate::py_run_string(paste(
    "import fedr.executors",
    "class FakeRemote(fedr.executors.Executor):",
    "    remote = True",
    "    workers = 1",
    "    def map(self, fn, items):",
    "        return [fn(i) for i in items]",
    sep = "\n"
  ), convert = FALSE)
  remote <- structure(list(py = main$FakeRemote(), kind = "ray"), class = c("fed_executor", "fed_component"))
  r_loss <- fed_model(tiny_model_fn(), loss = function(y_true, y_pred) {
    reticulate::import("keras")$losses$sparse_categorical_crossentropy(y_true, y_pred)
  })
  e <- caught(fed_averaging(r_loss, fed_optimizer("sgd", 0.1), executor = remote))
  expect_s3_class(e, "fedr_error_input")
  expect_identical(e$arg, "model")
  expect_match(conditionMessage(e), "^`model`: loss cannot travel to remote workers")
})

test_that("validation_data that does not fit the model is named, before any round trains", {
  skip_if_no_fedr()
  process <- tiny_process()
  e <- caught(fed_fit(process, tiny_clients(2), rounds = 1, validation_data = tiny_clients(1, features = 6L, prefix = "v"),
                      verbose = FALSE))
  expect_s3_class(e, "fedr_error_input")
  expect_identical(e$arg, "validation_data")
  expect_identical(conditionMessage(e), "`validation_data`: client 'v0': x has feature shape (6,) but the model expects (4,)")
  expect_null(e$history) # not "Round 1 failed": nothing trained
})

test_that("a built Keras model is accepted as keras3 users pass it, starting from its weights", {
  skip_if_no_fedr()
  keras <- reticulate::import("keras")
  built <- tiny_model_fn()()
  built$set_weights(list(reticulate::np_array(matrix(0.25, 4, 2), dtype = "float32"),
                         reticulate::np_array(c(0.5, -0.5), dtype = "float32")))
  process <- fed_averaging(fed_model(built), fed_optimizer("sgd", 0.1), executor = fed_executor_serial(), seed = 1)
  start <- fed_weights(fed_initialize(process))
  expect_equal(unname(start), list(matrix(0.25, 4, 2), c(0.5, -0.5)))
  after <- fed_next(process, fed_initialize(process), tiny_clients(2))
  expect_false(isTRUE(all.equal(fed_weights(after$state)[[1]], matrix(0.25, 4, 2))))
  # The user's model is the template, never trained itself.
  expect_equal(built$get_weights()[[1]], matrix(0.25, 4, 2))
})

test_that("a count beyond R's integers says it is too large", {
  skip_if_no_fedr()
  e <- caught(fed_clients(list(a = list(x = matrix(1, 2, 2), y = c(0, 1))), batch_size = 1e12))
  expect_identical(e$arg, "batch_size")
  expect_identical(conditionMessage(e),
                   "`batch_size` must be at most 2147483647 (the largest integer R and fedr count with), not 1e+12.")
  expect_error(fed_clients(list(a = list(x = matrix(1, 2, 2), y = c(0, 1))), batch_size = 2.5),
               "^`batch_size` must be a positive integer, not 2.5 \\(double\\)\\.$", class = "fedr_error_input")
})

test_that("label files beyond the class names do not load", {
  skip_if_no_fedr()
  dir <- tempfile("idx-")
  dir.create(dir)
  write_idx <- function(name, dims, values) {
    con <- gzfile(file.path(dir, name), "wb")
    on.exit(close(con))
    header <- c(as.raw(c(0, 0, 8, length(dims))), unlist(lapply(dims, function(d) {
      as.raw(c(d %/% 2^24, d %/% 2^16 %% 256, d %/% 256 %% 256, d %% 256))
    })))
    writeBin(c(header, as.raw(values)), con)
  }
  write_idx("train-images-idx3-ubyte.gz", c(3, 28, 28), rep(0, 3 * 784))
  write_idx("train-labels-idx1-ubyte.gz", 3, c(1, 12, 3))
  write_idx("t10k-images-idx3-ubyte.gz", c(1, 28, 28), rep(0, 784))
  write_idx("t10k-labels-idx1-ubyte.gz", 1, 9)
  expect_error(fed_load_dataset("fashion_mnist", path = dir),
               "train-labels-idx1-ubyte.gz: label 12 at index 1 is not a class of fashion_mnist, which has 10 classes \\(labels 0..9\\)",
               class = "fedr_error_input")
})

test_that("tiny weights give the right mean", {
  skip_if_no_fedr()
  # 1 / (2e-320) is Inf: a kernel multiplying by it turned a mean of ones into Inf.
  expect_identical(as.list(federated_mean(list(1, 1), weight = c(1e-320, 1e-320)))[[1]], 1)
  aggregators <- reticulate::import("fedr.aggregators", convert = FALSE)
  np <- reticulate::import("numpy", convert = FALSE)
  for (backend in c("kernel", "numpy")) {
    got <- aggregators$weighted_mean(np$ones(c(2L, 3L), dtype = "float32"), c(1e-320, 1e-320), backend = backend)
    expect_identical(as.vector(reticulate::py_to_r(got)), c(1, 1, 1), info = backend)
  }
})

test_that("a corrupt .rds file is named, in R before a node starts", {
  skip_if_no_fedr()
  bad <- tempfile(fileext = ".rds")
  writeLines("not an R file", bad)
  e <- caught(fed_flower_node(bad, "127.0.0.1:9092"))
  expect_s3_class(e, "fedr_error_input")
  expect_identical(e$arg, "data")
  expect_identical(conditionMessage(e), sprintf(
    "`data`: '%s' is not an R data file that readRDS() can read (unknown input format); write it with saveRDS().", bad
  ))
})

test_that("fed_save_state onto a directory or into a read-only place names the user's path", {
  skip_if_no_fedr()
  process <- tiny_process(seed = 1)
  state <- fed_initialize(process)
  dir <- tempfile("states-")
  dir.create(dir)
  e <- caught(fed_save_state(state, dir))
  expect_s3_class(e, "fedr_error_input")
  expect_identical(e$arg, "path")
  expect_identical(conditionMessage(e), sprintf(
    "`path`: '%s' is a directory; give the checkpoint a file name, e.g. '%s'", dir, file.path(dir, "state.fedr")
  ))
  expect_error(fed_load_state(dir), "is a directory, not a checkpoint file", class = "fedr_error_input")
  # /sys is read-only even for root; skip where it is not.
  skip_if(file.access("/sys", 2) == 0 && dir.exists("/sys") && isTRUE(tryCatch(file.create("/sys/.fedr-probe"), warning = function(w) FALSE)),
          "/sys is writable here")
  e <- caught(fed_save_state(state, "/sys/state.fedr"))
  expect_s3_class(e, "fedr_error")
  expect_identical(e$arg, "path")
  expect_match(conditionMessage(e), "^`path`: cannot write the checkpoint '/sys/state.fedr': Permission denied")
  expect_false(grepl(".fedr-", conditionMessage(e), fixed = TRUE))
})

test_that("plot() of an empty history says so", {
  skip_if_no_fedr()
  process <- tiny_process(seed = 1)
  history <- fed_fit(process, tiny_clients(2), rounds = 1, verbose = FALSE)
  empty <- history[0, ]
  e <- caught(plot(empty, engine = "base"))
  expect_s3_class(e, "fedr_error_input")
  expect_identical(e$arg, "x")
  expect_identical(conditionMessage(e), "`x` is an empty history (no round finished): there is nothing to plot.")
  skip_if_not_installed("ggplot2")
  expect_error(ggplot2::autoplot(empty), "^`object` is an empty history", class = "fedr_error_input")
})
