#!/usr/bin/env bash
# The main job: install what is missing, build, run the comparison harness in
# its quick mode, print the table and write the charts to out/charts/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ -d build ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null
mkdir -p out/charts
./build/bench/km-bench --quick --plot out/charts --csv out/bench.csv --json out/bench.json "$@"
echo "charts: out/charts/   data: out/bench.csv out/bench.json" >&2
