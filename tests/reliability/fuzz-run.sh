#!/usr/bin/env bash
# Run the libFuzzer target for a while; fail on any contract violation,
# crash, leak or hang (each input gets 10 s).
#
#   fuzz-run.sh FUZZ_API SECONDS [--update]
#
# Starts from the checked-in corpus (tests/reliability/corpus/, copied to a
# scratch directory so the run never changes it). --update merges what the
# run found back into the checked-in corpus (minimised: only inputs that add
# coverage). A failing input is kept as ./crash-* / ./timeout-* / ./leak-*;
# replay it with: FUZZ_API the-file   (KM_FUZZ_TRACE=1 prints each call).
set -euo pipefail
fuzzer=${1:?usage: fuzz-run.sh FUZZ_API SECONDS [--update]}
seconds=${2:-60}
here=$(cd "$(dirname "$0")" && pwd)
corpus="$here/corpus"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus"
cp "$corpus"/* "$work/corpus/" 2>/dev/null || true
# ASAN_OPTIONS: leaks are errors; UBSan aborts at the first report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
status=0
"$fuzzer" -max_total_time="$seconds" -timeout=10 -max_len=4096 -print_final_stats=1 \
	"$work/corpus" >"$work/log" 2>&1 || status=$?
grep -vE '^#[0-9]+ +(NEW|REDUCE) |NEW_FUNC' "$work/log" | tail -60
if [ "$status" = 0 ] && [ "${3:-}" = "--update" ]; then
	"$fuzzer" -merge=1 "$corpus" "$work/corpus" 2>&1 | tail -1
fi
echo "fuzz-run: $seconds s, exit $status"
exit "$status"
