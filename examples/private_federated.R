# Differentially private federated learning from R: the reference workflow
# with DP-FedAvg (McMahan et al. 2018) over 100 clients, 10 sampled per round.
#
# Run with `Rscript examples/private_federated.R` after `make setup`.
# Each round clips every client's update to an L2 norm of 0.5, adds Gaussian
# noise (noise multiplier 1.0, from the operating system, never from `seed`) to
# their sum, and reports the privacy budget epsilon spent so far
# (dp-accounting's RDP accountant, delta = 1e-5) for the sampling that runs:
# 10 of 100 clients uniformly each round (sampling = "fixed", the default),
# about 32.3 after 30 rounds. Under DP the history holds no training loss or
# accuracy (they are not covered by epsilon): the test set is evaluated at the end.

library(fedr)
keras <- reticulate::import("keras")

dataset <- fed_load_dataset("fashion_mnist")
population <- fed_split(dataset, n_clients = 100, method = "iid", batch_size = 20, seed = 1)

cat("Budget planned for 30 rounds:",
    sprintf("epsilon = %.2f\n\n", fed_epsilon(1.0, clients_per_round = 10, population_size = 100,
                                              rounds = 30, target_delta = 1e-5)))

model <- fed_model(function() {
  keras$Sequential(list(
    keras$Input(shape = list(784L)),
    keras$layers$Dense(units = 10L, kernel_initializer = "zeros", activation = "softmax")
  ))
})

private <- fed_averaging(
  model,
  client_optimizer = fed_optimizer("sgd", learning_rate = 0.05),
  server_optimizer = fed_optimizer("sgd", learning_rate = 1.0, momentum = 0.9),
  aggregator = fed_aggregator_dp_fixed(
    noise_multiplier = 1.0, clients_per_round = 10, clip = 0.5,
    population_size = 100, target_delta = 1e-5, max_epsilon = 35
  ),
  seed = 42
)
print(private)

rounds <- as.integer(Sys.getenv("FEDR_ROUNDS", "30"))
history <- fed_fit(private, population, rounds = rounds, clients_per_round = 10)
print(history)

test <- fed_split(dataset, n_clients = 10, split = "test", batch_size = 100)
evaluation <- fed_evaluate(private, history, test)
cat(sprintf("\ntest accuracy %.4f after %d private rounds at epsilon %.2f (delta 1e-5)\n",
            evaluation[["sparse_categorical_accuracy"]], nrow(history), history$epsilon[[nrow(history)]]))

plot_path <- Sys.getenv("FEDR_PLOT", "fedr-private.png")
grDevices::png(plot_path, width = 1200, height = 400)
plot(history)
invisible(grDevices::dev.off())
cat("history plot written to", normalizePath(plot_path), "\n")
