#!/usr/bin/env bash
# Verify the SPIN models in model/ (docs/testing.md, "Formal model", says
# what each proves): exhaustive searches, failing on any assertion
# violation, invalid end state, acceptance cycle or incomplete search; then
# check that each negative control (a known bug or the protocol before a
# fix, reintroduced with -D) IS caught.
#
#   model/check.sh [MODEL...]   the models named (entry async owner wait),
#                               all of them by default:
#     entry   2 clients + the reclaimer, with and without the idle ring,
#             exhaustive (~20 s, ~1.5 GB)
#     async   async PREP/QUEUED/cancel against reclamation (< 1 s)
#     owner   the owner/recursion rule of KM_RECURSIVE tables (< 1 s)
#     wait    the waiting protocol: safety, and the async and sync heads'
#             liveness under weak fairness (acceptance cycles, pan -a -f)
#             (~60 s, ~0.7 GB)
#   model/check.sh --long       entry also with 3 clients, bitstate
#                               (supertrace) search with a time budget
#                               (KM_MODEL_LONG_SECONDS, default 900 per
#                               configuration): not exhaustive (the full
#                               space, >3e8 states, exceeds memory); reports
#                               the states it covered
#
# Needs spin (Debian package `spin`) and a C compiler (CC, default cc).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CC=${CC:-cc}
long=0
if [ "${1:-}" = "--long" ]; then
	long=1
	shift
fi
models=${*:-entry async owner wait}

for m in $models; do
	[ -f "$here/$m.pml" ] || { echo "check.sh: no model $m ($here/$m.pml)" >&2; exit 2; }
