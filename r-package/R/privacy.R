# Differential privacy: aggregators, the budget, client sampling.

#' Differentially private federated averaging
#'
#' Aggregators for `fed_averaging(aggregator = )` that make FedAvg
#' differentially private at the client level (DP-FedAvg, McMahan et al.
#' 2018): each client's whole update is clipped to an L2 norm, the server sums
#' the clipped updates, adds Gaussian noise of standard deviation
#' `noise_multiplier * clip` per coordinate and divides by
#' `clients_per_round`. `fed_aggregator_dp_adaptive()` adapts the clip to a
#' quantile of the update norms (Andrew et al. 2021, as TensorFlow Privacy):
#' it grows when most updates are clipped and shrinks when few are; the
#' fraction of unclipped updates is released from the centred count (each
#' client counts +1/2 or -1/2), noised and clamped to `[0, 1]`.
#'
#' The noise comes from the operating system's cryptographic generator,
#' fresh at every round: the process `seed` repeats the learning (initial
#' weights, Dropout, sampling) but never the noise, so nobody who knows or
#' guesses the seed can remove it. `noise_seed` makes the noise reproducible
#' for tests, with a warning (class `fedr_warning`) that it voids the
#' guarantee.
#'
#' With `population_size` and `target_delta`, every round reports `epsilon`
#' (from Google's dp-accounting, by `accountant`, for `sampling`) next to
#' `clip` in the training history; with `max_epsilon`, a round that would
#' spend more is refused before any client trains: [fed_next()] signals an
#' error, and [fed_fit()] ends the run there with a warning (class
#' `fedr_warning`, "privacy budget exhausted"), keeping the rounds that ran.
#' [fed_privacy_plan()] finds the numbers for a budget, and
#' [fed_aggregator_dp_plan()] builds the aggregator that keeps to it.
#'
#' @section What a round releases:
#' The model update and, in the history, `clip`, `dp_noise_stddev`,
#' `epsilon`, `dp_unclipped_fraction` (adaptive), `num_clients` (not under
#' Poisson sampling), `num_clients_dropped` and `num_clients_failed`. The
#' training loss, the model's metrics (accuracy) and `num_examples` are exact
#' functions of the clients' data that epsilon does not cover, so they are
#' left out: evaluate on held-out clients ([fed_evaluate()] or
#' `fed_fit(validation_data = )`). Non-trainable variables (BatchNorm
#' statistics) are not aggregated: they would leak unprotected, so they keep
#' their initial values (a warning says so).
#'
#' @param noise_multiplier z >= 0, the noise standard deviation over the clip.
#' @param clients_per_round The number of clients per round (the divisor;
#'   the expected number under Poisson sampling).
#' @param clip The L2 norm bound of each client's update.
#' @param initial_clip The clip of the first round (adaptive).
#' @param target_quantile The share of updates the clip should fit (adaptive).
#' @param clip_learning_rate How fast the clip adapts.
#' @param clipped_count_stddev Noise on the centred count of unclipped
#'   updates; `NULL` is `clients_per_round / 20`. `noise_multiplier` must be
#'   below twice it.
#' @param population_size The number of clients in the population (under
#'   `"all"`, `clients_per_round`).
#' @param target_delta The delta of (epsilon, delta)-differential privacy.
#' @param max_epsilon Refuse rounds beyond this budget.
#' @param inner The sum under the noise: `NULL` (a plain sum) or
#'   [fed_aggregator_secure_sum()]; an aggregator that is not a sum (a mean,
#'   a median) is refused.
#' @param sampling How each round's clients are drawn, which epsilon accounts
#'   and every round checks: `"fixed"` (the default: a uniform sample of at
#'   most `clients_per_round`, as `fed_fit(clients_per_round = )` and
#'   [fed_sample_clients()] take; a larger round is refused), `"poisson"`
#'   (each client with probability `clients_per_round / population_size`) or
#'   `"all"` (every client every round, as `fed_fit()` without
#'   `clients_per_round`). [fed_fit()] refuses to run with another sampling.
#' @param noise_seed `NULL` (noise from the operating system) or, for tests
#'   only, a whole number that makes the noise reproducible; it voids the
#'   guarantee and warns.
#' @param accountant How epsilon is accounted, by Google's dp-accounting:
#'   `"rdp"` (the default: Renyi differential privacy, Mironov 2017) or
#'   `"pld"` (privacy loss distributions, Koskela et al. 2020: a tighter,
#'   smaller epsilon for the same noise, but slower, and not for fixed-size
#'   sampling, `sampling = "fixed"`, which it does not model).
#' @returns A `fed_aggregator`.
#' @family privacy
#' @export
#' @examplesIf fedr_available()
#' fed_aggregator_dp_fixed(1.0, clients_per_round = 10, clip = 0.5,
#'                         population_size = 100, target_delta = 1e-5)
#' fed_aggregator_dp_adaptive(0.5, clients_per_round = 10, clipped_count_stddev = 1)
#' fed_aggregator_dp_fixed(1.0, clients_per_round = 20, clip = 0.5, sampling = "all",
#'                         target_delta = 1e-5)
#' fed_aggregator_dp_fixed(1.0, clients_per_round = 10, clip = 0.5, population_size = 100,
#'                         target_delta = 1e-5, sampling = "poisson", accountant = "pld")
fed_aggregator_dp_fixed <- function(noise_multiplier, clients_per_round, clip, population_size = NULL,
                                    target_delta = NULL, max_epsilon = NULL, inner = NULL,
                                    sampling = "fixed", noise_seed = NULL, accountant = "rdp") {
  args <- list(noise_multiplier, as_count(clients_per_round, "clients_per_round"), clip,
    population_size = as_count(population_size, "population_size"),
    target_delta = target_delta, max_epsilon = max_epsilon, inner = as_inner(inner),
    sampling = check_string(sampling, "sampling"), noise_seed = as_seed(noise_seed, "noise_seed"),
    accountant = check_string(accountant, "accountant")
  )
  py <- dp_build("gaussian_fixed", args,
    c("noise_multiplier", "clients_per_round", "clip", "population_size", "target_delta", "max_epsilon", "inner",
      "sampling", "noise_seed", "accountant")
  )
  new_fed_component(py, "fed_aggregator", "dp_fixed")
}

