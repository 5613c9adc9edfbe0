# Distributed differential privacy from R: the server never sees an un-noised sum.
#
# Run with `Rscript examples/distributed_dp.R` after `make setup`.
# The reference workflow over 10 Fashion-MNIST clients, every client every
# round. Each client clips its update to an L2 norm of 1, rounds it to the
# secure sum's integers, adds its own share of Skellam noise (drawn on the
# client, from the operating system) and masks it (secure aggregation): the
# sum the server decodes already carries noise of standard deviation at least
# noise_multiplier * clip, while up to a tenth of a round's clients drop out.
# The budget is planned first: the noise multiplier that allows 20 rounds at
# epsilon 120 (delta 1e-5; a small federation, so a large epsilon), and the
# aggregator of the plan stops at that budget. The privacy report shows, per
# round, epsilon, the clip, the noise and who took part.

library(fedr)
keras <- reticulate::import("keras")

dataset <- fed_load_dataset("fashion_mnist")
clients <- fed_split(dataset, n_clients = 10, method = "sequential", batch_size = 100)
rounds <- as.integer(Sys.getenv("FEDR_ROUNDS", "20"))

plan <- fed_privacy_plan(population_size = 10, clients_per_round = 10, rounds = rounds, target_delta = 1e-5,
                         target_epsilon = 120, sampling = "all", mechanism = "distributed", dim = 7850)
print(plan)

model <- fed_model(function() {
  keras$Sequential(list(
    keras$Input(shape = list(784L)),
    keras$layers$Dense(units = 10L, kernel_initializer = "zeros", activation = "softmax")
  ))
})
process <- fed_averaging(model, fed_optimizer("sgd", 0.02), fed_optimizer("sgd", 1.0), seed = 1,
                         aggregator = fed_aggregator_dp_plan(plan, clip = 1.0))
history <- fed_fit(process, clients, rounds = rounds)

report <- fed_privacy_report(history)
print(report)

test <- fed_split(dataset, n_clients = 2, split = "test", batch_size = 1000)
evaluation <- fed_evaluate(process, history, test)
cat(sprintf("\ntest accuracy %.4f after %d rounds of distributed DP at epsilon %.2f (delta 1e-5)\n",
            evaluation[["sparse_categorical_accuracy"]], nrow(history), report$epsilon[[nrow(report)]]))

plot_path <- Sys.getenv("FEDR_PLOT", "fedr-distributed-dp.png")
grDevices::png(plot_path, width = 1200, height = 400)
plot(report)
invisible(grDevices::dev.off())
cat("privacy report plot written to", normalizePath(plot_path), "\n")
