#!/usr/bin/env bash
# Run the torture test over and over until a run fails.
#
#   torture-loop.sh TORTURE [RUNS]
#
# RUNS: how many runs at most (default 0 = until a failure). Each run picks
# a fresh seed and alternates 2x and 16x threads per core. Environment:
# KM_TORTURE_SECONDS (each run's length, default 10), KM_TORTURE_WATCHDOG.
# A failing run's whole output is kept in torture-fail-<seed>.log (in the
# current directory) and the script exits 1; it exits 0 after RUNS clean runs.
set -uo pipefail
exe=${1:?usage: torture-loop.sh TORTURE [RUNS]}
runs=${2:-0}
export KM_TORTURE_SECONDS=${KM_TORTURE_SECONDS:-10}
i=0
while [ "$runs" -eq 0 ] || [ "$i" -lt "$runs" ]; do
	i=$((i + 1))
	seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ^ (i << 45) ))
	seed=$(printf '%#x' "$seed")
	if [ $((i % 2)) -eq 1 ]; then per=2; else per=16; fi
	log=$(mktemp)
	if "$exe" --per-core "$per" --seed "$seed" >"$log" 2>&1; then
		printf 'run %d (seed %s, %dx): %s\n' "$i" "$seed" "$per" "$(grep -m1 '^acquisitions' "$log")"
		rm -f "$log"
	else
		rc=$?
		mv "$log" "torture-fail-$seed.log"
		cat "torture-fail-$seed.log"
		printf 'run %d FAILED (exit %d, seed %s, %dx per core): log in %s\n' \
			"$i" "$rc" "$seed" "$per" "$PWD/torture-fail-$seed.log"
		exit 1
	fi
done
echo "$i runs passed"
