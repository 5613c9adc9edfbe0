# Errors, argument checks and conversions at the R/Python boundary.

#' Errors signalled by fedr
#'
#' Every error fedr signals has class `fedr_error` (and `error`,
#' `condition`); most also have one of two subclasses, so code can tell bad
#' input from a failure in the Python core:
#'
#' * `fedr_error_input`: a bad argument or bad data. Signalled by fedr's
#'   argument checks in R (before Python sees the value) and for the Python
#'   core's `ValueError` and `TypeError` (fedr's `FedValueError` and
#'   `FedTypeError`), e.g. a client without examples or a value of the wrong
#'   type. Class `c("fedr_error_input", "fedr_error", "error", "condition")`.
#' * `fedr_error_python`: any other failure in the Python core (another Python
#'   exception, e.g. a TensorFlow error), or the core is not available. Class
#'   `c("fedr_error_python", "fedr_error", "error", "condition")`.
#'
#' The condition object carries `message`, `arg` (the name of the R argument
#' at fault, or `NULL` when no single argument is) and `python_type` (the
#' Python exception type, e.g. `"ValueError"`, or `NULL` for errors raised in
#' R). Python tracebacks are left out of the message; see
#' [reticulate::py_last_error()] for them.
#'
#' @name fedr_error
#' @aliases fedr_error_input fedr_error_python
#' @examples
#' tryCatch(
#'   fed_load_dataset("mnist"),
#'   fedr_error_input = function(e) paste("bad argument:", e$arg),
#'   fedr_error_python = function(e) paste("the core failed:", conditionMessage(e))
#' )
NULL

# The class vector of a fedr error: `fedr_error_input` for bad arguments and
# data (an R-side check naming `arg`, or a Python ValueError / TypeError),
# `fedr_error_python` for other Python exceptions (a `python_type` that is
# not one of those, or NA: an error that came back from a Python call without
# a recognisable type), plain `fedr_error` otherwise. `class` forces one.
fedr_error_class <- function(arg = NULL, python_type = NULL, class = NULL) {
  if (is.null(class)) {
    class <- if (!is.null(python_type)) {
      if (isTRUE(python_type %in% c("ValueError", "TypeError"))) "fedr_error_input" else "fedr_error_python"
    } else if (!is.null(arg)) {
      "fedr_error_input"
    }
  }
  unique(c(class, "fedr_error", "error", "condition"))
}

# Signal a `fedr_error` (see ?fedr_error); `arg` names the offending argument,
# `python_type` the Python exception behind it, `class` forces a subclass
# (e.g. "fedr_error_python"); by default it follows from `arg`/`python_type`.
fedr_abort <- function(message, arg = NULL, python_type = NULL, class = NULL) {
  cnd <- structure(
    class = fedr_error_class(arg, python_type, class),
    list(message = message, call = NULL, arg = arg, python_type = python_type)
  )
  stop(cnd)
}

# Evaluate a call into Python; a Python exception becomes a `fedr_error`
# carrying the Python message ("ValueError: ...") and never the traceback.
# With `arg`, the call checks R arguments (wrap only that call: every error
# then names one) and the message names the R argument as R's own checks do,
# "`arg`: <Python message>". `arg` holds R argument names, named by the Python
# parameter each stands for where the names differ; a Python message starting
# "name: " or "`name`" says which one, else a single `arg` is named.
#
# NA has no Python counterpart (a logical NA arrives as True, NA_integer_ as
# -2147483648), so before `expr` runs every R argument named in `arg` is
# looked up in the caller and must hold no NA (NaN included): an error naming
# it. `na_ok` names the arguments where NA means something (an unknown
# dimension of `tensor_type(shape =)`).
fedr_call <- function(expr, arg = NULL, na_ok = NULL) {
  if (length(arg)) check_no_na(setdiff(unname(arg), na_ok), parent.frame())
  reticulate::py_clear_last_error()
  tryCatch(expr, error = function(e) {
    if (inherits(e, "fedr_error")) stop(e)
    parsed <- python_error(e)
    named <- name_argument(parsed, arg, python_argument())
    fedr_abort(named$message, named$arg, python_type = parsed$type)
  })
}