#' @rdname fed_aggregator_dp_fixed
#' @export
fed_aggregator_dp_adaptive <- function(noise_multiplier, clients_per_round, initial_clip = 0.1,
                                       target_quantile = 0.5, clip_learning_rate = 0.2,
                                       clipped_count_stddev = NULL, population_size = NULL,
                                       target_delta = NULL, max_epsilon = NULL, inner = NULL,
                                       sampling = "fixed", noise_seed = NULL, accountant = "rdp") {
  args <- list(noise_multiplier, as_count(clients_per_round, "clients_per_round"),
    initial_clip = initial_clip, target_quantile = target_quantile,
    clip_learning_rate = clip_learning_rate, clipped_count_stddev = clipped_count_stddev,
    population_size = as_count(population_size, "population_size"),
    target_delta = target_delta, max_epsilon = max_epsilon, inner = as_inner(inner),
    sampling = check_string(sampling, "sampling"), noise_seed = as_seed(noise_seed, "noise_seed"),
    accountant = check_string(accountant, "accountant")
  )
  py <- dp_build("gaussian_adaptive", args,
    c("noise_multiplier", "clients_per_round", "initial_clip", "target_quantile", "clip_learning_rate",
      "clipped_count_stddev", "population_size", "target_delta", "max_epsilon", "inner", "sampling", "noise_seed",
      "accountant")
  )
  new_fed_component(py, "fed_aggregator", "dp_adaptive")
}

