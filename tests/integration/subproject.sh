#!/usr/bin/env bash
# Integration test: keymutex as a Meson subproject. A tiny project in a
# temporary directory (tests/integration/consumer/meson.build) gets this
# source tree as subprojects/keymutex (a symbolic link) and uses
#   dependency('keymutex', fallback : ['keymutex', 'keymutex_dep'])
# with --force-fallback-for=keymutex, so an installed keymutex cannot stand
# in for the subproject. The consumer is built and run. TAP output.
#
# Environment: KM_SOURCE_ROOT KM_VERSION KM_MESON KM_SANITIZE
# SPDX-License-Identifier: MIT
set -u

n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
diag() { sed 's/^/# /'; }
finish() { echo "1..$n"; [ "$fails" -eq 0 ]; exit $?; }

if [ "${KM_SANITIZE:-none}" != none ]; then
	echo "1..0 # SKIP sanitizer build (b_sanitize=$KM_SANITIZE)"
	exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/km-subproject.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
proj=$tmp/proj
mkdir -p "$proj/subprojects"
cp "$KM_SOURCE_ROOT/tests/integration/consumer/meson.build" \
	"$KM_SOURCE_ROOT/tests/integration/consumer/app.c" "$proj/"
ln -s "$KM_SOURCE_ROOT" "$proj/subprojects/keymutex"

# Plain environment for the inner Meson: nothing of the outer test run.
unset MESON_TESTTHREADS MESONINTROSPECT
if out=$($KM_MESON setup "$tmp/build" "$proj" --force-fallback-for=keymutex \
	--buildtype=debug 2>&1); then
	ok "meson setup: dependency('keymutex', fallback : ['keymutex', 'keymutex_dep'])"
else
	notok "meson setup of the consumer with keymutex as a subproject"
	printf '%s\n' "$out" | tail -30 | diag
	finish
fi
if printf '%s\n' "$out" | grep -q "Executing subproject keymutex" &&
	printf '%s\n' "$out" | grep -q "Dependency keymutex found: YES $KM_VERSION (overridden)"; then
	ok "the dependency comes from the subproject"
else
	notok "the dependency comes from the subproject"
	printf '%s\n' "$out" | grep -i keymutex | tail -10 | diag
fi
if out=$($KM_MESON compile -C "$tmp/build" 2>&1); then
	ok "meson compile: keymutex builds inside the consumer"
else
	notok "meson compile"
	printf '%s\n' "$out" | tail -30 | diag
	finish
fi
if printf '%s\n' "$out" | grep -q 'warning:'; then
	notok "the subproject build is warning-free"
	printf '%s\n' "$out" | grep -A3 'warning:' | head -30 | diag
else
	ok "the subproject build is warning-free"
fi
if [ -f "$tmp/build/subprojects/keymutex/lib/libkeymutex.a" ]; then
	ok "libkeymutex.a was built in the consumer's build tree"
else
	notok "libkeymutex.a was built in the consumer's build tree"
fi
got=$("$tmp/build/app" 2>&1)
want="keymutex $KM_VERSION busy=1 free=1 scoped=1"
if [ "$got" = "$want" ]; then ok "the consumer runs: $got"; else notok "the consumer printed '$got' (want '$want')"; fi

finish
