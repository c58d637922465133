#!/usr/bin/env bash
# Integration test: stage an install of the current build (meson install
# --destdir into a temporary directory) and use it the ways a consumer would:
#   - pkg-config, shared and static (Libs.private / Requires.private),
#   - CMake find_package(keymutex) + keymutex::keymutex (and _static, and the
#     C++ layer),
#   - the man pages (man -M <staged>/share/man km_acquire, .so aliases),
#   - the installed headers.
# Each consumer is run and its output compared. TAP output.
#
# Environment (set by tests/integration/meson.build):
#   KM_BUILD_ROOT KM_SOURCE_ROOT KM_PREFIX KM_LIBDIR KM_INCLUDEDIR KM_MANDIR
#   KM_DEFAULT_LIBRARY KM_VERSION KM_SANITIZE KM_CC KM_CXX KM_MESON
#   KM_CMAKE KM_PKG_CONFIG KM_NINJA
# SPDX-License-Identifier: MIT
set -u

n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
diag() { sed 's/^/# /'; }
# check "description" command...: ok if the command succeeds; its output is shown on failure.
check() {
	local what=$1 out
	shift
	if out=$("$@" 2>&1); then ok "$what"; else notok "$what"; printf '%s\n' "$out" | diag; fi
}
finish() { echo "1..$n"; [ "$fails" -eq 0 ]; exit $?; }

if [ "${KM_SANITIZE:-none}" != none ]; then
	echo "1..0 # SKIP sanitizer build (b_sanitize=$KM_SANITIZE): consumers would need the runtime"
	exit 0
fi

