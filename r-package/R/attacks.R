# Gradient leakage: the attack the reference article describes, and what the defences change.

#' Recover a client's image from its update: gradient leakage
#'
#' Shows why plain federated averaging is not private, as the reference
#' article warns: the update a client sends can be turned back into its data.
#' Each image is a client holding that one image; each trains one SGD step
#' with fedr's own federated averaging, from the same server state. An
#' attacker then recovers the `target` client's image from what the server
#' sees:
#'
#' * `"none"`: that client's update, as the FedAvg server sees it;
#' * `"secure_aggregation"`: only the sum of the round's updates (Bonawitz et
#'   al. 2017: the server learns the sum and nothing else);
#' * `"differential_privacy"`: the DP-FedAvg aggregate at the settings of the
#'   private example (McMahan et al. 2018): each update clipped to an L2 norm
#'   of `clip`, Gaussian noise of standard deviation `noise_multiplier * clip`
#'   per coordinate, divided by `clients_per_round`
#'   (see [fed_aggregator_dp_fixed()]).
#'
#' The attacks: on the reference model (one dense softmax layer,
#' zero-initialised), the exact inversion of a dense layer, `x = dW[, c] /
#' db[c]` (`"analytic"`; Phong et al. 2017, Geiping et al. 2020), and the
#' update's column of the target's class (`"class_column"`, under the
#' defences); on a small MLP, Deep Leakage from Gradients (`"dlg"`; Zhu et al.
#' 2019: L-BFGS on a dummy image until its gradients match the observed ones,
#' the label inferred from the gradients as in iDLG).
#'
#' With no defence both attacks recover the image (`ncc` about 1). Under
#' secure aggregation the analytic formula returns a blend of the round's
#' images, which may resemble another client's image (`best_ncc`); and where
#' the target is the only client of its class in the round, that class's
#' column still shows its image: secure aggregation alone does not hide one
#' client's data from a model this small. Differential privacy's noise
#' drowns all three attacks.
#'
#' The PNG has three rows (images dark on white): the round's images, the
#' target first; for the reference model the original, then analytic with no
#' defence, analytic and class column under secure aggregation, analytic and
#' class column under differential privacy; for the MLP the original, then DLG
#' with no defence, under secure aggregation and under differential privacy.
#'
#' @param images `NULL` (the first `clients_per_round` Fashion-MNIST test
#'   images), a `fed_dataset` from [fed_load_dataset()] (its first test
#'   images), or a numeric matrix with one image per row (784 pixels) or an
#'   array `n x 28 x 28`, values in `[0, 1]` (or `0..255`).
#' @param labels The images' class labels (0-based numbers, or a factor),
#'   when `images` is a matrix or array.
#' @param path Where to write the PNG; `NULL` writes none.
#' @param target Which image (row) is the attacked client's, from 1.
#' @param clients_per_round Clients per round: the DP divisor, and how many
#'   images are used when `images` is `NULL` or a `fed_dataset`.
#' @param learning_rate The clients' SGD learning rate.
#' @param noise_multiplier,clip Differential privacy's noise multiplier and
#'   L2 clip.
#' @param hidden Hidden units of the MLP.
#' @param max_iter L-BFGS iterations of each DLG run at most.
#' @param seed Seeds the initial weights, the DP noise and DLG's dummy image.
#' @returns A data frame with one row per model, attack and defence: `model`,
#'   `attack`, `defence`, `ncc` (normalised cross-correlation of the recovered
#'   image with the target's, 1 is perfect), `ssim` (structural similarity),
#'   `mse`, `best_ncc` and `best_client` (the round's image the recovery
#'   resembles most, from 1), `label` (the label DLG used, `NA` otherwise) and
#'   `seconds`. Attributes `path` (the PNG written, or `NULL`) and
#'   `settings` (a list of the parameters used).
#' @family privacy
#' @export
#' @examplesIf fedr_available()
#' \donttest{
#' scores <- fed_gradient_leakage(path = tempfile(fileext = ".png"))
#' scores[, c("model", "attack", "defence", "ncc")]
#' attr(scores, "path")
#' }
fed_gradient_leakage <- function(images = NULL, labels = NULL, path = "leakage.png", target = 1,
                                 clients_per_round = 10, learning_rate = 0.02,
                                 noise_multiplier = 1.0, clip = 0.5, hidden = 32, max_iter = 300,
                                 seed = 0) {
  attacks <- fedr_module("fedr.attacks")
  target <- as_integer(target, "target")
  clients_per_round <- as_integer(clients_per_round, "clients_per_round")
  learning_rate <- as_number(learning_rate, "learning_rate", min = 0, min_inclusive = FALSE)
  noise_multiplier <- as_number(noise_multiplier, "noise_multiplier", min = 0)
  clip <- as_number(clip, "clip", min = 0, min_inclusive = FALSE)
  hidden <- as_integer(hidden, "hidden")
  max_iter <- as_integer(max_iter, "max_iter")
  seed <- as_integer(seed, "seed", min = 0L)
  if (!is.null(path)) path <- path.expand(check_string(path, "path"))

  if (is.null(images)) {
    py_images <- NULL
    py_labels <- NULL
  } else if (inherits(images, "fed_dataset")) {
    py_images <- images$py
    py_labels <- NULL
  } else {
    if (is.null(labels)) fedr_abort("`labels` must be given with `images`.", "labels")
    images <- images_as_rows(images)
    py_images <- as_py_features(images, "images")
    py_labels <- as_py_labels(labels, nrow(images), "labels")
  }
  n <- if (is.null(py_labels)) clients_per_round else nrow(images)
  if (target > n) {
    fedr_abort(sprintf("`target` must be at most the number of images (%d), not %d.", n, target), "target")
  }

  report <- fedr_call(
    attacks$leakage_demo(
      py_images, py_labels,
      path = path, target = target - 1L, clients_per_round = clients_per_round,
      learning_rate = learning_rate, noise_multiplier = noise_multiplier, clip = clip,
      hidden = hidden, max_iter = max_iter, seed = seed
    ),
    arg = c("images", "labels", "path", "target", "clients_per_round", "learning_rate",
            "noise_multiplier", "clip", "hidden", "max_iter", "seed")
  )
  columns <- reticulate::py_to_r(report$table())
  column <- function(name, type) as.vector(unlist(columns[[name]]), mode = type)
  label <- column("label", "integer")
  label[label < 0L] <- NA_integer_
  scores <- data.frame(
    model = column("model", "character"),
    attack = column("attack", "character"),
    defence = column("defence", "character"),
    ncc = column("ncc", "double"),
    ssim = column("ssim", "double"),
    mse = column("mse", "double"),
    best_ncc = column("best_ncc", "double"),
    best_client = column("best_client", "integer") + 1L,
    label = label,
    seconds = column("seconds", "double"),
    stringsAsFactors = FALSE
  )
  written <- reticulate::py_to_r(report$path)
  settings <- reticulate::py_to_r(report$settings)
  settings$target <- settings$target + 1L
  attr(scores, "path") <- if (is.null(written)) NULL else normalizePath(written)
  attr(scores, "settings") <- settings
  scores
}

# An array n x h x w (x ...) as a matrix with one image per row, each image's
# pixels in row-major order as Python flattens them (pixel [r, c] at column
# (r - 1) * w + c); matrices and data frames pass through.
images_as_rows <- function(images) {
  d <- dim(images)
  if (length(d) <= 2L) {
    return(images)
  }
  matrix(aperm(images, c(1L, rev(seq_along(d)[-1L]))), nrow = d[[1]])
}