# Build a DP aggregator in Python (`fn`: a function of fedr.privacy by name,
# or a Python callable such as a plan's `aggregator`): its errors name the R
# argument, its fedr warnings (reproducible noise) become R warnings of class
# `fedr_warning`.
dp_build <- function(fn, args, arg) {
  if (is.character(fn)) fn <- fedr_module("fedr.privacy")[[fn]]
  out <- fedr_call(do.call(fedr_module("fedr._r")$call_with_warnings, c(list(fn), args)), arg = arg)
  for (message in reticulate::py_to_r(reticulate::py_get_item(out, 1L))) {
    warning(structure(class = c("fedr_warning", "warning", "condition"), list(message = message, call = NULL)))
  }
  reticulate::py_get_item(out, 0L)
}

#' The privacy budget of a number of rounds
#'
#' The epsilon that `rounds` rounds of differentially private federated
#' averaging spend, from Google's dp-accounting (`accountant`), for the way
#' the rounds' clients are drawn (`sampling`, as the DP aggregators take
#' it): a uniform sample of `clients_per_round` of `population_size`
#' (`"fixed"`, what `fed_fit(clients_per_round = )` does), each client with
#' probability `clients_per_round / population_size` (`"poisson"`), or every
#' client every round (`"all"`, `clients_per_round` equal to
#' `population_size`). [fed_privacy_plan()] solves for any one of epsilon,
#' the noise multiplier, the rounds or the clients per round.
#'
#' @inheritParams fed_aggregator_dp_fixed
#' @param rounds Numbers of rounds (a vector gives one epsilon each).
#' @returns A numeric vector of epsilons, one per element of `rounds`.
#' @family privacy
#' @export
#' @examplesIf fedr_available()
#' fed_epsilon(1.0, clients_per_round = 10, population_size = 100, rounds = 30, target_delta = 1e-5)
#' fed_epsilon(1.0, 10, 100, rounds = 30, target_delta = 1e-5, sampling = "poisson")
#' fed_epsilon(1.0, 100, 100, rounds = c(10, 50, 100), target_delta = 1e-5, sampling = "all")
#' fed_epsilon(1.0, 10, 100, rounds = 30, target_delta = 1e-5, sampling = "poisson", accountant = "pld")
fed_epsilon <- function(noise_multiplier, clients_per_round, population_size, rounds, target_delta,
                        sampling = "fixed", accountant = "rdp") {
  privacy <- fedr_module("fedr.privacy")
  if (!is.numeric(rounds) || !length(rounds) || anyNA(rounds)) {
    fedr_abort(sprintf("`rounds` must be whole numbers >= 0, not %s.", describe(rounds)), "rounds")
  }
  sampling <- check_string(sampling, "sampling")
  accountant <- check_string(accountant, "accountant")
  vapply(rounds, function(r) {
    reticulate::py_to_r(fedr_call(
      privacy$epsilon(noise_multiplier, as_count(clients_per_round, "clients_per_round"),
                      as_count(population_size, "population_size"), as_count(r, "rounds", 0L), target_delta,
                      sampling = sampling, accountant = accountant),
      arg = c("noise_multiplier", "clients_per_round", "population_size", "rounds", "target_delta", "sampling",
              "accountant")
    ))
  }, numeric(1))
}

#' Sample clients for a round
#'
#' Picks the clients of one round, seeded by (seed, round) so that runs
#' repeat: `"uniform"` takes `clients_per_round` clients without
#' replacement (what `sampling = "fixed"` of [fed_epsilon()] and the DP
#' aggregators accounts); `"poisson"` takes each client with probability
#' `clients_per_round / length(data)` (`sampling = "poisson"`; its size
#' varies and may be zero).
#'
#' @param data A `fed_data` object.
#' @param clients_per_round How many clients (the expected number for `"poisson"`).
#' @param seed A whole number, or `NULL` for fresh randomness.
#' @param round The round the sample is for.
#' @param method `"uniform"` or `"poisson"`.
#' @returns A `fed_data` with the sampled clients (possibly none for `"poisson"`:
#'   then `NULL`).
#' @family privacy
#' @export
#' @examplesIf fedr_available()
#' clients <- fed_split(fed_load_dataset(), n_clients = 100)
#' fed_sample_clients(clients, 10, seed = 1, round = 1)
fed_sample_clients <- function(data, clients_per_round, seed = NULL, round = 1L,
                               method = c("uniform", "poisson")) {
  check_data(data)
  method <- check_string(method[[1]], "method", c("uniform", "poisson"))
  n <- length(data)
  k <- as_count(clients_per_round, "clients_per_round")
  if (k > n) fedr_abort(sprintf("`clients_per_round` (%d) must not exceed the number of clients (%d).", k, n), "clients_per_round")
  learning <- fedr_module("fedr.learning")
  index <- reticulate::r_to_py(as.list(seq_len(n) - 1L))
  fn <- if (method == "uniform") learning$sample_clients else learning$sample_clients_poisson
  picked <- fedr_call(fn(index, k / n, seed = as_seed(seed), round_num = as_count(round, "round", 0L)),
    arg = c("seed", "round")
  )
  picked <- as.integer(unlist(reticulate::py_to_r(picked)))
  if (!length(picked)) return(NULL)
  data[picked + 1L]
}

