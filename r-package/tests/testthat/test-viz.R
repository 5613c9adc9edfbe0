# Seeing the data: images as R arrays, image grids, labels over clients.

# Draw `expr` into a PNG file and return the file's size in bytes.
png_size <- function(expr, width = 800, height = 600) {
  file <- withr::local_tempfile(fileext = ".png")
  grDevices::png(file, width = width, height = height)
  tryCatch(force(expr), finally = grDevices::dev.off())
  file.size(file)
}

test_that("as.array() gives the images as an R integer array, as in Python", {
  skip_if_no_fedr()
  data <- fashion()
  train <- as.array(data)
  expect_type(train, "integer")
  expect_identical(dim(train), c(60000L, 28L, 28L))
  expect_identical(range(train), c(0L, 255L))
  test <- as.array(data, split = "test")
  expect_identical(dim(test), c(10000L, 28L, 28L))
  # Pixels where the image differs from its transpose: [i, r, c] is Python's
  # x[i - 1, r - 1, c - 1], row r and column c of the image.
  x_train <- data$py$x_train
  pixel <- function(i, r, c) reticulate::py_to_r(x_train$item(as.integer(i - 1), as.integer(r - 1), as.integer(c - 1)))
  expect_identical(train[1, 5, 15], pixel(1, 5, 15))
  expect_identical(train[1, 5, 15], 36L)
  img <- train[1, , ]
  asym <- which(img != t(img), arr.ind = TRUE)[1:5, , drop = FALSE]
  for (j in seq_len(nrow(asym))) {
    r <- asym[j, 1]
    c <- asym[j, 2]
    expect_identical(train[1, r, c], pixel(1, r, c))
  }
  expect_identical(test[10000, 14, 20], reticulate::py_to_r(data$py$x_test$item(9999L, 13L, 19L)))
  # Labels and class names come along.
  expect_identical(attr(train, "labels"), as.integer(reticulate::py_to_r(data$py$y_train)))
  expect_identical(attr(test, "labels"), as.integer(reticulate::py_to_r(data$py$y_test)))
  expect_identical(attr(train, "labels")[1:5], c(9L, 0L, 0L, 3L, 0L))
  expect_identical(attr(train, "class_names"), data$class_names)
  expect_identical(as.vector(table(attr(test, "labels"))), rep(1000L, 10))
})

test_that("plot() of a fed_dataset draws a grid of upright, titled images", {
  skip_if_no_fedr()
  data <- fashion()
  size <- png_size(expect_invisible(plot(data)))
  expect_gt(size, 1000)
  expect_gt(png_size(expect_identical(plot(data, n = 1), data)), 1000)
  expect_gt(png_size(plot(data, n = 5, split = "test")), 1000)
  # image() draws z[i, j] at x = i, y = j (y up): row 1 of the image is the
  # top line, column 1 the left, so the image is neither transposed nor flipped.
  img <- matrix(1:6, nrow = 2, byrow = TRUE) # rows (1 2 3) over (4 5 6)
  z <- fedr:::image_z(img)
  expect_identical(dim(z), c(3L, 2L))
  expect_identical(z[, 2], c(1L, 2L, 3L)) # top line, left to right
  expect_identical(z[, 1], c(4L, 5L, 6L))
})

