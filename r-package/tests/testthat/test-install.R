# install_fedr(): where the environment goes, which Python makes it, and the
# whole way from the R tarball to a trained model as a user meets it.

# An executable shell script standing in for a Python.
fake_python <- function(dir, name, lines) {
  dir.create(dir, showWarnings = FALSE, recursive = TRUE)
  path <- file.path(dir, name)
  writeLines(c("#!/bin/sh", lines), path)
  Sys.chmod(path, "0755")
  path
}

test_that("the environment's path is absolute, with `~` expanded, under WORKON_HOME when it is set", {
  home <- path.expand("~")
  withr::local_envvar(WORKON_HOME = NA)
  # reticulate 1.28 gives "~/.virtualenvs" as it is; the `~` must not survive.
  expect_identical(reticulate::virtualenv_root(), "~/.virtualenvs")
  expect_identical(fedr:::fedr_env_path("r-fedr"), file.path(home, ".virtualenvs", "r-fedr"))
  withr::local_envvar(WORKON_HOME = "/opt/fedr-envs")
  expect_identical(fedr:::fedr_env_path("r-fedr"), "/opt/fedr-envs/r-fedr")
  withr::local_envvar(WORKON_HOME = "~/envs")
  expect_identical(fedr:::fedr_env_path("mine"), file.path(home, "envs", "mine"))
  # An empty WORKON_HOME is no root ("/r-fedr"): the default holds.
  withr::local_envvar(WORKON_HOME = "")
  expect_identical(fedr:::fedr_env_path("r-fedr"), file.path(home, ".virtualenvs", "r-fedr"))
  # Anything with a slash is a path, kept (not under WORKON_HOME); `~` and relative paths made absolute.
  expect_identical(fedr:::fedr_env_path("/srv/envs/fedr"), "/srv/envs/fedr")
  expect_identical(fedr:::fedr_env_path("~/envs/fedr"), file.path(home, "envs", "fedr"))
  dir <- withr::local_tempdir()
  withr::local_dir(dir)
  expect_identical(fedr:::fedr_env_path("envs/fedr"), file.path(getwd(), "envs", "fedr"))
})

test_that("library(fedr)'s lookup finds r-fedr where install_fedr() puts it", {
  root <- withr::local_tempdir()
  work <- withr::local_tempdir()
  python <- fake_python(file.path(root, "r-fedr", "bin"), "python", "exit 0")
  withr::local_envvar(WORKON_HOME = root, FEDR_PYTHON = NA, RETICULATE_PYTHON = NA)
  withr::local_options(fedr.python = NULL)
  expect_identical(fedr:::fedr_env_python(fedr:::fedr_env_path("r-fedr")), python)
  expect_identical(fedr:::fedr_find_python(start = work), python)
  unlink(python)
  expect_null(fedr:::fedr_find_python(start = work))
})

test_that("install_fedr(python =) must name a Python 3.10 or 3.11 that runs, and says which `python` is wrong", {
  bin <- withr::local_tempdir()
  # An environment that does not exist yet, so the default Python is looked for.
  withr::local_envvar(WORKON_HOME = withr::local_tempdir())
  expect_error(
    install_fedr(python = "/no/such/python"),
    "`python` must be a Python executable; there is no file '/no/such/python'.",
    fixed = TRUE, class = "fedr_error_input"
  )
  expect_identical(tryCatch(install_fedr(python = "/no/such/python"), error = function(e) e$arg), "python")
  expect_error(
    install_fedr(python = bin),
    sprintf("`python` must be a Python executable; there is no file '%s'.", bin),
    fixed = TRUE, class = "fedr_error_input"
  )
  expect_error(
    install_fedr(python = "no-such-python-9"),
    "`python` must be a Python executable; 'no-such-python-9' is not on PATH.",
    fixed = TRUE, class = "fedr_error_input"
  )
  new <- fake_python(bin, "python3.13", "echo 'Python 3.13.0'")
  expect_error(
    install_fedr(python = new),
    sprintf(
      "`python` must be Python 3.10 or 3.11 (reticulate 1.28 and the pinned TensorFlow need it), not Python 3.13.0 ('%s').",
      new
    ),
    fixed = TRUE, class = "fedr_error_input"
  )
  old <- fake_python(bin, "python3.9", "echo 'Python 3.9.18'")
  expect_error(install_fedr(python = old), "not Python 3.9.18 (", fixed = TRUE, class = "fedr_error_input")
  broken <- fake_python(bin, "broken", c("echo 'cannot start' >&2", "exit 1"))
  expect_error(
    install_fedr(python = broken),
    sprintf("`python` must be a Python executable; '%s --version' failed (exit 1): cannot start", broken),
    fixed = TRUE, class = "fedr_error_input"
  )
  # Exit 127 (a command that cannot start) is R's bare "error in running command" unless caught.
  missing <- fake_python(bin, "shim", c("echo 'shim: python3.8 not installed' >&2", "exit 127"))
  expect_error(
    install_fedr(python = missing),
    sprintf("`python` must be a Python executable; '%s --version' failed (exit 127): shim: python3.8 not installed", missing),
    fixed = TRUE, class = "fedr_error_input"
  )
  # Found by name on PATH, as `python = "python3.13"` would be.
  withr::local_path(bin, action = "prefix")
  expect_error(install_fedr(python = "python3.13"), sprintf("('%s')", new), fixed = TRUE, class = "fedr_error_input")
  expect_error(install_fedr(envname = ""), "`envname` must be a single string", class = "fedr_error_input")
})

