# Planning a privacy budget from R: solving the fourth number, its methods, its aggregator; the PLD accountant.

test_that("fed_privacy_plan() solves the issue's example both ways", {
  skip_if_no_fedr()
  # 100 of 10,000 clients per round (Poisson), 200 rounds, delta 1e-5: epsilon 1.0577 is z = 1.1.
  plan <- fed_privacy_plan(population_size = 10000, target_delta = 1e-5, target_epsilon = 1.0577,
                           rounds = 200, clients_per_round = 100)
  expect_s3_class(plan, "fed_privacy_plan")
  expect_identical(plan$solved, "noise_multiplier")
  expect_equal(plan$noise_multiplier, 1.1, tolerance = 1e-3)
  expect_lte(plan$epsilon, 1.0577)
  expect_identical(plan$rounds, 200L)
  expect_identical(plan$clients_per_round, 100L)
  expect_identical(plan$population_size, 10000L)
  expect_identical(plan$update_noise_multiplier, plan$noise_multiplier)
  expect_identical(plan$clipped_count_stddev, NA_real_)
  expect_true(inherits(plan$py, "python.builtin.object"))
  # Back: the plan's noise and epsilon allow its 200 rounds. (z rounded to 1.1 spends 1.05774 in 200
  # rounds, a little over the plan's 1.05770, and would allow 199.)
  back <- fed_privacy_plan(population_size = 10000, target_delta = 1e-5, target_epsilon = plan$epsilon,
                           noise_multiplier = plan$noise_multiplier, clients_per_round = 100)
  expect_identical(back$solved, "rounds")
  expect_identical(back$rounds, 200L)
  # And the clients per round that z = 1.1 allows for 200 rounds at epsilon 1.0578.
  clients <- fed_privacy_plan(population_size = 10000, target_delta = 1e-5, target_epsilon = 1.0578,
                              noise_multiplier = 1.1, rounds = 200)
  expect_identical(clients$solved, "clients_per_round")
  expect_identical(clients$clients_per_round, 100L)
})

test_that("a plan's epsilon is the Python core's for the same numbers, by either accountant", {
  skip_if_no_fedr()
  py <- fedr_python()$privacy
  plan <- fed_privacy_plan(10000, 1e-5, target_epsilon = 1.0577, rounds = 200, clients_per_round = 100)
  expect_equal(plan$epsilon, py$epsilon(plan$noise_multiplier, 100L, 10000L, 200L, 1e-5, sampling = "poisson"),
               tolerance = 1e-12)
  spent <- fed_privacy_plan(10000, 1e-5, noise_multiplier = 1.1, rounds = 200, clients_per_round = 100)
  expect_identical(spent$solved, "target_epsilon")
  expect_identical(spent$target_epsilon, spent$epsilon)
  expect_equal(spent$epsilon, py$epsilon(1.1, 100L, 10000L, 200L, 1e-5, sampling = "poisson"), tolerance = 1e-12)
  expect_equal(spent$epsilon, fed_epsilon(1.1, 100, 10000, 200, 1e-5, sampling = "poisson"), tolerance = 1e-12)
  pld <- fed_privacy_plan(10000, 1e-5, noise_multiplier = 1.1, rounds = 200, clients_per_round = 100,
                          accountant = "pld")
  expect_identical(pld$accountant, "pld")
  expect_equal(pld$epsilon, py$epsilon(1.1, 100L, 10000L, 200L, 1e-5, sampling = "poisson", accountant = "pld"),
               tolerance = 1e-12)
  expect_equal(fed_epsilon(1.1, 100, 10000, 200, 1e-5, sampling = "poisson", accountant = "pld"), pld$epsilon,
               tolerance = 1e-12)
  expect_lt(pld$epsilon, spent$epsilon)
  # Adaptive clipping: the update noise is what remains of z after the count's share.
  adaptive <- fed_privacy_plan(10000, 1e-5, noise_multiplier = 1.1, rounds = 200, clients_per_round = 100,
                               clipping = "adaptive", clipped_count_stddev = 5)
  expect_equal(adaptive$epsilon, spent$epsilon, tolerance = 1e-12)
  expect_equal(adaptive$update_noise_multiplier, (1.1^-2 - 10^-2)^-0.5, tolerance = 1e-12)
  expect_identical(adaptive$clipped_count_stddev, 5)
})

