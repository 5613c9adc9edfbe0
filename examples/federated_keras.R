# Federated learning of a Keras model from R: the reference article's workflow
# ("A first look at federated learning with TensorFlow") with fedr.
#
# Run from the repository with `make demo`, or `Rscript examples/federated_keras.R`
# once `make setup` has installed the Python core and the R package.
# The history plot goes to fedr-history.png, or to the path in FEDR_PLOT.

library(fedr)
keras <- reticulate::import("keras")
tf <- reticulate::import("tensorflow")

# ---- Client-side and server-side computations ------------------------------

# Each client reduces its readings to their sum and count, then divides.
get_local_temperature_average <- tf_computation(function(local_temperatures) {
  sum_and_count <- local_temperatures$reduce(
    tuple(0, 0), function(x, y) tuple(x[[1]] + y, x[[2]] + 1)
  )
  sum_and_count[[1]] / tf$cast(sum_and_count[[2]], tf$float32)
}, sequence_type("float32"))

cat("local average of c(1, 2, 3):", get_local_temperature_average(c(1, 2, 3)), "\n")

# The server averages the clients' averages (unweighted).
get_global_temperature_average <- federated_computation(function(sensor_readings) {
  federated_mean(federated_map(get_local_temperature_average, sensor_readings))
}, federated_type(sequence_type("float32"), "clients"))

cat("global average of list(c(1, 1, 1), 13):",
    get_global_temperature_average(list(c(1, 1, 1), 13)), "\n\n")

# ---- Federated Keras --------------------------------------------------------

# Fashion-MNIST (Kuzushiji-MNIST's shape: 60000 + 10000 images of 28 x 28, 10
# classes), split into 10 sequential ranges, one per client, in batches of 100.
dataset <- fed_load_dataset("fashion_mnist")
print(dataset)
federated_train_data <- fed_split(dataset, n_clients = 10, method = "sequential", batch_size = 100)
print(federated_train_data)
cat("labels of client 5's first batch:\n")
print(utils::head(fed_client(federated_train_data, 5)$y, 100))

# One dense softmax layer, zero-initialised, built fresh whenever asked for.
create_keras_model <- function() {
  keras$Sequential(list(
    keras$Input(shape = list(784L)),
    keras$layers$Dense(units = 10L, kernel_initializer = "zeros", activation = "softmax")
  ))
}

model <- fed_model(
  create_keras_model,
  loss = "sparse_categorical_crossentropy",
  metrics = "sparse_categorical_accuracy",
  sample_batch = federated_train_data
)

iterative_process <- fed_averaging(
  model,
  client_optimizer = fed_optimizer("sgd", learning_rate = 0.02),
  server_optimizer = fed_optimizer("sgd", learning_rate = 1.0)
)
print(iterative_process)

state <- fed_initialize(iterative_process)
print(state)

num_rounds <- 20
history <- fed_fit(iterative_process, federated_train_data, rounds = num_rounds, state = state)
print(history)

plot_path <- Sys.getenv("FEDR_PLOT", "fedr-history.png")
grDevices::png(plot_path, width = 900, height = 400)
plot(history)
invisible(grDevices::dev.off())
cat("\nhistory plot written to", normalizePath(plot_path), "\n\n")

# ---- Federated evaluation ----------------------------------------------------

# The article stops at training accuracy, which is optimistic (each client
# fits its own data). Evaluate the final weights on the 10000 test images,
# held by 10 other clients.
federated_test_data <- fed_split(dataset, n_clients = 10, split = "test", batch_size = 100)
evaluation <- fed_evaluate(iterative_process, history, federated_test_data)
cat(sprintf(
  "federated evaluation on %d test images over %d clients: accuracy %.4f, loss %.4f\n",
  as.integer(evaluation[["num_examples"]]), as.integer(evaluation[["num_clients"]]),
  evaluation[["sparse_categorical_accuracy"]], evaluation[["loss"]]
))
