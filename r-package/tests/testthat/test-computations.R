# The article's building blocks: typed computations and federated operators.

local_average_fn <- function(temperatures) {
  tf <- reticulate::import("tensorflow")
  sum_and_count <- temperatures$reduce(
    tuple(0, 0), function(acc, x) tuple(acc[[1]] + x, acc[[2]] + 1)
  )
  sum_and_count[[1]] / tf$cast(sum_and_count[[2]], tf$float32)
}

test_that("types print in TFF's notation", {
  skip_if_no_fedr()
  expect_output(print(sequence_type("float32")), "<fed_type> float32\\*")
  expect_identical(format(federated_type(sequence_type("float32"), "clients")), "{float32*}@CLIENTS")
  expect_identical(format(federated_type("float32", "server")), "float32@SERVER")
  expect_identical(format(tensor_type("float32", c(NA, 784))), "float32[?,784]")
})

test_that("the Python types check their arguments; errors name the R argument", {
  skip_if_no_fedr()
  dtypes <- "\\['bool', 'float16', 'float32', 'float64', 'int16', 'int32', 'int64', 'int8', 'uint8'\\]"
  expect_error(sequence_type("float33"), paste0("^`dtype`: expected one of ", dtypes, ", got 'float33'$"), class = "fedr_error")
  expect_error(federated_type("float33"), "^`member`: expected one of .*, got 'float33'$", class = "fedr_error")
  expect_error(federated_type(sequence_type(), "everywhere"),
    "^`placement`: expected CLIENTS, SERVER, 'clients' or 'server', got 'everywhere'$",
    class = "fedr_error"
  )
  expect_error(tensor_type("float32", -1), "^`shape`: expected non-negative whole numbers or None \\(unknown\\), got \\[-1.0\\]$", class = "fedr_error")
  expect_error(tensor_type("float32", 2.5), "^`shape`: .*got \\[2.5\\]$", class = "fedr_error")
  err <- tryCatch(sequence_type("float33"), error = identity)
  expect_identical(err$arg, "dtype")
  expect_identical(err$python_type, "TypeError")
  expect_identical(format(federated_type("int32")), "{int32}@CLIENTS")
})

test_that("the local average of c(1, 2, 3) is 2, as in the article", {
  skip_if_no_fedr()
  local_average <- tf_computation(local_average_fn, sequence_type("float32"))
  expect_s3_class(local_average, "fed_computation")
  expect_output(print(local_average), "<tf_computation> \\(float32\\*\\)")
  expect_identical(local_average(c(1, 2, 3)), 2)
  expect_identical(local_average(list(1, 2, 3)), 2)
  # A length-1 vector is still a sequence, not a scalar.
  expect_identical(local_average(13), 13)
  expect_equal(local_average(c(0.5, 1.5, 2.5, 3.5)), 2)
})

test_that("the federated mean of the client averages of list(c(1, 1, 1), 13) is 7", {
  skip_if_no_fedr()
  local_average <- tf_computation(local_average_fn, sequence_type("float32"))
  global_average <- federated_computation(function(readings) {
    federated_mean(federated_map(local_average, readings))
  }, federated_type(sequence_type("float32"), "clients"))
  expect_output(print(global_average), "<federated_computation> \\(\\{float32\\*\\}@CLIENTS\\)")
  expect_identical(global_average(list(c(1, 1, 1), 13)), 7)
  expect_identical(global_average(list(list(1, 1, 1), list(13))), 7)
  # Weighted by example counts instead, the mean is (1 + 1 + 1 + 13) / 4.
  weighted <- federated_computation(function(readings) {
    counts <- federated_map(function(ds) ds$reduce(0, function(n, x) n + 1), readings)
    federated_mean(federated_map(local_average, readings), weight = counts)
  }, federated_type(sequence_type("float32"), "clients"))
  expect_equal(weighted(list(c(1, 1, 1), 13)), 4)
})

test_that("federated operators work on R lists outside computations", {
  skip_if_no_fedr()
  expect_output(print(federated_mean(list(1, 2, 6))), "<fed_value @SERVER> 3")
  expect_equal(as.list(federated_mean(list(1, 2, 6), weight = c(1, 1, 2)))[[1]], 3.75)
  expect_equal(as.list(federated_sum(list(1, 2, 6)))[[1]], 9)
  expect_equal(as.list(federated_mean(list(c(1, 2), c(3, 4))))[[1]], c(2, 3))
  expect_output(print(federated_broadcast(3)), "<fed_value @CLIENTS> 3")
  squares <- federated_map(function(x) x * x, list(1, 2, 3))
  expect_output(print(squares), "@CLIENTS> 3 members: 1, 4, 9")
  expect_identical(unlist(as.list(squares)), c(1, 4, 9))
  per_client <- federated_computation(function(v) federated_map(function(x) x + 1, v), federated_type("float32"))
  expect_identical(per_client(c(1, 2)), c(2, 3))
})

test_that("TensorFlow tensors have arithmetic in R", {
  skip_if_no_fedr()
  tf <- reticulate::import("tensorflow")
  a <- tf$constant(6, dtype = tf$float32)
  expect_equal(as.numeric((a + 1)$numpy()), 7)
  expect_equal(as.numeric((a / 4)$numpy()), 1.5)
  expect_equal(as.numeric((2 * a - 1)$numpy()), 11)
  expect_equal(as.numeric((-a)$numpy()), -6)
  expect_equal(as.numeric((a^2)$numpy()), 36)
})