test_that("a plan prints, converts to one row and plots", {
  skip_if_no_fedr()
  plan <- fed_privacy_plan(10000, 1e-5, target_epsilon = 1.0577, rounds = 200, clients_per_round = 100)
  df <- as.data.frame(plan)
  expect_s3_class(df, "data.frame")
  expect_identical(nrow(df), 1L)
  expect_identical(names(df), c("target_epsilon", "epsilon", "target_delta", "noise_multiplier",
                                "update_noise_multiplier", "clipped_count_stddev", "rounds", "clients_per_round",
                                "population_size", "sampling", "clipping", "accountant", "solved", "mechanism",
                                "dropout_rate", "dim"))
  expect_identical(df$mechanism, "gaussian")
  expect_identical(df$solved, "noise_multiplier")
  expect_identical(df$rounds, 200L)
  text <- format(plan)
  expect_identical(text[[1]], "<fed_privacy_plan> noise_multiplier solved")
  expect_match(text, "noise_multiplier +1\\.1000 \\(solved\\)", all = FALSE)
  expect_match(text, "epsilon +1\\.0577 \\(target 1\\.0577\\)", all = FALSE)
  expect_match(text, "clients_per_round +100 of 10000", all = FALSE)
  expect_match(text, "accountant +rdp", all = FALSE)
  expect_output(expect_invisible(print(plan)), "noise_multiplier solved")
  adaptive <- fed_privacy_plan(10000, 1e-5, noise_multiplier = 1.1, rounds = 200, clients_per_round = 100,
                               clipping = "adaptive", clipped_count_stddev = 5)
  expect_match(format(adaptive), "update_noise_multiplier +1\\.1067", all = FALSE)
  expect_match(format(adaptive), "epsilon +1\\.0577 \\(solved\\)", all = FALSE)
  for (engine in c("base", if (requireNamespace("ggplot2", quietly = TRUE)) "ggplot2")) {
    path <- withr::local_tempfile(fileext = ".png")
    grDevices::png(path, width = 700, height = 400)
    expect_invisible(out <- plot(plan, engine = engine))
    grDevices::dev.off()
    expect_identical(out, plan)
    expect_gt(file.size(path), 1000)
  }
  # Fewer points (what PLD plots use by default), chosen multipliers.
  path <- withr::local_tempfile(fileext = ".pdf")
  grDevices::pdf(path)
  expect_invisible(plot(plan, noise_multipliers = c(1, 2), max_rounds = 50, points = 5, engine = "base"))
  grDevices::dev.off()
  expect_error(plot(plan, noise_multipliers = -1), "`noise_multipliers` must be positive numbers", class = "fedr_error")
  expect_error(plot(plan, max_rounds = 0), "`max_rounds` must be a positive integer", class = "fedr_error")
})

