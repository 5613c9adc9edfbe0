# Gossip learning: peers on a graph, no server. The algorithm is the Python
# core's fedr.gossip; here R's conversions (peers numbered from 1), classes,
# print and plot. This file: graphs and mixing matrices.

#' Peer graphs for gossip learning
#'
#' The graphs [fed_gossip()] trains on: a ring, a 2-D torus, a random
#' `degree`-regular graph (seeded), the complete graph, or your own from an
#' edge list, an adjacency matrix or an `igraph` object (when the igraph
#' package is installed). Every graph is checked: connected (gossip on a
#' disconnected graph never reaches consensus), undirected, without self loops
#' (a peer's own weight is implied by the mixing matrix). Peers are numbered
#' from 1.
#'
#' @param n_peers The number of peers. For `fed_graph()` with an edge list:
#'   `NULL` (the default) takes the largest peer named. A square matrix of
#'   0s and 1s is an adjacency matrix unless `n_peers` is given.
#' @param rows,cols The torus's grid: peer `(r - 1) * cols + c` is linked to
#'   its four grid neighbours, wrapping around.
#' @param degree Each peer's number of neighbours: `2 <= degree < n_peers`,
#'   with `n_peers * degree` even.
#' @param seed `NULL` or a whole number: the same seed gives the same graph.
#' @param x For `fed_graph()`: an edge list (a two-column matrix or data
#'   frame of peers, one row per link), a square 0/1 adjacency matrix, or an
#'   `igraph` object (undirected). For `format()`, `print()`, `plot()` and
#'   `as.matrix()`: a `fed_graph`.
#' @returns A `fed_graph`: `n_peers`, `edges` (an integer matrix, one row per
#'   link `from < to`), `name`; `print()` describes it, `plot()` draws it
#'   (base graphics), `as.matrix()` gives the adjacency matrix.
#' @family gossip
#' @export
#' @examplesIf fedr_available()
#' ring <- fed_graph_ring(10)
#' ring
#' plot(fed_graph_torus(3, 4))
#' fed_graph(rbind(c(1, 2), c(2, 3), c(3, 1), c(3, 4)))
#' fed_graph(matrix(c(0, 1, 1, 0), 2))
fed_graph_ring <- function(n_peers) {
  n_peers <- as_integer(n_peers, "n_peers")
  new_fed_graph(fedr_call(gossip_module()$ring(n_peers), c(num_peers = "n_peers")), circle_layout(n_peers))
}

#' @rdname fed_graph_ring
#' @export
fed_graph_torus <- function(rows, cols) {
  rows <- as_integer(rows, "rows")
  cols <- as_integer(cols, "cols")
  grid <- cbind(rep(seq_len(cols), times = rows), rep(rev(seq_len(rows)), each = cols))
  new_fed_graph(fedr_call(gossip_module()$torus(rows, cols), c("rows", "cols")), grid)
}

#' @rdname fed_graph_ring
#' @export
fed_graph_random_regular <- function(n_peers, degree, seed = NULL) {
  n_peers <- as_integer(n_peers, "n_peers")
  degree <- as_integer(degree, "degree")
  seed <- as_seed(seed)
  py <- fedr_call(gossip_module()$random_regular(n_peers, degree, seed = seed), c(num_peers = "n_peers", "degree", "seed"))
  new_fed_graph(py, circle_layout(n_peers))
}

#' @rdname fed_graph_ring
#' @export
fed_graph_complete <- function(n_peers) {
  n_peers <- as_integer(n_peers, "n_peers")
  new_fed_graph(fedr_call(gossip_module()$complete(n_peers), c(num_peers = "n_peers")), circle_layout(n_peers))
}

