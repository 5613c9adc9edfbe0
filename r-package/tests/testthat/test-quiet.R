# Quiet sessions: a child Rscript that loads fedr, builds a Keras model and
# trains one round prints no TensorFlow C++ log lines and no reticulate
# warnings, outside and inside a Python project; with fedr.verbose or
# TF_CPP_MIN_LOG_LEVEL=0 TensorFlow's lines do appear (so the checks can fail).
# The CPU decides what TensorFlow prints: on x86 CPUs with AVX-512 it turns
# oneDNN on and logs it through absl whatever TF_CPP_MIN_LOG_LEVEL says.
# TF_ENABLE_ONEDNN_OPTS=1 makes any x86 CPU do the same, so every case runs
# with it forced as well as with the CPU's own default.

# What a default session must not print.
noise <- c("I0000", "cpu_feature_guard", "absl::InitializeLog", "oneDNN custom operations", "could not be parsed")
# What TensorFlow prints when nobody filters it, with oneDNN forced on.
tf_lines <- c("I0000", "absl::InitializeLog", "oneDNN custom operations")

# The script: keras is imported through reticulate first, as the README does,
# so reticulate (not fedr) picks the Python and TensorFlow loads before fedr
# starts Python: the harder case for both the log level and the Python choice.
quiet_script <- function(before = "") {
  path <- tempfile("fedr-quiet-", fileext = ".R")
  writeLines(c(
    sprintf(".libPaths(c(%s))", paste0("'", .libPaths(), "'", collapse = ", ")),
    before,
    "library(fedr)",
    "keras <- reticulate::import('keras')",
    "clients <- fed_split(fed_load_dataset('fashion_mnist'), n_clients = 300)[1:3]",
    "model_fn <- function() keras$Sequential(list(",
    "  keras$Input(shape = list(784L)),",
    "  keras$layers$Dense(units = 10L, activation = 'softmax', kernel_initializer = 'zeros')))",
    "model <- fed_model(model_fn, sample_batch = clients)",
    "process <- fed_averaging(model, fed_optimizer('sgd', 0.02), fed_optimizer('sgd', 1))",
    "history <- fed_fit(process, clients, rounds = 1)",
    "cat('fitted rounds:', nrow(history), '\\n')"
  ), path)
  path
}

# Run it in `dir` with the Python passed as the Makefile does (FEDR_PYTHON),
# RETICULATE_PYTHON and TF_CPP_MIN_LOG_LEVEL unset unless given; stdout and
# stderr together.
run_child <- function(dir, before = "", tf_log_level = NA, onednn = NA) {
  python <- reticulate::py_config()$python
  script <- quiet_script(before)
  on.exit(unlink(script))
  withr::local_envvar(
    FEDR_PYTHON = python, RETICULATE_PYTHON = NA, TF_CPP_MIN_LOG_LEVEL = tf_log_level,
    TF_ENABLE_ONEDNN_OPTS = onednn, GRPC_VERBOSITY = NA
  )
  withr::local_dir(dir)
  rscript <- file.path(R.home("bin"), "Rscript")
  out <- suppressWarnings(system2(rscript, c("--vanilla", shQuote(script)), stdout = TRUE, stderr = TRUE))
  status <- attr(out, "status") %||% 0L
  list(output = paste(out, collapse = "\n"), status = status)
}

expect_quiet <- function(run, where) {
  expect_identical(run$status, 0L, info = paste(where, run$output, sep = "\n"))
  expect_match(run$output, "fitted rounds: 1", fixed = TRUE, info = where)
  for (line in noise) {
    expect_false(grepl(line, run$output, fixed = TRUE), info = paste0(where, ": found '", line, "' in\n", run$output))
  }
}

# A Python project that reticulate's Poetry lookup finds and RcppTOML cannot
# parse (the empty key fedr's own pyproject.toml has); `.here` marks its root.
python_project <- function(env = parent.frame()) {
  dir <- withr::local_tempdir("fedr-project-", .local_envir = env)
  writeLines(c(
    "[project]", "name = \"demo\"", "",
    "[tool.setuptools]", "package-dir = { \"\" = \"python\" }"
  ), file.path(dir, "pyproject.toml"))
  file.create(file.path(dir, ".here"))
  dir
}

# The fedr repository, when the tests run from it or its Python lives in it.
fedr_repository <- function() {
  starts <- c(getwd(), dirname(dirname(dirname(reticulate::py_config()$python))))
  for (dir in normalizePath(starts, mustWork = FALSE)) {
    repeat {
      if (file.exists(file.path(dir, "pyproject.toml")) && file.exists(file.path(dir, "r-package", "DESCRIPTION"))) {
        return(dir)
      }
      parent <- dirname(dir)
      if (identical(parent, dir)) break
      dir <- parent
    }
  }
  NULL
}

