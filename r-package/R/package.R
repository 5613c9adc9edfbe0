#' fedr: federated learning from R
#'
#' Federated averaging of Keras models and the federated building blocks of
#' TensorFlow Federated, on top of the fedr Python core. `library(fedr)` does
#' not start Python: the core is imported the first time a function needs it.
#'
#' Python is found in this order: the option `fedr.python`, the environment
#' variable `FEDR_PYTHON`, the environment variable `RETICULATE_PYTHON`, then
#' a `.venv` folder in the working directory or one of its parents (the one
#' that `make setup` creates in the fedr repository), then the environment
#' [install_fedr()] creates (`r-fedr` under `reticulate::virtualenv_root()`).
#'
#' @section Options:
#' * `fedr.python`: the Python to use (see above).
#' * `fedr.verbose`: `FALSE` (the default) keeps sessions quiet: when the
#'   package loads, and unless the environment variable `TF_CPP_MIN_LOG_LEVEL`
#'   is already set, fedr sets it to `"2"`, so TensorFlow's C++ INFO and
#'   WARNING lines (`cpu_feature_guard`, `oneDNN custom operations`, absl's
#'   "All log messages before absl::InitializeLog() ..." preamble) are not
#'   printed, on any CPU; errors still are. `TRUE`, set before TensorFlow
#'   first loads (before `library(fedr)`, or before fedr first uses Python),
#'   sets it to `"0"`: TensorFlow's logging as it is. A `TF_CPP_MIN_LOG_LEVEL`
#'   you set yourself always wins.
#'
#' When the working directory is inside a Python project whose
#' `pyproject.toml` is not a Poetry project (such as the fedr repository),
#' fedr also sets the option `reticulate.poetry.project` (unless it is set) to
#' a folder without one, so that reticulate's Poetry lookup, which comes first
#' when reticulate picks a Python, does not warn that the file "could not be
#' parsed"; reticulate picks the same Python as without it.
#'
#' @seealso [fedr_error] for the conditions fedr signals.
#' @keywords internal
"_PACKAGE"

# The Python module, imported lazily in .onLoad (convert = TRUE, for users).
fedr_py <- NULL

# Cached state: whether the core imported, why not, and convert = FALSE modules.
.fedr <- new.env(parent = emptyenv())

.onLoad <- function(libname, pkgname) {
  # Before anything can load TensorFlow: a reticulate::import("keras") the
  # user makes first also starts it, so this cannot wait for before_load.
  fedr_quiet_tensorflow()
  fedr_quiet_poetry()
  # Whoever starts Python (fedr, or a reticulate::import("keras") of the
  # user's), fedr's filter must be in place before TensorFlow loads.
  setHook("reticulate.onPyInit", fedr_on_python_init)
  fedr_py <<- reticulate::import("fedr", delay_load = list(
    before_load = function() fedr_use_python(),
    on_error = function(e) fedr_abort(fedr_missing_message(conditionMessage(e)), class = "fedr_error_python")
  ))
  # A preference, not a start: Python stays down, but a `reticulate::import()`
  # the user makes first (e.g. of keras) then also lands on fedr's Python.
  if (!reticulate::py_available(initialize = FALSE)) {
    python <- fedr_find_python()
    if (!is.null(python) && file.exists(python)) reticulate::use_python(python)
  }
  # Without the tensorflow R package, TensorFlow tensors have no arithmetic in
  # R; give them `+`, `/`, ... so the article's reducers are writable in R.
  if (!nzchar(system.file(package = "tensorflow"))) {
    reticulate::register_class_filter(tensor_class_filter)
  }
}

