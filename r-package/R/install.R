# Installing the Python core from R, as keras3::install_keras() does.

#' Install the fedr Python core
#'
#' Creates (or updates) a Python virtual environment holding fedr's Python
#' core with its pinned dependencies (TensorFlow, Keras, numpy < 2,
#' dp-accounting, cryptography, Ray), from a source distribution the R
#' package carries: no copy of the fedr repository is needed. A later
#' `library(fedr)` finds the environment by itself (after the option
#' `fedr.python`, `FEDR_PYTHON`, `RETICULATE_PYTHON` and a project `.venv`).
#' It downloads packages from the Python package index and takes a few
#' minutes the first time.
#'
#' @param envname The environment: a name (created under
#'   `reticulate::virtualenv_root()`: `WORKON_HOME`, else `~/.virtualenvs`)
#'   or a path (anything with a `/`). `~` is expanded; `library(fedr)` looks
#'   for `r-fedr` at the same place.
#' @param python The Python to create it with (a path, or a command on
#'   `PATH`), used only when the environment does not exist yet (but checked
#'   always); it must be
#'   Python 3.10 or 3.11 (reticulate 1.28 cannot use 3.12 or later, and the
#'   pinned TensorFlow has no wheels for 3.9). `NULL` takes the first of
#'   `python3.11`, `python3.10` and `python3` on `PATH` that is one of these.
#' @param upgrade Reinstall the fedr core even when the environment has it.
#' @returns The environment's Python executable, invisibly.
#' @family setup
#' @export
#' @examples
#' \dontrun{
#' install_fedr()
#' library(fedr)
#' fedr_available()
#' }
install_fedr <- function(envname = "r-fedr", python = NULL, upgrade = FALSE) {
  envname <- check_string(envname, "envname")
  upgrade <- check_flag(upgrade, "upgrade")
  # A `python` the user names is checked even when the environment exists.
  if (!is.null(python)) python <- check_python(python)
  source <- system.file("python", package = "fedr")
  sdist <- list.files(source, pattern = "^fedr-.*\\.tar\\.gz$", full.names = TRUE)
  requirements <- file.path(source, "requirements.txt")
  if (!length(sdist) || !file.exists(requirements)) {
    fedr_abort(paste0(
      "This installation of the fedr R package carries no Python core (inst/python). ",
      "Build the package with `make setup` or `R CMD build` from the fedr repository."
    ))
  }
  path <- fedr_env_path(envname)
  env_python <- fedr_env_python(path)
  if (!file.exists(env_python)) {
    if (is.null(python)) python <- find_default_python()
    cli::cli_inform("Creating the Python environment {.path {path}} with {.path {python}}")
    run_or_abort(python, c("-m", "venv", path), "creating the virtual environment")
  }
  cli::cli_inform("Installing fedr's Python core and its pinned dependencies (a few minutes the first time)")
  run_or_abort(env_python, c("-m", "pip", "install", "--quiet", "--upgrade", "pip", "setuptools"), "upgrading pip")
  run_or_abort(env_python, c("-m", "pip", "install", "--quiet", "-r", requirements), "installing the dependencies")
  args <- c("-m", "pip", "install", "--quiet", if (upgrade) "--force-reinstall", "--no-deps", sdist[[1]])
  run_or_abort(env_python, args, "installing the fedr Python core")
  cli::cli_inform("Done: {.path {env_python}}. Restart R, then `library(fedr)` uses it.")
  invisible(env_python)
}

# The one place the environment's folder is computed, for install_fedr() and
# for the lookup in fedr_find_python(): they must agree. A name lives under
# reticulate's virtualenv root (WORKON_HOME, else "~/.virtualenvs", as
# reticulate::virtualenv_root() says); anything with a slash is a path. The
# result is absolute with `~` expanded: reticulate 1.28 hands back
# "~/.virtualenvs" as it is, and a quoted `~` reaches `python -m venv`
# literally (it made a folder named `~` in the working directory). Symlinks
# are not resolved, so the path is the same before and after the folder exists.
fedr_env_path <- function(envname) {
  path <- envname
  if (!grepl("/", envname, fixed = TRUE)) {
    root <- reticulate::virtualenv_root()
    # An empty WORKON_HOME counts as unset (reticulate would give "/<name>").
    if (!nzchar(root)) root <- "~/.virtualenvs"
    path <- file.path(root, envname)
  }
  path <- path.expand(path)
  if (!startsWith(path, "/")) path <- file.path(getwd(), path)
  path
}

# The Python executable of the environment at `path`.
fedr_env_python <- function(path) file.path(path, "bin", "python")