#' @rdname fed_graph_ring
#' @export
fed_graph <- function(x, n_peers = NULL) {
  gossip <- gossip_module()
  if (inherits(x, "fed_graph")) {
    return(x)
  }
  if (inherits(x, "igraph")) {
    if (!requireNamespace("igraph", quietly = TRUE)) {
      fedr_abort("`x` is an igraph object but the igraph package is not installed.", "x")
    }
    if (igraph_fn("is_directed")(x)) {
      fedr_abort("`x` must be an undirected igraph graph: gossip links go both ways.", "x")
    }
    n <- as.integer(igraph_fn("vcount")(x))
    edges <- igraph_fn("as_edgelist")(x, names = FALSE)
    py <- fedr_call(gossip$from_edges(n, reticulate::np_array(matrix(as.integer(edges), ncol = 2L)), base = 1L),
                    c(edges = "x"))
    return(new_fed_graph(py, NULL, x))
  }
  if (is.data.frame(x)) x <- as.matrix(x)
  if (!(is.numeric(x) || is.logical(x)) || length(dim(x)) != 2L) {
    fedr_abort(sprintf("`x` must be an edge list (a two-column matrix or data frame), an adjacency matrix or an igraph object, not %s.",
                       describe(x)), "x")
  }
  check_na(x, "x")
  # A square 0/1 matrix is an adjacency matrix (as an edge list it would name a peer 0).
  if (nrow(x) == ncol(x) && is.null(n_peers) && all(x %in% c(0, 1))) {
    py <- fedr_call(gossip$from_adjacency(reticulate::np_array(x * 1), base = 1L), c(adjacency = "x"))
    return(new_fed_graph(py, circle_layout(nrow(x))))
  }
  if (ncol(x) != 2L) {
    fedr_abort(sprintf("`x` must have two columns (the two peers of each link), not %d.", ncol(x)), "x")
  }
  if (any(x != round(x))) fedr_abort("`x` must hold whole numbers, the peers (numbered from 1).", "x")
  n_peers <- if (is.null(n_peers)) as.integer(max(x)) else as_integer(n_peers, "n_peers")
  py <- fedr_call(gossip$from_edges(n_peers, reticulate::np_array(matrix(as.integer(x), ncol = 2L)), base = 1L),
                  c(edges = "x", num_peers = "n_peers"))
  new_fed_graph(py, circle_layout(n_peers))
}

gossip_module <- function() fedr_module("fedr.gossip")

# igraph is optional (it is not among the package's declared dependencies): look its functions up at run time.
igraph_fn <- function(name) getExportedValue("igraph", name)

circle_layout <- function(n) {
  angle <- pi / 2 - 2 * pi * (seq_len(n) - 1) / n
  cbind(cos(angle), sin(angle))
}

new_fed_graph <- function(py, layout, igraph = NULL) {
  edges <- reticulate::py_to_r(py$edges)
  edges <- matrix(as.integer(edges) + 1L, ncol = 2L, dimnames = list(NULL, c("from", "to")))
  structure(
    list(py = py, n_peers = as.integer(reticulate::py_to_r(py$num_peers)), edges = edges,
         name = as.character(reticulate::py_to_r(py$name)), layout = layout, igraph = igraph),
    class = "fed_graph"
  )
}

#' @rdname fed_graph_ring
#' @param ... Unused by `format()`, `print()` and `as.matrix()`; passed to
#'   [graphics::plot()] by `plot()`.
#' @export
format.fed_graph <- function(x, ...) {
  degrees <- tabulate(as.vector(x$edges), x$n_peers)
  range_text <- if (min(degrees) == max(degrees)) sprintf("degree %d", degrees[[1]]) else
    sprintf("degrees %d-%d", min(degrees), max(degrees))
  gap <- fed_spectral_gap(fed_mixing_matrix(x))
  sprintf("<fed_graph> %s: %d peers, %d links, %s, spectral gap %.4f (Metropolis-Hastings)",
          x$name, x$n_peers, nrow(x$edges), range_text, gap)
}

#' @rdname fed_graph_ring
#' @export
print.fed_graph <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @rdname fed_graph_ring
#' @param rownames.force Unused, for compatibility with the generic.
#' @export
as.matrix.fed_graph <- function(x, rownames.force = NA, ...) {
  a <- reticulate::py_to_r(x$py$adjacency())
  dimnames(a) <- list(seq_len(x$n_peers), seq_len(x$n_peers))
  a
}

