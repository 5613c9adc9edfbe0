#!/usr/bin/env bash
# Builds the pkgdown site of the R package (reference, the vignette as
# "Get started", the repository README as home page) into site/ (or $1),
# offline, then checks that it renders: a headless Chromium screenshot of its
# index must exist and not be tiny. Run through `make docs` (after `make setup`,
# so that the vignette and the examples find the Python core via FEDR_PYTHON).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(mkdir -p "${1:-$root/site}" && cd "${1:-$root/site}" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/fedr-docs.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -z "${FEDR_PYTHON:-}" ] && [ -z "${RETICULATE_PYTHON:-}" ] && [ -x "$root/.venv/bin/python" ]; then
  export FEDR_PYTHON="$root/.venv/bin/python"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

# Stage a copy of the package, with the repository README as its home page.
mkdir -p "$work/src"
cp -R "$root/r-package" "$work/src/fedr"
rm -rf "$work/src/fedr/docs" "$work/src/fedr/vignettes/"*.html "$work/src/fedr/vignettes/"*_files
cp "$root/README.md" "$work/src/fedr/index.md"

# Offline: no CRAN look-ups (pkgdown.internet), an empty local repository.
mkdir -p "$work/repo/src/contrib"
: > "$work/repo/src/contrib/PACKAGES"
export FEDR_DOCS_REPO="file://$work/repo"

# Start from an empty folder; an earlier site (it has pkgdown.yml) is replaced.
if [ -e "$out/pkgdown.yml" ]; then
  find "$out" -mindepth 1 -delete
elif [ -n "$(ls -A "$out")" ]; then
  echo "docs: $out is not empty and holds no pkgdown site; not overwriting it" >&2
  exit 1
fi
Rscript --no-init-file - "$work/src/fedr" "$out" <<'RSCRIPT'
args <- commandArgs(trailingOnly = TRUE)
src <- args[[1]]
out <- args[[2]]
options(pkgdown.internet = FALSE, repos = c(CRAN = Sys.getenv("FEDR_DOCS_REPO")))

# Drop reference sections that select no topic (e.g. "Everything else" when
# every topic has a group), so the index shows no empty headings. The staged
# _pkgdown.yml is rewritten (an override would not replace a list of sections).
config <- file.path(src, "_pkgdown.yml")
meta <- yaml::read_yaml(config)
tryCatch({
  topics <- pkgdown::as_pkgdown(src)$topics
  select <- utils::getFromNamespace("select_topics", "pkgdown")
  keep <- vapply(meta$reference, function(section) {
    is.null(section$contents) || length(select(unlist(section$contents), topics)) > 0
  }, logical(1))
  if (!all(keep)) {
    meta$reference <- meta$reference[keep]
    yaml::write_yaml(meta, config)
  }
}, error = function(e) {
  message("docs: reference sections kept as written (", conditionMessage(e), ")")
})

# install = TRUE: the package goes into a temporary library first, so the
# examples and the vignette run the sources being documented.
pkgdown::build_site(src, override = list(destination = out), preview = FALSE,
                    install = TRUE, new_process = FALSE)
RSCRIPT

for page in index.html reference/index.html articles/fedr.html; do
  if [ ! -s "$out/$page" ]; then
    echo "docs: $out/$page is missing" >&2
    exit 1
  fi
done

# Render check: a screenshot of the home page with headless Chromium.
shot="$out/screenshot.png"
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "docs: chromium not found (make setup installs it)" >&2
  exit 1
fi
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$work/chromium" --window-size=1280,1600 \
  --screenshot="$shot" "file://$out/index.html" >"$work/chromium.log" 2>&1 || {
  cat "$work/chromium.log" >&2
  echo "docs: chromium failed" >&2
  exit 1
}
size=$(stat -c %s "$shot" 2>/dev/null || echo 0)
if [ "$size" -lt 20000 ]; then
  cat "$work/chromium.log" >&2
  echo "docs: screenshot $shot is missing or tiny ($size bytes): the site did not render" >&2
  exit 1
fi
echo "docs: site in $out (open $out/index.html); screenshot of its index: $shot ($size bytes)"
