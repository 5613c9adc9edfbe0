# Run by R CMD check and by `make test-r` (with FEDR_REQUIRE_PYTHON=1, where a
# missing Python core fails the tests instead of skipping them).
library(testthat)
library(fedr)

test_check("fedr")
