# The adaptive server optimizers of Reddi et al. 2021 from R (their equations are tested
# against a numpy transcription of the paper in tests/test_fedopt.py).

test_that("FedYogi on the server resumes bit for bit, and FedAdam is not Keras's Adam", {
  skip_if_no_fedr()
  clients <- small_clients()
  build <- function(server) {
    fed_averaging(fed_model(keras_model_fn()), fed_optimizer("sgd", 0.02), server, seed = 4)
  }
  process <- build(fed_optimizer("fedyogi", 0.01, beta_1 = 0.9, beta_2 = 0.99, tau = 1e-3))
  straight <- fed_fit(process, clients, rounds = 3, verbose = FALSE)
  expect_true(all(is.finite(straight$loss)))
  expect_lt(straight$loss[3], straight$loss[1])
  two <- fed_fit(process, clients, rounds = 2, verbose = FALSE)
  path <- withr::local_tempfile(fileext = ".fedr")
  fed_save_state(two, path)
  resumed <- fed_fit(process, clients, rounds = 1, state = fed_load_state(path, process), verbose = FALSE)
  expect_identical(resumed$round, 3L)
  expect_identical(fed_weights(resumed), fed_weights(straight))
  paper <- fed_fit(build(fed_optimizer("fedadam", 0.01)), clients, rounds = 2, verbose = FALSE)
  keras_adam <- fed_fit(build(fed_optimizer("adam", 0.01)), clients, rounds = 2, verbose = FALSE)
  expect_gt(max(abs(unlist(fed_weights(paper)) - unlist(fed_weights(keras_adam)))), 1e-4)
})
