#!/usr/bin/env bash
# Build and run every test: the plain build (gcc), then the stress suites
# again under ThreadSanitizer and under AddressSanitizer + UBSan (clang), the
# fault-injection build, the unit suite under valgrind memcheck, the
# instruction-count gate (callgrind, pinned gcc), then the
# negative control (the seed's bug reintroduced must make the stress tests
# fail). Criterion's "Synthesis:" lines are printed for every suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

export KM_STRESS_MS="${KM_STRESS_MS:-300}"
status=0
run() {			# run "title" cmd...: keep going, remember failures
	echo "=== $1" >&2
	shift
	if ! "$@"; then
		echo "FAILED: $*" >&2
		status=1
	fi
}

setup() {		# setup DIR [meson args...]
	local dir=$1
	shift
	if [ ! -d "$dir" ]; then
		meson setup "$dir" "$@" >/dev/null
	fi
	ninja -C "$dir" >/dev/null
}

# 1. Everything, plain build.
# -Dtest_hooks=true (every build below that runs the unit suite): the
# test-only interleaving points that tests/unit_races.c replays (lib/testhook.h).
setup build-test -Dbench=true -Dtest_hooks=true
run "all suites (gcc)" meson test -C build-test --print-errorlogs -v --num-processes 1

# 1b. Instructions per lock+unlock under callgrind against the gates of
#     tools/callgrind-budget.txt (own release build, build-cg; ~20 s).
run "callgrind gate" bash tools/callgrind-gate.sh

# 2. Sanitizers on the unit and stress suites (short durations).
KM_SAN_MS="${KM_SAN_MS:-150}"
# Sanitizer builds keep freed memory (quarantine, shadow): churn fewer keys.
export KM_RSS_KEYS="${KM_RSS_KEYS_SAN:-1000000}"
CC=clang setup build-tsan -Db_sanitize=thread -Db_lundef=false -Dbench=false -Dexamples=false \
	-Dtest_hooks=true
run "ThreadSanitizer" env KM_STRESS_MS="$KM_SAN_MS" \
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
	meson test -C build-tsan --print-errorlogs -v --num-processes 1 \
	--suite unit --suite stress --suite async --suite modes --suite torture
CC=clang setup build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbench=false -Dexamples=false \
	-Dtest_hooks=true
run "AddressSanitizer+UBSan" env KM_STRESS_MS="$KM_SAN_MS" \
	ASAN_OPTIONS="detect_leaks=1:halt_on_error=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$PWD/tests/ubsan.supp" \
	meson test -C build-asan --print-errorlogs -v --num-processes 1 \
	--suite unit --suite stress --suite async --suite modes --suite torture

# 3. Fault injection: every allocation site made to fail in turn (also
#    under valgrind memcheck), and the ENOMEM unit tests.
setup build-fault -Dfault_injection=true -Dbench=false -Dexamples=false -Dtest_hooks=true
run "fault injection" meson test -C build-fault --print-errorlogs -v --num-processes 1 \
	--suite fault --suite unit

# 4. valgrind memcheck over the unit suite (unit_enomem included: fault
#    injection on). Criterion's forking sandbox does not run under valgrind,
#    so the same sources are built against the in-process stand-in
#    (tests/shim). Any memcheck error, or a definite or indirect leak, makes
#    valgrind exit 99 (meson: ERROR). --fair-sched: valgrind runs one thread
#    at a time; without it a spinning thread keeps the CPU from the thread it
#    waits for. KM_TIME_SCALE stretches the deadlines that only give helper
#    threads time to queue (tests/km_test.h); KM_MO_ROUNDS shortens the
#    memory-ordering hand-off (each round is a thread switch here).
setup build-memcheck -Dcriterion_shim=true -Dfault_injection=true -Dbuildtype=debug \
	-Dbench=false -Dexamples=false -Dtest_hooks=true
run "valgrind memcheck (unit)" env KM_TIME_SCALE="${KM_VG_TIME_SCALE:-5}" \
	KM_MO_ROUNDS="${KM_VG_MO_ROUNDS:-200}" \
	meson test -C build-memcheck --print-errorlogs -v --num-processes 1 --suite unit \
	--wrapper "valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect --fair-sched=yes"

# 5. A short libFuzzer run of the API fuzzer (clang), from the checked-in corpus.
CC=clang setup build-fuzz -Dbench=false -Dexamples=false
run "fuzz (short)" meson test -C build-fuzz --print-errorlogs -v --num-processes 1 --suite fuzz

# 6. Negative control: with the seed's bug the stress tests must fail.
setup build-seedbug -Dseed_bug=true -Dbench=false -Dexamples=false
run "negative control (seed bug)" meson test -C build-seedbug --print-errorlogs -v --num-processes 1 \
	--suite seed_bug

exit $status
