# Seeing the data: images as R arrays, a grid of images, labels over clients.

#' A data set's images as an R array
#'
#' Converts the images of one split of a `fed_dataset` from Python (uint8) to
#' an R integer array in one step. Element `[i, r, c]` is row `r`, column `c`
#' of image `i`, as in the image (and as Python's `x[i - 1, r - 1, c - 1]`).
#'
#' @param x A `fed_dataset` from [fed_load_dataset()].
#' @param split `"train"` or `"test"`.
#' @param ... Unused.
#' @returns An integer array of dim `c(n, 28, 28)` with values 0 to 255, with
#'   `attr(, "labels")`, the integer class id (0-based) of each image, and
#'   `attr(, "class_names")`, the name of each class (class id `k` is element
#'   `k + 1`).
#' @family data
#' @export
#' @examplesIf fedr_available()
#' fashion <- fed_load_dataset()
#' images <- as.array(fashion, split = "test")
#' dim(images)
#' table(attr(images, "labels"))
as.array.fed_dataset <- function(x, split = c("train", "test"), ...) {
  split <- check_split(split)
  dataset_images(x, split)
}

#' Plot a grid of images
#'
#' Draws the first `n` images of a split of a `fed_dataset` in a grid (base
#' graphics), each upright as in the image and titled with its class name.
#'
#' @param x A `fed_dataset` from [fed_load_dataset()].
#' @param n The number of images, from the first.
#' @param split `"train"` or `"test"`.
#' @param col Colours for pixel values 0 to 255; by default 256 greys from
#'   black (0) to white (255).
#' @param ... Passed to [graphics::image()] for each image.
#' @returns `x`, invisibly.
#' @family data
#' @export
#' @examplesIf fedr_available()
#' fashion <- fed_load_dataset()
#' plot(fashion, n = 9)
plot.fed_dataset <- function(x, n = 16, split = "train", col = NULL, ...) {
  split <- check_split(split)
  n <- as_integer(n, "n")
  total <- if (split == "train") x$train_shape[[1]] else x$test_shape[[1]]
  if (n > total) {
    fedr_abort(sprintf("`n` must be at most %d (the %s images), not %d.", total, split, n), "n")
  }
  if (is.null(col)) col <- grey_levels(256L)
  images <- dataset_images(x, split, n)
  labels <- attr(images, "labels")
  names <- attr(images, "class_names")
  columns <- ceiling(sqrt(n))
  old <- graphics::par(mfrow = c(ceiling(n / columns), columns), mar = c(0.3, 0.3, 1.6, 0.3))
  on.exit(graphics::par(old), add = TRUE)
  for (i in seq_len(n)) {
    label <- labels[[i]]
    title <- if (label < length(names)) names[[label + 1L]] else as.character(label)
    graphics::image(
      image_z(images[i, , ]),
      zlim = c(0, 255), col = col, axes = FALSE, asp = 1, useRaster = TRUE, ...
    )
    graphics::title(main = title, cex.main = 0.9, font.main = 1)
  }
  invisible(x)
}

