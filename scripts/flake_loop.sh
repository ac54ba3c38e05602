#!/usr/bin/env bash
# Run the parallel test files N times back to back and count the rounds that failed and the
# workers that aborted (a C++ `terminate called ...`, SIGABRT, exit status -6 / 134).
#
#   scripts/flake_loop.sh 30                      # from the repository root (or anywhere)
#   FLAKE_LOGS=DIR scripts/flake_loop.sh 5 # keep the logs in a folder of your choice
#   FLAKE_TESTS="tests/test_parallel_cli.py" scripts/flake_loop.sh 10   # fewer files
#   FLAKE_UNTIL=03:05 scripts/flake_loop.sh 30    # no round started that would end after 03:05
#
# Each round runs with its own TMPDIR, so the worker log folders the launcher keeps after a
# failure (and pytest's temporary folders) land under the round's folder and are searched too;
# a round that passed with no abort has its temporary folder removed. Exit status 0 only when
# every round passed and nothing aborted.
set -u

rounds=${1:-30}
case $rounds in
  '' | *[!0-9]*) echo "usage: $0 N   (N rounds, a whole number)" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
logs=${FLAKE_LOGS:-$(mktemp -d -t mnistlab-flake-XXXXXX)}
mkdir -p "$logs"
read -r -a tests <<< "${FLAKE_TESTS:-tests/test_parallel.py tests/test_parallel_cli.py tests/test_launch.py}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python}
until_s=
if [ -n "${FLAKE_UNTIL:-}" ]; then
  until_s=$(date -d "$FLAKE_UNTIL" +%s) || exit 2
fi

# What an abort leaves behind: the C++ runtime's line, Python's faulthandler, torchrun's
# report of a worker killed by signal 6, a shell's 134.
abort_pattern='terminate called|SIGABRT|Signal 6 \(SIGABRT\)|signal 6\b|exitcode *: *-6|exit(code| status)[ :=]*-6\b|returncode[ :=]*-6\b|status 134\b|Fatal Python error: Aborted'

echo "flake loop: $rounds rounds of ${tests[*]}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "logs: $logs"
failed=0
aborted=0
began=$(date +%s)
done_rounds=0
last=0
for round in $(seq 1 "$rounds"); do
  if [ -n "$until_s" ] && [ $(($(date +%s) + last)) -gt "$until_s" ]; then
    echo "stopping before round $round: it would end after $FLAKE_UNTIL"
    break
  fi
  tmp="$logs/round-$round.tmp"
  log="$logs/round-$round.log"
  mkdir -p "$tmp"
  start=$(date +%s)
  TMPDIR="$tmp" "$python" -m pytest "${tests[@]}" -q -p no:cacheprovider \
    > "$log" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  last=$took
  done_rounds=$round
  hits=$( { cat "$log"; find "$tmp" -name '*.log' -type f -exec cat {} + 2>/dev/null; } \
    | grep -cE "$abort_pattern")
  summary=$(grep -E '(passed|failed|error)' "$log" | tail -n 1)
  status=ok
  if [ "$rc" -ne 0 ]; then
    status=FAILED
    failed=$((failed + 1))
  fi
  if [ "$hits" -gt 0 ]; then
    status="$status, ABORT ($hits matching lines)"
    aborted=$((aborted + 1))
  fi
  if [ "$status" = ok ]; then
    rm -rf "$tmp"
  fi
  printf 'round %3d: %-30s %4d s  %s\n' "$round" "$status" "$took" "${summary:-no summary (rc $rc)}"
done
total=$(($(date +%s) - began))
printf '%d rounds in %d min %d s: %d failed, %d with an abort (load at the end %s); logs in %s\n' \
  "$done_rounds" $((total / 60)) $((total % 60)) "$failed" "$aborted" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$logs"
[ "$failed" -eq 0 ] && [ "$aborted" -eq 0 ]
