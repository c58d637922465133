/*
 * The C++17 layer (include/keymutex.hpp): table, guard, shared_guard,
 * multi_guard, key_view, key_lock with std::unique_lock / std::scoped_lock /
 * std::shared_lock, the throwing API and the std::error_code overloads.
 *
 * TAP output (meson test protocol 'tap').
 * SPDX-License-Identifier: MIT
 */
#include "keymutex.hpp"

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

using namespace std::chrono_literals;
using keymutex::guard;
using keymutex::key_lock;
using keymutex::shared_guard;
using keymutex::table;

namespace {

int n_test = 0;
int n_fail = 0;

void check(bool ok, const char *what)
{
	n_test++;
	if (!ok)
		n_fail++;
	std::printf("%s %d - %s\n", ok ? "ok" : "not ok", n_test, what);
	std::fflush(stdout);
}

/* Runs f and returns the errno value of the std::system_error it throws (0 if none). */
template <class F>
int thrown(F &&f)
{
	try {
		f();
	} catch (const std::system_error &e) {
		return e.code().category() == std::generic_category() ? e.code().value() : -1;
	}
	return 0;
}

bool key_free(table &t, keymutex::key_view k)
{
	return static_cast<bool>(t.try_lock(k));
}

/* Compile-time properties. */
static_assert(!std::is_copy_constructible_v<table> && !std::is_copy_assignable_v<table>);
static_assert(std::is_nothrow_move_constructible_v<table> && std::is_nothrow_move_assignable_v<table>);
static_assert(!std::is_copy_constructible_v<guard> && !std::is_copy_assignable_v<guard>);
static_assert(std::is_nothrow_move_constructible_v<guard> && std::is_nothrow_move_assignable_v<guard>);
static_assert(std::is_nothrow_move_constructible_v<shared_guard>);
static_assert(std::is_nothrow_move_constructible_v<keymutex::multi_guard>);
static_assert(!std::is_convertible_v<shared_guard, guard>, "distinct guard types");
static_assert(noexcept(std::declval<table &>().lock("k", std::declval<std::error_code &>())));
static_assert(noexcept(std::declval<table &>().try_lock("k", std::declval<std::error_code &>())));
static_assert(noexcept(std::declval<table &>().lock_until(
	"k", std::chrono::steady_clock::now(), std::declval<std::error_code &>())));
static_assert(noexcept(std::declval<table &>().lock_shared("k", std::declval<std::error_code &>())));
static_assert(noexcept(std::declval<guard &>().unlock(std::declval<std::error_code &>())));
static_assert(!noexcept(std::declval<table &>().lock("k")));
static_assert(noexcept(std::declval<key_lock &>().unlock()));
static_assert(std::is_convertible_v<std::string, keymutex::key_view>);
static_assert(std::is_convertible_v<std::vector<unsigned char>, keymutex::key_view>);
static_assert(std::is_convertible_v<std::array<std::byte, 4>, keymutex::key_view>);
static_assert(!std::is_convertible_v<std::vector<float>, keymutex::key_view>,
	      "floats have no unique object representation");
static_assert(!std::is_convertible_v<std::vector<std::string>, keymutex::key_view>);

} // namespace

