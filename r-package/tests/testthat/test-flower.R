# A federation on loopback from R: a SuperLink and two SuperNodes serving R data
# frames (read by the nodes from .rds files, with R), run from a fed_averaging()
# process; the numbers are the in-process ones.

skip_if_no_flower <- function() {
  skip_if_no_fedr()
  if (!reticulate::py_module_available("flwr")) {
    if (identical(Sys.getenv("FEDR_REQUIRE_PYTHON"), "1")) stop("flwr is not installed (make setup installs it)")
    skip("flwr is not installed")
  }
}

tabular_site <- function(n, seed) {
  set.seed(seed)
  x <- matrix(runif(n * 3), n)
  data.frame(a = x[, 1], b = x[, 2], c = x[, 3], label = as.integer(x[, 1] + x[, 2] > 1))
}

tabular_model <- function() {
  keras <- reticulate::import("keras")
  fed_model(function() {
    keras$Sequential(list(
      keras$Input(shape = list(3L)),
      keras$layers$Dense(units = 2L, activation = "softmax", kernel_initializer = "zeros")
    ))
  })
}

test_that("nodes serve R data frames to a run started from R, with the in-process numbers", {
  skip_if_no_flower()
  withr::local_envvar(HOME = withr::local_tempdir())
  site_a <- tabular_site(40, 1)
  site_b <- tabular_site(30, 2)
  model <- tabular_model()
  as_client <- function(df) list(x = as.matrix(df[c("a", "b", "c")]), y = df$label)
  in_process <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.5), seed = 7),
                        fed_clients(list(site_a = as_client(site_a), site_b = as_client(site_b))),
                        rounds = 2, verbose = FALSE)

  root <- withr::local_tempdir()
  link <- fed_flower_superlink(root = root)
  on.exit(link$stop(), add = TRUE)
  expect_error(fed_flower_run(fed_averaging(model, fed_optimizer("sgd", 0.5)), rounds = 1, superlink = link,
                              out_dir = "/etc", verbose = FALSE),
               "`out_dir`: '/etc' is outside the folder this SuperLink allows run configs to use", class = "fedr_error_input")
  expect_output(print(link), "^<fed_flower_process> superlink 127\\.0\\.0\\.1:[0-9]+ \\(running\\)$")
  a <- fed_flower_node(site_a, link, client_id = "site_a")
  on.exit(a$stop(), add = TRUE)
  b <- fed_flower_node(site_b, link, client_id = "site_b")
  on.exit(b$stop(), add = TRUE)

  messages <- character()
  history <- withCallingHandlers(
    fed_flower_run(fed_averaging(model, fed_optimizer("sgd", 0.5), seed = 7), rounds = 2, superlink = link,
                   round_timeout = 120),
    message = function(m) {
      messages <<- c(messages, conditionMessage(m))
      invokeRestart("muffleMessage")
    }
  )
  expect_true(any(grepl("round 2: training on 2 node\\(s\\): site_a, site_b", messages)))
  expect_s3_class(history, "fed_history")
  expect_identical(history$round, 1:2)
  expect_identical(history$clients, c("site_a;site_b", "site_a;site_b"))
  expect_identical(history$num_examples, c(70L, 70L))
  expect_equal(fed_weights(history), fed_weights(in_process), tolerance = 1e-6)
  expect_equal(history$loss, in_process$loss, tolerance = 1e-6)
  expect_equal(history$sparse_categorical_accuracy, in_process$sparse_categorical_accuracy, tolerance = 1e-6)
  expect_true(file.exists(file.path(attr(history, "out_dir"), "state.npz")))
  expect_identical(dirname(normalizePath(attr(history, "out_dir"))), normalizePath(root))
  printed <- capture.output(print(history))
  expect_identical(printed[[1]], "<fed_history> 2 rounds of federated training")
  expect_false(any(grepl("site_a;site_b", printed)))

  fed_flower_stop(b)
  expect_false(b$alive())
  expect_output(print(b), "\\(stopped\\)$")
})