# NULL or a whole number >= minimum, as an integer for Python.
as_count <- function(x, arg, minimum = 1L) {
  if (is.null(x)) NULL else as_integer(x, arg, min = minimum)
}

# The inner aggregator for Python, which decides whether it is a sum (one rule, in Python).
as_inner <- function(inner) {
  if (inherits(inner, "fed_aggregator")) inner$py else inner
}

#' Secure aggregation
#'
#' Aggregators that compute the clients' sum by secure aggregation (Bonawitz
#' et al. 2017, honest-but-curious server): each client sends its update
#' quantized to fixed point and masked with pairwise masks (from X25519 key
#' agreement and a ChaCha20 stream) that cancel in the sum, plus a self mask
#' that the surviving clients help remove (t-of-n Shamir shares, encrypted
#' with AES-GCM). The server learns only the sum. Clients that drop after
#' sharing keys are recovered while at least `threshold` survive; with fewer,
#' the round fails and the state is unchanged.
#'
#' `fed_aggregator_secure_mean()` is FedAvg's example-weighted mean under
#' secure aggregation; `fed_aggregator_secure_sum()` is the `inner` sum of
#' [fed_aggregator_dp_fixed()] and [fed_aggregator_dp_adaptive()] (the server
#' then sees only the noised sum).
#'
#' @param clip_range Each coordinate is clipped to `[-clip_range, clip_range]`
#'   before quantization (under DP, the clip sets it).
#' @param bits Bits of the modular sum (32 or 64).
#' @param threshold Survivors needed to unmask the sum: a whole number of
#'   clients (`3` or `3L`), a fraction of the round's clients in (0.5, 1)
#'   (`0.75`), or `NULL` (two thirds, at least 2). It must be more than half
#'   of the round's clients (t > n/2, Bonawitz et al. 2017): with fewer, two
#'   disjoint groups of survivors could each reveal one of a client's two
#'   secrets and the server would unmask that client's update; a round with
#'   too low a threshold is refused.
#' @param neighbors `NULL` (every pair of clients masks) or an even number
#'   of neighbours per client (SecAgg+, Bell et al. 2020): cheaper for many
#'   clients.
#' @param max_examples For the mean: the largest example count a client may
#'   report.
#' @returns A `fed_aggregator`.
#' @family privacy
#' @export
#' @examplesIf fedr_available()
#' fed_aggregator_secure_mean()
#' fed_aggregator_dp_fixed(1.0, 10, clip = 0.5, inner = fed_aggregator_secure_sum())
fed_aggregator_secure_sum <- function(clip_range = 1, bits = 32L, threshold = NULL, neighbors = NULL) {
  privacy <- fedr_module("fedr.privacy")
  py <- fedr_call(
    privacy$secure_sum(clip_range = clip_range, bits = as_count(bits, "bits"),
                       threshold = as_count_or_fraction(threshold, "threshold"),
                       neighbors = as_count(neighbors, "neighbors")),
    arg = c("clip_range", "bits", "threshold", "neighbors")
  )
  new_fed_component(py, "fed_aggregator", "secure_sum")
}