# The argument a fedr error is about, as the Python core says it (its
# `argument` attribute), or NULL (not a fedr error, or about no argument).
python_argument <- function() {
  last <- tryCatch(reticulate::py_last_error(), error = function(e) NULL)
  exception <- attr(last, "exception")
  if (is.null(exception)) {
    return(NULL)
  }
  value <- tryCatch(reticulate::py_to_r(reticulate::py_get_attr(exception, "argument", silent = TRUE)),
                    error = function(e) NULL)
  if (is.character(value) && length(value) == 1L && nzchar(value)) value else NULL
}

# The R arguments `names`, as fedr's own functions on the call stack see them
# (the innermost that has each, from `env` out: the exported function, or a
# helper between it and fedr_call()), must hold no NA.
check_no_na <- function(names, env) {
  frames <- fedr_frames(env)
  for (name in names) {
    found <- argument_value(name, frames)
    if (!found$found) next
    x <- found$value
    if (has_na(x)) {
      if (is.atomic(x) && length(x) == 1L) {
        fedr_abort(sprintf("`%s` must not be NA or NaN, got %s.", name, describe(x)), name)
      }
      fedr_abort(sprintf(
        "`%s` must not contain NA or NaN; %s does (NA has no Python counterpart).", name, describe(x)
      ), name)
    }
  }
}

# The frames of the calls into fedr around `env`, innermost first: from the
# frame `env` outwards, while the function called is fedr's (its closure ends
# in the fedr namespace), so that a user's variable of the same name is never
# taken for the argument.
fedr_frames <- function(env) {
  ns <- topenv(environment(fedr_frames))
  frames <- sys.frames()
  at <- Position(function(f) identical(f, env), frames, right = TRUE)
  if (is.na(at)) {
    return(list(env))
  }
  out <- list()
  for (i in rev(seq_len(at))) {
    fn <- sys.function(i)
    if (!identical(topenv(environment(fn)), ns)) break
    out[[length(out) + 1L]] <- frames[[i]]
  }
  out
}

argument_value <- function(name, frames) {
  # Each frame and, for a closure made inside a fedr function (vapply's FUN),
  # the frames it was made in, up to the namespace.
  lexical <- list()
  for (env in frames) {
    while (!identical(env, emptyenv()) && !isNamespace(env) && !identical(env, globalenv())) {
      lexical[[length(lexical) + 1L]] <- env
      env <- parent.env(env)
    }
  }
  for (env in lexical) {
    if (exists(name, envir = env, inherits = FALSE)) {
      # A missing argument, or a default that cannot be computed yet, is not ours to judge.
      return(tryCatch(list(found = TRUE, value = get(name, envir = env, inherits = FALSE)),
                      error = function(e) list(found = FALSE)))
    }
    if (exists("...", envir = env, inherits = FALSE)) {
      dots <- tryCatch(eval(quote(list(...)), env), error = function(e) list())
      if (!is.null(names(dots)) && name %in% names(dots)) return(list(found = TRUE, value = dots[[name]]))
    }
  }
  list(found = FALSE)
}

# NA anywhere in an R value (atomic vectors, data frames, plain lists, recursively).
has_na <- function(x) {
  if (inherits(x, "python.builtin.object") || is.function(x) || is.environment(x)) {
    return(FALSE)
  }
  if (is.atomic(x)) {
    return(anyNA(x))
  }
  if (is.list(x)) {
    # unclass(): a classed list (fed_value, fed_data) may have an as.list() method that calls Python.
    return(any(vapply(unclass(x), has_na, logical(1))))
  }
  FALSE
}

