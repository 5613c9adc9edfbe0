# Data in: loading, splitting, and the conversions at the boundary.

test_that("fed_load_dataset() loads Fashion-MNIST and prints it", {
  skip_if_no_fedr()
  data <- fashion()
  expect_s3_class(data, "fed_dataset")
  expect_identical(data$train_shape, c(60000L, 28L, 28L))
  expect_identical(data$test_shape, c(10000L, 28L, 28L))
  expect_length(data$class_names, 10)
  expect_output(print(data), "<fed_dataset> fashion_mnist\n  train: 60000 images of 28 x 28; test: 10000\n  classes \\(10\\): T-shirt/top")
})

test_that("fed_load_dataset() errors name the argument or where fedr looked", {
  skip_if_no_fedr()
  expect_error(fed_load_dataset("mnist"), "`name` must be one of \"fashion_mnist\", \"kmnist\"", class = "fedr_error")
  expect_error(fed_load_dataset("fashion_mnist", path = 3), "`path` must be a single string", class = "fedr_error")
  empty <- withr::local_tempdir()
  err <- tryCatch(fed_load_dataset("kmnist", path = empty), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_match(conditionMessage(err), basename(empty), fixed = TRUE)
  expect_no_match(conditionMessage(err), "Traceback")
})

test_that("fed_split() splits a data set sequentially as the article does", {
  skip_if_no_fedr()
  clients <- fed_split(fashion(), n_clients = 10, batch_size = 100)
  expect_s3_class(clients, "fed_data")
  expect_length(clients, 10)
  expect_identical(clients$sizes, rep(6000L, 10))
  expect_identical(clients$batches, rep(60L, 10))
  expect_output(print(clients), "<fed_data> 10 clients, 60000 examples \\(6000 each\\), batch size 100")
  first <- fed_client(clients[2], 1)
  expect_identical(first$id, "client_1")
  expect_identical(dim(first$x), c(6000L, 784L))
  expect_true(all(first$x >= 0 & first$x <= 1))
  test <- fed_split(fashion(), n_clients = 10, split = "test")
  expect_identical(sum(test$sizes), 10000L)
})

test_that("random splits are seeded and dirichlet skews labels", {
  skip_if_no_fedr()
  x <- matrix(seq_len(400), ncol = 2)
  y <- rep(0:3, each = 50)
  a <- fed_split(x, n_clients = 4, method = "iid", seed = 7, labels = y)
  b <- fed_split(x, n_clients = 4, method = "iid", seed = 7, labels = y)
  expect_identical(fed_client(a, 3)$x, fed_client(b, 3)$x)
  skew <- fed_split(x, n_clients = 4, method = "dirichlet", seed = 1, alpha = 0.05, labels = y)
  expect_identical(sum(skew$sizes), 200L)
  classes <- vapply(seq_len(4), function(i) length(unique(fed_client(skew, i)$y)), integer(1))
  expect_lt(mean(classes), 4)
})

test_that("matrices cross the boundary as float32 rows, [i, j] intact", {
  skip_if_no_fedr()
  x <- matrix(c(1.5, 2.25, 3, 4, 5, 6.125), nrow = 3) # column-major in R
  clients <- fed_split(x, n_clients = 1, batch_size = 2, labels = c(2L, 0L, 1L))
  py_x <- reticulate::py_get_item(clients$py, 0L)$x
  expect_identical(reticulate::py_to_r(py_x$dtype$name), "float32")
  expect_true(reticulate::py_to_r(py_x$flags$c_contiguous))
  expect_identical(reticulate::py_to_r(py_x$shape), list(3L, 2L))
  back <- fed_client(clients, 1)
  expect_identical(back$x, x)
  expect_identical(back$y, c(2L, 0L, 1L))
  expect_identical(back$batch_sizes, c(2L, 1L))
  # float32 rounding is the one change.
  y <- matrix(c(0.1, 0.2), 1)
  expect_equal(fed_client(fed_split(y, 1, labels = 0), 1)$x, y, tolerance = 1e-7)
  expect_false(identical(fed_client(fed_split(y, 1, labels = 0), 1)$x, y))
})

test_that("arrays keep their shape and order; data frames take a label column", {
  skip_if_no_fedr()
  a <- array(as.numeric(1:24), dim = c(4, 2, 3))
  back <- fed_client(fed_split(a, n_clients = 2, labels = c(0, 1, 0, 1)), 2)
  # Each example is flattened in row-major order, as the article's reshape to 784.
  expect_identical(dim(back$x), c(2L, 6L))
  expect_identical(back$x, rbind(as.vector(t(a[3, , ])), as.vector(t(a[4, , ]))))
  df <- data.frame(f1 = c(0.5, 1, 2, 4), flag = c(TRUE, FALSE, TRUE, FALSE), label = c(1L, 1L, 0L, 2L))
  from_df <- fed_client(fed_split(df, n_clients = 1, labels = "label"), 1)
  expect_identical(from_df$x, unname(as.matrix(data.frame(f1 = df$f1, flag = as.numeric(df$flag)))))
  expect_identical(from_df$y, c(1L, 1L, 0L, 2L))
  f <- factor(c("cat", "dog", "cat", "eel"))
  expect_identical(fed_client(fed_split(matrix(1:8, 4), 1, labels = f), 1)$y, c(0L, 1L, 0L, 2L))
  ints <- fed_client(fed_split(matrix(1:6, 3), 1, labels = 0:2), 1)$x
  expect_identical(ints, matrix(as.numeric(1:6), 3))
})

test_that("fed_clients() makes one client per list element", {
  skip_if_no_fedr()
  a <- list(x = matrix(runif(20), 10), y = rep(0:1, 5))
  b <- list(x = matrix(runif(8), 4), y = c(1, 1, 0, 1))
  clients <- fed_clients(list(alice = a, b), batch_size = 3)
  expect_identical(clients$ids, c("alice", "client_1"))
  expect_identical(clients$sizes, c(10L, 4L))
  expect_identical(fed_client(clients, "alice")$batch_sizes, c(3L, 3L, 3L, 1L))
  expect_output(print(clients), "2 clients, 14 examples \\(4 to 10 per client\\), batch size 3")
  expect_identical(fed_client(clients[2], 1)$y, c(1L, 1L, 0L, 1L))
})

test_that("labels follow the core's one rule, with messages naming the R argument", {
  skip_if_no_fedr()
  x <- matrix(runif(20), 10)
  y <- rep(0:1, 5)
  check <- function(labels, message, arg = "labels") {
    err <- tryCatch(fed_split(x, 2, labels = labels), error = identity)
    expect_s3_class(err, "fedr_error")
    expect_identical(conditionMessage(err), message)
    expect_identical(err$arg, arg)
  }
  check(replace(y, 3, 0.5), "`labels` must hold whole-number labels; got non-integer floats")
  check(replace(y, 3, -1), "`labels` must hold non-negative labels; got -1.0")
  check(replace(y, 3, -1L), "`labels` must hold non-negative labels; got -1")
  check(y[-1], "`labels` must have one label per example (10); got 9")
  check(as.character(y), "`labels` must be integer labels; got dtype <U1")
  check(matrix(0, 10, 2), "`labels` must be 1-D labels; got shape (10, 2)")
  # A factor (level 1 is class 0) and a one-column matrix are converted in R first.
  expect_identical(fed_client(fed_split(x, 1, labels = factor(rep(c("b", "a"), 5))), 1)$y, rep(1:0, 5))
  expect_identical(fed_client(fed_split(x, 1, labels = matrix(y)), 1)$y, y)
  expect_error(
    fed_clients(list(list(x = x, y = y[1:3]))),
    "^`clients\\[\\[1\\]\\]\\$y` must have one label per example \\(10\\); got 3$",
    class = "fedr_error"
  )
  expect_error(
    fed_clients(list(a = list(x = x, y = y), b = list(x = x, y = -y))),
    "^`clients\\[\\[2\\]\\]\\$y` must hold non-negative labels; got -1$",
    class = "fedr_error"
  )
})

test_that("bad data is an R error naming the argument, before Python", {
  skip_if_no_fedr()
  x <- matrix(runif(20), 10)
  y <- rep(0:1, 5)
  bad_x <- x
  bad_x[4, 2] <- NA
  expect_error(fed_split(bad_x, 2, labels = y), "`data` must not contain NA.*element \\[4, 2\\]", class = "fedr_error")
  bad_x[4, 2] <- Inf
  expect_error(fed_split(bad_x, 2, labels = y), "`data` must not contain NA, NaN or infinite", class = "fedr_error")
  expect_error(fed_split(x, 2, labels = replace(y, 3, NA)), "^`labels` must not contain NA or NaN; element 3 is NA \\(1 in all\\)\\.$", class = "fedr_error")
  expect_error(fed_split(x, 2), "`labels` must be given", class = "fedr_error")
  expect_error(fed_split(x, 11, labels = y), "`n_clients` \\(11\\) must not exceed the number of examples \\(10\\)", class = "fedr_error")
  expect_error(fed_split(x, 0, labels = y), "`n_clients` must be a positive integer", class = "fedr_error")
  expect_error(fed_split(x, 2, method = "random", labels = y), "`method` must be one of", class = "fedr_error")
  expect_error(fed_split(x, 2, batch_size = 2.5, labels = y), "`batch_size` must be a positive integer", class = "fedr_error")
  expect_error(fed_split(x, 2, seed = -1, labels = y), "`seed` must be an integer >= 0", class = "fedr_error")
  expect_error(fed_split(x, 2, method = "dirichlet", alpha = 0, labels = y), "`alpha`", class = "fedr_error")
  expect_error(fed_split(x, 2, split = "validation", labels = y), "`split` must be one of", class = "fedr_error")
  expect_error(fed_split(fashion(), 2, labels = 1:2), "`labels` is for features", class = "fedr_error")
  expect_error(fed_split(letters, 2, labels = 1:26), "`data` must be a fed_dataset", class = "fedr_error")
  expect_error(fed_split(matrix(letters, 13), 2, labels = 1:13), "`data` must be a fed_dataset", class = "fedr_error")
  expect_error(fed_split(data.frame(a = letters), 2, labels = 1:26), "`data` must have numeric columns only; column `a`", class = "fedr_error")
  expect_error(fed_split(data.frame(a = 1:3), 1, labels = "lab"), "no column \"lab\"", class = "fedr_error")
  expect_error(fed_clients(list()), "`clients` must be a non-empty list", class = "fedr_error")
  expect_error(fed_clients(list(list(x = x))), "`clients\\[\\[1\\]\\]` must be a list with elements `x` and `y`", class = "fedr_error")
  clients <- fed_split(x, 2, labels = y)
  expect_error(clients[3], "select among the 2 clients", class = "fedr_error")
  expect_error(fed_client(clients, 3), "`client` must be at most 2", class = "fedr_error")
  expect_error(fed_client(clients, "nobody"), "`client` must be one of", class = "fedr_error")
  expect_error(fed_client(x, 1), "`data` must be a fed_data object", class = "fedr_error")
})