# The Python versions install_fedr() accepts: reticulate 1.28 (Debian's R)
# cannot embed Python 3.12 or later, and the pinned TensorFlow 2.21 and Ray
# 2.55 (requirements.txt) have no wheels for Python 3.9.
fedr_python_versions <- c("3.10", "3.11")

# `python` as an absolute executable of an accepted version, or an error
# naming `python`: a path must be a file, a name must be on PATH.
check_python <- function(python) {
  python <- check_string(python, "python")
  if (grepl("/", python, fixed = TRUE)) {
    path <- path.expand(python)
    if (!file.exists(path) || dir.exists(path)) {
      fedr_abort(sprintf("`python` must be a Python executable; there is no file '%s'.", python), "python")
    }
  } else {
    path <- unname(Sys.which(python))
    if (!nzchar(path)) {
      fedr_abort(sprintf("`python` must be a Python executable; '%s' is not on PATH.", python), "python")
    }
  }
  probe <- python_version(path)
  if (is.null(probe$version)) {
    what <- if (probe$status != 0L) sprintf("failed (exit %d)", probe$status) else "printed no Python version"
    fedr_abort(sprintf(
      "`python` must be a Python executable; '%s --version' %s: %s", path, what, probe$output
    ), "python")
  }
  if (!python_version_ok(probe$version)) {
    fedr_abort(sprintf(
      "`python` must be Python %s (reticulate 1.28 and the pinned TensorFlow need it), not Python %s ('%s').",
      versions_text(), probe$version, path
    ), "python")
  }
  path
}

# The first of python3.11, python3.10 and python3 on PATH that is an accepted
# version. The first `python3` on PATH is often another tool's (a pyenv shim,
# a conda base): it is taken only when its version fits.
find_default_python <- function() {
  seen <- character()
  for (name in c("python3.11", "python3.10", "python3")) {
    path <- unname(Sys.which(name))
    if (!nzchar(path)) next
    version <- python_version(path)$version
    if (!is.null(version) && python_version_ok(version)) {
      return(path)
    }
    seen <- c(seen, sprintf("'%s' is %s", path, if (is.null(version)) "not runnable" else paste("Python", version)))
  }
  fedr_abort(sprintf(
    "No Python %s found on PATH (%s): install Python 3.11, or pass its path as `python`.",
    versions_text(), if (length(seen)) paste(seen, collapse = ", ") else "no python3.11, python3.10 or python3"
  ), "python")
}

# `python --version` as "3.11.7" (NULL when it fails or prints no version),
# with the exit status and the first lines of its output.
python_version <- function(python) {
  run <- run_command(python, "--version")
  output <- paste(utils::head(run$output[nzchar(trimws(run$output))], 5), collapse = "\n")
  found <- regmatches(output, regexpr("(?m)(?<=^Python )[0-9]+\\.[0-9]+(\\.[0-9]+)?", output, perl = TRUE))
  list(version = if (run$status == 0L && length(found)) found else NULL, status = run$status, output = output)
}

python_version_ok <- function(version) {
  parts <- strsplit(version, ".", fixed = TRUE)[[1]]
  paste(parts[1:2], collapse = ".") %in% fedr_python_versions
}

versions_text <- function() paste(fedr_python_versions, collapse = " or ")

# Run a command, its status and output (stdout and stderr) kept. Every word is
# quoted (system2() quotes the command itself): a path keeps its spaces and a
# `~` stays a `~`, so paths must arrive expanded (fedr_env_path()).
run_command <- function(command, args) {
  # R's LD_LIBRARY_PATH lists the system's libpython: a Python started from R
  # would load it instead of its own (and fail to import ssl, which pip needs).
  # Output to a file, not `stdout = TRUE`: R then turns exit status 127 (a
  # command that cannot start, e.g. a pyenv shim of a missing version) into
  # the bare error "error in running command" and drops what it printed.
  log <- tempfile("fedr-run-", fileext = ".log")
  on.exit(unlink(log))
  status <- suppressWarnings(system2(
    command, shQuote(args), stdout = log, stderr = log, env = "LD_LIBRARY_PATH="
  ))
  output <- if (file.exists(log)) readLines(log, warn = FALSE) else character()
  list(output = output, status = as.integer(status))
}

run_or_abort <- function(command, args, what) {
  run <- run_command(command, args)
  if (run$status != 0L) {
    fedr_abort(sprintf(
      "install_fedr: %s failed (exit %d):\n%s", what, run$status, paste(utils::tail(run$output, 20), collapse = "\n")
    ), class = "fedr_error_python")
  }
  invisible(run$output)
}