#' @rdname fed_aggregator_secure_sum
#' @export
fed_aggregator_secure_mean <- function(clip_range = 1, bits = 64L, threshold = NULL, neighbors = NULL,
                                       max_examples = 2^24) {
  privacy <- fedr_module("fedr.privacy")
  py <- fedr_call(
    privacy$secure_mean(clip_range = clip_range, bits = as_count(bits, "bits"),
                       threshold = as_count_or_fraction(threshold, "threshold"),
                        neighbors = as_count(neighbors, "neighbors"), max_examples = as_count(max_examples, "max_examples")),
    arg = c("clip_range", "bits", "threshold", "neighbors", "max_examples")
  )
  new_fed_component(py, "fed_aggregator", "secure_mean")
}

#' Distributed differential privacy: the clients add the noise inside the secure sum
#'
#' With [fed_aggregator_dp_fixed()] over [fed_aggregator_secure_sum()] the
#' server decodes the exact sum before it adds noise. Here each client
#' clips its whole update to `clip`, rounds it to the secure sum's integers,
#' adds its own share of integer noise (the Skellam mechanism, Agarwal,
#' Kairouz and Liu 2021) drawn where it runs from the operating system, and
#' only then masks it: the server only ever decodes a noised sum. The shares
#' are sized so that the sum carries noise of standard deviation at least
#' `noise_multiplier * clip` while no more than `dropout_rate` of the
#' round's clients drop out; with more dropouts the round is refused before
#' unmasking (`on_excess_dropout = "refuse"`) or released with its weaker
#' epsilon and a warning (`"report"`). Epsilon is the Skellam mechanism's
#' (the paper's bound, Poisson subsampling by Zhu and Wang 2019, converted
#' by dp-accounting). Runs in-process, on Ray and on Flower nodes.
#'
#' @inheritParams fed_aggregator_dp_fixed
#' @inheritParams fed_aggregator_secure_sum
#' @param noise_multiplier The total noise's standard deviation over the clip (> 0).
#' @param sampling `"all"` (every client every round, the default) or
#'   `"poisson"`; fixed-size sampling is refused (no bound for it is used).
#' @param dropout_rate The share of each round's clients that may drop out
#'   with the planned guarantee intact, in `[0, 1)`.
#' @param on_excess_dropout `"refuse"` or `"report"` (see above).
#' @returns A `fed_aggregator`; each round's history row has `epsilon` (when
#'   `population_size` and `target_delta` are given), `dp_noise_stddev`,
#'   `ddp_noise_shares` and `ddp_provisioned`.
#' @family privacy
#' @export
#' @examplesIf fedr_available()
#' fed_aggregator_dp_distributed(1.0, clients_per_round = 10, clip = 0.5,
#'                               population_size = 10, target_delta = 1e-5)
fed_aggregator_dp_distributed <- function(noise_multiplier, clients_per_round, clip, population_size = NULL,
                                          target_delta = NULL, max_epsilon = NULL, sampling = "all",
                                          dropout_rate = 0.1, on_excess_dropout = "refuse", bits = 32L,
                                          threshold = NULL, neighbors = NULL, noise_seed = NULL) {
  args <- list(noise_multiplier, as_count(clients_per_round, "clients_per_round"), clip,
    population_size = as_count(population_size, "population_size"),
    target_delta = target_delta, max_epsilon = max_epsilon, sampling = check_string(sampling, "sampling"),
    dropout_rate = dropout_rate, on_excess_dropout = check_string(on_excess_dropout, "on_excess_dropout"),
    bits = as_count(bits, "bits"), threshold = as_count_or_fraction(threshold, "threshold"),
    neighbors = as_count(neighbors, "neighbors"), noise_seed = as_seed(noise_seed, "noise_seed")
  )
  py <- dp_build("distributed_dp", args,
    c("noise_multiplier", "clients_per_round", "clip", "population_size", "target_delta", "max_epsilon",
      "sampling", "dropout_rate", "on_excess_dropout", "bits", "threshold", "neighbors", "noise_seed")
  )
  new_fed_component(py, "fed_aggregator", "dp_distributed")
}
