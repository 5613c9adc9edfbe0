# Argument checks and error conversion: pure R, no Python needed.

test_that("fedr_abort() signals a fedr_error naming the argument", {
  err <- tryCatch(fedr:::fedr_abort("`rounds` is bad.", "rounds"), error = identity)
  expect_s3_class(err, c("fedr_error", "error", "condition"))
  expect_identical(err$arg, "rounds")
  expect_identical(conditionMessage(err), "`rounds` is bad.")
})

test_that("condition classes: input for arguments and data, python for the core", {
  # An R-side check: fedr_error_input, naming the argument.
  err <- tryCatch(fedr:::as_integer(0, "rounds"), error = identity)
  expect_identical(class(err), c("fedr_error_input", "fedr_error", "error", "condition"))
  expect_identical(err$arg, "rounds")
  expect_null(err$python_type)
  caught <- tryCatch(fed_load_dataset("mnist"), fedr_error_input = function(e) e$arg)
  expect_identical(caught, "name")
  # Without an argument or a Python type: plain fedr_error; `class` forces one.
  plain <- tryCatch(fedr:::fedr_abort("odd"), error = identity)
  expect_identical(class(plain), c("fedr_error", "error", "condition"))
  expect_null(plain$arg)
  forced <- tryCatch(fedr:::fedr_abort("no core", class = "fedr_error_python"), error = identity)
  expect_identical(class(forced), c("fedr_error_python", "fedr_error", "error", "condition"))
  # The class follows the Python type.
  cls <- fedr:::fedr_error_class
  expect_identical(cls(NULL, "ValueError"), c("fedr_error_input", "fedr_error", "error", "condition"))
  expect_identical(cls("x", "TypeError")[[1]], "fedr_error_input")
  expect_identical(cls("x", "RuntimeError")[[1]], "fedr_error_python")
  expect_identical(cls(NULL, NA_character_)[[1]], "fedr_error_python")
})

test_that("Python errors through fedr_call() get fedr_error_input or fedr_error_python", {
  skip_if_no_fedr()
  raise <- function(code) reticulate::py_run_string(code, local = TRUE)
  # A Python ValueError, with and without an R argument to name.
  err <- tryCatch(fedr:::fedr_call(raise("raise ValueError('must be positive')"), arg = "rounds"), error = identity)
  expect_identical(class(err), c("fedr_error_input", "fedr_error", "error", "condition"))
  expect_identical(err$arg, "rounds")
  expect_identical(err$python_type, "ValueError")
  expect_identical(conditionMessage(err), "`rounds`: must be positive")
  err <- tryCatch(fedr:::fedr_call(raise("raise TypeError('expected float32')")), error = identity)
  expect_identical(class(err), c("fedr_error_input", "fedr_error", "error", "condition"))
  expect_null(err$arg)
  # fedr's own FedValueError is a ValueError.
  err <- tryCatch(fedr:::fedr_call(raise("from fedr.errors import FedValueError\nraise FedValueError('client_3: has no examples')")), error = identity)
  expect_identical(class(err), c("fedr_error_input", "fedr_error", "error", "condition"))
  expect_identical(err$python_type, "ValueError")
  # Any other Python exception: fedr_error_python, `arg` still carried.
  err <- tryCatch(fedr:::fedr_call(raise("raise RuntimeError('the core broke')")), error = identity)
  expect_identical(class(err), c("fedr_error_python", "fedr_error", "error", "condition"))
  expect_null(err$arg)
  expect_identical(err$python_type, "RuntimeError")
  expect_identical(conditionMessage(err), "RuntimeError: the core broke")
  err <- tryCatch(fedr:::fedr_call(raise("raise KeyError('w')"), arg = "weights"), error = identity)
  expect_identical(class(err), c("fedr_error_python", "fedr_error", "error", "condition"))
  expect_identical(err$arg, "weights")
  # A real core call: a bad value from R comes back as fedr_error_input.
  caught <- tryCatch(
    fedr:::as_py_labels(c(0, 1.5), 2L, "y"),
    fedr_error_python = function(e) "python",
    fedr_error_input = function(e) e$arg
  )
  expect_identical(caught, "y")
})

test_that("as_integer() accepts whole numbers and names the argument otherwise", {
  expect_identical(fedr:::as_integer(3, "rounds"), 3L)
  expect_identical(fedr:::as_integer(0, "seed", min = 0L), 0L)
  for (bad in list(0, -1, 2.5, NA, NA_integer_, Inf, "3", c(1, 2), NULL, TRUE)) {
    expect_error(fedr:::as_integer(bad, "rounds"), "`rounds` must be a positive integer", class = "fedr_error")
  }
})

test_that("as_number() bounds and rejects NA and NaN", {
  expect_identical(fedr:::as_number(0.5, "alpha", min = 0, min_inclusive = FALSE), 0.5)
  expect_error(fedr:::as_number(0, "alpha", min = 0, min_inclusive = FALSE), "`alpha`.*> 0", class = "fedr_error")
  expect_error(fedr:::as_number(NaN, "alpha"), "`alpha`", class = "fedr_error")
  expect_error(fedr:::as_number(NA_real_, "alpha"), "`alpha`", class = "fedr_error")
})