#' Is the fedr Python core available?
#'
#' Finds Python (see [fedr]) and checks that the `fedr` Python module imports.
#' This starts Python the first time it is called.
#'
#' @returns `TRUE` or `FALSE`. When `FALSE`, `attr(, "reason")` says why.
#' @export
#' @examples
#' fedr_available()
fedr_available <- function() {
  if (isTRUE(.fedr$available)) {
    return(TRUE)
  }
  reason <- tryCatch(
    {
      fedr_use_python()
      if (reticulate::py_module_available("fedr")) NULL else "the Python module 'fedr' is not installed"
    },
    error = function(e) conditionMessage(e)
  )
  if (is.null(reason)) {
    .fedr$available <- TRUE
    return(TRUE)
  }
  python <- tryCatch(reticulate::py_config()$python, error = function(e) NULL)
  if (!is.null(python)) reason <- paste0(reason, " (Python: ", python, ")")
  structure(FALSE, reason = reason)
}

#' The fedr Python module
#'
#' Hands back the Python module `fedr` for `$`-style code, as the reference
#' article writes `tff$federated_mean(...)`. Results of calls through it are
#' converted to R by reticulate.
#'
#' @returns The Python module `fedr` (a reticulate module object).
#' @export
#' @examplesIf fedr_available()
#' tff <- fedr_python()
#' tff$SequenceType("float32")
fedr_python <- function() {
  fedr_require()
  fedr_py
}

# Stop with an install hint unless the core imports.
fedr_require <- function() {
  ok <- fedr_available()
  if (!isTRUE(ok)) fedr_abort(fedr_missing_message(attr(ok, "reason")), class = "fedr_error_python")
  invisible(TRUE)
}

# A fedr Python module (or submodule) without automatic conversion, cached.
fedr_module <- function(name = "fedr") {
  module <- .fedr$modules[[name]]
  if (is.null(module)) {
    fedr_require()
    module <- fedr_call(reticulate::import(name, convert = FALSE))
    .fedr$modules[[name]] <- module
  }
  module
}

fedr_missing_message <- function(reason = NULL) {
  paste0(
    "The fedr Python core is not available",
    if (length(reason) && nzchar(reason)) paste0(": ", reason) else "",
    ".\nInstall it from R with `install_fedr()` (then restart R), or with `make setup` in the fedr",
    " repository (it creates `.venv`) and point R at that Python with",
    " `options(fedr.python = \"<repo>/.venv/bin/python\")` or the environment variable FEDR_PYTHON,",
    " before fedr first uses Python."
  )
}

# The Python fedr should use, or NULL to let reticulate decide.
fedr_find_python <- function(start = getwd()) {
  candidates <- c(
    getOption("fedr.python", ""),
    Sys.getenv("FEDR_PYTHON"),
    Sys.getenv("RETICULATE_PYTHON")
  )
  candidates <- candidates[nzchar(candidates)]
  if (length(candidates)) {
    return(path.expand(candidates[[1]]))
  }
  dir <- normalizePath(start, mustWork = FALSE)
  repeat {
    python <- file.path(dir, ".venv", "bin", "python")
    if (file.exists(python)) {
      return(python)
    }
    parent <- dirname(dir)
    if (identical(parent, dir)) {
      break
    }
    dir <- parent
  }
  # Last, the environment install_fedr() makes.
  python <- fedr_env_python(fedr_env_path("r-fedr"))
  if (file.exists(python)) python else NULL
}

# Initialise reticulate on the Python fedr chose; a no-op once Python runs.
fedr_use_python <- function() {
  if (reticulate::py_available(initialize = FALSE)) {
    return(invisible(NULL))
  }
  fedr_quiet_tensorflow()
  python <- fedr_find_python()
  if (is.null(python)) {
    return(invisible(NULL))
  }
  if (!file.exists(python)) {
    fedr_abort(paste0("Python not found at '", python, "'"), class = "fedr_error_python")
  }
  # RETICULATE_PYTHON wins over use_python() in reticulate, so set it while
  # Python starts and put the user's value back afterwards.
  old <- Sys.getenv("RETICULATE_PYTHON", unset = NA)
  on.exit(if (is.na(old)) Sys.unsetenv("RETICULATE_PYTHON") else Sys.setenv(RETICULATE_PYTHON = old))
  Sys.setenv(RETICULATE_PYTHON = python)
  reticulate::py_config()
  invisible(python)
}