name_argument <- function(parsed, arg, argument = NULL) {
  python <- names(arg) %||% arg
  python[!nzchar(python)] <- arg[!nzchar(python)]
  if (!is.null(argument) && argument %in% python) {
    # The core said which argument (as data): name the R one, drop the Python name from the text.
    i <- match(argument, python)
    rest <- sub(sprintf("^(%s: |`%s`)", argument, argument), "", parsed$value)
    sep <- if (startsWith(parsed$value, paste0("`", argument, "`"))) "" else ": "
    return(list(message = paste0("`", arg[[i]], "`", sep, rest), arg = unname(arg[[i]])))
  }
  for (i in seq_along(arg)) {
    for (prefix in c(paste0(python[[i]], ": "), paste0("`", python[[i]], "`"))) {
      if (startsWith(parsed$value, prefix)) {
        rest <- substring(parsed$value, nchar(prefix) + 1L)
        sep <- if (startsWith(prefix, "`")) "" else ": "
        return(list(message = paste0("`", arg[[i]], "`", sep, rest), arg = unname(arg[[i]])))
      }
    }
  }
  if (length(arg) == 1L) {
    return(list(message = sprintf("`%s`: %s", arg, parsed$value), arg = unname(arg)))
  }
  list(message = parsed$message, arg = NULL)
}

# The Python exception behind an R error: type name, its message (`value`)
# and "Type: message".
# fedr's own classes read as the builtins they derive from (FedValueError is a
# ValueError), so users see the kind of error they know.
python_error <- function(e) {
  message <- conditionMessage(e)
  last <- tryCatch(reticulate::py_last_error(), error = function(err) NULL)
  same <- FALSE  # whether `last` is this error (reticulate keeps the last one, maybe an older one)
  if (!is.null(last) && length(last$type) && startsWith(message, last$type)) {
    same <- TRUE
    type <- sub("^Fed(\\w*Error)$", "\\1", last$type)
    value <- last$value
  } else {
    lines <- strsplit(message, "\n", fixed = TRUE)[[1]]
    cut <- grep("^(Detailed traceback|Run `reticulate::py_last_error|Traceback)", lines)
    if (length(cut)) lines <- lines[seq_len(cut[[1]] - 1L)]
    first <- if (length(lines)) lines[[1]] else message
    type <- if (grepl("^[A-Za-z_.]*(Error|Exception|Warning)\\b", first)) sub(":.*$", "", first) else NA_character_
    value <- sub("^[A-Za-z_.]*(Error|Exception|Warning): ?", "", paste(lines, collapse = "\n"))
    same <- !is.na(type) && !is.null(last) && length(last$type) && endsWith(type, paste0(".", last$type))
    if (!is.na(type)) type <- sub("^(\\w+\\.)*Fed(\\w*Error)$", "\\2", type)
  }
  # A subclass of fedr's value or type error (e.g. BudgetExhaustedError) is one of those for R.
  exception <- if (same) attr(last, "exception") else NULL
  if (inherits(exception, "fedr.errors.FedValueError")) type <- "ValueError"
  if (inherits(exception, "fedr.errors.FedTypeError")) type <- "TypeError"
  # TensorFlow prefixes graph errors with the user code it traced ("in user
  # code:" and file lines); the cause is the last paragraph.
  if (grepl("in user code:", value, fixed = TRUE)) {
    paragraphs <- strsplit(trimws(value), "\n\\s*\n")[[1]]
    value <- sub("^\\s*\\w*(Error|Exception): ", "", paragraphs[[length(paragraphs)]])
  }
  value <- trimws(value)
  list(type = type, value = value, message = if (is.na(type)) value else paste0(type, ": ", value))
}

# ---- argument checks: fail in R, naming the argument, before Python sees it.

check_flag <- function(x, arg) {
  if (!is.logical(x) || length(x) != 1L || is.na(x)) {
    fedr_abort(sprintf("`%s` must be TRUE or FALSE, not %s.", arg, describe(x)), arg)
  }
  x
}

check_string <- function(x, arg, choices = NULL) {
  if (!is.character(x) || length(x) != 1L || is.na(x) || !nzchar(x)) {
    fedr_abort(sprintf("`%s` must be a single string, not %s.", arg, describe(x)), arg)
  }
  if (!is.null(choices) && !x %in% choices) {
    fedr_abort(sprintf(
      "`%s` must be one of %s, not \"%s\".", arg,
      paste0("\"", choices, "\"", collapse = ", "), x
    ), arg)
  }
  x
}

check_function <- function(x, arg) {
  if (!is.function(x)) {
    fedr_abort(sprintf("`%s` must be a function, not %s.", arg, describe(x)), arg)
  }
  x
}

