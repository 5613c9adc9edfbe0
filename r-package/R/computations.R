# The federated building blocks of the reference article: types, typed
# computations and the federated operators, over fedr.computations.

#' Types of federated values
#'
#' Declare the type of a computation's argument, as TensorFlow Federated's
#' `TensorType`, `SequenceType` and `FederatedType` do. A sequence arrives in a
#' [tf_computation()] as a `tf.data.Dataset`; a federated value has one member
#' per client (`"clients"`) or one on the server (`"server"`). The Python
#' core checks the arguments: a wrong one is an error of class `fedr_error`
#' naming it.
#'
#' @param dtype The element type: one of `"float32"`, `"float64"`,
#'   `"float16"`, `"int8"`, `"int16"`, `"int32"`, `"int64"`, `"uint8"`,
#'   `"bool"`, or a TensorFlow dtype object such as `tf$float32`.
#' @param shape The shape of one tensor; `integer()` is a scalar, `NA` an
#'   unknown dimension.
#' @returns A `fed_type` object (it prints as TFF's notation, e.g.
#'   `{float32*}@CLIENTS`).
#' @family building blocks
#' @export
#' @examplesIf fedr_available()
#' sequence_type("float32")
#' federated_type(sequence_type("float32"), "clients")
#' tensor_type("float32", shape = c(NA, 784))
tensor_type <- function(dtype = "float32", shape = integer()) {
  dims <- if (is.atomic(shape)) lapply(as.vector(shape), function(d) if (is.na(d)) NULL else d) else shape
  new_fed_type(fedr_call(
    fedr_module()$TensorType(unwrap_py(dtype), reticulate::tuple(dims)),
    c("dtype", "shape"), na_ok = "shape"
  ))
}

#' @rdname tensor_type
#' @export
sequence_type <- function(dtype = "float32") {
  new_fed_type(fedr_call(fedr_module()$SequenceType(unwrap_py(dtype)), "dtype"))
}

#' @rdname tensor_type
#' @param member The type of each member: a `fed_type` from [tensor_type()] or
#'   [sequence_type()], or a dtype.
#' @param placement `"clients"` (one member per client) or `"server"`.
#' @export
federated_type <- function(member, placement = c("clients", "server")) {
  if (missing(placement)) placement <- "clients"
  new_fed_type(fedr_call(
    fedr_module()$FederatedType(unwrap_py(member), placement),
    c(dtype = "member", "placement")
  ))
}

new_fed_type <- function(py) structure(list(py = py), class = "fed_type")

#' @export
format.fed_type <- function(x, ...) reticulate::py_str(x$py)

#' @export
print.fed_type <- function(x, ...) {
  writeLines(paste0("<fed_type> ", format(x)))
  invisible(x)
}

#' @importFrom reticulate r_to_py
#' @export
r_to_py.fed_type <- function(x, convert = FALSE) x$py

# ---- computations

#' Typed computations
#'
#' `tf_computation()` wraps an R function of TensorFlow operations; its
#' argument, declared by `type`, arrives as a Python object: a
#' `tf.data.Dataset` for a [sequence_type()], so `x$reduce(...)`, `x$map(...)`
#' and `x$filter(...)` work, and TensorFlow tensors support `+`, `-`, `*`,
#' `/`, `^` in R. `federated_computation()` wraps an R function of a federated
#' value that combines it with [federated_map()], [federated_mean()] and
#' [federated_sum()].
#'
#' Calling the result converts its R argument once, and `type` checks it:
#' a numeric vector is a sequence (also when it has length one) or, for a
#' [federated_type()] of numbers, one number per client; a list has one
#' element per member or client. `NA` or a value that does not fit `type` is
#' an error of class `fedr_error` naming the argument of `fn`.
#'
#' @param fn An R function of one argument.
#' @param type The argument's type: a [sequence_type()] or [tensor_type()]
#'   for `tf_computation()`, a [federated_type()] for `federated_computation()`.
#' @returns A `fed_computation`: an R function of one argument returning an
#'   R value (a number for the article's averages).
#' @family building blocks
#' @export
#' @examplesIf fedr_available()
#' tf <- reticulate::import("tensorflow")
#' local_average <- tf_computation(function(temperatures) {
#'   sum_and_count <- temperatures$reduce(
#'     tuple(0, 0), function(acc, x) tuple(acc[[1]] + x, acc[[2]] + 1)
#'   )
#'   sum_and_count[[1]] / tf$cast(sum_and_count[[2]], tf$float32)
#' }, sequence_type("float32"))
#' local_average(c(1, 2, 3))
#'
#' global_average <- federated_computation(function(readings) {
#'   federated_mean(federated_map(local_average, readings))
#' }, federated_type(sequence_type("float32"), "clients"))
#' global_average(list(c(1, 1, 1), 13))
tf_computation <- function(fn, type) {
  new_computation(fn, type, "tf")
}

