# Run by R CMD check and by `make test-r` (with FEDR_REQUIRE_PYTHON=1, where a
# missing Python core fails the tests instead of skipping them).
library(testthat)
library(fedr)

results <- as.data.frame(test_check("fedr"))
# A plain closing line for CI logs (test_check() stops before this on a failure).
cat(sprintf("testthat: %d passed, %d failed, %d skipped\n",
            sum(results$nb) - sum(results$failed) - sum(results$skipped),
            sum(results$failed), sum(results$skipped)))
