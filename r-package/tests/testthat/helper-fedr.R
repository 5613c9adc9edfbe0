# Skip a test when the fedr Python core is absent, saying why; with
# FEDR_REQUIRE_PYTHON=1 (as CI and `make test-r` set) that is a failure.
skip_if_no_fedr <- function() {
  ok <- fedr_available()
  if (isTRUE(ok)) {
    return(invisible(TRUE))
  }
  reason <- paste("the fedr Python core is not available:", attr(ok, "reason"))
  if (identical(Sys.getenv("FEDR_REQUIRE_PYTHON"), "1")) {
    stop(reason, " (FEDR_REQUIRE_PYTHON=1 requires it)", call. = FALSE)
  }
  testthat::skip(reason)
}

# Fashion-MNIST, read once per test run.
fashion <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) cache <<- fed_load_dataset("fashion_mnist")
    cache
  }
})

# The reference model: one dense softmax layer of 10 units, zero-initialised.
keras_model_fn <- function(input = 784L) {
  keras <- reticulate::import("keras")
  function() {
    keras$Sequential(list(
      keras$Input(shape = list(as.integer(input))),
      keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
    ))
  }
}

# A small split: 3 clients of 200 Fashion-MNIST training images, batches of 100.
small_clients <- function() fed_split(fashion(), n_clients = 300)[1:3]