# TensorFlow's C++ logging reads TF_CPP_MIN_LOG_LEVEL from the process
# environment when it first logs, so it must be set before TensorFlow loads
# (Sys.setenv() changes the environment the embedded Python and TensorFlow's
# C++ code read). Level 2 drops INFO and WARNING lines, and with them absl's
# "All log messages before absl::InitializeLog()" preamble, printed with the
# first of them; errors remain. A value the user set wins; with
# `options(fedr.verbose = TRUE)` (set before Python starts) fedr takes back
# its own value. Called at load and again just before fedr starts Python.
fedr_quiet_tensorflow <- function() {
  verbose <- isTRUE(getOption("fedr.verbose", FALSE))
  if (isTRUE(.fedr$tf_log_level_set)) {
    if (verbose && identical(Sys.getenv("TF_CPP_MIN_LOG_LEVEL"), "2")) {
      Sys.setenv(TF_CPP_MIN_LOG_LEVEL = "0")
      .fedr$tf_log_level_set <- FALSE
    }
    return(invisible(!verbose))
  }
  if (nzchar(Sys.getenv("TF_CPP_MIN_LOG_LEVEL"))) {
    return(invisible(FALSE))
  }
  # Verbose is level 0, said explicitly: `import fedr` would otherwise choose 2.
  Sys.setenv(TF_CPP_MIN_LOG_LEVEL = if (verbose) "0" else "2")
  .fedr$tf_log_level_set <- !verbose
  invisible(!verbose)
}

# Run by reticulate right after Python starts: `import fedr` installs the
# filter that makes TF_CPP_MIN_LOG_LEVEL hold for TensorFlow's load-time absl
# lines (oneDNN on CPUs with AVX-512 prints them whatever the level; see the
# Python module fedr._tf_quiet). A Python without fedr is left alone here:
# fedr's own import reports that, when a fedr function needs it.
fedr_on_python_init <- function() {
  ok <- tryCatch(reticulate::import("fedr._tf_quiet")$install(), error = function(e) FALSE)
  invisible(isTRUE(ok))
}

# reticulate (1.28) picks a Python by looking, before use_python() and its
# other sources, for a Poetry project: the pyproject.toml of the project root
# (here::here()). It parses that file with RcppTOML and, when RcppTOML cannot
# parse it (fedr's own, with its `"" = "python"` key, is such a file), warns
# "This project contains a 'pyproject.toml' file, but it could not be parsed"
# whatever the file is for. Only a `[tool.poetry]` table makes it a Poetry
# project; without one reticulate goes on to the same Python either way. So
# when no pyproject.toml from `start` up to the root mentions `tool.poetry`,
# point reticulate's lookup (its option reticulate.poetry.project) at a
# folder without a pyproject.toml; an option the user set is kept.
fedr_quiet_poetry <- function(start = getwd()) {
  if (!is.null(getOption("reticulate.poetry.project"))) {
    return(invisible(FALSE))
  }
  found <- FALSE
  dir <- normalizePath(start, mustWork = FALSE)
  repeat {
    file <- file.path(dir, "pyproject.toml")
    if (file.exists(file)) {
      found <- TRUE
      lines <- tryCatch(readLines(file, warn = FALSE), error = function(e) "tool.poetry")
      if (any(grepl("tool\\.[\"']?poetry", lines))) {
        return(invisible(FALSE))
      }
    }
    parent <- dirname(dir)
    if (identical(parent, dir)) break
    dir <- parent
  }
  if (!found) {
    return(invisible(FALSE))
  }
  options(reticulate.poetry.project = fedr_no_project_dir())
  invisible(TRUE)
}

# An empty folder of this session: a project without a pyproject.toml.
fedr_no_project_dir <- function() {
  dir <- file.path(tempdir(), "fedr-no-pyproject")
  dir.create(dir, showWarnings = FALSE)
  dir
}
