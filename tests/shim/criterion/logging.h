/* See criterion.h: the logging macros live there. */
#include <criterion/criterion.h>