int main()
{
	/* --- table ------------------------------------------------------- */
	table t;
	check(t.valid(), "default table is valid");
	{
		km_options bad = {};
		bad.flags = KM_RECURSIVE | KM_ERRORCHECK;
		check(thrown([&] { table x(bad); }) == EINVAL,
		      "bad options throw std::system_error(EINVAL, generic_category)");
		std::error_code ec;
		table x(bad, ec);
		check(ec == std::errc::invalid_argument && !x.valid(),
		      "bad options with error_code: ec = EINVAL, table empty");
		guard g = x.lock("k", ec);
		check(ec == std::errc::invalid_argument && !g, "an empty table gives EINVAL, not a crash");
	}
	{
		table a;
		guard g = a.lock("moved");
		table b(std::move(a));
		check(!a.valid() && b.valid() && !key_free(b, "moved"),
		      "table moves; held keys move with it");
		g.unlock();
		check(key_free(b, "moved"), "guard still unlocks after its table moved");
		std::error_code ec;
		b.destroy(ec);
		check(!ec && !b.valid(), "destroy() with nothing held");
	}
	{
		table a;
		guard g = a.lock("busy");
		std::error_code ec;
		a.destroy(ec);
		check(ec == std::errc::device_or_resource_busy && a.valid(),
		      "destroy() while a key is held: EBUSY, table still usable");
		check(thrown([&] { a.destroy(); }) == EBUSY, "destroy() throwing form: EBUSY");
	}

	/* --- guard ------------------------------------------------------- */
	{
		guard g = t.lock("a");
		check(g.owns_lock() && static_cast<bool>(g), "lock() returns an owning guard");
		check(!key_free(t, "a"), "the key is held");
		guard busy = t.try_lock("a");
		check(!busy, "try_lock on a held key: empty guard, no exception");
		std::error_code ec;
		guard busy2 = t.try_lock("a", ec);
		check(!busy2 && ec == std::errc::device_or_resource_busy,
		      "try_lock(ec) on a held key: ec = EBUSY");
		guard h(std::move(g));
		check(!g && h, "move construction transfers the hold");
		guard i;
		i = std::move(h);
		check(!h && i && !key_free(t, "a"), "move assignment transfers the hold");
		i = t.lock("a2");
		check(key_free(t, "a") && !key_free(t, "a2"),
		      "move-assigning over an owning guard unlocks its old key");
	}
	check(key_free(t, "a") && key_free(t, "a2"), "~guard unlocks");
	{
		guard g = t.lock("u");
		g.unlock();
		check(!g && key_free(t, "u"), "unlock() releases early");
		check(thrown([&] { g.unlock(); }) == EPERM, "second unlock() throws EPERM");
		std::error_code ec;
		g.unlock(ec);
		check(ec == std::errc::operation_not_permitted, "unlock(ec) on an empty guard: EPERM");
	}
	{
		guard g = t.lock("rel");
		km_guard raw = g.release();
		check(!g && !key_free(t, "rel"), "release() gives up ownership without unlocking");
		guard back = guard::adopt(raw);
		check(back && !key_free(t, "rel"), "adopt() takes it back");
	}
	check(key_free(t, "rel"), "adopted guard unlocks");

	/* --- keys -------------------------------------------------------- */
	{
		std::string s = "key";
		std::string_view sv = s;
		std::vector<char> vc{'k', 'e', 'y'};
		std::vector<unsigned char> vu{'k', 'e', 'y'};
		std::array<std::byte, 3> ab{std::byte{'k'}, std::byte{'e'}, std::byte{'y'}};
		guard g = t.lock(s);
		check(!key_free(t, sv) && !key_free(t, "key") && !key_free(t, vc) &&
			      !key_free(t, vu) && !key_free(t, ab),
		      "std::string, string_view, const char*, vector<char>, vector<unsigned char>,"
		      " array<byte> with the same bytes are the same key");
		check(key_free(t, "ke") && key_free(t, std::string("key\0", 4)),
		      "different bytes are a different key (embedded NUL counts)");
		std::uint32_t words[2] = {1, 2};
		guard w = t.lock(words);
		check(!key_free(t, keymutex::key_view(words, sizeof words)),
		      "uint32_t[2] is the key of its 8 bytes");
		guard e = t.lock(keymutex::key_view());
		check(e && !key_free(t, ""), "the empty key is a key");
	}

	/* --- deadlines --------------------------------------------------- */
	{
		guard g = t.lock("d");
		auto t0 = std::chrono::steady_clock::now();
		guard late = t.lock_until("d", t0 + 30ms);
		auto waited = std::chrono::steady_clock::now() - t0;
		check(!late && waited >= 25ms, "lock_until on a held key: empty guard after the deadline");
		std::error_code ec;
		guard late2 = t.lock_for("d", 1ms, ec);
		check(!late2 && ec == std::errc::timed_out, "lock_for(ec): ec = ETIMEDOUT");
		guard past = t.lock_until("d", t0 - 1h);
		check(!past, "a deadline already passed: try once");
		guard sys = t.lock_until("d", std::chrono::system_clock::now() + 5ms);
		check(!sys, "a system_clock deadline works too");
		guard free_key = t.lock_until("d-free", std::chrono::steady_clock::time_point::min());
		check(free_key.owns_lock(), "a passed deadline on a free key acquires");
		guard forever = t.lock_until("d-free2", std::chrono::steady_clock::time_point::max());
		check(forever.owns_lock(), "time_point::max() means no deadline");
	}
	{
		guard g = t.lock("handoff");
		std::thread th([&] {
			std::this_thread::sleep_for(20ms);
			g.unlock();
		});
		guard got = t.lock_for("handoff", 5s);
		th.join();
		check(got.owns_lock(), "lock_for waits for another thread's unlock");
	}

	/* --- shared ------------------------------------------------------ */
	{
		shared_guard r1 = t.lock_shared("s");
		shared_guard r2 = t.try_lock_shared("s");
		check(r1 && r2, "two shared holds at once");
		check(!key_free(t, "s"), "shared holds exclude an exclusive try_lock");
		shared_guard r3 = t.lock_shared_for("s", 10ms);
		check(r3.owns_lock(), "lock_shared_for on a shared-held key");
		r1.unlock();
		r2 = shared_guard();
		r3 = shared_guard();
		check(key_free(t, "s"), "all shared holds released");
		guard x = t.lock("s");
		check(!t.try_lock_shared("s"), "try_lock_shared on an exclusively held key: empty");
		std::error_code ec;
		check(!t.lock_shared_until("s", std::chrono::steady_clock::now(), ec) &&
			      ec == std::errc::timed_out,
		      "lock_shared_until(ec) times out");
	}
	{
		km_options o = {};
		o.max_holders = 3;
		table sem(o);
		check(thrown([&] { (void)sem.lock_shared("k"); }) == EINVAL,
		      "lock_shared on a keyed semaphore throws EINVAL");
		std::error_code ec;
		shared_guard r = sem.lock_shared("k", ec);
		check(!r && ec == std::errc::invalid_argument, "lock_shared(ec) gives EINVAL instead");
		guard a = sem.lock("k"), b = sem.lock("k"), c = sem.lock("k");
		check(a && b && c && !sem.try_lock("k"), "max_holders = 3: three holders, not four");
	}

	/* --- several keys ------------------------------------------------ */
	{
		keymutex::multi_guard m = t.lock_all({"m1", "m2", std::string("m3")});
		check(m && m.size() == 3 && !key_free(t, "m1") && !key_free(t, "m3"),
		      "lock_all holds every key");
		check(thrown([&] { (void)t.lock_all({"x", "x"}); }) == EINVAL,
		      "lock_all with a repeated key throws EINVAL");
		m.unlock();
		check(key_free(t, "m1") && key_free(t, "m2") && key_free(t, "m3"),
		      "multi_guard::unlock releases all");
	}

	/* --- key_lock with the standard lock types ----------------------- */
	{
		key_lock kl(t, "std");
		{
			std::unique_lock<key_lock> lk(kl);
			check(lk.owns_lock() && !key_free(t, "std"), "std::unique_lock<key_lock> locks");
			lk.unlock();
			check(key_free(t, "std"), "std::unique_lock::unlock releases");
			lk.lock();
		}
		check(key_free(t, "std"), "~std::unique_lock releases");
		{
			std::lock_guard<key_lock> lg(kl);
			check(!key_free(t, "std"), "std::lock_guard<key_lock>");
		}
		guard other = t.lock("std");
		{
			std::unique_lock<key_lock> lk(kl, std::try_to_lock);
			check(!lk.owns_lock(), "std::try_to_lock on a held key does not own");
			std::unique_lock<key_lock> lk2(kl, 10ms);
			check(!lk2.owns_lock(), "timed std::unique_lock times out");
		}
		other.unlock();
		key_lock a(t, "sa"), b(t, "sb");
		{
			std::scoped_lock both(a, b);
			check(!key_free(t, "sa") && !key_free(t, "sb"), "std::scoped_lock of two key_locks");
		}
		check(key_free(t, "sa") && key_free(t, "sb"), "~std::scoped_lock releases both");
		{
			key_lock r1(t, "sh"), r2(t, "sh");
			std::shared_lock<key_lock> s1(r1), s2(r2);
			check(s1.owns_lock() && s2.owns_lock() && !key_free(t, "sh"),
			      "std::shared_lock<key_lock>: two readers");
		}
		check(key_free(t, "sh"), "~std::shared_lock releases");
		kl.lock();
		check(thrown([&] { kl.lock(); }) == EDEADLK && !kl.try_lock(),
		      "a key_lock that holds: lock() throws EDEADLK, try_lock() is false");
		kl.unlock();
	}

	/* --- threads: exclusion and visibility --------------------------- */
	{
		const int threads = 4, rounds = 2000;
		long counter = 0; /* plain, protected only by the key */
		std::atomic<int> errors{0};
		std::vector<std::thread> th;
		for (int i = 0; i < threads; i++)
			th.emplace_back([&] {
				key_lock kl(t, "counter");
				for (int r = 0; r < rounds; r++) {
					std::error_code ec;
					guard g = t.lock("counter", ec);
					if (ec) {
						errors++;
						continue;
					}
					counter++;
					if (r % 3 == 0) {
						g.unlock();
						std::lock_guard<key_lock> lg(kl);
						counter++;
					}
				}
			});
		for (auto &x : th)
			x.join();
		long expect = 0;
		for (int r = 0; r < rounds; r++)
			expect += 1 + (r % 3 == 0);
		check(errors == 0 && counter == expect * threads,
		      "threads incrementing under one key lose no update");
	}

	struct km_stats st = t.stats();
	check(st.holders == 0 && st.keys == 0, "nothing held at the end (stats)");
	std::printf("1..%d\n", n_test);
	return n_fail != 0;
}