test_that("a session outside any project trains without TensorFlow or reticulate noise", {
  skip_if_no_fedr()
  expect_quiet(run_child(withr::local_tempdir()), "outside a project")
  expect_quiet(run_child(withr::local_tempdir(), onednn = "1"), "outside a project, oneDNN forced on")
})

test_that("a session inside a Python project has no pyproject.toml warning", {
  skip_if_no_fedr()
  project <- python_project()
  sub <- file.path(project, "analysis")
  dir.create(sub)
  expect_quiet(run_child(sub), "inside a Python project")
  repo <- fedr_repository()
  if (is.null(repo)) skip("the fedr repository is not on disk (run from an installed package)")
  expect_quiet(run_child(repo, onednn = "1"), paste("inside the fedr repository", repo))
})

test_that("fedr.verbose and TF_CPP_MIN_LOG_LEVEL bring TensorFlow's lines back", {
  skip_if_no_fedr()
  project <- python_project()
  # With fedr's two settings off, the noise is there: the checks above can fail.
  loud <- run_child(project, before = sprintf(
    "options(fedr.verbose = TRUE, reticulate.poetry.project = '%s')", project
  ), onednn = "1")
  expect_identical(loud$status, 0L, info = loud$output)
  for (line in noise) {
    expect_true(grepl(line, loud$output, fixed = TRUE), info = paste0("'", line, "' missing from\n", loud$output))
  }
  # A log level the user set wins over fedr's, for the oneDNN lines too.
  user <- run_child(withr::local_tempdir(), tf_log_level = "0", onednn = "1")
  for (line in c("cpu_feature_guard", tf_lines)) expect_match(user$output, line, fixed = TRUE)
  # TF_CPP_MIN_LOG_LEVEL=2 of the user's own hides them as it hides the rest.
  set <- run_child(withr::local_tempdir(), tf_log_level = "2", onednn = "1")
  expect_quiet(set, "TF_CPP_MIN_LOG_LEVEL=2 set by the user, oneDNN forced on")
})

test_that("library(fedr) sets TF_CPP_MIN_LOG_LEVEL only when the user has not", {
  withr::local_envvar(TF_CPP_MIN_LOG_LEVEL = NA)
  withr::local_options(fedr.verbose = NULL)
  state <- fedr:::.fedr
  withr::defer(state$tf_log_level_set <- NULL)
  state$tf_log_level_set <- NULL
  expect_true(fedr:::fedr_quiet_tensorflow())
  expect_identical(Sys.getenv("TF_CPP_MIN_LOG_LEVEL"), "2")
  # fedr.verbose set later (before Python starts) takes fedr's value back: level 0, all lines.
  withr::local_options(fedr.verbose = TRUE)
  expect_false(fedr:::fedr_quiet_tensorflow())
  expect_identical(Sys.getenv("TF_CPP_MIN_LOG_LEVEL"), "0")
  # Verbose from the start says so too (`import fedr` would otherwise choose 2).
  state$tf_log_level_set <- NULL
  Sys.unsetenv("TF_CPP_MIN_LOG_LEVEL")
  expect_false(fedr:::fedr_quiet_tensorflow())
  expect_identical(Sys.getenv("TF_CPP_MIN_LOG_LEVEL"), "0")
  # A value of the user's stays.
  state$tf_log_level_set <- NULL
  withr::local_options(fedr.verbose = FALSE)
  withr::local_envvar(TF_CPP_MIN_LOG_LEVEL = "0")
  expect_false(fedr:::fedr_quiet_tensorflow())
  expect_identical(Sys.getenv("TF_CPP_MIN_LOG_LEVEL"), "0")
})

test_that("reticulate's Poetry lookup is skipped only outside Poetry projects", {
  withr::local_options(reticulate.poetry.project = NULL)
  project <- python_project()
  deep <- file.path(project, "a", "b")
  dir.create(deep, recursive = TRUE)
  expect_true(fedr:::fedr_quiet_poetry(deep))
  skipped <- getOption("reticulate.poetry.project")
  expect_false(file.exists(file.path(skipped, "pyproject.toml")))
  # An option the user set is kept.
  withr::local_options(reticulate.poetry.project = "/my/project")
  expect_false(fedr:::fedr_quiet_poetry(deep))
  expect_identical(getOption("reticulate.poetry.project"), "/my/project")
  # A Poetry project is left to reticulate, as is a folder without a project.
  withr::local_options(reticulate.poetry.project = NULL)
  write("[tool.poetry]\nname = \"demo\"", file.path(project, "pyproject.toml"))
  expect_false(fedr:::fedr_quiet_poetry(deep))
  expect_null(getOption("reticulate.poetry.project"))
  unlink(file.path(project, "pyproject.toml"))
  expect_false(fedr:::fedr_quiet_poetry(deep))
  expect_null(getOption("reticulate.poetry.project"))
})
