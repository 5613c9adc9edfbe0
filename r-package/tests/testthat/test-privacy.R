# Differential privacy from R: aggregators, epsilon per round, the budget, sampling.

test_that("fed_epsilon() is dp-accounting's epsilon for the sampling that runs", {
  skip_if_no_fedr()
  expect_equal(fed_epsilon(1.1, 1, 100, 200, 1e-5, sampling = "poisson"), 1.0577, tolerance = 1e-4)
  # By hand with dp-accounting: the README's example (z = 1, 10 of 100, 30 rounds) with fixed-size
  # samples (replace-one neighbours: the sum moves by 2C, so z / 2), and every client for 100 rounds.
  dpa <- reticulate::import("dp_accounting")
  by_hand <- function(event, rounds, relation = dpa$NeighboringRelation$ADD_OR_REMOVE_ONE) {
    # dp-accounting logs, through absl, each fractional RDP order it leaves out: not this test's output.
    absl <- reticulate::import("logging")$getLogger("absl")
    level <- absl$level
    absl$setLevel(40L)
    on.exit(absl$setLevel(level))
    accountant <- dpa$rdp$RdpAccountant(neighboring_relation = relation)
    accountant$compose(event, as.integer(rounds))
    accountant$get_epsilon(1e-5)
  }
  fixed <- by_hand(dpa$SampledWithoutReplacementDpEvent(100L, 10L, dpa$GaussianDpEvent(0.5)), 30,
                   dpa$NeighboringRelation$REPLACE_ONE)
  expect_equal(fixed, 32.27, tolerance = 1e-3)
  expect_equal(fed_epsilon(1.0, 10, 100, 30, 1e-5), fixed, tolerance = 1e-12)
  expect_equal(fed_epsilon(1.0, 10, 100, 30, 1e-5, sampling = "poisson"),
               by_hand(dpa$PoissonSampledDpEvent(0.1, dpa$GaussianDpEvent(1.0)), 30), tolerance = 1e-12)
  every <- by_hand(dpa$GaussianDpEvent(1.0), 100)
  expect_equal(every, 96.12, tolerance = 1e-3)
  expect_equal(fed_epsilon(1.0, 100, 100, 100, 1e-5, sampling = "all"), every, tolerance = 1e-12)
  eps <- fed_epsilon(1.0, 10, 100, rounds = c(0, 10, 50), target_delta = 1e-5)
  expect_length(eps, 3L)
  expect_identical(eps[[1]], 0)
  expect_true(eps[[2]] < eps[[3]])
  expect_error(fed_epsilon(1.0, 10, 100, 3, 1e-5, sampling = "uniform"),
               "`sampling`: expected one of 'poisson', 'fixed' or 'all', got 'uniform'", class = "fedr_error")
  expect_error(fed_epsilon(1.0, 10, 100, 3, 1e-5, sampling = "all"),
               "`population_size`: sampling = 'all' trains every client every round", class = "fedr_error")
  expect_error(fed_epsilon(1.0, 10, 5, 3, 1e-5), "`population_size`: expected at least clients_per_round \\(10\\) clients, got 5", class = "fedr_error")
  expect_error(fed_epsilon(1.0, 10, 100, 3, 2), "`target_delta`: expected a finite number in \\(0, 1\\), got 2", class = "fedr_error")
  expect_error(fed_epsilon(1.0, 10, 100, "3", 1e-5), "`rounds` must be whole numbers >= 0", class = "fedr_error")
})

