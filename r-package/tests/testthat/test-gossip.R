# Gossip learning from R: graphs and mixing matrices against R's own eigen(), one round
# on the complete graph against FedAvg, the numbers of fedr.gossip in Python, peers
# numbered from 1 in results and errors.

test_that("every built-in graph gives a symmetric doubly stochastic matrix whose gap is eigen()'s", {
  skip_if_no_fedr()
  graphs <- list(fed_graph_ring(10), fed_graph_torus(3, 4), fed_graph_random_regular(10, 3, seed = 1),
                 fed_graph_complete(6), fed_graph(rbind(c(1, 2), c(2, 3), c(3, 1), c(3, 4))),
                 fed_graph(matrix(c(0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0), 4)))
  for (g in graphs) {
    w <- fed_mixing_matrix(g)
    n <- g$n_peers
    expect_identical(dim(w), c(n, n))
    expect_identical(w, t(w))
    expect_equal(rowSums(w), rep(1, n), tolerance = 1e-12)
    expect_true(all(w >= 0))
    a <- as.matrix(g)
    expect_true(all(w[a == 0 & row(a) != col(a)] == 0))
    moduli <- sort(abs(eigen(w, symmetric = TRUE, only.values = TRUE)$values))
    expect_lt(abs(fed_spectral_gap(w) - (1 - moduli[[n - 1L]])), 1e-9)
  }
  # The ring: 1/3 to each neighbour and itself; gap 1 - (1/3 + 2/3 cos(2 pi / 10)).
  ring <- fed_mixing_matrix(fed_graph_ring(10))
  expect_equal(ring[1, c(10, 1, 2)], rep(1 / 3, 3), tolerance = 1e-15)
  expect_equal(fed_spectral_gap(ring), 1 - (1 / 3 + 2 / 3 * cos(2 * pi / 10)), tolerance = 1e-12)
  expect_identical(fed_graph_ring(10)$edges[1:2, ], matrix(c(1L, 1L, 2L, 10L), 2, dimnames = list(NULL, c("from", "to"))))
  expect_identical(tabulate(as.vector(fed_graph_torus(3, 4)$edges), 12), rep(4L, 12))
  expect_identical(fed_graph_random_regular(12, 4, seed = 3)$edges, fed_graph_random_regular(12, 4, seed = 3)$edges)
  expect_output(print(fed_graph_ring(10)),
                "^<fed_graph> ring\\(10\\): 10 peers, 10 links, degree 2, spectral gap 0.1273 \\(Metropolis-Hastings\\)$")
  # The same graph as Python's, peers numbered from 1.
  py <- fedr_python()$gossip$ring(10L)$edges  # fedr_python() converts to R
  expect_identical(unname(fed_graph_ring(10)$edges), matrix(as.integer(py) + 1L, ncol = 2))
})

