#!/usr/bin/env bash
# Instructions per operation of the hot paths (see hotpath.c), measured with
# callgrind as (Ir(2N) - Ir(N)) / N so that set-up and teardown cancel.
# Usage: tools/callgrind.sh [BUILD_DIR]   (default: build, release-like)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
cc -O2 -Iinclude tools/hotpath.c -o "$B/hotpath" "$B/lib/libkeymutex.a" \
	-lurcu-bp -lurcu-common -lck -lpthread
N=100000
ir() {
	valgrind --tool=callgrind --callgrind-out-file=/dev/null "$B/hotpath" "$1" "$2" 2>&1 |
		sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for mode in random repeat async pthread; do
	a=$(ir $mode $N)
	b=$(ir $mode $((2 * N)))
	echo "$mode: $(( (b - a) / N )) instructions per lock+unlock"
done