test_that("DP-FedAvg reports epsilon and clip per round, repeats only with noise_seed, and refuses rounds beyond the budget", {
  skip_if_no_fedr()
  population <- fed_split(fashion(), n_clients = 600)[1:20]
  model <- fed_model(keras_model_fn())
  dp <- function(max_epsilon = NULL, noise_seed = NULL) {
    fed_aggregator_dp_fixed(1.0, clients_per_round = 5, clip = 0.5, population_size = 20,
                            target_delta = 1e-3, max_epsilon = max_epsilon, noise_seed = noise_seed)
  }
  expect_output(print(dp()), "<fed_aggregator> gaussian_fixed\\(noise_multiplier=1, clients_per_round=5, clip=0.5, inner=sum\\(\\)\\)")
  process <- fed_averaging(model, fed_optimizer("sgd", 0.05), aggregator = dp(), seed = 4)
  history <- fed_fit(process, population, rounds = 3, clients_per_round = 5, verbose = FALSE)
  expect_true(all(c("clip", "epsilon") %in% names(history)))
  expect_identical(history$num_clients, rep(5L, 3))
  expect_equal(history$epsilon, fed_epsilon(1.0, 5, 20, 1:3, 1e-3))
  expect_identical(history$clip, rep(0.5, 3))
  # The same seed, the same clients: the noise differs (it comes from the operating system).
  again <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.05), aggregator = dp(), seed = 4),
                   population, rounds = 3, clients_per_round = 5, verbose = FALSE)
  expect_false(isTRUE(all.equal(fed_weights(again), fed_weights(history))))
  # Reproducible noise only by name, with a warning that it voids the guarantee.
  expect_warning(seeded <- dp(noise_seed = 7), "voids the differential privacy guarantee", class = "fedr_warning")
  expect_output(print(seeded), "noise_seed=7")
  runs <- lapply(1:2, function(i) {
    agg <- suppressWarnings(dp(noise_seed = 7))
    fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.05), aggregator = agg, seed = 4),
            population, rounds = 2, clients_per_round = 5, verbose = FALSE)
  })
  expect_identical(fed_weights(runs[[1]]), fed_weights(runs[[2]]))
  # The plot gets a panel for epsilon.
  path <- withr::local_tempfile(fileext = ".png")
  grDevices::png(path, width = 900, height = 300)
  expect_identical(plot(history), history)
  grDevices::dev.off()
  expect_gt(file.size(path), 1000)
  # A budget of two rounds: the third is refused, the run ends there (a warning), the two are kept.
  budget <- fed_epsilon(1.0, 5, 20, 2, 1e-3) * 1.0001
  capped <- fed_averaging(model, fed_optimizer("sgd", 0.05), aggregator = dp(budget), seed = 4)
  expect_warning(
    h <- fed_fit(capped, population, rounds = 3, clients_per_round = 5, verbose = FALSE),
    "privacy budget exhausted: round 3: it would spend epsilon = .* over max_epsilon", class = "fedr_warning"
  )
  expect_identical(h$round, 1:2)
  expect_identical(attr(h, "events")$event, "budget_exhausted")
  # Round by round, the refused round is an input error naming the budget, the state unchanged.
  err <- tryCatch(fed_next(capped, attr(h, "state"), population[1:5]), error = identity)
  expect_s3_class(err, "fedr_error_input")
  expect_match(conditionMessage(err), "^ValueError: round 3: it would spend epsilon")
})

test_that("under DP the history holds no exact training metrics", {
  skip_if_no_fedr()
  clients <- small_clients()
  model <- fed_model(keras_model_fn())
  plain <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 1), clients, rounds = 1, verbose = FALSE)
  expect_true(all(c("loss", "sparse_categorical_accuracy", "num_examples") %in% names(plain)))
  private <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 1,
                                   aggregator = fed_aggregator_dp_fixed(1.0, 3, clip = 0.5, sampling = "all")),
                     clients, rounds = 2, verbose = FALSE)
  expect_length(intersect(c("loss", "sparse_categorical_accuracy", "num_examples"), names(private)), 0L)
  expect_identical(private$num_clients, c(3L, 3L))
  expect_identical(private$clip, c(0.5, 0.5))
  poisson <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 1,
                                   aggregator = fed_aggregator_dp_fixed(1.0, 2, clip = 0.5, sampling = "poisson",
                                                                        population_size = 3)),
                     clients, rounds = 2, clients_per_round = 2, sampling = "poisson", verbose = FALSE)
  expect_false(any(c("num_clients", "num_examples", "loss") %in% names(poisson)))
})

test_that("fed_fit() and every round refuse a sampling the DP aggregator does not account", {
  skip_if_no_fedr()
  population <- fed_split(fashion(), n_clients = 600)[1:12]
  model <- fed_model(keras_model_fn())
  dp <- fed_aggregator_dp_fixed(1.0, clients_per_round = 10, clip = 0.5, population_size = 12, target_delta = 1e-5)
  process <- fed_averaging(model, fed_optimizer("sgd", 0.05), aggregator = dp, seed = 2)
  # One round of 11 clients where the aggregator accounts samples of 10.
  expect_error(fed_next(process, fed_initialize(process), population[1:11]),
               "round 1 has 11 clients, more than clients_per_round = 10; the aggregator accounts sampling = 'fixed'",
               class = "fedr_error")
  expect_error(fed_fit(process, population, rounds = 1, clients_per_round = 11, verbose = FALSE),
               "`clients_per_round`: the run trains 11 clients per round but the aggregator's clients_per_round",
               class = "fedr_error")
  expect_error(fed_fit(process, population, rounds = 1, verbose = FALSE),
               "`sampling`: the run samples clients by 'all' but the aggregator .* accounts sampling = 'fixed'",
               class = "fedr_error")
  expect_error(fed_fit(process, population, rounds = 1, clients_per_round = 10, sampling = "poisson", verbose = FALSE),
               "build it with sampling = 'poisson'", class = "fedr_error")
  expect_error(fed_fit(process, population[1:11], rounds = 1, clients_per_round = 10, verbose = FALSE),
               "`data`: the run samples from 11 clients but the aggregator accounts population_size = 12",
               class = "fedr_error")
  history <- fed_fit(process, population, rounds = 1, clients_per_round = 10, verbose = FALSE)
  expect_identical(history$num_clients, 10L)
  expect_equal(history$epsilon, fed_epsilon(1.0, 10, 12, 1, 1e-5))
})

