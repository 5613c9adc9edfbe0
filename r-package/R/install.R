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
#'   `reticulate::virtualenv_root()`, which `WORKON_HOME` sets) or a path.
#' @param python The Python to create it with; `NULL` looks for `python3.11`,
#'   then `python3` (reticulate 1.28 needs Python 3.9 to 3.11).
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
  if (is.null(python)) {
    candidates <- Sys.which(c("python3.11", "python3"))
    python <- unname(candidates[nzchar(candidates)][1])
    if (is.na(python)) fedr_abort("No Python found: install Python 3.11 or pass `python`.", "python")
  }
  python <- check_string(python, "python")
  env_python <- file.path(path, "bin", "python")
  if (!file.exists(env_python)) {
    cli::cli_inform("Creating the Python environment {.path {path}}")
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

# A name lives under reticulate's virtualenv root; anything with a slash is a path.
fedr_env_path <- function(envname) {
  if (grepl("/", envname, fixed = TRUE)) path.expand(envname) else file.path(reticulate::virtualenv_root(), envname)
}

run_or_abort <- function(command, args, what) {
  # R's LD_LIBRARY_PATH lists the system's libpython: a Python started from R
  # would load it instead of its own (and fail to import ssl, which pip needs).
  output <- suppressWarnings(system2(command, shQuote(args), stdout = TRUE, stderr = TRUE, env = "LD_LIBRARY_PATH="))
  status <- attr(output, "status")
  if (!is.null(status) && status != 0) {
    fedr_abort(sprintf(
      "install_fedr: %s failed (exit %d):\n%s", what, status, paste(utils::tail(output, 20), collapse = "\n")
    ), class = "fedr_error_python")
  }
  invisible(output)
}