test_that("Flower functions check their arguments in R, naming them", {
  skip_if_no_flower()
  expect_error(fed_flower_node(data.frame(a = 1:3), "127.0.0.1:9"),
               "`data` has no label column 'label' \\(columns: a\\); name it with `label`.", class = "fedr_error_input")
  expect_error(fed_flower_node(data.frame(a = c(1, NA), label = 0:1), "127.0.0.1:9"),
               "`data` must not contain NA, NaN or infinite values; element \\[2, 1\\] is NA", class = "fedr_error_input")
  expect_error(fed_flower_node(data.frame(a = 1:2, label = 0:1), "nowhere"),
               "`superlink` must be a SuperLink handle or \"host:port\"", class = "fedr_error_input")
  expect_error(fed_flower_node("/no/such/file.rds", "127.0.0.1:9"), "`data`: no file or folder at '/no/such/file.rds'.",
               class = "fedr_error_input")
  expect_error(fed_flower_node(42, "127.0.0.1:9"), "`data` must be a data frame, matrix, list\\(x =, y =\\), fed_data or a path",
               class = "fedr_error_input")
  expect_error(fed_flower_node(data.frame(a = 1:2, label = 0:1), "127.0.0.1:9", worker_idle = -1),
               "^`worker_idle` \\(node config\\): expected a positive number of seconds, got -1(\\.0)?$",
               class = "fedr_error_input")
  expect_error(fed_flower_node(data.frame(a = 1:2, label = 0:1), "127.0.0.1:9", worker_idle = NA),
               "`worker_idle`", class = "fedr_error_input")
  expect_error(fed_flower_superlink(host = "0.0.0.0"), "`certificates`: a SuperLink on 0.0.0.0 must use TLS",
               class = "fedr_error_input")
  process <- fed_averaging(tabular_model(), fed_optimizer("sgd", 0.5))
  expect_error(fed_flower_run(process, rounds = 0, superlink = "127.0.0.1:9"), "`rounds`", class = "fedr_error_input")
  expect_error(fed_flower_run(process, rounds = 1, superlink = "127.0.0.1:9", fraction = 2), "`fraction`",
               class = "fedr_error_input")
  secure <- fed_averaging(tabular_model(), fed_optimizer("sgd", 0.5), aggregator = fed_aggregator_secure_mean())
  expect_error(fed_flower_run(secure, rounds = 1, superlink = "127.0.0.1:9", trusted_server = TRUE),
               "^`trusted_server`: secure_mean\\(.*\\) is secure aggregation, whose keys and masking must stay on the nodes",
               class = "fedr_error_input")
  expect_error(fed_flower_run(process, rounds = 1, superlink = "127.0.0.1:9", trusted_server = NA),
               "`trusted_server`", class = "fedr_error_input")
  refused <- "`root_certificates`: connecting to the SuperLink at 10.1.2.3:9092 without TLS is refused"
  expect_error(fed_flower_node(data.frame(a = 1:2, label = 0:1), "10.1.2.3:9092"), refused, class = "fedr_error_input")
  expect_error(fed_flower_run(process, rounds = 1, superlink = "10.1.2.3:9092", verbose = FALSE), refused,
               class = "fedr_error_input")
  certs <- fed_flower_certificates(withr::local_tempdir())
  expect_named(certs, c("ca", "certfile", "keyfile"))
  expect_true(all(file.exists(unlist(certs))))
})

test_that("a Flower history prints its events after the table", {
  rows <- list(c(round = 1, loss = 0.5, num_clients = 2, num_clients_failed = 1, round_failed = 0),
               c(round = 2, num_clients_failed = 0, round_failed = 1))
  history <- fedr:::new_fed_history(rows, NULL)
  history$clients <- c("a;b", "a;b")
  history$events <- c("round 1: 1 client(s) failed and were left out: b: NodeLost", "failed: round 2: only 0 of 2")
  printed <- format(history)
  expect_identical(printed[[1]], "<fed_history> 2 rounds of federated training")
  expect_identical(tail(printed, 2), c("round 1: 1 client(s) failed and were left out: b: NodeLost",
                                       "failed: round 2: only 0 of 2"))
  expect_identical(history$round_failed, c(0L, 1L))
  expect_false(any(grepl("a;b", printed)))
})
