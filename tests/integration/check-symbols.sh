#!/usr/bin/env bash
# Exported-symbols check (ABI hygiene): the shared library's dynamic symbols
# must be exactly tests/integration/exported-symbols.txt, which must be
# exactly the KM_API functions declared in include/keymutex.h.
#
#   check-symbols.sh LIB.so exported-symbols.txt keymutex.h TEST_ONLY SANITIZE
# TEST_ONLY=true (a fault-injection or test-hook build) allows the test-only
# km__* symbols (km__fault_*, km__hook_set, km__quiesce, ...); a sanitizer
# build (SANITIZE != none) ignores the runtime's __* symbols. TAP output.
# SPDX-License-Identifier: MIT
set -u
lib=$1 list=$2 header=$3 fault=${4:-false} sanitize=${5:-none}
n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
diag() { sed 's/^/# /'; }

nm_bin=${NM:-nm}
if ! command -v "$nm_bin" >/dev/null 2>&1; then
	echo "1..0 # SKIP no nm"
	exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/km-syms.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if ! "$nm_bin" -D --defined-only "$lib" >"$tmp/nm" 2>"$tmp/err"; then
	notok "nm -D --defined-only $lib"
	diag <"$tmp/err"
	echo "1..$n"
	exit 1
fi
# "ADDRESS TYPE NAME"; drop symbol versions (name@@VER).
awk 'NF >= 3 { sub(/@.*/, "", $3); print $2, $3 }' "$tmp/nm" | sort -k2 -u >"$tmp/typed"
awk '{ print $2 }' "$tmp/typed" >"$tmp/all"
filter='^$'
[ "$fault" = true ] && filter="$filter|^km__"
[ "$sanitize" != none ] && filter="$filter|^__"
grep -Ev "$filter" "$tmp/all" | sort >"$tmp/actual"
grep -Ev '^[[:space:]]*(#|$)' "$list" | sort >"$tmp/expected"
grep -oE '^KM_API[^(]*[^a-zA-Z0-9_](km_[a-z0-9_]+)\(' "$header" |
	sed -E 's/.*[^a-zA-Z0-9_](km_[a-z0-9_]+)\($/\1/' | sort >"$tmp/declared"

if diff -u "$tmp/expected" "$tmp/actual" >"$tmp/d1"; then
	ok "nm -D --defined-only $(basename "$lib") = exported-symbols.txt ($(wc -l <"$tmp/actual") symbols)"
else
	notok "exported symbols differ from exported-symbols.txt (- listed, + exported)"
	diag <"$tmp/d1"
fi
if diff -u "$tmp/declared" "$tmp/expected" >"$tmp/d2"; then
	ok "exported-symbols.txt = the KM_API functions of keymutex.h"
else
	notok "exported-symbols.txt differs from keymutex.h's KM_API functions (- declared, + listed)"
	diag <"$tmp/d2"
fi
bad=$(awk -v re="$filter" '$2 !~ re && $1 != "T"' "$tmp/typed")
if [ -z "$bad" ]; then
	ok "every exported symbol is a function in .text (no exported data)"
else
	notok "exported symbols that are not functions"
	printf '%s\n' "$bad" | diag
fi
if grep -qE '^km_' "$tmp/actual" && ! grep -vqE '^km_[a-z0-9_]+$' "$tmp/actual"; then
	ok "every exported name starts with km_"
else
	notok "exported names outside km_*"
	grep -vE '^km_[a-z0-9_]+$' "$tmp/actual" | diag
fi
echo "1..$n"
[ "$fails" -eq 0 ]
