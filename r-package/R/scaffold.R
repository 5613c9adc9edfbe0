# SCAFFOLD: federated averaging corrected for client drift, and the states its clients keep.

#' SCAFFOLD
#'
#' Builds SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic
#' Controlled Averaging for Federated Learning", control variates of option
#' II): federated averaging corrected for client drift (clients whose data
#' differ drift apart from one another in local training). The
#' algorithm is the Python core's (`fedr.learning.build_scaffold()`); this
#' function converts R's arguments for it.
#'
#' Each client's local SGD steps follow `g(y) + c - c_i` instead of its own
#' gradient `g(y)`: `c` is the server's control variate, `c_i` the client's
#' own (zero the first time the client takes part). After its `K` local
#' steps at learning rate `lr`, the client sets
#' `c_i_new = c_i - c + (x - y) / (K * lr)`, with `x` the round's starting
#' weights and `y` its trained ones, and sends its weight change `y - x` and
#' its control change `c_i_new - c_i`. The server applies the aggregated
#' weight change with the server optimizer (SGD with learning rate 1, the
#' default, is the paper's global step 1) and moves `c` by the sum of the
#' control changes divided by `num_clients`. On data split unevenly over
#' clients (e.g. by label) it needs fewer rounds than federated averaging.
#'
#' @section Where the control variates live:
#' The server's `c` is part of the server state, saved with it by
#' [fed_save_state()]. Each client's `c_i` stays with the client and never
#' enters the server state: for clients trained in this R session (threads,
#' serial) or on Ray ([fed_executor_ray()]) the process keeps them in its
#' client store, beside the clients' data, keyed by client id; read them with
#' [fed_client_states()]. A Flower node keeps its own client's. [fed_fit()]
#' without `state` starts a fresh run and empties the store (every client
#' starts again from `c_i = 0`); with `state` it continues with the clients'
#' control variates as they are, as [fed_next()] always does.
#'
#' @inheritParams fed_averaging
#' @param client_optimizer The clients' optimizer: plain SGD at a constant
#'   learning rate, e.g. `fed_optimizer("sgd", 0.05)` (option II computes the
#'   control variates from that learning rate). Other optimizers, SGD with
#'   momentum and learning-rate schedules are refused.
#' @param aggregator How client updates are combined: `NULL` (the default) is
#'   [fed_aggregator_mean()]. It must read the updates on the server (mean,
#'   median, trimmed mean, Krum, ...): the control changes travel in
#'   plaintext, so differential privacy and secure aggregation are refused.
#' @param proximal_mu FedProx's proximal coefficient (see [fed_averaging()]),
#'   a finite number `>= 0`; `0` (the default) is SCAFFOLD alone.
#' @param num_clients `NULL` (the default) or a positive whole number: `N`,
#'   the number of clients in the whole federation, by which the server
#'   divides the sum of a round's control changes. `NULL` takes each round's
#'   clients, right when every client takes part in every round; give it
#'   when rounds sample clients (`fed_fit(clients_per_round = )`). A round
#'   with more clients than `num_clients` fails.
#' @returns A `fed_process` object, as from [fed_averaging()], used by
#'   [fed_initialize()], [fed_next()], [fed_fit()], [fed_evaluate()] and
#'   [fed_client_states()].
#' @references Karimireddy, S. P., Kale, S., Mohri, M., Reddi, S., Stich, S.
#'   and Suresh, A. T. (2020). SCAFFOLD: Stochastic Controlled Averaging for
#'   Federated Learning. Proceedings of the 37th International Conference on
#'   Machine Learning (ICML), PMLR 119.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' keras <- reticulate::import("keras")
#' model <- fed_model(function() {
#'   keras$Sequential(list(
#'     keras$Input(shape = list(784L)),
#'     keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
#'   ))
#' })
#' process <- fed_scaffold(model, fed_optimizer("sgd", 0.02), seed = 1)
#' process
#' clients <- fed_split(fed_load_dataset(), n_clients = 300)[1:3]
#' history <- fed_fit(process, clients, rounds = 2)
#' fed_client_states(process)
fed_scaffold <- function(model, client_optimizer, server_optimizer = NULL, local_epochs = 1L,
                         seed = NULL, executor = NULL, aggregator = NULL, min_clients = 1L,
                         proximal_mu = 0, num_clients = NULL) {
  num_clients <- as_count(num_clients, "num_clients")  # R's 100 is a double; Python wants an int
  process <- new_fed_process("build_scaffold", model, client_optimizer, server_optimizer, local_epochs, seed,
                             executor, aggregator, min_clients, proximal_mu, extra = list(num_clients = num_clients))
  process$scaffold <- TRUE
  process
}

#' The states SCAFFOLD's clients keep
#'
#' Reads a process's client store: the state each client keeps from one
#' round it takes part in to the next, SCAFFOLD's control variate `c_i` (see
#' [fed_scaffold()]), for clients trained in this R session or on Ray. The
#' values stay in the store; this returns one summary row per client.
#'
#' @param process A [fed_scaffold()] process (any [fed_averaging()] process
#'   is accepted; its clients keep no state).
#' @returns A data frame with one row per client that has a state, ordered by
#'   client id: `client` (the client's id, character), `round` (integer, the
#'   last round whose client states were kept) and `control_norm` (double,
#'   the Euclidean length of the client's control variate, `NA` for a state
#'   without one). No rows, with those columns, before any SCAFFOLD round or
#'   for a process of another algorithm.
#' @family workflow
#' @export
#' @examplesIf fedr_available()
#' keras <- reticulate::import("keras")
#' model <- fed_model(function() {
#'   keras$Sequential(list(
#'     keras$Input(shape = list(784L)),
#'     keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
#'   ))
#' })
#' process <- fed_scaffold(model, fed_optimizer("sgd", 0.02), seed = 1)
#' fed_client_states(process)
#' clients <- fed_split(fed_load_dataset(), n_clients = 300)[1:3]
#' history <- fed_fit(process, clients, rounds = 2, verbose = FALSE)
#' fed_client_states(process)
fed_client_states <- function(process) {
  check_process(process)
  store <- fedr_call(process$py$client_states)
  ids <- as.character(reticulate::py_to_r(store$ids()))
  round <- as.integer(reticulate::py_to_r(store$round_num))
  np <- fedr_module("numpy")
  name <- reticulate::py_to_r(fedr_module("fedr.learning.scaffold")$CONTROL) # "scaffold/control"
  control_norm <- vapply(ids, function(id) {
    state <- store$get(id)
    if (inherits(state, "python.builtin.NoneType") || !reticulate::py_to_r(state$`__contains__`(name))) {
      return(NA_real_)
    }
    # The length in float64 (the arrays are float32), computed by numpy on the stored array.
    control <- reticulate::py_get_item(state, name)
    as.double(reticulate::py_to_r(np$linalg$norm(np$asarray(control, dtype = "float64"))))
  }, numeric(1), USE.NAMES = FALSE)
  data.frame(
    client = ids,
    round = rep(round, length(ids)),
    control_norm = control_norm,
    stringsAsFactors = FALSE
  )
}
