# Federated learning over the network from R, on one machine (loopback):
# a Flower SuperLink, two SuperNodes that each serve an R data frame (the
# nodes read them with R, from .rds files), and a fed_averaging() process run
# on them. Across machines, only the addresses change and TLS is on: see the
# README, "Real clients over the network (Flower)".
#
# Run from the repository: Rscript examples/flower_from_r.R
library(fedr)

# Two clinics' data: two numeric measurements and an outcome (the label).
clinic_data <- function(n, seed) {
  set.seed(seed)
  age <- runif(n)
  dose <- runif(n)
  data.frame(age = age, dose = dose, label = as.integer(age + dose + rnorm(n, sd = 0.1) > 1))
}
clinic_a <- clinic_data(400, 1)
clinic_b <- clinic_data(300, 2)

keras <- reticulate::import("keras")
model <- fed_model(function() {
  keras$Sequential(list(
    keras$Input(shape = list(2L)),
    keras$layers$Dense(units = 2L, activation = "softmax")
  ))
})
process <- fed_averaging(model, fed_optimizer("sgd", 0.5), seed = 1)

link <- fed_flower_superlink()                 # 127.0.0.1, a free port, no TLS (loopback only)
a <- fed_flower_node(clinic_a, link, client_id = "clinic_a", batch_size = 20)
b <- fed_flower_node(clinic_b, link, client_id = "clinic_b", batch_size = 20)
print(link)

history <- tryCatch(
  fed_flower_run(process, rounds = 5, superlink = link),
  finally = {
    a$stop()
    b$stop()
    link$stop()
  }
)
print(history)
print(fed_weights(history))
