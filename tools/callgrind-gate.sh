#!/usr/bin/env bash
# The deterministic instruction-count gate (issue 12): instructions per
# lock+unlock pair under callgrind, for a new key, a few recurring keys and a
# new key with 1M keys held, against the gates in tools/callgrind-budget.txt.
# Exit status 0 only if every figure is at or below its gate; 2 if the
# compiler is not the pinned one (or a tool is missing).
#
# Usage: bash tools/callgrind-gate.sh
# Environment: KM_CG_BUILD (build directory, default build-cg),
#              KM_CG_BUDGET (budget file), KM_CG_N (N, default 100000).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
BUDGET=${KM_CG_BUDGET:-tools/callgrind-budget.txt}
B=${KM_CG_BUILD:-build-cg}
N=${KM_CG_N:-100000}
CC=gcc

say() { echo "callgrind gate: $*"; }

pinned=$(sed -n 's/^compiler[[:space:]]\{1,\}//p' "$BUDGET")
ver=$("$CC" --version 2>/dev/null | head -1 || true)
say "compiler: $ver"
if [ -z "$pinned" ] || [ "${ver#"$pinned"}" = "$ver" ]; then
	say "REFUSED: the figures are only comparable with the pinned compiler" \
		"'$pinned...' ($BUDGET), not '$ver'"
	exit 2
fi
if ! command -v valgrind >/dev/null; then
	say "REFUSED: valgrind not found"
	exit 2
fi
say "$(valgrind --version), N = $N"

# A release build of the static library, in its own directory, rebuilt from
# scratch if it was configured with another compiler.
if [ -d "$B" ] && [ "$(cat "$B/.cg-compiler" 2>/dev/null)" != "$ver" ]; then
	rm -rf "$B"
fi
if [ ! -d "$B" ]; then
	CC=$CC meson setup "$B" --buildtype=release -Ddefault_library=static \
		-Dtests=false -Dbench=false -Dexamples=false >/dev/null
	echo "$ver" >"$B/.cg-compiler"
fi
ninja -C "$B" >/dev/null
"$CC" -O2 -Iinclude tools/hotpath.c -o "$B/hotpath" "$B/lib/libkeymutex.a" \
	-lurcu-bp -lurcu-common -lck -lpthread

# Instrumentation starts just before the measured loop (hotpath.c), so
# set-up runs uninstrumented; --fair-sched: threads take turns in order.
ir() {
	local out
	out=$(valgrind --tool=callgrind --instr-atstart=no --fair-sched=yes \
		--callgrind-out-file=/dev/null "$B/hotpath" "$1" "$2" 2>&1) || {
		echo "$out" >&2
		return 1
	}
	out=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' <<<"$out")
	[ -n "$out" ] && echo "$out"
}
marginal() {		# marginal MODE: (Ir(2N) - Ir(N)) / N, rounded up
	local a b
	a=$(ir "$1" "$N")
	b=$(ir "$1" $((2 * N)))
	echo $(((b - a + N - 1) / N))
}

passed=0
failed=0
printf '%-28s %9s %6s %6s\n' scenario measured gate goal
while read -r mode gate goal; do
	case $mode in new) title="new key" ;; recur) title="recurring key" ;;
		held1m) title="new key, 1M keys held" ;; *) title=$mode ;; esac
	m=$(marginal "$mode") || m=error
	# A figure over the gate is measured twice more and the lowest kept:
	# all threads are counted, and a library thread that happens to spin
	# (the reclaimer yielding in a grace period while a reader is inside
	# its section) adds work that is scheduling, not the path (one run in
	# about ten showed +300 on recurring keys).
	for retry in 1 2; do
		{ [ "$m" != error ] && [ "$m" -le "$gate" ]; } && break
		m2=$(marginal "$mode") || continue
		if [ "$m" = error ] || [ "$m2" -lt "$m" ]; then m=$m2; fi
	done
	if [ "$m" = error ]; then
		verdict="FAIL (the run failed)"
		failed=$((failed + 1))
	elif [ "$m" -le "$gate" ]; then
		verdict=ok
		passed=$((passed + 1))
	else
		verdict="FAIL (+$((m - gate)) over the gate)"
		failed=$((failed + 1))
	fi
	printf '%-28s %9s %6s %6s  %s\n' "$title" "$m" "$gate" "$goal" "$verdict"
done < <(grep -Ev '^[[:space:]]*(#|$|compiler[[:space:]])' "$BUDGET")
printf '%-28s %9s %6s %6s\n' "pthread_mutex (reference)" "$(marginal pthread || echo error)" - -
say "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