test_that("bad graphs, matrices and data are fedr_error_input naming the argument and the peer from 1", {
  skip_if_no_fedr()
  e <- expect_error(fed_graph(rbind(c(1, 2), c(3, 4))), class = "fedr_error_input")
  expect_identical(e$arg, "x")
  expect_match(conditionMessage(e), "`x`: disconnected, 2 components (peers [3, 4] cannot reach peer 1)", fixed = TRUE)
  expect_error(fed_graph(rbind(c(1, 1), c(2, 2)), n_peers = 2),
               "`x`: only self loops (2), no edge between two peers", fixed = TRUE, class = "fedr_error_input")
  expect_error(fed_graph(rbind(c(1, 2), c(2, 3), c(2, 2))), "`x`: self loop on peer 2", fixed = TRUE)
  expect_error(fed_graph(rbind(c(1, 2), c(2, 7)), n_peers = 3), "`x`: edge (2, 7) names a peer outside 1..3", fixed = TRUE)
  expect_error(fed_graph(matrix(c(0, 0, 0, 1, 0, 1, 0, 1, 0), 3)), "`x`: not symmetric, [1, 2] = 1 but [2, 1] = 0", fixed = TRUE)
  expect_error(fed_graph(diag(3)), "`x`: only self loops", fixed = TRUE)
  expect_error(fed_graph_random_regular(7, 3), "`degree`: no 3-regular graph of 7 peers exists", fixed = TRUE,
               class = "fedr_error_input")
  expect_error(fed_graph_ring(2.5), "`n_peers` must be a positive integer", fixed = TRUE)

  ring <- fed_graph_ring(4)
  w <- fed_mixing_matrix(ring)
  w[1, 2] <- 0.5
  w[1, 1] <- 1 / 6
  e <- expect_error(fed_mixing_matrix(ring, w), class = "fedr_error_input")
  expect_identical(e$arg, "weights")
  expect_match(conditionMessage(e), "`weights`: not symmetric, [1, 2] = 0.5 but [2, 1] = 0.333333", fixed = TRUE)
  model <- fed_model(keras_model_fn())
  expect_error(fed_gossip(model, fed_optimizer("sgd", 0.1), ring, weights = w), "`weights`: not symmetric", fixed = TRUE)
  expect_error(fed_gossip(model, fed_optimizer("sgd", 0.1), ring, weights = "uniform"),
               "`weights`: 'uniform' (1/n to every peer) needs the complete graph", fixed = TRUE)
  far <- rbind(c(0.5, 0.25, 0, 0.25), c(0.25, 0.5, 0.25, 0), c(0, 0.25, 0.5, 0.25), c(0.25, 0, 0.25, 0.5))
  near <- far
  near[1, 3] <- near[3, 1] <- 0.1
  near[1, 1] <- near[3, 3] <- 0.4
  expect_error(fed_mixing_matrix(ring, near), "`weights`: [1, 3] = 0.1 but peers 1 and 3 are not neighbours", fixed = TRUE)
  expect_equal(fed_spectral_gap(fed_mixing_matrix(ring, far)), 0.5, tolerance = 1e-12)
  expect_error(fed_gossip(model, fed_optimizer("sgd", 0.1), "ring"), "`graph` must be a fed_graph", fixed = TRUE)

  process <- fed_gossip(model, fed_optimizer("sgd", 0.1), fed_graph_ring(4), seed = 1)
  clients <- small_clients()
  e <- expect_error(fed_gossip_fit(process, clients, rounds = 1, verbose = FALSE), class = "fedr_error_input")
  expect_identical(e$arg, "data")
  expect_identical(conditionMessage(e), "`data` has 3 clients but the graph has 4 peers: peer 4 has no data.")
  four <- fed_split(fashion(), n_clients = 300)[1:4]
  expect_error(fed_gossip_fit(process, four, rounds = 1, verbose = FALSE, absent = list("1" = 5)),
               "`absent` for round 1 must be peers between 1 and 4", fixed = TRUE)
  expect_error(fed_gossip_fit(process, four, rounds = 1, verbose = FALSE, absent = list("1" = 1:4)),
               "every peer failed or was absent", fixed = TRUE)
  # A round that fails keeps the ones before it: e$history holds rounds 1-2 and their state.
  e <- expect_error(fed_gossip_fit(process, four, rounds = 4, verbose = FALSE, absent = list("3" = 1:4), evaluate_average = FALSE),
                    "^Round 3 failed: .*every peer failed or was absent.*\nRounds 1-2 finished and are kept",
                    class = "fedr_error")
  expect_s3_class(e$history, "fed_gossip_history")
  expect_identical(e$history$round, 1:2)
  expect_identical(attr(e$history, "state")$round, 2L)
  expect_identical(tail(attr(e$history, "events")$event, 1), "failed")
  expect_error(fed_gossip_evaluate(process, "state", four), "`state` must be a fed_gossip_history", fixed = TRUE)
})