#' @rdname fed_graph_ring
#' @param layout For `plot()`: a two-column matrix of peer coordinates;
#'   `NULL` places a torus on its grid, an igraph object by igraph's layout,
#'   others on a circle.
#' @export
plot.fed_graph <- function(x, layout = NULL, ...) {
  xy <- layout %||% x$layout
  if (is.null(xy) && !is.null(x$igraph) && requireNamespace("igraph", quietly = TRUE)) {
    xy <- igraph_fn("layout_nicely")(x$igraph)
  }
  if (is.null(xy)) xy <- circle_layout(x$n_peers)
  if (!is.numeric(xy) || !identical(dim(xy), c(x$n_peers, 2L))) {
    fedr_abort(sprintf("`layout` must be a %d x 2 numeric matrix.", x$n_peers), "layout")
  }
  old <- graphics::par(mar = c(0.5, 0.5, 2.5, 0.5))
  on.exit(graphics::par(old), add = TRUE)
  pad <- 0.12 * max(diff(range(xy[, 1])), diff(range(xy[, 2])), 1)
  graphics::plot(xy, type = "n", axes = FALSE, xlab = "", ylab = "", asp = 1,
                 xlim = range(xy[, 1]) + c(-pad, pad), ylim = range(xy[, 2]) + c(-pad, pad),
                 main = sprintf("%s: %d peers", x$name, x$n_peers), ...)
  graphics::segments(xy[x$edges[, 1], 1], xy[x$edges[, 1], 2], xy[x$edges[, 2], 1], xy[x$edges[, 2], 2],
                     col = "grey55")
  graphics::points(xy, pch = 21, cex = 2.6, bg = "steelblue", col = "white")
  graphics::text(xy, labels = seq_len(x$n_peers), col = "white", cex = 0.7)
  invisible(x)
}

#' Mixing matrices and their spectral gap
#'
#' `fed_mixing_matrix()` gives the matrix W a synchronous gossip round mixes
#' with, `x_i <- sum_j W[i, j] x_j`: Metropolis-Hastings weights
#' (Xiao & Boyd 2004), `W[i, j] = 1 / (1 + max(d_i, d_j))` between neighbours
#' and `W[i, i] = 1 - sum_j W[i, j]`; `"uniform"` (1/n, the complete graph
#' only); or your own matrix, checked: symmetric, doubly stochastic,
#' non-negative, zero between peers that are not neighbours, and mixing (a
#' spectral gap above 0); the error names what is wrong. `fed_spectral_gap()`
#' is `1 - max(|lambda_2|, |lambda_n|)`, the rate at which the peers' models
#' approach their average per round.
#'
#' @param graph A [fed_graph_ring()] (or other) graph.
#' @param weights `"metropolis_hastings"`, `"uniform"` or a square matrix.
#' @returns `fed_mixing_matrix()`: a numeric matrix. `fed_spectral_gap()`: a number.
#' @family gossip
#' @export
#' @examplesIf fedr_available()
#' w <- fed_mixing_matrix(fed_graph_ring(6))
#' round(w, 3)
#' fed_spectral_gap(w)
fed_mixing_matrix <- function(graph, weights = "metropolis_hastings") {
  graph <- check_graph(graph)
  gossip <- gossip_module()
  py <- if (is.character(weights)) {
    weights <- check_string(weights, "weights", c("metropolis_hastings", "uniform"))
    if (weights == "uniform" && nrow(graph$edges) != graph$n_peers * (graph$n_peers - 1L) / 2L) {
      fedr_abort(sprintf("`weights` \"uniform\" (1/n to every peer) needs the complete graph, not %s.", graph$name), "weights")
    }
    gossip[[weights]](graph$py)
  } else {
    as_py_mixing(weights, graph)
  }
  w <- reticulate::py_to_r(py)
  dimnames(w) <- NULL
  w
}

#' @rdname fed_mixing_matrix
#' @export
fed_spectral_gap <- function(weights) {
  if (!is.numeric(weights) || length(dim(weights)) != 2L) {
    fedr_abort(sprintf("`weights` must be a numeric matrix, not %s.", describe(weights)), "weights")
  }
  check_finite(weights, "weights")
  as.double(reticulate::py_to_r(gossip_module()$spectral_gap(reticulate::np_array(weights * 1))))
}

# A user's mixing matrix as the checked numpy array (messages number peers from 1).
as_py_mixing <- function(weights, graph) {
  if (!is.numeric(weights) || length(dim(weights)) != 2L) {
    fedr_abort(sprintf("`weights` must be \"metropolis_hastings\", \"uniform\" or a numeric matrix, not %s.",
                       describe(weights)), "weights")
  }
  check_na(weights, "weights")
  storage.mode(weights) <- "double"
  fedr_call(gossip_module()$check_mixing(reticulate::np_array(weights), graph$py, "weights", 1L), "weights")
}

check_graph <- function(graph, arg = "graph") {
  if (!inherits(graph, "fed_graph")) {
    fedr_abort(sprintf("`%s` must be a fed_graph (fed_graph_ring(), fed_graph(), ...), not %s.", arg, describe(graph)), arg)
  }
  graph
}