test_that("values that do not fit the type are R errors naming the argument", {
  skip_if_no_fedr()
  local_average <- tf_computation(local_average_fn, sequence_type("float32"))
  global_average <- federated_computation(function(readings) {
    federated_mean(federated_map(local_average, readings))
  }, federated_type(sequence_type("float32"), "clients"))
  # NA has no Python counterpart: R refuses it, naming the argument and the element.
  expect_error(local_average(c(1, NA)), "^`temperatures` must not contain NA or NaN; element 2 is NA \\(1 in all\\)\\.$", class = "fedr_error")
  expect_error(local_average(c(1, NaN)), "`temperatures` must not contain NA or NaN; element 2 is NaN", class = "fedr_error")
  expect_error(global_average(list(1, NA)), "^`readings\\[\\[2\\]\\]` must not contain NA or NaN; element 1 is NA", class = "fedr_error")
  # The rest is the Python type's check, named after the R argument; clients count from 1.
  expect_error(local_average("a"), "^`temperatures`: expected float32\\*, got str$", class = "fedr_error")
  expect_error(local_average(list(1, "a")), "^`temperatures`: expected float32\\*, got list\\[float\\|str\\]$", class = "fedr_error")
  expect_error(global_average(list(c(1, 2), "a")), "^`readings`: client 2: expected float32\\*, got str$", class = "fedr_error")
  expect_error(global_average(c(1, 2)), "^`readings`: client 1: expected float32\\*, got float$", class = "fedr_error")
  expect_error(global_average("a"), "^`readings`: expected \\{float32\\*\\}@CLIENTS, got str$", class = "fedr_error")
  err <- tryCatch(global_average(list(c(1, 2), "a")), error = identity)
  expect_identical(err$arg, "readings")
  expect_identical(err$python_type, "TypeError")
  expect_error(local_average(), "`temperatures` is missing", class = "fedr_error")
  expect_error(tf_computation("not a function", sequence_type()), "`fn` must be a function", class = "fedr_error")
  expect_error(tf_computation(identity, "float32"), "^`type`: expected TensorType, SequenceType or FederatedType, got str$", class = "fedr_error")
  expect_error(
    tf_computation(identity, federated_type(sequence_type("float32"), "clients")),
    "^`type`: a tf_computation takes a non-federated type, got \\{float32\\*\\}@CLIENTS$",
    class = "fedr_error"
  )
  expect_error(federated_mean("a"), "^`value`: expected a federated value or a list of client values, got str$", class = "fedr_error")
  expect_error(federated_mean(list(c(1, 2), 3)), "^`value`: client values differ in shape", class = "fedr_error")
})

test_that("weights are checked once, by the core's rules, and errors name `weight`", {
  skip_if_no_fedr()
  expect_error(federated_mean(list(1, 2), weight = c(1, NA)), "^`weight` must not contain NA or NaN; element 2 is NA", class = "fedr_error")
  expect_error(federated_mean(list(1, 2), weight = c(1, -1)), "^`weight`: weights\\[1\\] is -1.0; weights must be non-negative$", class = "fedr_error")
  expect_error(federated_mean(list(1, 2), weight = c(1, Inf)), "^`weight`: weights\\[1\\] is inf; weights must be finite$", class = "fedr_error")
  expect_error(federated_mean(list(1, 2), weight = c(0, 0)), "^`weight`: weights sum to 0.0; the total weight must be positive and finite$", class = "fedr_error")
  expect_error(federated_mean(list(1, 2), weight = c(1, 2, 3)), "^`weight`: weights has 3 entries", class = "fedr_error")
  err <- tryCatch(federated_mean(list(1, 2), weight = c(1, -1)), error = identity)
  expect_identical(err$arg, "weight")
  expect_identical(err$python_type, "ValueError")
  expect_equal(as.list(federated_mean(list(1, 2), weight = c(0, 1)))[[1]], 2)
})

test_that("Python errors arrive as fedr_error with the Python message, no traceback", {
  skip_if_no_fedr()
  # An error of the computation itself (not of its argument) names no argument.
  broken <- tf_computation(function(x) x$no_such_method(), sequence_type("float32"))
  err <- tryCatch(broken(c(1, 2)), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_null(err$arg)
  expect_match(conditionMessage(err), "AttributeError: .* has no attribute 'no_such_method'")
  expect_no_match(conditionMessage(err), "Traceback|File \"")
  err <- tryCatch(federated_map(function(x) stop("boom"), list(1)), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_null(err$arg)
  expect_match(conditionMessage(err), "boom")
})

test_that("fedr_python() gives the module for the article's $-style code", {
  skip_if_no_fedr()
  tff <- fedr_python()
  expect_s3_class(tff, "python.builtin.module")
  tf <- reticulate::import("tensorflow")
  get_local_temperature_average <- tff$tf_computation(local_average_fn, tff$SequenceType(tf$float32))
  expect_identical(get_local_temperature_average(list(1, 2, 3)), 2)
  get_global_temperature_average <- tff$federated_computation(function(sensor_readings) {
    tff$federated_mean(tff$federated_map(get_local_temperature_average, sensor_readings))
  }, tff$FederatedType(tff$SequenceType(tf$float32), tff$CLIENTS))
  expect_identical(get_global_temperature_average(list(list(1, 1, 1), list(13))), 7)
  # fedr's R objects pass into $-style calls as their Python values.
  expect_identical(tff$tf_computation(local_average_fn, sequence_type("float32"))(list(4, 6)), 5)
})
