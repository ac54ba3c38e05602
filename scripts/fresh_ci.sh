#!/usr/bin/env bash
# CI as a fresh machine runs it: clone the committed main into a temporary folder, make a new
# virtual environment (nothing installed by hand can help), put ../shared beside the clone when
# this checkout has one, and run exactly .ci/run there. Run it before every submission.
#
#   bash scripts/fresh_ci.sh [BRANCH]        # default: main; the log is kept in the temp folder
#
# Only what is committed counts: uncommitted changes in this checkout are not in the clone.
# FRESH_CI_KEEP=1 keeps the temporary folder (its path is printed) for a look afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
branch=${1:-main}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mnistlab-fresh-ci.XXXXXX")
cleanup() {
    if [ "${FRESH_CI_KEEP:-0}" = 1 ]; then
        echo "fresh_ci: kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

git clone --quiet --branch "$branch" "$here" "$tmp/main"
if [ -d "$here/../shared" ]; then
    ln -s "$(cd "$here/../shared" && pwd)" "$tmp/shared"
fi
python3 -m venv "$tmp/venv"
# shellcheck disable=SC1091
source "$tmp/venv/bin/activate"
echo "fresh_ci: $(git -C "$tmp/main" log -1 --format='%h %s') in $tmp (python $(python --version 2>&1))"
start=$(date +%s)
set +e
(cd "$tmp/main" && bash .ci/run) 2>&1 | tee "$tmp/ci.log"
rc=${PIPESTATUS[0]}
set -e
echo "fresh_ci: .ci/run exited $rc after $(($(date +%s) - start)) s"
# The suite must leave nothing in the checkout (a run folder from a test, a stray file): list
# what is there beyond caches and the editable install's metadata, and fail on any of it.
left=$(git -C "$tmp/main" status --porcelain --ignored --untracked-files=all |
    grep -v -E '__pycache__/|\.pyc$|\.egg-info/|^!! (build|\.pytest_cache|\.mypy_cache|\.ruff_cache)/' || true)
if [ -n "$left" ]; then
    echo "fresh_ci: the run left files in the checkout:"
    echo "$left" | head -20
    [ "$rc" = 0 ] && rc=1
fi
exit "$rc"