# One finite number, optionally bounded; returns a double.
as_number <- function(x, arg, min = -Inf, max = Inf, min_inclusive = TRUE) {
  ok <- is.numeric(x) && length(x) == 1L && !is.na(x) && is.finite(x)
  ok <- ok && (if (min_inclusive) x >= min else x > min) && x <= max
  if (!ok) {
    bound <- if (min_inclusive) sprintf(">= %s", min) else sprintf("> %s", min)
    what <- if (is.finite(max)) sprintf(" between %s and %s", min, max) else if (is.finite(min)) paste0(" ", bound) else ""
    fedr_abort(sprintf("`%s` must be a single finite number%s, not %s.", arg, what, describe(x)), arg)
  }
  as.double(x)
}

# One whole number >= min; returns an integer (what Python expects for counts).
as_integer <- function(x, arg, min = 1L) {
  whole <- is.numeric(x) && length(x) == 1L && !is.na(x) && is.finite(x) && x == round(x) && x >= min
  if (whole && x > .Machine$integer.max) {
    # A whole number all the same: say what is wrong with it.
    fedr_abort(sprintf(
      "`%s` must be at most %d (the largest integer R and fedr count with), not %s.",
      arg, .Machine$integer.max, format(x)
    ), arg)
  }
  if (!whole) {
    what <- if (min == 1L) "a positive integer" else sprintf("an integer >= %d", min)
    fedr_abort(sprintf("`%s` must be %s, not %s.", arg, what, describe(x)), arg)
  }
  as.integer(x)
}

# A count of clients or a fraction of them (`min_clients`, `threshold`): a
# whole number, even written as a double (R users write 3, not 3L; 1 is one
# client), becomes an integer count; any other number stays a double, the
# fraction, whose range Python checks. NULL stays NULL.
as_count_or_fraction <- function(x, arg) {
  if (is.null(x)) {
    return(NULL)
  }
  if (!is.numeric(x) || length(x) != 1L || is.na(x)) {
    fedr_abort(sprintf("`%s` must be a whole number of clients or a fraction of them, not %s.", arg, describe(x)), arg)
  }
  if (is.finite(x) && x >= 1 && x == round(x)) as_integer(x, arg) else as.double(x)
}

# NULL or a seed.
as_seed <- function(x, arg = "seed") {
  if (is.null(x)) NULL else as_integer(x, arg, min = 0L)
}

# A short description of an R value for error messages.
describe <- function(x) {
  if (is.null(x)) {
    return("NULL")
  }
  if (is.function(x)) {
    return("a function")
  }
  if (inherits(x, "python.builtin.object")) {
    return(sprintf("a Python object (%s)", class(x)[[1]]))
  }
  if (is.data.frame(x)) {
    return(sprintf("a data frame (%d x %d)", nrow(x), ncol(x)))
  }
  if (is.atomic(x) && length(x) == 1L) {
    value <- if (is.character(x)) paste0("\"", x, "\"") else format(x)
    return(sprintf("%s (%s)", value, typeof(x)))
  }
  if (!is.null(dim(x))) {
    return(sprintf("a %s array of dim %s", typeof(x), paste(dim(x), collapse = " x ")))
  }
  sprintf("a %s vector of length %d", typeof(x), length(x))
}

# ---- conversions: R values to numpy, once, in the layout the core wants.

# Numeric matrix, array or data frame -> C-ordered float32 ndarray (n, ...).
# Element [i, j] stays [i, j]; R is column-major, so this is the one copy.
as_py_features <- function(x, arg = "x") {
  if (is.data.frame(x)) {
    bad <- !vapply(x, function(col) is.numeric(col) || is.logical(col), logical(1))
    if (any(bad)) {
      fedr_abort(sprintf(
        "`%s` must have numeric columns only; column %s is not numeric.",
        arg, paste0("`", names(x)[bad][[1]], "`")
      ), arg)
    }
    x <- as.matrix(x)
  }
  if (is.null(dim(x))) {
    fedr_abort(sprintf("`%s` must be a numeric matrix, array or data frame, not %s.", arg, describe(x)), arg)
  }
  if (!(is.numeric(x) || is.logical(x))) {
    fedr_abort(sprintf("`%s` must be numeric, not %s.", arg, describe(x)), arg)
  }
  if (nrow(x) == 0L) {
    fedr_abort(sprintf("`%s` has no rows.", arg), arg)
  }
  check_finite(x, arg)
  storage.mode(x) <- "double"
  np <- fedr_module("numpy")
  fedr_call(np$ascontiguousarray(reticulate::r_to_py(x), dtype = "float32"))
}

