#!/usr/bin/env bash
# Verify model/entry.pml with SPIN: exhaustive safety search, fail on any
# assertion violation, invalid end state or incomplete search; then check
# that each negative control (a known bug reintroduced) IS caught.
#
#   model/check.sh            2 clients + the reclaimer, with and without the
#                             idle ring, exhaustive (~20 s, ~1.5 GB)
#   model/check.sh --long     also 3 clients, bitstate (supertrace) search
#                             with a time budget (KM_MODEL_LONG_SECONDS, default
#                             900 per configuration): not exhaustive (the full
#                             space, >3e8 states, exceeds memory); reports the
#                             states it covered
#
# Needs spin (Debian package `spin`) and a C compiler (CC, default cc).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model="$here/entry.pml"
CC=${CC:-cc}
long=0
[ "${1:-}" = "--long" ] && long=1
command -v spin >/dev/null || { echo "check.sh: spin not found (apt-get install spin)" >&2; exit 77; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cp "$model" entry.pml
status=0

# verify NAME EXPECT PAN_CFLAGS PAN_ARGS SPIN_DEFINES...
#   EXPECT: pass (no error, complete search) or fail (an assertion violated)
verify() {
	local name=$1 expect=$2 cflags=$3 args=$4
	shift 4
	rm -f pan pan.* entry.pml.trail
	spin -a "$@" entry.pml >/dev/null
	# shellcheck disable=SC2086
	$CC -w -O2 -DSAFETY $cflags -o pan pan.c
	local out rc=0
	# shellcheck disable=SC2086
	out=$(timeout "${budget:-0}" ./pan $args 2>&1) || rc=$?
	if [ "$rc" = 124 ] && [[ $cflags == *BITSTATE* ]]; then
		# out of time: what was covered so far counts, violations still fail
		rc=0
		printf '%s\n' "$out" | grep -q 'assertion violated' && rc=1
		local last
		last=$(printf '%s\n' "$out" | sed -n 's/.*States= *\([0-9.e+]*\).*/\1/p' | tail -1)
		out="$out
errors: $rc
${last:-0} states, stored (time budget)"
	fi
	local errors states depth
	errors=$(printf '%s\n' "$out" | sed -n 's/.*errors: \([0-9]*\).*/\1/p' | tail -1)
	states=$(printf '%s\n' "$out" | sed -n 's/^ *\([0-9e.+]*\) states, stored.*/\1/p' | tail -1)
	depth=$(printf '%s\n' "$out" | sed -n 's/.*depth reached \([0-9]*\).*/\1/p' | tail -1)
	local incomplete=0
	printf '%s\n' "$out" | grep -q 'Search not completed' && incomplete=1
	if [ "$expect" = pass ]; then
		if [ "$rc" -ne 0 ] || [ "${errors:-1}" != 0 ] || { [ $incomplete = 1 ] && [[ $cflags != *BITSTATE* ]]; }; then
			echo "FAIL  $name: errors=${errors:-?} incomplete=$incomplete exit=$rc"
			printf '%s\n' "$out" | grep -E 'violated|invalid end|error|max search depth' | head -5
			if [ -f entry.pml.trail ]; then
				echo "---- counterexample (spin -t -p):"
				spin -t -p "$@" entry.pml 2>&1 | tail -40
			fi
			status=1
		else
			echo "ok    $name: no violation in $states states (depth $depth)"
		fi
	else
		if [ "${errors:-0}" != 0 ] && printf '%s\n' "$out" | grep -q 'assertion violated'; then
			echo "ok    $name: caught: $(printf '%s\n' "$out" | grep -m1 -o 'assertion violated.*' | cut -c1-110)"
		else
			echo "FAIL  $name: the bug was NOT caught (errors=${errors:-?})"
			status=1
		fi
	fi
}

EX="-DCOLLAPSE"
verify "2 clients (exhaustive)" pass "$EX" "-m2000000 -w25"
verify "2 clients + idle ring (exhaustive)" pass "$EX" "-m2000000 -w25" -DIDLE=1
verify "control: seed bug (unlink before release)" fail "$EX" "-m2000000 -w22" -DSEED_BUG
verify "control: no grace period" fail "$EX" "-m2000000 -w22" -DNO_GP
verify "control: revive a dead entry" fail "$EX" "-m2000000 -w22" -DREVIVE_DEAD
verify "control: insert CAS on a stale head" fail "$EX" "-m2000000 -w22" -DSTALE_HEAD
if [ $long = 1 ]; then
	budget=${KM_MODEL_LONG_SECONDS:-900}
	verify "3 clients (bitstate, not exhaustive)" pass "-DBITSTATE" "-m5000000 -w32 -k3" -DN=3
	verify "3 clients + idle ring (bitstate)" pass "-DBITSTATE" "-m5000000 -w32 -k3" -DN=3 -DIDLE=1
fi
exit $status