#' Label distribution over clients
#'
#' Counts each client's examples per class (the counting is the Python core's
#' `fedr.datasets.label_distribution()`), to see how a split spreads the
#' classes: equal shares for an IID split, a few classes per client for a
#' Dirichlet split with a small `alpha`.
#'
#' @param clients A `fed_data` object, e.g. from [fed_split()].
#' @param class_names `NULL`, the name of each class (class id `k` is element
#'   `k + 1`), or a `fed_dataset` whose class names to use. With `NULL`,
#'   classes are named by their ids and the classes are 0 to the largest
#'   label.
#' @returns A `fed_label_distribution`: a data frame in long form, one row per
#'   client and class, with columns `client` (the client ids, a factor in
#'   client order), `label` (the integer class id), `class` (the class name,
#'   or the id as text; a factor in class order) and `count` (integer). The
#'   wide matrix of counts (clients in rows, classes in columns) is
#'   `attr(, "matrix")`, also given by `as.matrix()`. `print()` shows the
#'   counts compactly, `plot()` draws a stacked bar per client.
#' @family data
#' @export
#' @examplesIf fedr_available()
#' fashion <- fed_load_dataset()
#' clients <- fed_split(fashion, 10, method = "dirichlet", seed = 1)
#' dist <- fed_label_distribution(clients, class_names = fashion)
#' dist
#' plot(dist)
#' head(as.data.frame(dist))
fed_label_distribution <- function(clients, class_names = NULL) {
  if (!inherits(clients, "fed_data")) {
    fedr_abort(sprintf("`clients` must be a fed_data object, not %s.", describe(clients)), "clients")
  }
  if (inherits(class_names, "fed_dataset")) class_names <- class_names$class_names
  if (!is.null(class_names) &&
    (!is.character(class_names) || !length(class_names) || anyNA(class_names) || anyDuplicated(class_names))) {
    fedr_abort(sprintf(
      "`class_names` must be NULL, a fed_dataset or distinct class names, not %s.", describe(class_names)
    ), "class_names")
  }
  datasets <- fedr_module("fedr.datasets")
  num_classes <- if (is.null(class_names)) NULL else length(class_names)
  counts <- fedr_call(
    datasets$label_distribution(clients$py, num_classes = num_classes),
    c(clients = "clients", num_classes = "class_names")
  )
  counts <- reticulate::py_to_r(counts)
  wide <- matrix(as.integer(counts), nrow = nrow(counts))
  if (is.null(class_names)) class_names <- as.character(seq_len(ncol(wide)) - 1L)
  dimnames(wide) <- list(client = clients$ids, class = class_names)
  new_label_distribution(wide)
}

# The long data frame from the wide matrix of counts (clients x classes).
new_label_distribution <- function(wide) {
  ids <- rownames(wide)
  classes <- colnames(wide)
  k <- ncol(wide)
  df <- data.frame(
    client = factor(rep(ids, each = k), levels = ids),
    label = rep(seq_len(k) - 1L, times = nrow(wide)),
    class = factor(rep(classes, times = nrow(wide)), levels = classes),
    count = as.vector(t(wide))
  )
  structure(df, class = c("fed_label_distribution", "data.frame"), matrix = wide)
}

# The wide matrix; rebuilt from the columns if rows were dropped or changed.
label_matrix <- function(x) {
  m <- attr(x, "matrix", exact = TRUE)
  df <- as.data.frame(unclass_distribution(x))
  if (!is.null(m) && length(m) == nrow(df) && identical(as.vector(t(m)), df$count)) {
    return(m)
  }
  client <- droplevels(as.factor(df$client))
  class <- droplevels(as.factor(df$class))
  m <- tapply(df$count, list(client = client, class = class), sum, default = 0L)
  storage.mode(m) <- "integer"
  m
}

unclass_distribution <- function(x) {
  attr(x, "matrix") <- NULL
  class(x) <- "data.frame"
  x
}

#' @rdname fed_label_distribution
#' @param x A `fed_label_distribution`.
#' @param ... Unused by `as.matrix()`, `format()` and `print()`; passed to
#'   [graphics::barplot()] by `plot()`.
#' @export
as.matrix.fed_label_distribution <- function(x, ...) label_matrix(x)

#' @rdname fed_label_distribution
#' @export
as.data.frame.fed_label_distribution <- function(x, ...) unclass_distribution(x)

#' @rdname fed_label_distribution
#' @param n For `format()` and `print()`: the number of clients shown.
#' @export
format.fed_label_distribution <- function(x, n = 10L, ...) {
  m <- label_matrix(x)
  n <- as_integer(n, "n")
  classes <- colnames(m)
  ids <- if (all(classes == as.character(seq_along(classes) - 1L))) classes else as.character(seq_along(classes) - 1L)
  header <- sprintf(
    "<fed_label_distribution> %d client%s, %d class%s, %d examples",
    nrow(m), if (nrow(m) == 1L) "" else "s", ncol(m), if (ncol(m) == 1L) "" else "es", sum(m)
  )
  shown <- m[seq_len(min(n, nrow(m))), , drop = FALSE]
  table <- cbind(shown, total = rowSums(shown))
  colnames(table) <- c(ids, "total")
  rownames(table) <- paste0("  ", rownames(shown))
  lines <- c(header, utils::capture.output(print(table)))
  if (nrow(m) > n) lines <- c(lines, sprintf("  ... (%d more clients)", nrow(m) - n))
  if (!identical(ids, classes)) {
    legend <- paste0("classes: ", paste(ids, classes, sep = " ", collapse = ", "))
    lines <- c(lines, strwrap(legend, width = getOption("width", 80L), indent = 2L, exdent = 4L))
  }
  lines
}

