# Gradient leakage: the attack the reference article describes ("A first look at
# federated learning with TensorFlow", section "Federated learning in context").
#
# Ten clients each hold one Fashion-MNIST image and train one SGD step with
# fedr's federated averaging. The server (or whoever sees what it sees) then
# recovers client 1's image:
#   - on the reference model (one dense softmax layer) exactly, x = dW[, c] / db[c];
#   - on a small MLP by Deep Leakage from Gradients (Zhu et al. 2019): L-BFGS on
#     a dummy image until its gradients match the client's;
# with no defence, under secure aggregation (the server sees only the sum of the
# ten updates) and under differential privacy at the private example's settings
# (clip 0.5, noise multiplier 1.0, 10 clients per round).
#
# Run from the repository with `Rscript examples/gradient_leakage.R` once
# `make setup` has installed the Python core and the R package. The picture goes
# to gradient-leakage.png, or to the path in FEDR_PLOT.

library(fedr)
options(width = 120)

path <- Sys.getenv("FEDR_PLOT", "gradient-leakage.png")
scores <- fed_gradient_leakage(path = path, clients_per_round = 10, learning_rate = 0.02,
                               noise_multiplier = 1.0, clip = 0.5, seed = 0)

cat("Similarity of the recovered image to client 1's (ncc: 1 = identical, 0 = unrelated)\n\n")
shown <- scores[, c("model", "attack", "defence", "ncc", "ssim", "mse", "best_ncc", "best_client")]
shown[, c("ncc", "ssim", "best_ncc")] <- round(shown[, c("ncc", "ssim", "best_ncc")], 3)
shown$mse <- signif(shown$mse, 3)
print(shown, row.names = FALSE)

cat("\nWhat this shows:\n")
cat(sprintf("- no defence: the server has client 1's image (analytic ncc %.3f, DLG ncc %.3f).\n",
            scores$ncc[1], scores$ncc[scores$model == "mlp" & scores$defence == "none"]))
sa <- scores[scores$defence == "secure_aggregation", ]
cat(sprintf(paste0("- secure aggregation: the formula gives a blend (ncc %.3f) that looks like client %d's\n",
                   "  image (ncc %.3f), and the column of client 1's class, which no other client has,\n",
                   "  still shows client 1 (ncc %.3f): the sum hides a client among the others only so far.\n"),
            sa$ncc[sa$attack == "analytic"], sa$best_client[sa$attack == "analytic"],
            sa$best_ncc[sa$attack == "analytic"], sa$ncc[sa$attack == "class_column"]))
dp <- scores[scores$defence == "differential_privacy", ]
cat(sprintf("- differential privacy: noise; the largest |ncc| of the three attacks is %.3f.\n",
            max(abs(dp$ncc))))
cat("\nPicture (dark on white): the round's ten images; the reference model's original,",
    "no defence, secure aggregation (analytic, class column), DP (analytic, class column);",
    "the MLP's original, no defence, secure aggregation, DP:\n", attr(scores, "path"), "\n")
