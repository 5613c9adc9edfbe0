# Gradient leakage from R: the image comes back without a defence, not under DP.

leakage <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      path <- tempfile(fileext = ".png")
      cache <<- fed_gradient_leakage(path = path, seed = 0)
    }
    cache
  }
})

score <- function(scores, model, attack, defence, metric = "ncc") {
  scores[scores$model == model & scores$attack == attack & scores$defence == defence, metric]
}

test_that("fed_gradient_leakage() recovers the image with no defence and not under DP", {
  skip_if_no_fedr()
  scores <- leakage()
  expect_s3_class(scores, "data.frame")
  expect_named(scores, c("model", "attack", "defence", "ncc", "ssim", "mse", "best_ncc", "best_client",
                         "label", "seconds"))
  expect_identical(nrow(scores), 8L)
  expect_setequal(unique(scores$defence), c("none", "secure_aggregation", "differential_privacy"))
  # No defence: exact (analytic) and by gradient matching (DLG), measured 1.000 both.
  expect_gt(score(scores, "reference", "analytic", "none"), 0.9999)
  expect_lt(score(scores, "reference", "analytic", "none", "mse"), 1e-8)
  expect_gt(score(scores, "mlp", "dlg", "none"), 0.99)
  expect_identical(score(scores, "mlp", "dlg", "none", "label"), 9L) # an ankle boot, inferred (iDLG)
  expect_identical(score(scores, "reference", "analytic", "none", "label"), NA_integer_)
  # Secure aggregation: a blend (measured -0.029 and 0.137) that resembles
  # another client (client 3, trousers: 0.976), while the target's class
  # column still shows the target (0.782).
  expect_lt(score(scores, "reference", "analytic", "secure_aggregation"), 0.3)
  expect_lt(score(scores, "mlp", "dlg", "secure_aggregation"), 0.4)
  expect_gt(score(scores, "reference", "analytic", "secure_aggregation", "best_ncc"), 0.8)
  expect_identical(score(scores, "reference", "analytic", "secure_aggregation", "best_client"), 3L)
  expect_gt(score(scores, "reference", "class_column", "secure_aggregation"), 0.6)
  # Differential privacy (z = 1, C = 0.5, 10 clients): noise (measured -0.018, 0.021, -0.005).
  dp <- scores[scores$defence == "differential_privacy", ]
  expect_true(all(abs(dp$ncc) < 0.15))
  expect_true(all(dp$ssim < 0.15))
  settings <- attr(scores, "settings")
  expect_identical(settings$target, 1L)
  expect_identical(settings$clip, 0.5)
  expect_identical(settings$noise_multiplier, 1)
})

test_that("fed_gradient_leakage() writes a PNG of the original and recovered images", {
  skip_if_no_fedr()
  path <- attr(leakage(), "path")
  expect_true(file.exists(path))
  bytes <- readBin(path, "raw", n = file.size(path))
  expect_identical(bytes[1:8], as.raw(c(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)))
  expect_identical(rawToChar(bytes[13:16]), "IHDR")
  size <- function(at) sum(as.integer(bytes[at:(at + 3)]) * 256^(3:0))
  expect_identical(c(size(17), size(21)), c(4 + 10 * 88, 4 + 3 * 88)) # width, height
  expect_identical(rawToChar(bytes[length(bytes) - 7:4]), "IEND")
})

test_that("fed_gradient_leakage() takes R images as a matrix or an array, and checks its arguments", {
  skip_if_no_fedr()
  client <- fed_client(fed_split(fashion(), n_clients = 20000, method = "sequential"), 1)
  x <- client$x
  expect_identical(dim(x), c(3L, 784L))
  a <- fed_gradient_leakage(x, client$y, path = NULL, target = 2, clients_per_round = 3, max_iter = 30)
  expect_null(attr(a, "path"))
  expect_gt(a$ncc[a$model == "reference" & a$defence == "none"], 0.9999)
  # n x 28 x 28, each image's pixels in rows as displayed: the same images.
  images <- array(0, c(3L, 28L, 28L))
  for (i in 1:3) images[i, , ] <- matrix(x[i, ], 28L, 28L, byrow = TRUE)
  b <- fed_gradient_leakage(images, client$y, path = NULL, target = 2, clients_per_round = 3, max_iter = 30)
  expect_equal(b[, c("ncc", "ssim", "mse", "best_ncc")], a[, c("ncc", "ssim", "mse", "best_ncc")], tolerance = 1e-10)

  # Pixel [r, c] of image i lands in column (r - 1) * w + c, as Python flattens it.
  tiny <- array(seq_len(2 * 2 * 3), c(2L, 2L, 3L))
  rows <- fedr:::images_as_rows(tiny)
  expect_identical(rows[2, ], c(tiny[2, 1, ], tiny[2, 2, ]))
  expect_identical(fedr:::images_as_rows(x), x)

  expect_error(fed_gradient_leakage(x, path = NULL), "`labels` must be given", class = "fedr_error")
  expect_error(fed_gradient_leakage(x, client$y, target = 4), "`target` must be at most the number of images \\(3\\)",
               class = "fedr_error")
  expect_error(fed_gradient_leakage(clip = 0), "`clip` must be a single finite number > 0", class = "fedr_error")
  expect_error(fed_gradient_leakage(x[1, , drop = FALSE], client$y[1], path = NULL, clients_per_round = 3),
               "`images`: expected at least 2 images", class = "fedr_error")
})