#' @rdname fed_label_distribution
#' @export
print.fed_label_distribution <- function(x, n = 10L, ...) {
  writeLines(format(x, n = n))
  invisible(x)
}

#' @rdname fed_label_distribution
#' @param proportion For `plot()`: `TRUE` draws each client's class shares
#'   (bars of equal height), `FALSE` (the default) the counts.
#' @param col For `plot()`: one colour per class, or `NULL` for a
#'   qualitative palette.
#' @export
plot.fed_label_distribution <- function(x, proportion = FALSE, col = NULL, ...) {
  check_flag(proportion, "proportion")
  m <- label_matrix(x)
  if (proportion) m <- m / pmax(rowSums(m), 1)
  k <- ncol(m)
  if (is.null(col)) col <- class_colours(k)
  old <- graphics::par(no.readonly = TRUE)
  on.exit(graphics::par(old), add = TRUE)
  graphics::layout(matrix(1:2, nrow = 1L), widths = c(4, 1.3))
  graphics::par(mar = c(5, 4.5, 2.5, 0.5))
  graphics::barplot(
    t(m),
    col = col, border = NA, las = 2, names.arg = rownames(m),
    ylab = if (proportion) "share of examples" else "examples",
    main = "Labels per client", ...
  )
  graphics::par(mar = c(5, 0, 2.5, 0))
  graphics::plot.new()
  graphics::legend(
    "center",
    legend = rev(colnames(m)), fill = rev(rep_len(col, k)), border = NA,
    bty = "n", title = "class", cex = 0.85
  )
  invisible(x)
}

# ---- helpers

check_split <- function(split) {
  if (identical(split, c("train", "test"))) split <- "train"
  check_string(split, "split", c("train", "test"))
}

# The images of a split (the first `n` when given) as an R integer array
# (n, 28, 28), with the labels and class names as attributes.
dataset_images <- function(x, split, n = NULL) {
  if (!inherits(x, "fed_dataset")) {
    fedr_abort(sprintf("`x` must be a fed_dataset, not %s.", describe(x)), "x")
  }
  images <- reticulate::py_get_attr(x$py, paste0("x_", split))
  labels <- reticulate::py_get_attr(x$py, paste0("y_", split))
  if (!is.null(n)) {
    head <- reticulate::py_eval("lambda a, n: a[:n]", convert = FALSE)
    images <- reticulate::py_call(head, images, n)
    labels <- reticulate::py_call(head, labels, n)
  }
  array <- reticulate::py_to_r(images)
  storage.mode(array) <- "integer"
  attr(array, "labels") <- as.integer(reticulate::py_to_r(labels))
  attr(array, "class_names") <- x$class_names
  array
}

# An image (rows top to bottom) as the matrix `graphics::image()` draws
# upright: image() puts z[i, j] at x = i, y = j with y going up.
image_z <- function(img) t(img)[, rev(seq_len(nrow(img))), drop = FALSE]

# `n` greys from black to white, without grDevices.
grey_levels <- function(n) {
  v <- round(seq(0, 255, length.out = n))
  sprintf("#%02X%02X%02X", v, v, v)
}

# A qualitative palette: Okabe-Ito and Tableau colours, then evenly spaced
# hues (full saturation, varying value) when more classes are needed.
class_colours <- function(k) {
  base <- c(
    "#4E79A7", "#F28E2B", "#E15759", "#76B7B2", "#59A14F",
    "#EDC948", "#B07AA1", "#FF9DA7", "#9C755F", "#BAB0AC"
  )
  if (k <= length(base)) {
    return(base[seq_len(k)])
  }
  h <- (seq_len(k) - 1) / k * 6
  v <- ifelse(seq_len(k) %% 2L == 0L, 0.75, 0.95)
  f <- function(shift) {
    p <- (shift + h) %% 6
    v - v * 0.7 * pmax(0, pmin(p, 4 - p, 1))
  }
  rgb <- round(255 * cbind(f(5), f(3), f(1)))
  sprintf("#%02X%02X%02X", rgb[, 1], rgb[, 2], rgb[, 3])
}