#' @rdname tf_computation
#' @export
federated_computation <- function(fn, type) {
  new_computation(fn, type, "federated")
}

new_computation <- function(fn, type, kind) {
  check_function(fn, "fn")
  arg <- names(formals(fn))[1]
  if (is.null(arg) || identical(arg, "...")) arg <- "value"
  # Python calls `body` with the converted argument; federated values reach
  # `fn` as fed_value objects and come back unwrapped.
  body <- function(x) {
    if (kind == "federated") x <- new_fed_value(x)
    unwrap_py(fn(x))
  }
  builder <- if (kind == "tf") "tf_computation" else "federated_computation"
  py <- fedr_call(
    fedr_module()[[builder]](reticulate::py_func(body), as_py_value(type, "type")),
    c(type_spec = "type")
  )
  computation <- function(value) {
    if (missing(value)) fedr_abort(sprintf("`%s` is missing.", arg), arg)
    # The type converts and checks once; the call converts no more.
    x <- fedr_call(py$type_signature$convert(as_py_value(value, arg), from_r = TRUE), arg)
    from_py(fedr_call(reticulate::py_call(py, x)))
  }
  structure(computation, class = c("fed_computation", "function"), py = py, kind = kind)
}

#' @export
format.fed_computation <- function(x, ...) {
  sprintf("<%s_computation> (%s)", attr(x, "kind"), reticulate::py_str(attr(x, "py")$type_signature))
}

#' @export
print.fed_computation <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @export
r_to_py.fed_computation <- function(x, convert = FALSE) attr(x, "py")

# ---- federated values and operators

new_fed_value <- function(py) {
  if (inherits(py, "fed_value")) py else structure(list(py = py), class = "fed_value")
}

unwrap_py <- function(x) {
  if (inherits(x, c("fed_value", "fed_type"))) x$py else if (inherits(x, "fed_computation")) attr(x, "py") else x
}

#' @export
format.fed_value <- function(x, ...) {
  py <- x$py
  placement <- reticulate::py_str(py$placement)
  members <- from_py(py$members)
  shown <- vapply(members, function(m) {
    if (inherits(m, "python.builtin.object")) reticulate::py_str(m) else paste(format(m), collapse = " ")
  }, character(1))
  all_equal <- reticulate::py_to_r(py$all_equal)
  if (placement == "SERVER" || all_equal) {
    sprintf("<fed_value @%s> %s", placement, shown[[1]])
  } else {
    sprintf("<fed_value @%s> %d members: %s", placement, length(shown), paste(shown, collapse = ", "))
  }
}

#' @export
print.fed_value <- function(x, ...) {
  writeLines(format(x))
  invisible(x)
}

#' @export
as.list.fed_value <- function(x, ...) from_py(x$py$members)

#' @export
r_to_py.fed_value <- function(x, convert = FALSE) x$py

# A federated operand given from R: a fed_value or Python object as it is, an
# R list or vector as one member per element (a client-placed value).
as_federated_operand <- function(x, arg) {
  if (is.numeric(x) || is.logical(x)) {
    check_na(x, arg)
    x <- as.list(x)
  }
  # An R integer member stays int32 in Python (reticulate makes it a Python
  # int, i.e. int64), so federated_sum() gives an integer back and refuses an
  # overflow, as R's own sum() of integers does.
  if (is.list(x) && !is.object(x)) {
    x <- lapply(x, function(m) {
      if (is.integer(m) && length(m) == 1L && is.null(dim(m)) && !is.na(m)) fedr_numpy()$int32(m) else m
    })
  }
  as_py_value(x, arg)
}