test_that("a plan's errors name the argument at fault", {
  skip_if_no_fedr()
  err <- expect_error(fed_privacy_plan(10000, 1e-5, target_epsilon = 1, rounds = 200), class = "fedr_error_input")
  expect_match(conditionMessage(err), "give exactly three of target_epsilon, noise_multiplier, rounds and clients_per_round", fixed = TRUE)
  expect_match(conditionMessage(err), "left out: noise_multiplier, clients_per_round", fixed = TRUE)
  expect_identical(err$arg, "noise_multiplier")
  err <- expect_error(fed_privacy_plan(10000, 1e-5, target_epsilon = 1, noise_multiplier = 1, rounds = 2,
                                       clients_per_round = 3), class = "fedr_error_input")
  expect_match(conditionMessage(err), "left out: none", fixed = TRUE)
  err <- expect_error(fed_privacy_plan(10000, 1e-5, target_epsilon = -1, rounds = 200, clients_per_round = 100),
                      "`target_epsilon`: expected a finite number > 0, got -1", class = "fedr_error_input")
  expect_identical(err$arg, "target_epsilon")
  err <- expect_error(fed_privacy_plan(10000, 1e-5, target_epsilon = 1, rounds = 200, clients_per_round = 100,
                                       sampling = "fixed", accountant = "pld"),
                      "`accountant`: dp-accounting's PLD accountant does not model fixed-size sampling", class = "fedr_error_input")
  expect_identical(err$arg, "accountant")
  err <- expect_error(fed_privacy_plan(10000, 1e-5, target_epsilon = 1, rounds = 200, clients_per_round = 100,
                                       clipping = "none"),
                      "`clipping`: expected 'fixed' or 'adaptive', got 'none'", class = "fedr_error_input")
  expect_identical(err$arg, "clipping")
  err <- expect_error(fed_privacy_plan(10000, 1e-5, target_epsilon = 0.01, noise_multiplier = 0.5, clients_per_round = 100),
                      "`target_epsilon`: even one round spends epsilon", class = "fedr_error_input")
  expect_error(fed_privacy_plan(10000, 2, noise_multiplier = 1, rounds = 2, clients_per_round = 3),
               "`target_delta`: expected a finite number in \\(0, 1\\)", class = "fedr_error_input")
  expect_error(fed_privacy_plan(10000, 1e-5, noise_multiplier = 1, rounds = 2.5, clients_per_round = 3),
               "`rounds` must be a positive integer", class = "fedr_error_input")
  expect_error(fed_privacy_plan(10000, 1e-5, noise_multiplier = NA, rounds = 2, clients_per_round = 3),
               "`noise_multiplier` must not be NA", class = "fedr_error_input")
  expect_error(fed_privacy_plan(10000, 1e-5, target_epsilon = 1, noise_multiplier = 1, rounds = 2, sampling = "all"),
               "`clients_per_round`: under sampling = 'all' every client takes part", class = "fedr_error_input")
  expect_error(fed_privacy_plan(target_delta = 1e-5), "`population_size` is missing", class = "fedr_error_input")
  # The accountant of the other DP functions.
  expect_error(fed_epsilon(1, 10, 100, 3, 1e-5, accountant = "pld"), "`accountant`: dp-accounting's PLD accountant",
               class = "fedr_error_input")
  expect_error(fed_aggregator_dp_fixed(1, 10, clip = 1, accountant = "pld"), "`accountant`: dp-accounting's PLD",
               class = "fedr_error_input")
  expect_error(fed_aggregator_dp_adaptive(0.5, 10, clipped_count_stddev = 1, accountant = "moments"),
               "`accountant`: expected 'rdp' or 'pld', got 'moments'", class = "fedr_error_input")
})