done
command -v spin >/dev/null || { echo "check.sh: spin not found (apt-get install spin)" >&2; exit 77; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
status=0
pml=entry.pml		# the model verify() checks (copied into $work)
mode=safety		# safety: assertions and end states (-DSAFETY)
			# liveness: also acceptance cycles of the model's ltl
			# claim (pan -a, weak fairness with -f in PAN_ARGS)

# verify NAME EXPECT PAN_CFLAGS PAN_ARGS SPIN_DEFINES...
#   EXPECT: pass (no error, complete search) or fail (an assertion violated;
#   with expect_end=1 also an invalid end state, i.e. a deadlock or a thread
#   asleep for ever; in liveness mode also an acceptance cycle)
verify() {
	local name=$1 expect=$2 cflags=$3 args=$4
	shift 4
	rm -f pan pan.* "$pml.trail"
	spin -a "$@" "$pml" >/dev/null
	local safety=-DSAFETY
	[ "$mode" = liveness ] && safety=-DNFAIR=4
	# shellcheck disable=SC2086
	$CC -w -O2 $safety $cflags -o pan pan.c
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
			if [ -f "$pml.trail" ]; then
				echo "---- counterexample (spin -t -p):"
				spin -t -p "$@" "$pml" 2>&1 | tail -40
			fi
			status=1
		else
			echo "ok    $name: no violation in $states states (depth $depth)"
		fi
	else
		if [ "${errors:-0}" != 0 ] && printf '%s\n' "$out" | grep -q 'assertion violated'; then
			echo "ok    $name: caught: $(printf '%s\n' "$out" | grep -m1 -o 'assertion violated.*' | cut -c1-110)"
		elif [ "${errors:-0}" != 0 ] && [ "${expect_end:-0}" = 1 ] &&
		     printf '%s\n' "$out" | grep -q 'invalid end state'; then
			echo "ok    $name: caught: $(printf '%s\n' "$out" | grep -m1 -o 'invalid end state.*' | cut -c1-110)"
		elif [ "${errors:-0}" != 0 ] && [ "$mode" = liveness ] &&
		     printf '%s\n' "$out" | grep -q 'acceptance cycle'; then
			echo "ok    $name: caught: $(printf '%s\n' "$out" | grep -m1 -o 'acceptance cycle.*' | cut -c1-110)"
		else
			echo "FAIL  $name: the bug was NOT caught (errors=${errors:-?})"
			status=1
		fi
	fi
}

# use MODEL: the model verify() checks next
use() {
	pml=$1.pml
	mode=safety
	cp "$here/$pml" "$pml"
	echo "== $1.pml"
}

check_entry() {
	use entry
	EX="-DCOLLAPSE"
	verify "2 clients (exhaustive)" pass "$EX" "-m2000000 -w25"
	verify "2 clients + idle ring (exhaustive)" pass "$EX" "-m2000000 -w25" -DIDLE=1
	verify "control: seed bug (unlink before release)" fail "$EX" "-m2000000 -w22" -DSEED_BUG
	verify "control: no grace period" fail "$EX" "-m2000000 -w22" -DNO_GP
	verify "control: revive a dead entry" fail "$EX" "-m2000000 -w22" -DREVIVE_DEAD
	verify "control: insert CAS on a stale head" fail "$EX" "-m2000000 -w22" -DSTALE_HEAD
	verify "control: release outside any section" fail "$EX" "-m2000000 -w22" -DRELEASE_NO_SECTION
	if [ $long = 1 ]; then
		budget=${KM_MODEL_LONG_SECONDS:-900}
		verify "3 clients (bitstate, not exhaustive)" pass "-DBITSTATE" "-m5000000 -w32 -k3" -DN=3
		verify "3 clients + idle ring (bitstate)" pass "-DBITSTATE" "-m5000000 -w32 -k3" -DN=3 -DIDLE=1
		budget=0
	fi
}

check_async() {
	use async
	verify "requester, token, timer, holder, reclaimer (exhaustive)" pass "" "-m100000 -w20"
	verify "control: unregister after the read-side section (old async.c)" fail "" "-m100000 -w20" -DOLD_ASYNC
}

check_owner() {
	use owner
	verify "A nests, B unlocks A's guard, C contends (exhaustive)" pass "" "-m100000 -w20"
	verify "control: anybody may unlock a recursive hold (old)" fail "" "-m100000 -w20" -DOLD_OWNER
}

check_wait() {
	use wait
	EX="-DCOLLAPSE"
	verify "2 sync waiters, async, barger, 1 round each (exhaustive)" pass "$EX" "-m1000000 -w24" -DITER=1
	verify "2 sync waiters, async, 2 rounds each (exhaustive)" pass "$EX" "-m1000000 -w24" -DNB=0 -DITER=2
	verify "1 sync waiter, async, 2 bargers, 2 rounds (exhaustive)" pass "$EX" "-m1000000 -w24" -DNS=1 -DNB=2 -DITER=2
	verify "+ timeouts: 2 sync, async, barger, 1 round (exhaustive)" pass "$EX" "-m1000000 -w24" -DTIMEOUT -DITER=1
	verify "+ timeouts: 1 sync, async, 2 bargers, 2 rounds (exhaustive)" pass "$EX" "-m1000000 -w24" -DTIMEOUT -DNS=1 -DNB=2 -DITER=2
	expect_end=1
	verify "control: park announced by a plain store (lost wake-up)" fail "$EX" "-m1000000 -w22" -DPARK_STORE -DITER=1
	verify "control: overdue head clears WAKING from a stale WOKEN (16ef3ab)" fail "$EX" "-m1000000 -w22" -DSTALE_WOKEN -DITER=1
	expect_end=0
	mode=liveness
	verify "liveness: the async head is granted (weak fairness)" pass "$EX" "-m1000000 -w24 -a -f -N async_head" -DLIVE -DNS=1 -DNB=2
	verify "control: old HANDOFF rules starve the async head" fail "$EX" "-m1000000 -w22 -a -f -N async_head" -DLIVE -DNS=1 -DNB=2 -DOLD_HANDOFF
	verify "liveness: a parked sync head gets the key (weak fairness, fair qlock)" pass "$EX" "-m1000000 -w24 -a -f -N sync_head" -DLIVE -DNS=1 -DNB=2 -DFAIR_QLOCK -DNO_ASYNC
	verify "control: no self-wake at the bound starves the sync head" fail "$EX" "-m1000000 -w22 -a -f -N sync_head" -DLIVE -DNS=1 -DNB=2 -DFAIR_QLOCK -DNO_ASYNC -DNO_SELF_WAKE
	verify "known gap, expected to fail: a waiter that becomes the head while parked" fail "$EX" "-m1000000 -w22 -a -f -N sync_head" -DLIVE -DNS=1 -DNB=1 -DFAIR_QLOCK
}

for m in $models; do
	start=$SECONDS
	"check_$m"
	echo "   ($m: $((SECONDS - start)) s)"
done
exit $status