test_that("adaptive clipping moves the clip, and arguments are named", {
  skip_if_no_fedr()
  clients <- small_clients()
  model <- fed_model(keras_model_fn())
  # Updates of a zero-initialised model after a round are far above 1e-4: the clip grows.
  agg <- fed_aggregator_dp_adaptive(0, clients_per_round = 3, initial_clip = 1e-4, clip_learning_rate = 0.5,
                                    sampling = "all")
  history <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), aggregator = agg), clients, rounds = 2, verbose = FALSE)
  expect_equal(history$clip, c(1e-4, 1e-4 * exp(-0.5 * (0 - 0.5))))
  expect_identical(history$dp_unclipped_fraction, c(0, 0))
  expect_error(fed_aggregator_dp_adaptive(1.0, 10), "`noise_multiplier`: 1 must be below 2 \\* clipped_count_stddev = 1", class = "fedr_error")
  expect_error(fed_aggregator_dp_fixed(1.0, 10, clip = -1), "`clip`: expected a finite number > 0, got -1", class = "fedr_error")
  expect_error(fed_aggregator_dp_fixed(1.0, 0, clip = 1), "`clients_per_round` must be a positive integer", class = "fedr_error")
  expect_error(fed_aggregator_dp_fixed(1.0, 10, 1, sampling = "uniform"), "`sampling`: expected one of 'poisson', 'fixed' or 'all'", class = "fedr_error")
  expect_error(fed_aggregator_dp_fixed(1.0, 10, 1, noise_seed = -1), "`noise_seed` must be", class = "fedr_error")
  # The inner aggregator must be a sum: the rule is Python's, the error names `inner`.
  expect_error(fed_aggregator_dp_fixed(1.0, 10, 1, inner = "secure"), "`inner`: expected a sum such as fedr.aggregators.sum\\(\\)", class = "fedr_error")
  expect_error(fed_aggregator_dp_fixed(1.0, 10, 1, inner = fed_aggregator_mean()),
               "`inner`: expected a sum .*got mean\\(weighted=True\\)", class = "fedr_error")
  expect_error(fed_aggregator_dp_adaptive(0.5, 10, clipped_count_stddev = 1, inner = fed_aggregator_median()),
               "`inner`: expected a sum .*got median\\(\\)", class = "fedr_error")
})

test_that("fed_sample_clients() is seeded per round", {
  skip_if_no_fedr()
  clients <- fed_split(fashion(), n_clients = 100)
  a <- fed_sample_clients(clients, 10, seed = 1, round = 1)
  expect_s3_class(a, "fed_data")
  expect_length(a, 10L)
  expect_identical(a$ids, fed_sample_clients(clients, 10, seed = 1, round = 1)$ids)
  expect_false(identical(a$ids, fed_sample_clients(clients, 10, seed = 1, round = 2)$ids))
  sizes <- vapply(1:40, function(r) length(fed_sample_clients(clients, 10, seed = 2, round = r, method = "poisson")), integer(1))
  expect_gt(length(unique(sizes)), 3L)
  expect_equal(mean(sizes), 10, tolerance = 0.2)
  expect_error(fed_sample_clients(clients, 101), "`clients_per_round` \\(101\\) must not exceed the number of clients \\(100\\)", class = "fedr_error")
})

test_that("secure aggregation gives the plain mean within quantization, alone and under DP", {
  skip_if_no_fedr()
  clients <- small_clients()
  model <- fed_model(keras_model_fn())
  plain <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 1), clients, rounds = 2, verbose = FALSE)
  secure <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 1, aggregator = fed_aggregator_secure_mean()),
                    clients, rounds = 2, verbose = FALSE)
  expect_equal(fed_weights(secure), fed_weights(plain), tolerance = 1e-5)
  expect_identical(secure$secure_clients, c(3, 3))
  expect_identical(secure$secure_dropped, c(0, 0))
  # The same noise in both (noise_seed, for this comparison only).
  dp <- function(inner = NULL) suppressWarnings(fed_aggregator_dp_fixed(0.5, 3, clip = 1, sampling = "all", inner = inner, noise_seed = 1))
  dp_plain <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 1,
    aggregator = dp()), clients, rounds = 1, verbose = FALSE)
  dp_secure <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 1,
    aggregator = dp(fed_aggregator_secure_sum())), clients, rounds = 1, verbose = FALSE)
  expect_equal(fed_weights(dp_secure), fed_weights(dp_plain), tolerance = 1e-5)
  expect_identical(dp_secure$inner_secure_clients, 3)
  expect_error(fed_aggregator_secure_sum(bits = 0), "`bits` must be a positive integer", class = "fedr_error")
  expect_error(fed_aggregator_secure_sum(clip_range = -1), "`clip_range`", class = "fedr_error")
})
