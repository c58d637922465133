/*
 * The atomic operations keymutex uses, as GCC/Clang __atomic builtins.
 *
 * Why not ck_pr: ck_pr's loads and stores are volatile accesses and its x86
 * read-modify-writes are inline assembly, both invisible to ThreadSanitizer.
 * The __atomic builtins compile to the same instructions (a plain mov for
 * acquire loads and release stores on x86-64, lock cmpxchg / lock xadd for
 * the RMWs) and ThreadSanitizer understands them, so one spelling serves the
 * optimized and the sanitized builds. Concurrency Kit supplies ck_backoff
 * for the CAS loops and the pause instruction (ck_pr_stall) for spinning.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_ATOMIC_H
#define KM_ATOMIC_H

#include <stdbool.h>
#include <stdint.h>

#define km_load_relaxed(p)	__atomic_load_n((p), __ATOMIC_RELAXED)
#define km_load_acquire(p)	__atomic_load_n((p), __ATOMIC_ACQUIRE)
#define km_store_relaxed(p, v)	__atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define km_store_release(p, v)	__atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define km_add_relaxed(p, v)	((void)__atomic_fetch_add((p), (v), __ATOMIC_RELAXED))
#define km_xchg_acq_rel(p, v)	__atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)

/* Strong CAS; on failure *expected receives the current value. */
#define km_cas_acquire(p, expected, desired) \
	__atomic_compare_exchange_n((p), (expected), (desired), false, \
				    __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE)
#define km_cas_release(p, expected, desired) \
	__atomic_compare_exchange_n((p), (expected), (desired), false, \
				    __ATOMIC_RELEASE, __ATOMIC_RELAXED)
#define km_cas_acq_rel(p, expected, desired) \
	__atomic_compare_exchange_n((p), (expected), (desired), false, \
				    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)

static inline void km_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

#endif /* KM_ATOMIC_H */