test_that("check_string() and check_flag() name the argument and the choices", {
  expect_identical(fedr:::check_string("iid", "method", c("sequential", "iid")), "iid")
  expect_error(fedr:::check_string("random", "method", c("sequential", "iid")),
    "`method` must be one of \"sequential\", \"iid\", not \"random\"",
    class = "fedr_error"
  )
  expect_error(fedr:::check_string(NA_character_, "name"), "`name` must be a single string", class = "fedr_error")
  expect_error(fedr:::check_flag(NA, "verbose"), "`verbose` must be TRUE or FALSE", class = "fedr_error")
})

test_that("check_finite() points at the first NA, NaN or Inf", {
  m <- matrix(1, 3, 2)
  m[2, 2] <- NaN
  expect_error(fedr:::check_finite(m, "x"), "element \\[2, 2\\] is NaN \\(1 in all\\)", class = "fedr_error")
  expect_error(fedr:::check_finite(c(1, NA, Inf), "y"), "element 2 is NA \\(2 in all\\)", class = "fedr_error")
})

test_that("check_na() refuses only NA and NaN, which Python cannot receive", {
  expect_identical(fedr:::check_na(c(1, Inf, -Inf), "weight"), c(1, Inf, -Inf))
  expect_error(fedr:::check_na(c(1L, NA_integer_), "y"), "^`y` must not contain NA or NaN; element 2 is NA \\(1 in all\\)\\.$", class = "fedr_error")
  expect_error(fedr:::check_na(c(NaN, 1), "x"), "^`x` must not contain NA or NaN; element 1 is NaN", class = "fedr_error")
})

test_that("fedr_call()'s `arg` names the R argument in the Python message", {
  parsed <- function(value) list(type = "TypeError", value = value, message = paste0("TypeError: ", value))
  name <- fedr:::name_argument
  # One argument: the message is about it.
  expect_identical(name(parsed("expected float32*, got str"), "temperatures"), list(message = "`temperatures`: expected float32*, got str", arg = "temperatures"))
  # Python's "name: " or "`name`" prefix says which; names() map Python names to R's.
  expect_identical(name(parsed("weight: weights sum to 0.0"), c("value", "weight")), list(message = "`weight`: weights sum to 0.0", arg = "weight"))
  expect_identical(name(parsed("type_spec: expected TensorType"), c(type_spec = "type")), list(message = "`type`: expected TensorType", arg = "type"))
  expect_identical(name(parsed("`labels` must hold whole-number labels"), "labels"), list(message = "`labels` must hold whole-number labels", arg = "labels"))
  # Several candidates and none named: the Python message as it is.
  expect_identical(name(parsed("boom"), c("value", "fn")), list(message = "TypeError: boom", arg = NULL))
  expect_identical(name(parsed("boom"), NULL), list(message = "TypeError: boom", arg = NULL))
})

test_that("python_error() keeps the Python message and drops tracebacks", {
  fake <- simpleError("ValueError: client 'client_3': has no examples\n\nDetailed traceback:\n  File \"x.py\", line 1")
  parsed <- fedr:::python_error(fake)
  expect_identical(parsed$message, "ValueError: client 'client_3': has no examples")
  fed <- fedr:::python_error(simpleError("fedr.errors.FedTypeError: expected float32*, got str"))
  expect_identical(fed$message, "TypeError: expected float32*, got str")
  tf <- fedr:::python_error(simpleError(paste0(
    "ValueError: in user code:\n\n    File \"client.py\", line 88, in _batches  *\n",
    "        for i in tf.range(n):\n\n    ValueError: shapes differ\n"
  )))
  expect_identical(tf$message, "ValueError: shapes differ")
  plain <- fedr:::python_error(simpleError("something odd"))
  expect_identical(plain$message, "something odd")
})

test_that("fedr_find_python() honours the option, FEDR_PYTHON, RETICULATE_PYTHON, then .venv", {
  root <- withr::local_tempdir()
  dir.create(file.path(root, ".venv", "bin"), recursive = TRUE)
  file.create(file.path(root, ".venv", "bin", "python"))
  deep <- file.path(root, "a", "b")
  dir.create(deep, recursive = TRUE)
  withr::local_envvar(FEDR_PYTHON = NA, RETICULATE_PYTHON = NA)
  withr::local_options(fedr.python = NULL)
  expect_identical(
    normalizePath(fedr:::fedr_find_python(deep)),
    normalizePath(file.path(root, ".venv", "bin", "python"))
  )
  withr::local_envvar(RETICULATE_PYTHON = "/opt/reticulate/python")
  expect_identical(fedr:::fedr_find_python(deep), "/opt/reticulate/python")
  withr::local_envvar(FEDR_PYTHON = "/opt/fedr/python")
  expect_identical(fedr:::fedr_find_python(deep), "/opt/fedr/python")
  withr::local_options(fedr.python = "/opt/option/python")
  expect_identical(fedr:::fedr_find_python(deep), "/opt/option/python")
})

test_that("the install hint names `make setup`", {
  expect_match(fedr:::fedr_missing_message("no module"), "no module.*make setup")
})

test_that("library(fedr) does not start Python", {
  rscript <- file.path(R.home("bin"), "Rscript")
  code <- sprintf(
    ".libPaths(c(%s)); library(fedr); cat(reticulate::py_available(initialize = FALSE))",
    paste0("'", .libPaths(), "'", collapse = ", ")
  )
  out <- system2(rscript, c("--vanilla", "-e", shQuote(code)), stdout = TRUE, stderr = FALSE)
  expect_identical(utils::tail(out, 1), "FALSE")
})