# meson test points LD_LIBRARY_PATH at the build tree: consumers must find
# the staged library on their own.
unset LD_LIBRARY_PATH
tmp=$(mktemp -d "${TMPDIR:-/tmp}/km-staged.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/dest
consumer=$KM_SOURCE_ROOT/tests/integration/consumer
read -r -a cc <<<"$KM_CC"

abs() { case $1 in /*) printf '%s%s' "$dest" "$1" ;; *) printf '%s%s/%s' "$dest" "$KM_PREFIX" "$1" ;; esac; }
root=$dest$KM_PREFIX
libdir=$(abs "$KM_LIBDIR")
incdir=$(abs "$KM_INCLUDEDIR")
mandir=$(abs "$KM_MANDIR")
have_shared=0
have_static=0
case $KM_DEFAULT_LIBRARY in
shared) have_shared=1 ;;
static) have_static=1 ;;
*) have_shared=1; have_static=1 ;;
esac
expect="keymutex $KM_VERSION busy=1 free=1 scoped=1"

# --- install -----------------------------------------------------------------
if out=$($KM_MESON install -C "$KM_BUILD_ROOT" --no-rebuild --destdir "$dest" 2>&1); then
	ok "meson install --destdir stages the build"
else
	notok "meson install --destdir stages the build"
	printf '%s\n' "$out" | tail -20 | diag
	finish
fi

for h in keymutex.h keymutex_scoped.h keymutex.hpp; do
	check "header $h installed" test -f "$incdir/$h"
done
check "keymutex.pc installed" test -f "$libdir/pkgconfig/keymutex.pc"
[ $have_shared = 1 ] && check "shared library installed with its soname link" \
	test -e "$libdir/libkeymutex.so.0" -a -e "$libdir/libkeymutex.so"
[ $have_static = 1 ] && check "static library installed" test -f "$libdir/libkeymutex.a"

# --- pkg-config ----------------------------------------------------------------
export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_SYSROOT_DIR="$dest"   # the .pc says $KM_PREFIX; the files are under $dest
pc=$KM_PKG_CONFIG
if [ -z "$pc" ]; then
	skip "pkg-config consumer" "no pkg-config"
else
	v=$($pc --modversion keymutex 2>&1)
	if [ "$v" = "$KM_VERSION" ]; then ok "pkg-config --modversion keymutex = $v"; else notok "pkg-config --modversion: '$v'"; fi
	cflags=$($pc --cflags keymutex)
	case " $cflags " in
	*" -I$incdir "*) ok "pkg-config --cflags points into the staged prefix ($cflags)" ;;
	*) notok "pkg-config --cflags: '$cflags' (want -I$incdir)" ;;
	esac
	if [ $have_shared = 1 ]; then
		libs=$($pc --libs keymutex)
		# shellcheck disable=SC2086
		check "pkg-config: cc app.c \$(pkg-config --cflags --libs keymutex)" \
			"${cc[@]}" -o "$tmp/app-pc" "$consumer/app.c" $cflags $libs
		got=$(LD_LIBRARY_PATH="$libdir" "$tmp/app-pc" 2>&1)
		if [ "$got" = "$expect" ]; then ok "pkg-config consumer (shared) runs: $got"; else notok "pkg-config consumer (shared): '$got'"; fi
		lib_used=$(LD_LIBRARY_PATH="$libdir" ldd "$tmp/app-pc" 2>/dev/null | awk '/libkeymutex/ {print $3}')
		case $lib_used in
		"$libdir"/*) ok "it runs with the staged libkeymutex.so.0" ;;
		*) notok "it runs with '$lib_used', not the staged library" ;;
		esac
	fi
	if [ $have_static = 1 ]; then
		slibs=$($pc --static --libs keymutex)
		# Link libkeymutex.a itself; the rest of --static --libs is Libs.private
		# and the Libs of Requires.private (liburcu-bp, ck).
		slibs=${slibs/-lkeymutex/-l:libkeymutex.a}
		# shellcheck disable=SC2086
		check "pkg-config --static: links libkeymutex.a with Libs.private ($slibs)" \
			"${cc[@]}" -o "$tmp/app-pc-static" "$consumer/app.c" $cflags $slibs
		got=$(env -u LD_LIBRARY_PATH "$tmp/app-pc-static" 2>&1)
		if [ "$got" = "$expect" ]; then ok "pkg-config consumer (static) runs: $got"; else notok "pkg-config consumer (static): '$got'"; fi
		if readelf -d "$tmp/app-pc-static" 2>/dev/null | grep -q 'libkeymutex'; then
			notok "static consumer needs no libkeymutex.so"
		else
			ok "static consumer needs no libkeymutex.so"
		fi
	fi
fi

# --- CMake -------------------------------------------------------------------
if [ -z "$KM_CMAKE" ]; then
	skip "CMake consumer" "cmake not found"
elif [ ! -f "$libdir/cmake/keymutex/keymutexConfig.cmake" ]; then
	notok "CMake package config installed ($libdir/cmake/keymutex/keymutexConfig.cmake missing: is subdir('cmake') in the top-level meson.build?)"
else
	ok "CMake package config installed"
	gen=()
	[ -n "$KM_NINJA" ] && gen=(-G Ninja -DCMAKE_MAKE_PROGRAM="$KM_NINJA")
	cb=$tmp/cmake-build
	if out=$(env -u PKG_CONFIG_SYSROOT_DIR "$KM_CMAKE" -S "$consumer" -B "$cb" "${gen[@]}" \
		-DCMAKE_PREFIX_PATH="$root" -DKM_STAGED_ROOT="$dest" \
		-DKM_EXPECT_VERSION="$KM_VERSION" -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF 2>&1) &&
		out2=$("$KM_CMAKE" --build "$cb" 2>&1); then
		ok "CMake: find_package(keymutex $KM_VERSION) + keymutex::keymutex configures and builds"
		printf '%s\n' "$out" | grep 'keymutex .* from ' | diag
	else
		notok "CMake: find_package(keymutex) + keymutex::keymutex configures and builds"
		printf '%s\n%s\n' "$out" "${out2:-}" | tail -30 | diag
	fi
	if [ -x "$cb/app" ]; then
		got=$(LD_LIBRARY_PATH="$libdir" "$cb/app" 2>&1)
		if [ "$got" = "$expect" ]; then ok "CMake consumer (keymutex::keymutex) runs: $got"; else notok "CMake consumer: '$got'"; fi
	fi
	if [ $have_static = 1 ]; then
		if [ -x "$cb/app_static" ]; then
			got=$(env -u LD_LIBRARY_PATH "$cb/app_static" 2>&1)
			if [ "$got" = "$expect" ]; then ok "CMake consumer (keymutex::keymutex_static) runs: $got"; else notok "CMake static consumer: '$got'"; fi
		else
			notok "CMake consumer linked with keymutex::keymutex_static"
		fi
	fi
	if [ -n "$KM_CXX" ]; then
		if [ -x "$cb/app_cpp" ]; then
			got=$(LD_LIBRARY_PATH="$libdir" "$cb/app_cpp" 2>&1)
			if [ "$got" = "keymutex++ ok" ]; then ok "CMake C++17 consumer of keymutex.hpp runs: $got"; else notok "CMake C++ consumer: '$got'"; fi
		else
			notok "CMake C++17 consumer of keymutex.hpp built"
		fi
	fi
fi

# --- man pages -----------------------------------------------------------------
man3=$mandir/man3
if [ ! -f "$man3/km_acquire.3" ]; then
	notok "man pages installed ($man3/km_acquire.3 missing: is subdir('man') in the top-level meson.build?)"
else
	missing=""
	while read -r sym; do
		case $sym in '' | '#'*) continue ;; esac
		[ -f "$man3/$sym.3" ] || missing="$missing $sym"
	done <"$KM_SOURCE_ROOT/tests/integration/exported-symbols.txt"
	for p in keymutex KM_SCOPED_LOCK KM_SCOPED_TRYLOCK KM_SCOPED_LOCK_SHARED KM_SCOPED_GUARD; do
		[ -f "$man3/$p.3" ] || missing="$missing $p"
	done
	if [ -z "$missing" ]; then ok "a man page in share/man/man3 for every exported function and scoped macro"; else notok "man pages missing:$missing"; fi
	if command -v groff >/dev/null 2>&1; then
		warn=$(cd "$mandir" && for f in man3/*.3; do groff -man -Tutf8 -ww -z "$f" 2>&1 | sed "s|^|$f: |"; done)
		if [ -z "$warn" ]; then ok "groff -man -ww: no warnings in any page"; else notok "groff warnings"; printf '%s\n' "$warn" | diag; fi
	else
		skip "groff lint of the man pages" "no groff"
	fi
	if command -v man >/dev/null 2>&1; then
		export MANPAGER=cat PAGER=cat MANWIDTH=100 MAN_DISABLE_SECCOMP=1 LC_ALL=C.UTF-8
		page=$(man -M "$mandir" 3 km_acquire 2>&1)
		if printf '%s' "$page" | grep -q 'int km_acquire(struct km \*km' &&
			printf '%s' "$page" | grep -q 'RETURN VALUE'; then
			ok "man -M <staged>/share/man km_acquire shows the page"
		else
			notok "man -M <staged>/share/man km_acquire"
			printf '%s\n' "$page" | head -20 | diag
		fi
		page=$(man -M "$mandir" 3 km_trylock 2>&1)
		if printf '%s' "$page" | grep -q 'int km_trylock(' && printf '%s' "$page" | grep -q 'int km_acquire('; then
			ok "man km_trylock follows its .so link to km_acquire(3)"
		else
			notok "man km_trylock (.so link)"
			printf '%s\n' "$page" | head -20 | diag
		fi
		page=$(man -l "$man3/keymutex.3" 2>&1)
		if printf '%s' "$page" | grep -q 'km_acquire_all(3)'; then ok "man -l keymutex.3 (overview) lists the functions"; else notok "man -l keymutex.3"; printf '%s\n' "$page" | head -20 | diag; fi
		page=$(man -M "$mandir" KM_SCOPED_LOCK 2>&1)
		if printf '%s' "$page" | grep -q '#define KM_SCOPED_LOCK(rc, km, key, len)'; then ok "man KM_SCOPED_LOCK"; else notok "man KM_SCOPED_LOCK"; printf '%s\n' "$page" | head -20 | diag; fi
	else
		skip "man -M <staged>/share/man km_acquire" "no man"
	fi
fi

finish