fedr_numpy <- function() fedr_module("numpy")

`%||%` <- function(x, y) if (is.null(x)) y else x

#' Federated operators
#'
#' Combine federated values inside a [federated_computation()], as TensorFlow
#' Federated's operators of the same names: `federated_map()` applies a
#' computation to each client's member, `federated_mean()` averages client
#' values on the server (unweighted, or weighted by `weight`),
#' `federated_sum()` sums them, `federated_broadcast()` sends a server value
#' to every client. Outside a computation, a list with one element per client
#' stands for a client-placed value.
#'
#' @param fn A computation from [tf_computation()], or an R function of one
#'   member.
#' @param value A federated value (the argument of a federated computation or
#'   the result of another operator), or a list of client values.
#' @param weight `NULL` for the unweighted mean, else one weight per client
#'   (a numeric vector or a federated value): finite, non-negative, with a
#'   positive sum, the rules of the core's weighted mean.
#' @returns A `fed_value`: placed at the clients for `federated_map()` and
#'   `federated_broadcast()`, at the server otherwise. `as.list()` gives its
#'   members.
#' @family building blocks
#' @export
#' @examplesIf fedr_available()
#' federated_mean(list(1, 2, 6))
#' federated_mean(list(1, 2, 6), weight = c(1, 1, 2))
#' federated_sum(list(1, 2, 6))
federated_map <- function(fn, value) {
  if (inherits(fn, "fed_computation")) {
    py_fn <- attr(fn, "py")
  } else if (inherits(fn, "python.builtin.object")) {
    py_fn <- fn
  } else {
    check_function(fn, "fn")
    py_fn <- reticulate::py_func(function(x) unwrap_py(fn(simplify_r(x))))
  }
  operand <- as_federated_operand(value, "value")
  # Two names, so that errors of `fn` (run here) are not said to be `value`'s.
  new_fed_value(fedr_call(fedr_module()$federated_map(py_fn, operand), c("value", "fn")))
}

#' @rdname federated_map
#' @export
federated_mean <- function(value, weight = NULL) {
  operand <- as_federated_operand(value, "value")
  if (!is.null(weight)) weight <- as_federated_operand(weight, "weight")
  new_fed_value(fedr_call(fedr_module()$federated_mean(operand, weight = weight), c("value", "weight")))
}

#' @rdname federated_map
#' @export
federated_sum <- function(value) {
  operand <- as_federated_operand(value, "value")
  new_fed_value(fedr_call(fedr_module()$federated_sum(operand), "value"))
}

#' @rdname federated_map
#' @export
federated_broadcast <- function(value) {
  operand <- as_py_value(value, "value")
  new_fed_value(fedr_call(fedr_module()$federated_broadcast(operand), "value"))
}

#' @importFrom reticulate tuple
#' @export
reticulate::tuple

# ---- arithmetic on TensorFlow tensors (when the tensorflow R package, which
# has its own, is not installed): the article's reducers use `+` and `/`.

tensor_class_filter <- function(classes) {
  if ("tensorflow.python.types.core.Tensor" %in% classes && !"fedr_tensor" %in% classes) {
    c("fedr_tensor", classes)
  } else {
    classes
  }
}

tensor_ops <- c(
  "+" = "add", "-" = "sub", "*" = "mul", "/" = "truediv", "^" = "pow",
  "%%" = "mod", "%/%" = "floordiv", "==" = "eq", "!=" = "ne", "<" = "lt",
  "<=" = "le", ">" = "gt", ">=" = "ge"
)

#' @export
Ops.fedr_tensor <- function(e1, e2) {
  operator <- reticulate::import("operator")
  if (missing(e2)) {
    if (.Generic == "-") return(reticulate::py_call(operator$neg, e1))
    if (.Generic == "+") return(e1)
  }
  name <- tensor_ops[.Generic]
  if (is.na(name)) stop(sprintf("`%s` is not supported on tensors.", .Generic), call. = FALSE)
  reticulate::py_call(reticulate::py_get_attr(operator, name), e1, e2)
}
