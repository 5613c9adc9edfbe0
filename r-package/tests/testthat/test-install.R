# From the R tarball to a trained model, outside the repository, with no Python variables set.

test_that("install_fedr() installs the Python core from the tarball, and library(fedr) then finds it", {
  skip_if_no_fedr()
  skip_on_cran()
  source_dir <- normalizePath(file.path("..", ".."), mustWork = FALSE)
  if (!file.exists(file.path(source_dir, "DESCRIPTION")) || !dir.exists(file.path(source_dir, "inst", "python"))) {
    skip("needs the package source with inst/python (make setup builds it); R CMD check runs from a copy")
  }
  tmp <- withr::local_tempdir()
  r_bin <- function(x) file.path(R.home("bin"), x)
  lib <- file.path(tmp, "lib")
  dir.create(lib)
  build <- withr::with_dir(tmp, system2(r_bin("R"), c("CMD", "build", "--no-build-vignettes", shQuote(source_dir)), stdout = TRUE, stderr = TRUE))
  tarball <- list.files(tmp, pattern = "^fedr_.*\\.tar\\.gz$", full.names = TRUE)
  expect_length(tarball, 1L)
  install <- system2(r_bin("R"), c("CMD", "INSTALL", paste0("--library=", shQuote(lib)), shQuote(tarball)), stdout = TRUE, stderr = TRUE)
  expect_null(attr(install, "status"))
  run <- function(code) {
    script <- tempfile(tmpdir = tmp, fileext = ".R")
    writeLines(code, script)
    withr::with_dir(tmp, suppressWarnings(system2("env", c(
      "-u", "RETICULATE_PYTHON", "-u", "FEDR_PYTHON", "-u", "R_LIBS_USER",
      paste0("R_LIBS=", lib), paste0("WORKON_HOME=", file.path(tmp, "venvs")),
      r_bin("Rscript"), shQuote(script)
    ), stdout = TRUE, stderr = TRUE)))
  }
  installed <- run(c("library(fedr)", "python <- install_fedr()", "cat('PYTHON', python, '\\n')"))
  expect_null(attr(installed, "status"), info = paste(utils::tail(installed, 30), collapse = "\n"))
  expect_true(file.exists(file.path(tmp, "venvs", "r-fedr", "bin", "python")))
  trained <- run(c(
    "library(fedr)",
    "stopifnot(isTRUE(fedr_available()))",
    "cat('CONFIG', reticulate::py_config()$python, '\\n')",
    "keras <- reticulate::import('keras')",
    "set.seed(1)",
    "clients <- fed_clients(list(list(x = matrix(runif(400), 40), y = rep(0:1, 20))), batch_size = 10)",
    "model <- fed_model(function() keras$Sequential(list(keras$Input(shape = list(10L)), keras$layers$Dense(2L, activation = 'softmax'))))",
    "history <- fed_fit(fed_averaging(model, fed_optimizer('sgd', 0.1), seed = 1), clients, rounds = 1, verbose = FALSE)",
    "cat('EXAMPLES', history$num_examples, '\\n')"
  ))
  expect_null(attr(trained, "status"), info = paste(utils::tail(trained, 30), collapse = "\n"))
  expect_true(any(grepl(paste0("^CONFIG ", file.path(tmp, "venvs", "r-fedr")), trained)))
  expect_true("EXAMPLES 40 " %in% trained)
  # install_fedr() without a Python core in the package says how to get one.
  expect_error(install_fedr(envname = ""), "`envname` must be a single string", class = "fedr_error")
})