# An R value as the Python value it stands for, converted once, whatever the
# type it must fit (Python checks that): a number (a vector of length one) as
# a Python scalar, a longer vector or an array as a numpy array (dims kept;
# doubles float64, integers int32, logicals bool), a list as a Python list,
# fedr and Python objects as they are. NA has no Python counterpart
# (NA_integer_ would arrive as -2147483648), so it is an error naming `arg`.
as_py_value <- function(x, arg) {
  if (inherits(x, c("fed_value", "fed_type", "fed_computation", "python.builtin.object"))) {
    return(unwrap_py(x))
  }
  if (is.list(x) && !is.data.frame(x)) {
    items <- lapply(seq_along(x), function(i) as_py_value(x[[i]], sprintf("%s[[%d]]", arg, i)))
    return(reticulate::r_to_py(items))
  }
  if (is.numeric(x) || is.logical(x)) {
    check_na(x, arg)
    if (length(x) == 1L && is.null(dim(x))) {
      return(reticulate::r_to_py(as.vector(x)))
    }
    return(reticulate::np_array(x))
  }
  reticulate::r_to_py(x)
}

# Labels -> int32 ndarray of length n. Here only R's side: a factor's codes
# become 0-based class ids (level 1 is class 0), a one-column matrix a vector,
# NA an error; fedr.datasets.as_labels holds the rule (whole numbers >= 0, one
# per example) and its messages name `arg`.
as_py_labels <- function(y, n, arg = "y") {
  if (is.factor(y)) y <- as.integer(y) - 1L
  if (length(dim(y)) > 1L && sum(dim(y) > 1L) <= 1L) y <- as.vector(y)
  if (is.numeric(y) || is.logical(y)) {
    check_na(y, arg)
    values <- reticulate::np_array(y) # 1-d even for one label
  } else {
    values <- reticulate::r_to_py(y)
  }
  datasets <- fedr_module("fedr.datasets")
  fedr_call(datasets$as_labels(values, as.integer(n), what = sprintf("`%s`", arg)), arg)
}

# NA, NaN and (with `infinite`) Inf are errors naming `arg` and the first one.
check_finite <- function(x, arg, infinite = TRUE) {
  bad <- which(if (infinite) is.na(x) | is.infinite(x) else is.na(x))
  if (length(bad)) {
    where <- if (is.null(dim(x))) {
      sprintf("element %d", bad[[1]])
    } else {
      idx <- arrayInd(bad[[1]], dim(x))
      sprintf("element [%s]", paste(idx, collapse = ", "))
    }
    fedr_abort(sprintf(
      "`%s` must not contain %s; %s is %s (%d in all).",
      arg, if (infinite) "NA, NaN or infinite values" else "NA or NaN",
      where, format(x[bad[[1]]]), length(bad)
    ), arg)
  }
  invisible(x)
}

# NA and NaN: values Python cannot receive from R.
check_na <- function(x, arg) check_finite(x, arg, infinite = FALSE)

# A Python value back to R; 1-d arrays become plain vectors, recursively.
from_py <- function(x) simplify_r(reticulate::py_to_r(x))

simplify_r <- function(x) {
  if (is.list(x) && !is.data.frame(x)) {
    return(lapply(x, simplify_r))
  }
  if (is.atomic(x) && length(dim(x)) <= 1L) {
    return(as.vector(x))
  }
  x
}

# A named numeric vector from a Python dict of numbers.
as_metrics <- function(x) {
  values <- reticulate::py_to_r(x)
  unlist(lapply(values, as.double))
}