test_that("fed_aggregator_dp_plan() runs the plan and fed_fit() ends where its budget does", {
  skip_if_no_fedr()
  set.seed(3)
  clients <- fed_clients(lapply(1:5, function(i) list(x = matrix(runif(40), 10, 4), y = rep(0:1, 5))), batch_size = 5)
  model <- fed_model(keras_model_fn(4L))
  budget <- fedr_python()$privacy$epsilon(2, 5L, 5L, 3L, 1e-5, sampling = "all") * 1.0001
  plan <- fed_privacy_plan(population_size = 5, target_delta = 1e-5, target_epsilon = budget, noise_multiplier = 2,
                           clients_per_round = 5, sampling = "all")
  expect_identical(plan$rounds, 3L)
  agg <- fed_aggregator_dp_plan(plan, clip = 0.5)
  expect_s3_class(agg, "fed_aggregator")
  expect_identical(class(agg), class(fed_aggregator_dp_fixed(2, 5, clip = 0.5, sampling = "all")))
  expect_identical(agg$kind, "dp_fixed")
  expect_output(print(agg), "gaussian_fixed\\(noise_multiplier=2, clients_per_round=5, clip=0.5, sampling='all'")
  process <- fed_averaging(model, fed_optimizer("sgd", 0.1), aggregator = agg, seed = 1)
  expect_warning(history <- fed_fit(process, clients, rounds = 10, verbose = FALSE),
                 "privacy budget exhausted: round 4: it would spend epsilon", class = "fedr_warning")
  expect_s3_class(history, "fed_history")
  expect_identical(history$round, 1:3)
  expect_equal(history$epsilon, fed_epsilon(2, 5, 5, 1:3, 1e-5, sampling = "all"), tolerance = 1e-12)
  expect_lte(history$epsilon[[3]], plan$target_epsilon)
  # The run's events say why it ended.
  events <- attr(history, "events")
  expect_identical(events$event, "budget_exhausted")
  expect_identical(events$round, 4L)
  expect_match(events$message, "^privacy budget exhausted: round 4")
  # Adaptive clipping: the plan's own count noise; the plan's numbers are not the caller's to change.
  adaptive <- fed_privacy_plan(10000, 1e-5, noise_multiplier = 1.1, rounds = 200, clients_per_round = 100,
                               clipping = "adaptive", clipped_count_stddev = 5)
  a <- fed_aggregator_dp_plan(adaptive, clip = 0.1, target_quantile = 0.6)
  expect_identical(a$kind, "dp_adaptive")
  expect_output(print(a), "gaussian_adaptive\\(noise_multiplier=1.1, clients_per_round=100, initial_clip=0.1")
  expect_error(fed_aggregator_dp_plan(list(), clip = 1), "`plan` must be a fed_privacy_plan", class = "fedr_error_input")
  err <- expect_error(fed_aggregator_dp_plan(plan, clip = 1, sampling = "fixed"), class = "fedr_error_input")
  expect_identical(err$arg, "sampling")
  expect_match(conditionMessage(err), "`sampling` is the plan's", fixed = TRUE)
  expect_error(fed_aggregator_dp_plan(adaptive, clip = 1, initial_clip = 2), "give it as `clip`", class = "fedr_error_input")
  expect_error(fed_aggregator_dp_plan(plan, clip = -1), "`clip`: expected a finite number > 0", class = "fedr_error_input")
  expect_error(fed_aggregator_dp_plan(adaptive, clip = -1), "`clip`: ", class = "fedr_error_input")
  expect_error(fed_aggregator_dp_plan(plan, 1, 2), "must be named", class = "fedr_error_input")
  expect_warning(fed_aggregator_dp_plan(plan, clip = 1, noise_seed = 1), "voids the differential privacy guarantee",
                 class = "fedr_warning")
})

test_that("the PLD accountant trains and reports a smaller epsilon than RDP", {
  skip_if_no_fedr()
  set.seed(4)
  clients <- fed_clients(lapply(1:5, function(i) list(x = matrix(runif(40), 10, 4), y = rep(0:1, 5))), batch_size = 5)
  model <- fed_model(keras_model_fn(4L))
  fit_one <- function(accountant) {
    agg <- fed_aggregator_dp_fixed(2, 5, clip = 0.5, sampling = "all", target_delta = 1e-5, accountant = accountant)
    fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.1), aggregator = agg, seed = 1), clients, rounds = 1,
            verbose = FALSE)
  }
  pld <- fit_one("pld")
  rdp <- fit_one("rdp")
  expect_identical(pld$round, 1L)
  expect_lt(pld$epsilon, rdp$epsilon)
  expect_equal(pld$epsilon, fed_epsilon(2, 5, 5, 1, 1e-5, sampling = "all", accountant = "pld"), tolerance = 1e-12)
  expect_equal(rdp$epsilon, fed_epsilon(2, 5, 5, 1, 1e-5, sampling = "all"), tolerance = 1e-12)
  adaptive <- fed_aggregator_dp_adaptive(0.5, 5, clipped_count_stddev = 1, sampling = "all", target_delta = 1e-5,
                                         accountant = "pld")
  expect_s3_class(adaptive, "fed_aggregator")
})
