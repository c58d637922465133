#!/usr/bin/env bash
# Header check: the public headers compile cleanly as
#   C11 and C17 (keymutex.h, keymutex_scoped.h: header_c.c),
#   C++11 (the C headers from C++: header_c.c as C++),
#   C++17 and C++20 (keymutex.hpp: header_cpp.cpp; and header_c.c as C++17),
# with -Wall -Wextra -Wpedantic -Werror plus -Wconversion and friends, with
# the build's C/C++ compilers and, when installed, with gcc/g++ and
# clang/clang++ as well (C++20 and the C++14 refusal: the build's only).
# TAP output.
#
#   check-headers.sh SRCDIR INCLUDEDIR   (env KM_CC, KM_CXX: compiler commands)
# SPDX-License-Identifier: MIT
set -u
src=$1 inc=$2
n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
diag() { sed 's/^/# /'; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/km-headers.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

common=(-Wall -Wextra -Wpedantic -Werror -Wconversion -Wsign-conversion -Wcast-qual
	-Wundef -Wmissing-declarations)
cwarn=(-Wstrict-prototypes -Wmissing-prototypes -Wold-style-definition)

compile() {	# compile "what" compiler-command... -- args
	local what=$1 out
	shift
	if out=$("$@" -I"$inc" -c -o "$tmp/out.o" 2>&1); then
		ok "$what"
	else
		notok "$what"
		printf '%s\n' "$out" | head -40 | diag
	fi
}

# The compilers: the build's own, then gcc/g++ and clang/clang++ when present
# and not the same binary ("cc" is usually gcc). The build's compilers get
# every standard; the others C11/C17 and C++11/C++17.
c_compilers=()
cxx_compilers=()
seen=" "
add() {	# add ARRAY-NAME "command": unless its binary was added already
	local -n arr=$1
	local cmd=$2 words bin
	read -r -a words <<<"$cmd"
	bin=$(command -v "${words[-1]}" 2>/dev/null) || return 0
	bin=$(readlink -f "$bin")
	case $seen in *" $1:$bin "*) return 0 ;; esac
	seen="$seen$1:$bin "
	arr+=("$cmd")
}
[ -n "${KM_CC:-}" ] && add c_compilers "$KM_CC"
[ -n "${KM_CXX:-}" ] && add cxx_compilers "$KM_CXX"
for c in gcc clang; do add c_compilers "$c"; done
for c in g++ clang++; do add cxx_compilers "$c"; done

for ccmd in "${c_compilers[@]}"; do
	read -r -a c <<<"$ccmd"
	for std in c11 c17; do
		compile "keymutex.h + keymutex_scoped.h as $std ($ccmd)" \
			"${c[@]}" -std="$std" "${common[@]}" "${cwarn[@]}" -x c "$src/header_c.c"
	done
done
if [ ${#cxx_compilers[@]} -eq 0 ]; then
	n=$((n + 1))
	echo "ok $n - C++ header checks # SKIP no C++ compiler"
fi
first=1
for cxxcmd in "${cxx_compilers[@]}"; do
	read -r -a cxx <<<"$cxxcmd"
	for std in c++11 c++17; do
		compile "keymutex.h + keymutex_scoped.h from $std ($cxxcmd)" \
			"${cxx[@]}" -std="$std" "${common[@]}" -x c++ "$src/header_c.c"
	done
	stds=(c++17)
	[ $first = 1 ] && stds=(c++17 c++20)
	for std in "${stds[@]}"; do
		compile "keymutex.hpp as $std ($cxxcmd)" \
			"${cxx[@]}" -std="$std" "${common[@]}" -x c++ "$src/header_cpp.cpp"
	done
	if [ $first = 1 ]; then
		# keymutex.hpp refuses C++14 with a clear #error.
		if out=$("${cxx[@]}" -std=c++14 -I"$inc" -x c++ -E -o /dev/null "$src/header_cpp.cpp" 2>&1); then
			notok "keymutex.hpp as c++14 is rejected ($cxxcmd)"
		elif printf '%s' "$out" | grep -q 'keymutex.hpp needs C++17'; then
			ok "keymutex.hpp as c++14 is rejected with a clear #error ($cxxcmd)"
		else
			notok "keymutex.hpp as c++14: not the expected #error ($cxxcmd)"
			printf '%s\n' "$out" | head -5 | diag
		fi
	fi
	first=0
done
echo "1..$n"
[ "$fails" -eq 0 ]