test_that("fed_gossip() gives the numbers of fedr.gossip in Python for the same seed and data", {
  skip_if_no_fedr()
  peers <- fed_split(fashion(), n_clients = 300)[1:4]
  process <- fed_gossip(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.05), fed_graph_ring(4), seed = 7)
  expect_output(print(process), "^<fed_gossip> gossip learning on ring\\(4\\): 4 peers, synchronous \\(D-PSGD\\)")
  history <- fed_gossip_fit(process, peers, rounds = 3, verbose = FALSE, absent = list("2" = 3))
  expect_s3_class(history, c("fed_gossip_history", "data.frame"))
  expect_identical(history$round, 1:3)
  expect_identical(history$num_peers, c(4L, 3L, 4L))
  expect_identical(history$num_peers_absent, c(0L, 1L, 0L))
  # A ring peer sends its 7,850 float32 to 2 neighbours; in round 2 peers 2 and 4 lost one (peer 3 absent).
  expect_identical(history$bytes_sent, c(2, 1, 2) * 31400)
  expect_identical(history$bytes_sent_total, cumsum(c(2, 1, 2) * 31400))
  events <- attr(history, "events")
  expect_identical(events$round, c(2L, 3L))
  expect_identical(events$peer, c(3L, 3L))
  expect_identical(events$event, c("absent", "rejoined"))
  peer_rows <- attr(history, "peers")
  expect_identical(nrow(peer_rows), 12L)
  expect_identical(peer_rows$peer, rep(1:4, 3))
  expect_identical(peer_rows$status[peer_rows$round == 2L], c("trained", "trained", "absent", "trained"))
  expect_true(is.na(peer_rows$loss[peer_rows$round == 2L & peer_rows$peer == 3L]))

  # The same run written in Python, through the module fedr_python() gives.
  py_model <- reticulate::py_run_string(paste(
    "import keras",
    "from fedr.learning import from_keras_model",
    "def model_fn():",
    "    model = keras.Sequential([keras.Input(shape=(784,)),",
    "                              keras.layers.Dense(10, activation='softmax', kernel_initializer='zeros')])",
    "    return from_keras_model(model, loss='sparse_categorical_crossentropy',",
    "                            metrics=['sparse_categorical_accuracy'])",
    sep = "\n"
  ), convert = FALSE)$model_fn
  gossip <- fedr_python()$gossip
  py_process <- gossip$build_gossip(py_model, fedr_python()$learning$optimizer_fn("sgd", 0.05), gossip$ring(4L), seed = 7L)
  py <- gossip$fit(py_process, peers$py, 3L, absent = reticulate::py_dict(list(2L), list(list(2L))))
  column <- function(name) vapply(py$rows, function(r) as.double(r[[name]]), numeric(1))
  expect_identical(history$loss, column("loss"))
  expect_identical(history$consensus_distance, column("consensus_distance"))
  expect_identical(history$spectral_gap, column("spectral_gap"))
  expect_identical(history$average_sparse_categorical_accuracy, column("average_sparse_categorical_accuracy"))
  # Ring of 4: eigenvalues 1, 1/3, 1/3, -1/3. Without peer 3: the path 2-1-4, W = [1/3 1/3 1/3; 1/3 2/3 0;
  # 1/3 0 2/3] (peers 2 and 4 keep the third they gave peer 3), eigenvalues 1, 2/3, 0.
  expect_equal(history$spectral_gap, c(2 / 3, 1 / 3, 2 / 3), tolerance = 1e-12)
  for (peer in list(NULL, 1L, 4L)) {
    r_weights <- unlist(fed_gossip_weights(history, peer = peer))
    state <- py$state
    w <- if (is.null(peer)) state$average() else state$peer(peer - 1L)
    expect_identical(unname(r_weights), unlist(w$trainable))
    expect_gt(max(abs(r_weights)), 1e-3)
  }
  test <- fed_split(fashion(), n_clients = 50, split = "test")[1:2]
  ours <- fed_gossip_evaluate(process, history, test, peer = 2)
  expect_identical(ours[["sparse_categorical_accuracy"]],
                   as.double(py_process$evaluate(py$state, test$py, peer = 1L)[["sparse_categorical_accuracy"]]))
  expect_identical(fed_gossip_evaluate(process, history, test)[["num_examples"]], 400)
  expect_output(print(history), "^<fed_gossip_history> 3 rounds of sync gossip on ring\\(4\\) \\(4 peers\\)")
  expect_output(print(history), "events: round 2 peer 3 absent; round 3 peer 3 rejoined")

  # Continue from the history's state: round 4.
  more <- fed_gossip_fit(process, peers, rounds = 1, verbose = FALSE, state = history)
  expect_identical(more$round, 4L)
})

test_that("on the complete graph with uniform weights one gossip round is one FedAvg round (unweighted mean)", {
  skip_if_no_fedr()
  peers <- fed_split(fashion(), n_clients = 300)[1:4]  # 200 images each
  model <- fed_model(keras_model_fn())
  history <- fed_gossip_fit(fed_gossip(model, fed_optimizer("sgd", 0.1), fed_graph_complete(4), weights = "uniform",
                                       seed = 3), peers, rounds = 1, verbose = FALSE, evaluate_average = FALSE)
  fedavg <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.1), seed = 3,
                                  aggregator = fed_aggregator_mean(weighted = FALSE)), peers, rounds = 1, verbose = FALSE)
  expect_lt(max(abs(unlist(fed_gossip_weights(history, peer = 2)) - unlist(fed_weights(fedavg)))), 1e-6)
  expect_lt(history$consensus_distance, 1e-6)
  expect_equal(history$spectral_gap, 1, tolerance = 1e-12)
  expect_equal(history$loss, fedavg$loss, tolerance = 1e-12)
  expect_identical(history$bytes_sent, 3 * 31400)
})