test_that("install_fedr() skips a python3 of the wrong version on PATH, and says so when nothing fits", {
  skip_if(!nzchar(system.file("python", package = "fedr")), "this installation carries no Python core (inst/python)")
  bin <- withr::local_tempdir()
  python3 <- fake_python(bin, "python3", "echo 'Python 3.13.0'")
  withr::local_envvar(WORKON_HOME = withr::local_tempdir())
  # Only the fake on PATH (fake_python() and Sys.which() use absolute paths to sh and which).
  withr::local_envvar(PATH = bin)
  expect_identical(unname(Sys.which("python3")), python3)
  expect_error(
    install_fedr(),
    sprintf(
      "No Python 3.10 or 3.11 found on PATH ('%s' is Python 3.13.0): install Python 3.11, or pass its path as `python`.",
      python3
    ),
    fixed = TRUE, class = "fedr_error_input"
  )
  python311 <- fake_python(bin, "python3.11", "echo 'Python 3.11.7'")
  expect_identical(fedr:::find_default_python(), python311)
})

test_that("the default install_fedr(), a restart and library(fedr) train a round from a fresh HOME and working directory", {
  skip_if_no_fedr()
  skip_on_cran()
  source_dir <- normalizePath(file.path("..", ".."), mustWork = FALSE)
  if (!file.exists(file.path(source_dir, "DESCRIPTION")) || !dir.exists(file.path(source_dir, "inst", "python"))) {
    skip("needs the package source with inst/python (make setup builds it); R CMD check runs from a copy")
  }
  real <- unname(Sys.which(c("python3.11", "python3.10")))
  skip_if(!any(nzchar(real)), "needs a python3.11 or python3.10 on PATH")
  # pip's cache of the real user, so the new HOME does not download everything again.
  pip_cache <- Sys.getenv("PIP_CACHE_DIR", file.path(Sys.getenv("XDG_CACHE_HOME", path.expand("~/.cache")), "pip"))
  tmp <- withr::local_tempdir()
  r_bin <- function(x) file.path(R.home("bin"), x)
  lib <- file.path(tmp, "lib")
  home <- file.path(tmp, "home")
  work <- file.path(tmp, c("work1", "work2"))
  for (dir in c(lib, home, work)) dir.create(dir)
  build <- withr::with_dir(tmp, system2(r_bin("R"), c("CMD", "build", "--no-build-vignettes", shQuote(source_dir)), stdout = TRUE, stderr = TRUE))
  tarball <- list.files(tmp, pattern = "^fedr_.*\\.tar\\.gz$", full.names = TRUE)
  expect_length(tarball, 1L)
  install <- system2(r_bin("R"), c("CMD", "INSTALL", paste0("--library=", shQuote(lib)), shQuote(tarball)), stdout = TRUE, stderr = TRUE)
  expect_null(attr(install, "status"))
  # A python3 first on PATH that is not fedr's, as a pyenv shim or a conda base would be.
  fake <- fake_python(file.path(tmp, "fake-bin"), "python3", c("echo 'python3: not the Python fedr made' >&2", "exit 1"))
  run <- function(code, dir) {
    script <- tempfile(tmpdir = tmp, fileext = ".R")
    writeLines(code, script)
    withr::with_dir(dir, suppressWarnings(system2("env", c(
      "-u", "RETICULATE_PYTHON", "-u", "FEDR_PYTHON", "-u", "R_LIBS_USER", "-u", "WORKON_HOME", "-u", "VIRTUAL_ENV",
      "-u", "PYTHONPATH", shQuote(paste0("HOME=", home)), shQuote(paste0("R_LIBS=", lib)),
      shQuote(paste0("PATH=", dirname(fake), ":", Sys.getenv("PATH"))), shQuote(paste0("PIP_CACHE_DIR=", pip_cache)),
      "timeout", "1200", r_bin("Rscript"), shQuote(script)
    ), stdout = TRUE, stderr = TRUE)))
  }
  env_python <- file.path(home, ".virtualenvs", "r-fedr", "bin", "python")
  installed <- run(c(
    "cat('PYTHON3', Sys.which('python3'), '\\n')",
    "python <- fedr::install_fedr()",
    "cat('PYTHON', python, '\\n')"
  ), work[[1]])
  info <- paste(utils::tail(installed, 30), collapse = "\n")
  expect_null(attr(installed, "status"), info = info)
  expect_true(paste("PYTHON3", fake, "") %in% installed, info = info)
  expect_true(paste("PYTHON", env_python, "") %in% installed, info = info)
  expect_true(file.exists(env_python))
  # Nothing made in the working directory: no folder named "~" (the bug), nothing else.
  expect_identical(list.files(work[[1]], all.files = TRUE, no.. = TRUE), character())
  trained <- run(c(
    "library(fedr)",
    "ok <- fedr_available()",
    "if (!isTRUE(ok)) stop(attr(ok, 'reason'))",
    "cat('CONFIG', reticulate::py_config()$python, '\\n')",
    "keras <- reticulate::import('keras')",
    "set.seed(1)",
    "clients <- fed_clients(list(list(x = matrix(runif(400), 40), y = rep(0:1, 20))), batch_size = 10)",
    "model <- fed_model(function() keras$Sequential(list(keras$Input(shape = list(10L)), keras$layers$Dense(2L, activation = 'softmax'))))",
    "history <- fed_fit(fed_averaging(model, fed_optimizer('sgd', 0.1), seed = 1), clients, rounds = 1, verbose = FALSE)",
    "cat('EXAMPLES', history$num_examples, '\\n')"
  ), work[[2]])
  info <- paste(utils::tail(trained, 30), collapse = "\n")
  expect_null(attr(trained, "status"), info = info)
  expect_true(paste("CONFIG", env_python, "") %in% trained, info = info)
  expect_true("EXAMPLES 40 " %in% trained, info = info)
  expect_identical(list.files(work[[2]], all.files = TRUE, no.. = TRUE), character())
})
