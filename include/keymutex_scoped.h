/*
 * keymutex_scoped.h: scoped (block-bound) locks for C, built on the
 * GCC/Clang cleanup attribute.
 *
 * A guard declared with one of these macros is unlocked automatically when
 * the enclosing block is left in any way the compiler sees: falling off its
 * end, return, break, continue or goto. (Not by longjmp, exit or a thread
 * being cancelled: unlock explicitly there.) Needs GCC or Clang; the header
 * is valid ISO C11 otherwise (-Wpedantic clean), and also compiles as C++,
 * where keymutex.hpp is the better fit.
 *
 * The macros are declarations: use them where a declaration may stand
 * (not as the sole statement of an if or a loop without braces).
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KEYMUTEX_SCOPED_H
#define KEYMUTEX_SCOPED_H

#include "keymutex.h"

#if !defined(__GNUC__) && !defined(__clang__)
#error "keymutex_scoped.h needs __attribute__((cleanup)) (GCC or Clang)"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The cleanup handler: unlocks what the guard holds, if anything. */
static inline void km_scoped_release_(struct km_guard *g)
{
	if (g->priv[0] | g->priv[1] | g->priv[2] | g->priv[3])
		(void)km_unlock(g);
}

#ifdef __cplusplus
}
#endif

#define KM_SCOPED_CAT2_(a, b) a##b
#define KM_SCOPED_CAT_(a, b) KM_SCOPED_CAT2_(a, b)
#ifdef __COUNTER__
#define KM_SCOPED_UNIQUE_(prefix) KM_SCOPED_CAT_(prefix, __COUNTER__)
#else
#define KM_SCOPED_UNIQUE_(prefix) KM_SCOPED_CAT_(prefix, __LINE__)
#endif

/**
 * KM_SCOPED_GUARD - declare a guard that is unlocked when its block is left.
 * @name: the guard variable's name (a struct km_guard, zero-initialised).
 *
 * Declares struct km_guard @name, initialised to hold nothing, with a
 * cleanup handler: when the block that declares it is left (end of block,
 * return, break, continue, goto), whatever @name holds then is unlocked with
 * km_unlock. Fill it with any acquire function (km_acquire with a deadline
 * or a token, km_trylock_shared, ...). Unlocking it earlier by hand is fine:
 * km_unlock zeroes the guard, and the handler does nothing for a guard that
 * holds nothing.
 *
 * On a KM_ERRORCHECK table the block must be left on the thread that
 * acquired (the handler unlocks as the calling thread).
 */
#define KM_SCOPED_GUARD(name) \
	struct km_guard name __attribute__((cleanup(km_scoped_release_))) = KM_GUARD_INIT

#define KM_SCOPED_ACQUIRE_(fn, gname, rc, km, key, len) \
	KM_SCOPED_GUARD(gname);                           \
	int rc = fn((km), (key), (len), &gname)

/**
 * KM_SCOPED_LOCK - lock a key until the enclosing block is left.
 * @rc:  the name of an int variable this declares: km_lock's result.
 * @km:  the table.
 * @key: the key's bytes.
 * @len: the key's length.
 *
 * Declares int @rc and a hidden guard, and calls km_lock(@km, @key, @len,
 * guard). When @rc is 0 the key is held until the enclosing block is left
 * by any path (end of block, return, break, continue, goto); when @rc is not
 * 0 (ENOMEM, EAGAIN, EDEADLK, EINVAL as for km_lock) nothing is held and
 * nothing will be unlocked. Always test @rc.
 *
 * Example:
 *
 *     KM_SCOPED_LOCK(rc, km, name, strlen(name));
 *     if (rc != 0)
 *             return rc;
 *     ... the key is held here, and released by every return below ...
 */
#define KM_SCOPED_LOCK(rc, km, key, len) \
	KM_SCOPED_ACQUIRE_(km_lock, KM_SCOPED_UNIQUE_(km_scoped_guard_), rc, km, key, len)

/**
 * KM_SCOPED_TRYLOCK - try to lock a key until the enclosing block is left.
 *
 * As KM_SCOPED_LOCK with km_trylock: @rc is EBUSY (and nothing is held)
 * when the key is not free at once.
 */
#define KM_SCOPED_TRYLOCK(rc, km, key, len) \
	KM_SCOPED_ACQUIRE_(km_trylock, KM_SCOPED_UNIQUE_(km_scoped_guard_), rc, km, key, len)

/**
 * KM_SCOPED_LOCK_SHARED - lock a key in shared mode until the block is left.
 *
 * As KM_SCOPED_LOCK with km_lock_shared.
 */
#define KM_SCOPED_LOCK_SHARED(rc, km, key, len) \
	KM_SCOPED_ACQUIRE_(km_lock_shared, KM_SCOPED_UNIQUE_(km_scoped_guard_), rc, km, key, len)

#endif /* KEYMUTEX_SCOPED_H */