test_that("asynchronous gossip runs pairwise ticks and reports the expected tick's gap", {
  skip_if_no_fedr()
  peers <- fed_split(fashion(), n_clients = 300)[1:4]
  process <- fed_gossip(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.05), fed_graph_ring(4), mode = "async",
                        ticks = 3, seed = 2)
  expect_output(print(process), "asynchronous pairwise, 3 ticks a round")
  history <- fed_gossip_fit(process, peers, rounds = 2, verbose = FALSE, evaluate_average = FALSE)
  expect_identical(history$ticks, c(3L, 3L))
  # E[W] = I - L / 8 on a ring of 4: eigenvalues 1, 3/4, 3/4, 1/2.
  expect_equal(history$spectral_gap, c(0.25, 0.25), tolerance = 1e-12)
  expect_identical(history$bytes_sent, rep(2 * 3 * 31400 / 4, 2))
  again <- fed_gossip_fit(process, peers, rounds = 2, verbose = FALSE, evaluate_average = FALSE)
  expect_identical(unlist(fed_gossip_weights(again)), unlist(fed_gossip_weights(history)))
  # Absences as a function of the round: a tick on a link of an absent peer does nothing.
  away <- fed_gossip_fit(process, peers, rounds = 2, verbose = FALSE, evaluate_average = FALSE, absent = function(round) if (round == 1) 2)
  expect_identical(away$num_peers_absent, c(1L, 0L))
  expect_identical(attr(away, "events")$event[[1]], "absent")
  expect_identical(attr(away, "events")$peer[[1]], 2L)
  expect_identical(away$ticks_skipped[[2]], 0L)
  expect_identical(sum(attr(away, "peers")$status == "absent"), 1L)
  expect_error(fed_gossip(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.05), fed_graph_ring(4), ticks = 2),
               "`ticks` are for mode = \"async\"", fixed = TRUE)
})

test_that("plot() draws the graph and the history, FedAvg on the same axes", {
  skip_if_no_fedr()
  peers <- fed_split(fashion(), n_clients = 300)[1:4]
  model <- fed_model(keras_model_fn())
  history <- fed_gossip_fit(fed_gossip(model, fed_optimizer("sgd", 0.05), fed_graph_ring(4), seed = 1), peers, rounds = 2, verbose = FALSE)
  fedavg <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.05), seed = 1), peers, rounds = 2, verbose = FALSE)
  path <- tempfile(fileext = ".pdf")
  grDevices::pdf(path)
  expect_invisible(plot(fed_graph_torus(3, 4)))
  expect_invisible(plot(history))
  expect_invisible(plot(history, fedavg = fedavg, x_axis = "bytes"))
  expect_invisible(plot(history, which = "graph"))
  grDevices::dev.off()
  expect_gt(file.size(path), 1000)
  expect_error(plot(history, fedavg = "x"), "`fedavg` must be NULL or a fed_history", fixed = TRUE)
  expect_error(plot(fed_graph_ring(4), layout = matrix(0, 3, 2)), "`layout` must be a 4 x 2 numeric matrix", fixed = TRUE)
  df <- as.data.frame(history)
  expect_identical(class(df), "data.frame")
  expect_null(attr(df, "state"))
})

test_that("an igraph graph is a fed_graph", {
  skip_if_no_fedr()
  skip_if_not_installed("igraph")  # not installed here (Debian has r-cran-igraph); the conversion is its edge list
  g <- fed_graph(igraph::make_ring(6))
  expect_identical(g$edges, fed_graph_ring(6)$edges)
})

test_that("fed_gossip_fit() prints a line per round unless verbose = FALSE", {
  skip_if_no_fedr()
  model <- fed_model(keras_model_fn())
  peers <- fed_split(fashion(), n_clients = 300)[1:4]
  process <- fed_gossip(model, fed_optimizer("sgd", 0.05), fed_graph_ring(4), seed = 1)
  lines <- testthat::capture_messages(fed_gossip_fit(process, peers, rounds = 2, evaluate_average = FALSE))
  expect_length(lines, 2L)
  expect_match(lines[[1]], "^round   1  .*consensus_distance \\d\\.\\d{4}.*\\(\\d+\\.\\d{2} s\\)\n$")
  expect_match(lines[[2]], "^round   2  ")
  expect_identical(testthat::capture_messages(fed_gossip_fit(process, peers, rounds = 1, verbose = FALSE,
                                                             evaluate_average = FALSE)), character())
})
