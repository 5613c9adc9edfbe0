#!/usr/bin/env bash
# R CMD build + R CMD check --no-manual of the R package in r-package/.
# Exits non-zero when the check reports an ERROR or a WARNING; prints the NOTEs.
# CRAN is not reachable here: R_PROFILE points R at an empty local repository so
# that the check does not try (and fail) to read CRAN's index.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/fedr-rcheck.XXXXXX")
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/repo/src/contrib"
: > "$work/repo/src/contrib/PACKAGES"
printf 'options(repos = c(CRAN = "file://%s/repo"))\n' "$work" > "$work/Rprofile"
export R_PROFILE="$work/Rprofile"

# Run the tests and examples on the project's Python when nothing else is set
# (the check runs outside the repository, where fedr cannot find .venv).
if [ -z "${FEDR_PYTHON:-}" ] && [ -z "${RETICULATE_PYTHON:-}" ] && [ -x "$root/.venv/bin/python" ]; then
  export FEDR_PYTHON="$root/.venv/bin/python"
fi

cd "$work"
R CMD build "$root/r-package"   # builds the vignette (eval = FALSE without the Python core)
tarball=$(ls fedr_*.tar.gz)
status=0
R CMD check --no-manual "$tarball" || status=$?

log=fedr.Rcheck/00check.log
if [ ! -f "$log" ]; then
  echo "rcheck: R CMD check wrote no log (exit $status)" >&2
  exit 1
fi
# Show every check that did not end in OK, with its details.
awk '/^\* / { show = ($0 ~ /(NOTE|WARNING|ERROR)$/) } show' "$log"
# The testthat summary: skipped tests mean the Python core was not found.
grep -h '^\[ FAIL' fedr.Rcheck/tests/testthat.Rout* 2>/dev/null | tail -n 1 || true
if [ -f fedr.Rcheck/tests/testthat.Rout.fail ]; then
  tail -n 60 fedr.Rcheck/tests/testthat.Rout.fail
fi
grep '^Status:' "$log"
if [ "$status" -ne 0 ] || grep -Eq '^Status:.*(ERROR|WARNING)' "$log"; then
  echo "rcheck: R CMD check failed (ERROR or WARNING)" >&2
  exit 1
fi
