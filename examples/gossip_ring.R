# Gossip learning from R: the reference data (Fashion-MNIST, 10 sequential
# clients, batches of 100) on a ring of 10 peers without a server, against
# federated averaging, compared at equal rounds and at equal bytes sent.
#
# Run from the repository with `Rscript examples/gossip_ring.R` once `make
# setup` has installed the Python core and the R package (about 30 s).
# The plots go to fedr-gossip.png and fedr-gossip-graph.png, or to the paths
# in FEDR_PLOT and FEDR_GRAPH_PLOT.

library(fedr)
keras <- reticulate::import("keras")

fashion <- fed_load_dataset("fashion_mnist")
peers <- fed_split(fashion, n_clients = 10, method = "sequential", batch_size = 100)
test <- fed_split(fashion, n_clients = 2, split = "test", batch_size = 1000)

# The reference model: one dense softmax layer, zero-initialised.
model <- fed_model(function() {
  keras$Sequential(list(
    keras$Input(shape = list(784L)),
    keras$layers$Dense(units = 10L, kernel_initializer = "zeros", activation = "softmax")
  ))
})

ring <- fed_graph_ring(10)
print(ring)
print(round(fed_mixing_matrix(ring)[1:4, 1:4], 3))

# Each round every peer trains one epoch on its own data from its own model
# (the same local step as FedAvg's clients), then averages with its two
# neighbours with Metropolis-Hastings weights (1/3 each, 1/3 for itself).
gossip <- fed_gossip(model, fed_optimizer("sgd", 0.02), ring, seed = 1)
print(gossip)
history <- fed_gossip_fit(gossip, peers, rounds = 20, validation_data = test, evaluate_average = FALSE)
print(history)

# A ring peer sends its model to 2 neighbours a round, a FedAvg client its
# update once: at equal bytes FedAvg has twice the rounds.
fedavg <- fed_fit(fed_averaging(model, fed_optimizer("sgd", 0.02), seed = 1), peers, rounds = 40,
                  validation_data = test, verbose = FALSE)

acc <- "val_sparse_categorical_accuracy"
sent <- history$bytes_sent_total[[20]]
cat(sprintf("\nafter 20 rounds: gossip (average model) %.4f, FedAvg %.4f\n", history[[acc]][[20]], fedavg[[acc]][[20]]))
cat(sprintf("at %s bytes sent per peer: gossip (20 rounds) %.4f, FedAvg (40 rounds) %.4f\n",
            format(sent, big.mark = ","), history[[acc]][[20]], fedavg[[acc]][[40]]))
cat(sprintf("consensus distance after 20 rounds: %.4f; the peers' own test accuracy: %s\n",
            history$consensus_distance[[20]],
            paste(sprintf("%.3f", vapply(1:10, function(p) {
              fed_gossip_evaluate(gossip, history, test, peer = p)[["sparse_categorical_accuracy"]]
            }, numeric(1))), collapse = " ")))

plot_path <- Sys.getenv("FEDR_PLOT", "fedr-gossip.png")
grDevices::png(plot_path, width = 1000, height = 420)
plot(history, fedavg = fedavg, x_axis = "bytes")
invisible(grDevices::dev.off())
graph_path <- Sys.getenv("FEDR_GRAPH_PLOT", "fedr-gossip-graph.png")
grDevices::png(graph_path, width = 450, height = 450)
plot(ring)
invisible(grDevices::dev.off())
cat("plots written to", normalizePath(plot_path), "and", normalizePath(graph_path), "\n")