test_that("plot() of a fed_dataset checks its arguments", {
  skip_if_no_fedr()
  data <- fashion()
  for (bad in list(0, 1.5, "a", c(1, 2), NA)) {
    err <- tryCatch(plot(data, n = bad), error = identity)
    expect_s3_class(err, "fedr_error")
    expect_identical(err$arg, "n")
  }
  expect_error(plot(data, n = 10001, split = "test"), "`n` must be at most 10000", class = "fedr_error")
  err <- tryCatch(plot(data, split = "valid"), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_identical(err$arg, "split")
  expect_match(conditionMessage(err), "`split` must be one of \"train\", \"test\", not \"valid\".", fixed = TRUE)
  err <- tryCatch(as.array(data, split = 2), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_identical(err$arg, "split")
  expect_error(as.array(data, split = character()), "`split` must be a single string", class = "fedr_error")
})

test_that("fed_label_distribution() counts each client's labels", {
  skip_if_no_fedr()
  data <- fashion()
  clients <- fed_split(data, n_clients = 10)
  dist <- fed_label_distribution(clients, class_names = data)
  expect_s3_class(dist, c("fed_label_distribution", "data.frame"), exact = TRUE)
  expect_named(dist, c("client", "label", "class", "count"))
  expect_identical(nrow(dist), 100L)
  expect_identical(levels(dist$client), clients$ids)
  expect_identical(dist$label, rep(0:9, 10))
  expect_identical(levels(dist$class), data$class_names)
  expect_type(dist$count, "integer")
  # The sequential split gives client k images 6000 (k - 1) + 1 to 6000 k.
  labels <- attr(as.array(data), "labels")
  expected <- t(vapply(seq_len(10), function(k) {
    as.vector(table(factor(labels[(k - 1) * 6000 + seq_len(6000)], levels = 0:9)))
  }, integer(10)))
  m <- attr(dist, "matrix")
  expect_identical(unname(m), expected)
  expect_identical(dimnames(m), list(client = clients$ids, class = data$class_names))
  expect_identical(as.matrix(dist), m)
  expect_identical(dist$count[dist$client == "client_3"], expected[4, ])
  expect_identical(as.vector(tapply(dist$count, dist$client, sum)), clients$sizes)
  expect_identical(class(as.data.frame(dist)), "data.frame")
  # Without class names, classes are named by their ids.
  plain <- fed_label_distribution(clients)
  expect_identical(levels(plain$class), as.character(0:9))
  expect_identical(plain$count, dist$count)
})

test_that("a Dirichlet split's label skew shows in counts, print and plot", {
  skip_if_no_fedr()
  data <- fashion()
  clients <- fed_split(data, 10, method = "dirichlet", seed = 1)
  dist <- fed_label_distribution(clients, class_names = data$class_names)
  m <- as.matrix(dist)
  expect_identical(as.integer(rowSums(m)), clients$sizes)
  expect_identical(sum(m), 60000L)
  expect_identical(as.integer(colSums(m)), as.vector(table(attr(as.array(data), "labels"))))
  # Skewed: clients' class shares differ far more than an IID split's.
  share <- m / rowSums(m)
  expect_gt(max(apply(share, 2, sd)), 0.1)
  # Counts per client match the client's own labels.
  y3 <- fed_client(clients, 3)$y
  expect_identical(unname(m[3, ]), as.vector(table(factor(y3, levels = 0:9))))
  expect_gt(png_size(expect_invisible(plot(dist))), 1000)
  expect_gt(png_size(plot(dist, proportion = TRUE)), 1000)
  lines <- format(dist)
  expect_match(lines[[1]], "^<fed_label_distribution> 10 clients, 10 classes, 60000 examples$")
  expect_length(lines, 12L + 2L) # header, column names, 10 clients, class legend
  expect_match(lines[[13]], "^  classes: 0 T-shirt/top, 1 Trouser")
  expect_true(all(nchar(lines) <= 80L))
  expect_output(expect_invisible(print(dist)), "client_9", fixed = TRUE)
})

test_that("print() of a label distribution is compact", {
  skip_if_no_fedr()
  data <- fashion()
  dist <- fed_label_distribution(fed_split(data, n_clients = 10), class_names = data)
  expect_snapshot(print(dist))
  many <- fed_label_distribution(fed_split(data, n_clients = 40, split = "test"))
  expect_snapshot(print(many, n = 3))
})

test_that("fed_label_distribution() errors name the argument", {
  skip_if_no_fedr()
  data <- fashion()
  clients <- fed_split(data, n_clients = 2, split = "test")
  for (bad in list(data, NULL, list(1, 2), matrix(1:4, 2))) {
    err <- tryCatch(fed_label_distribution(bad), error = identity)
    expect_s3_class(err, "fedr_error")
    expect_identical(err$arg, "clients")
    expect_match(conditionMessage(err), "`clients` must be a fed_data object", fixed = TRUE)
  }
  for (bad in list(1:10, character(), c("a", NA), c("a", "a"))) {
    err <- tryCatch(fed_label_distribution(clients, class_names = bad), error = identity)
    expect_s3_class(err, "fedr_error")
    expect_identical(err$arg, "class_names")
  }
  # Fewer class names than labels: Python's check, reported against the R argument.
  err <- tryCatch(fed_label_distribution(clients, class_names = c("a", "b")), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_identical(err$arg, "class_names")
  expect_match(conditionMessage(err), "`class_names`", fixed = TRUE)
  err <- tryCatch(plot(fed_label_distribution(clients), proportion = "yes"), error = identity)
  expect_s3_class(err, "fedr_error")
  expect_identical(err$arg, "proportion")
})
