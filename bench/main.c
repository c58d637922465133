/*
 * km-bench: the comparison harness of keymutex (bench.md). Everything is in
 * the harness library (cli.c, harness.c, report.c, the strategies), which the
 * self-tests link too.
 *
 * SPDX-License-Identifier: MIT
 */
#include "harness.h"

int main(int argc, char **argv)
{
	return bench_main(argc, argv);
}
