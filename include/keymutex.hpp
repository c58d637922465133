/*
 * keymutex.hpp: a small header-only C++17 layer over keymutex.h.
 *
 *   keymutex::table t;                          // owns a struct km (move-only)
 *   {
 *       keymutex::guard g = t.lock("user:42");  // RAII: unlocked by ~guard
 *       ...
 *   }
 *   if (auto g = t.try_lock(key)) { ... }       // empty guard when busy
 *   auto g = t.lock_until(key, std::chrono::steady_clock::now() + 50ms);
 *   auto r = t.lock_shared(key);                // keymutex::shared_guard
 *
 *   keymutex::key_lock kl(t, "user:42");        // a BasicLockable / Lockable /
 *   std::unique_lock<keymutex::key_lock> lk(kl); // TimedLockable / SharedLockable
 *   std::scoped_lock both(kl_a, kl_b);           // adaptor for std:: lock types
 *
 * Errors. Every operation comes in two forms:
 *
 *  - The throwing form (no std::error_code argument) throws std::system_error
 *    whose code() is (errno value, std::generic_category()), for example
 *    std::errc::invalid_argument (EINVAL), not_enough_memory (ENOMEM),
 *    resource_unavailable_try_again (EAGAIN: max_waiters reached) or
 *    resource_deadlock_would_occur (EDEADLK). The expected outcome of a
 *    conditional acquire is not an error: try_lock* returns an empty guard
 *    when the key is busy (EBUSY) and lock_until / lock_for* return an empty
 *    guard when the deadline passes (ETIMEDOUT); test the guard
 *    (`if (g)` or g.owns_lock()).
 *  - The std::error_code& form is noexcept: it clears ec on success and sets
 *    it to every failure, EBUSY and ETIMEDOUT included
 *    (std::errc::device_or_resource_busy, std::errc::timed_out); the
 *    returned guard is empty whenever ec is set.
 *
 * Destructors never throw: ~guard unlocks and ignores the result (the only
 * possible failure is EPERM on a KM_ERRORCHECK table when the guard is
 * destroyed on a thread other than the one that locked it: unlock such a
 * guard explicitly); ~table calls km_destroy and, if keys are still held
 * (EBUSY), leaves the table allocated rather than free memory a guard still
 * points into. Use table::destroy() to see that error.
 *
 * Keys: keymutex::key_view, built implicitly from std::string_view,
 * std::string, a NUL-terminated const char* (without the NUL), or any
 * contiguous range (std::data / std::size) of trivially copyable elements
 * without padding (std::vector<unsigned char>, std::array<std::byte, N>,
 * uint64_t[2], ...): the key is the range's bytes. Equal bytes are the same
 * key whatever type they came from. The bytes are copied by the library;
 * the caller's buffer may change as soon as the call returns.
 *
 * Deadlines: any std::chrono clock; the remaining time is converted onto
 * CLOCK_MONOTONIC (std::chrono::steady_clock on Linux) when the call
 * starts. A deadline already passed means "try once". A deadline more than
 * about a century away means "no deadline".
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KEYMUTEX_HPP
#define KEYMUTEX_HPP

#if defined(_MSVC_LANG) ? (_MSVC_LANG < 201703L) : (__cplusplus < 201703L)
#error "keymutex.hpp needs C++17 or later"
#endif

#include "keymutex.h"

#include <time.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace keymutex {

/* ------------------------------------------------------------------ */
/* Keys                                                                */
/* ------------------------------------------------------------------ */

namespace detail {

template <class T, class = void>
struct has_data_size : std::false_type {};
template <class T>
struct has_data_size<T, std::void_t<decltype(std::data(std::declval<const T &>())),
				    decltype(std::size(std::declval<const T &>()))>>
	: std::true_type {};

template <class T, bool = has_data_size<T>::value>
struct is_byte_range : std::false_type {};
template <class T>
struct is_byte_range<T, true> {
	using pointer = decltype(std::data(std::declval<const T &>()));
	using element = std::remove_cv_t<std::remove_pointer_t<pointer>>;
	static constexpr bool value = std::is_pointer_v<pointer> &&
				      std::is_trivially_copyable_v<element> &&
				      std::has_unique_object_representations_v<element> &&
				      !std::is_convertible_v<const T &, std::string_view>;
};

} // namespace detail

/* A key: a view of bytes (not owned; the library copies them on acquire). */
class key_view {
public:
	constexpr key_view() noexcept = default;
	constexpr key_view(const void *data, std::size_t size) noexcept : data_(data), size_(size) {}
	constexpr key_view(std::string_view s) noexcept : data_(s.data()), size_(s.size()) {}
	constexpr key_view(const char *s) noexcept : key_view(std::string_view(s)) {}
	key_view(const std::string &s) noexcept : data_(s.data()), size_(s.size()) {}
	template <class Range,
		  std::enable_if_t<!std::is_same_v<std::decay_t<Range>, key_view> &&
					   detail::is_byte_range<Range>::value,
				   int> = 0>
	constexpr key_view(const Range &r) noexcept
		: data_(std::data(r)),
		  size_(std::size(r) * sizeof(typename detail::is_byte_range<Range>::element))
	{
	}

	constexpr const void *data() const noexcept { return data_; }
	constexpr std::size_t size() const noexcept { return size_; }
	/* The bytes as characters (for printing or copying). */
	std::string_view bytes() const noexcept
	{
		return size_ ? std::string_view(static_cast<const char *>(data_), size_)
			     : std::string_view();
	}

private:
	const void *data_ = nullptr;
	std::size_t size_ = 0;
};

/* ------------------------------------------------------------------ */
/* Errors and deadlines                                                */
/* ------------------------------------------------------------------ */

namespace detail {

[[noreturn]] inline void throw_errno(int err, const char *what)
{
	throw std::system_error(err, std::generic_category(), what);
}

inline void set_ec(std::error_code &ec, int err) noexcept
{
	if (err)
		ec.assign(err, std::generic_category());
	else
		ec.clear();
}

/*
 * Converts a deadline on any clock to an absolute CLOCK_MONOTONIC timespec.
 * Returns false when the deadline is too far away to matter (wait for ever).
 */
template <class Clock, class Duration>
bool to_monotonic(const std::chrono::time_point<Clock, Duration> &deadline,
		  struct timespec &ts) noexcept
{
	using std::chrono::nanoseconds;
	const auto now = Clock::now();
	nanoseconds rel(0);
	if (deadline > now) {
		const auto left = deadline - now;
		/* About a century: "no deadline"; also keeps the sums below in range. */
		if (left > std::chrono::hours(24 * 366 * 100))
			return false;
		rel = std::chrono::duration_cast<nanoseconds>(left);
	}
	struct timespec mono;
	::clock_gettime(CLOCK_MONOTONIC, &mono);
	const long long ns_per_s = 1000000000LL;
	const long long total = static_cast<long long>(mono.tv_nsec) + rel.count() % ns_per_s;
	ts.tv_sec = mono.tv_sec + static_cast<time_t>(rel.count() / ns_per_s + total / ns_per_s);
	ts.tv_nsec = static_cast<long>(total % ns_per_s);
	return true;
}

/* Common part of guard and shared_guard: owns at most one hold. */
class basic_guard {
public:
	basic_guard() noexcept = default;
	basic_guard(const basic_guard &) = delete;
	basic_guard &operator=(const basic_guard &) = delete;
	basic_guard(basic_guard &&o) noexcept : g_(o.g_), owns_(o.owns_)
	{
		o.g_ = km_guard();
		o.owns_ = false;
	}
	basic_guard &operator=(basic_guard &&o) noexcept
	{
		if (this != &o) {
			reset();
			g_ = o.g_;
			owns_ = o.owns_;
			o.g_ = km_guard();
			o.owns_ = false;
		}
		return *this;
	}
	~basic_guard() { reset(); }

	/* Whether this guard holds a key. */
	bool owns_lock() const noexcept { return owns_; }
	explicit operator bool() const noexcept { return owns_; }

	/* Unlocks now. Throws std::system_error: EPERM if nothing is held (or,
	   KM_ERRORCHECK, the caller is not the owner: the guard still holds). */
	void unlock()
	{
		std::error_code ec;
		unlock(ec);
		if (ec)
			throw std::system_error(ec, "km_unlock");
	}
	/* Unlocks now; noexcept, errors as for unlock() in ec. */
	void unlock(std::error_code &ec) noexcept
	{
		if (!owns_) {
			set_ec(ec, EPERM);
			return;
		}
		/* Leave *this empty before the release: once km_unlock has
		   run, another thread may own the key (and this object). */
		km_guard g = g_;
		g_ = km_guard();
		owns_ = false;
		int err = km_unlock(&g);
		if (err) {
			g_ = g;
			owns_ = true;
		}
		set_ec(ec, err);
	}

	/* Gives up the hold without unlocking: the caller now owns the returned
	   km_guard and must km_unlock it. Zeroed if nothing was held. */
	km_guard release() noexcept
	{
		km_guard g = g_;
		g_ = km_guard();
		owns_ = false;
		return g;
	}

protected:
	/* Takes over a km_guard filled by a successful km_ acquire. */
	explicit basic_guard(const km_guard &g) noexcept : g_(g), owns_(true) {}

	void reset() noexcept
	{
		if (owns_) {
			km_guard g = g_;
			g_ = km_guard();
			owns_ = false;
			(void)km_unlock(&g);
		}
	}

private:
	km_guard g_ = km_guard();
	bool owns_ = false;
};

} // namespace detail

class table;

/* An exclusive hold on one key; move-only; unlocked by the destructor. */
class guard : public detail::basic_guard {
public:
	guard() noexcept = default;
	/* Adopts a km_guard that holds a key exclusively (from km_acquire...). */
	static guard adopt(const km_guard &g) noexcept { return guard(g); }

private:
	friend class table;
	explicit guard(const km_guard &g) noexcept : basic_guard(g) {}
};

/* A shared hold on one key; move-only; unlocked by the destructor. */
class shared_guard : public detail::basic_guard {
public:
	shared_guard() noexcept = default;
	/* Adopts a km_guard that holds a key in shared mode. */
	static shared_guard adopt(const km_guard &g) noexcept { return shared_guard(g); }

private:
	friend class table;
	explicit shared_guard(const km_guard &g) noexcept : basic_guard(g) {}
};

/* Holds several keys at once (table::lock_all); unlocked together. */
class multi_guard {
public:
	multi_guard() noexcept = default;
	multi_guard(const multi_guard &) = delete;
	multi_guard &operator=(const multi_guard &) = delete;
	multi_guard(multi_guard &&o) noexcept : g_(std::move(o.g_)) { o.g_.clear(); }
	multi_guard &operator=(multi_guard &&o) noexcept
	{
		if (this != &o) {
			reset();
			g_ = std::move(o.g_);
			o.g_.clear();
		}
		return *this;
	}
	~multi_guard() { reset(); }

	bool owns_lock() const noexcept { return !g_.empty(); }
	explicit operator bool() const noexcept { return !g_.empty(); }
	std::size_t size() const noexcept { return g_.size(); }

	void unlock()
	{
		std::error_code ec;
		unlock(ec);
		if (ec)
			throw std::system_error(ec, "km_unlock_all");
	}
	void unlock(std::error_code &ec) noexcept
	{
		if (g_.empty()) {
			detail::set_ec(ec, EPERM);
			return;
		}
		std::vector<km_guard> g;
		g.swap(g_);
		detail::set_ec(ec, km_unlock_all(g.data(), g.size()));
	}

private:
	friend class table;
	explicit multi_guard(std::vector<km_guard> &&g) noexcept : g_(std::move(g)) {}
	void reset() noexcept
	{
		if (!g_.empty()) {
			std::vector<km_guard> g;
			g.swap(g_);
			(void)km_unlock_all(g.data(), g.size());
		}
	}

	std::vector<km_guard> g_;
};

/* ------------------------------------------------------------------ */
/* The table                                                           */
/* ------------------------------------------------------------------ */

class table {
public:
	/* Default options. Throws std::system_error (ENOMEM). */
	table() : table(km_options()) {}
	/* Throws std::system_error (EINVAL for bad options, ENOMEM). */
	explicit table(const km_options &opt)
	{
		int err = km_create(&km_, &opt);
		if (err)
			detail::throw_errno(err, "km_create");
	}
	/* noexcept: on failure ec is set and the table is empty (!valid()). */
	table(const km_options &opt, std::error_code &ec) noexcept
	{
		int err = km_create(&km_, &opt);
		if (err)
			km_ = nullptr;
		detail::set_ec(ec, err);
	}
	table(const table &) = delete;
	table &operator=(const table &) = delete;
	table(table &&o) noexcept : km_(o.km_) { o.km_ = nullptr; }
	table &operator=(table &&o) noexcept
	{
		if (this != &o) {
			close();
			km_ = o.km_;
			o.km_ = nullptr;
		}
		return *this;
	}
	/* km_destroy; if keys are still held the table is left allocated. */
	~table() { close(); }

	bool valid() const noexcept { return km_ != nullptr; }
	struct km *native_handle() const noexcept { return km_; }

	/* km_destroy now: EBUSY (table unchanged) while keys are held or awaited. */
	void destroy()
	{
		std::error_code ec;
		destroy(ec);
		if (ec)
			throw std::system_error(ec, "km_destroy");
	}
	void destroy(std::error_code &ec) noexcept
	{
		int err = km_ ? km_destroy(km_) : EINVAL;
		if (!err)
			km_ = nullptr;
		detail::set_ec(ec, err);
	}

	/* --- exclusive ---------------------------------------------------- */

	guard lock(key_view k) { return take<guard>(k, 0, nullptr, "km_lock"); }
	guard lock(key_view k, std::error_code &ec) noexcept { return take<guard>(k, 0, nullptr, ec); }

	/* Empty guard when the key is busy. */
	guard try_lock(key_view k) { return take<guard>(k, KM_TRY, nullptr, "km_trylock"); }
	guard try_lock(key_view k, std::error_code &ec) noexcept
	{
		return take<guard>(k, KM_TRY, nullptr, ec);
	}

	/* Empty guard when the deadline passes first. */
	template <class Clock, class Duration>
	guard lock_until(key_view k, const std::chrono::time_point<Clock, Duration> &deadline)
	{
		return take_until<guard>(k, 0, deadline, "km_timedlock");
	}
	template <class Clock, class Duration>
	guard lock_until(key_view k, const std::chrono::time_point<Clock, Duration> &deadline,
			 std::error_code &ec) noexcept
	{
		return take_until<guard>(k, 0, deadline, ec);
	}
	template <class Rep, class Period>
	guard lock_for(key_view k, const std::chrono::duration<Rep, Period> &d)
	{
		return lock_until(k, std::chrono::steady_clock::now() + d);
	}
	template <class Rep, class Period>
	guard lock_for(key_view k, const std::chrono::duration<Rep, Period> &d,
		       std::error_code &ec) noexcept
	{
		return lock_until(k, std::chrono::steady_clock::now() + d, ec);
	}

	/* --- shared ------------------------------------------------------- */

	shared_guard lock_shared(key_view k)
	{
		return take<shared_guard>(k, KM_SHARED, nullptr, "km_lock_shared");
	}
	shared_guard lock_shared(key_view k, std::error_code &ec) noexcept
	{
		return take<shared_guard>(k, KM_SHARED, nullptr, ec);
	}
	shared_guard try_lock_shared(key_view k)
	{
		return take<shared_guard>(k, KM_SHARED | KM_TRY, nullptr, "km_trylock_shared");
	}
	shared_guard try_lock_shared(key_view k, std::error_code &ec) noexcept
	{
		return take<shared_guard>(k, KM_SHARED | KM_TRY, nullptr, ec);
	}
	template <class Clock, class Duration>
	shared_guard lock_shared_until(key_view k,
				       const std::chrono::time_point<Clock, Duration> &deadline)
	{
		return take_until<shared_guard>(k, KM_SHARED, deadline, "km_acquire");
	}
	template <class Clock, class Duration>
	shared_guard lock_shared_until(key_view k,
				       const std::chrono::time_point<Clock, Duration> &deadline,
				       std::error_code &ec) noexcept
	{
		return take_until<shared_guard>(k, KM_SHARED, deadline, ec);
	}
	template <class Rep, class Period>
	shared_guard lock_shared_for(key_view k, const std::chrono::duration<Rep, Period> &d)
	{
		return lock_shared_until(k, std::chrono::steady_clock::now() + d);
	}
	template <class Rep, class Period>
	shared_guard lock_shared_for(key_view k, const std::chrono::duration<Rep, Period> &d,
				     std::error_code &ec) noexcept
	{
		return lock_shared_until(k, std::chrono::steady_clock::now() + d, ec);
	}

	/* --- several keys, all or none (km_acquire_all) ------------------- */

	multi_guard lock_all(std::initializer_list<key_view> keys)
	{
		return lock_all(keys.begin(), keys.size());
	}
	multi_guard lock_all(const key_view *keys, std::size_t n)
	{
		std::error_code ec;
		multi_guard m = take_all(keys, n, ec);
		if (ec)
			throw std::system_error(ec, "km_acquire_all");
		return m;
	}
	multi_guard lock_all(std::initializer_list<key_view> keys, std::error_code &ec) noexcept
	{
		return take_all(keys.begin(), keys.size(), ec);
	}
	multi_guard lock_all(const key_view *keys, std::size_t n, std::error_code &ec) noexcept
	{
		return take_all(keys, n, ec);
	}

	/* --- introspection ------------------------------------------------ */

	/* km_stats: throws std::system_error (EINVAL on an empty table). */
	struct km_stats stats() const
	{
		struct km_stats s = {};
		int err = ::km_stats(km_, &s);
		if (err)
			detail::throw_errno(err, "km_stats");
		return s;
	}
	struct km_stats stats(std::error_code &ec) const noexcept
	{
		struct km_stats s = {};
		detail::set_ec(ec, ::km_stats(km_, &s));
		return s;
	}

private:
	void close() noexcept
	{
		/* On EBUSY the table stays allocated: guards still point into it. */
		if (km_)
			(void)km_destroy(km_);
		km_ = nullptr;
	}

	int acquire(key_view k, unsigned flags, const struct timespec *deadline,
		    km_guard &g) const noexcept
	{
		km_lock_options o = km_lock_options();
		o.flags = flags;
		o.deadline = deadline;
		return km_acquire(km_, k.data(), k.size(), &o, &g);
	}

	/* Throwing form: EBUSY / ETIMEDOUT give an empty guard. */
	template <class G>
	G take(key_view k, unsigned flags, const struct timespec *deadline, const char *what)
	{
		km_guard g = km_guard();
		int err = acquire(k, flags, deadline, g);
		if (err == 0)
			return G(g);
		if (err == EBUSY || err == ETIMEDOUT)
			return G();
		detail::throw_errno(err, what);
	}
	template <class G>
	G take(key_view k, unsigned flags, const struct timespec *deadline,
	       std::error_code &ec) noexcept
	{
		km_guard g = km_guard();
		int err = acquire(k, flags, deadline, g);
		detail::set_ec(ec, err);
		return err ? G() : G(g);
	}
	template <class G, class Clock, class Duration>
	G take_until(key_view k, unsigned flags,
		     const std::chrono::time_point<Clock, Duration> &deadline, const char *what)
	{
		struct timespec ts;
		return take<G>(k, flags, detail::to_monotonic(deadline, ts) ? &ts : nullptr, what);
	}
	template <class G, class Clock, class Duration>
	G take_until(key_view k, unsigned flags,
		     const std::chrono::time_point<Clock, Duration> &deadline,
		     std::error_code &ec) noexcept
	{
		struct timespec ts;
		return take<G>(k, flags, detail::to_monotonic(deadline, ts) ? &ts : nullptr, ec);
	}

	multi_guard take_all(const key_view *keys, std::size_t n, std::error_code &ec) noexcept
	{
		try {
			std::vector<km_key> kk(n);
			std::vector<km_guard> gg(n);
			for (std::size_t i = 0; i < n; i++) {
				kk[i].ptr = keys[i].data();
				kk[i].len = keys[i].size();
			}
			int err = km_acquire_all(km_, kk.data(), n, nullptr, gg.data());
			detail::set_ec(ec, err);
			if (err || n == 0)
				return multi_guard();
			return multi_guard(std::move(gg));
		} catch (const std::bad_alloc &) {
			detail::set_ec(ec, ENOMEM);
			return multi_guard();
		}
	}

	struct km *km_ = nullptr;
};

/* ------------------------------------------------------------------ */
/* Adaptor for std::unique_lock, std::scoped_lock, std::shared_lock    */
/* ------------------------------------------------------------------ */

/*
 * One key of one table as a mutex-like object: BasicLockable, Lockable,
 * TimedLockable and SharedLockable (lock_shared / try_lock_shared /
 * unlock_shared, and the timed forms), so std::lock_guard, std::unique_lock,
 * std::scoped_lock, std::lock and std::shared_lock work with it. It copies
 * the key. Unlike a std::mutex, a key_lock object is not shared between
 * threads: it records the one hold it has, so give each lock scope (each
 * thread) its own key_lock; what is shared is the key, and two key_locks
 * for the same key exclude each other exactly as the key does. lock() and lock_shared()
 * throw std::system_error (EDEADLK if this key_lock already holds, or any
 * acquire error); try_lock* return false when the key is busy, the deadline
 * passes or acquiring fails; unlock() and unlock_shared() never throw.
 * The table must outlive the key_lock.
 */
class key_lock {
public:
	key_lock(table &t, key_view k) : t_(&t), key_(k.bytes()) {}
	key_lock(const key_lock &) = delete;
	key_lock &operator=(const key_lock &) = delete;

	void lock()
	{
		check_free();
		g_ = t_->lock(key_);
	}
	bool try_lock()
	{
		if (g_)
			return false;
		std::error_code ec;
		g_ = t_->try_lock(key_, ec);
		return static_cast<bool>(g_);
	}
	template <class Clock, class Duration>
	bool try_lock_until(const std::chrono::time_point<Clock, Duration> &deadline)
	{
		if (g_)
			return false;
		std::error_code ec;
		g_ = t_->lock_until(key_, deadline, ec);
		return static_cast<bool>(g_);
	}
	template <class Rep, class Period>
	bool try_lock_for(const std::chrono::duration<Rep, Period> &d)
	{
		return try_lock_until(std::chrono::steady_clock::now() + d);
	}
	void unlock() noexcept { release(); }

	void lock_shared()
	{
		check_free();
		g_ = t_->lock_shared(key_);
	}
	bool try_lock_shared()
	{
		if (g_)
			return false;
		std::error_code ec;
		g_ = t_->try_lock_shared(key_, ec);
		return static_cast<bool>(g_);
	}
	template <class Clock, class Duration>
	bool try_lock_shared_until(const std::chrono::time_point<Clock, Duration> &deadline)
	{
		if (g_)
			return false;
		std::error_code ec;
		g_ = t_->lock_shared_until(key_, deadline, ec);
		return static_cast<bool>(g_);
	}
	template <class Rep, class Period>
	bool try_lock_shared_for(const std::chrono::duration<Rep, Period> &d)
	{
		return try_lock_shared_until(std::chrono::steady_clock::now() + d);
	}
	void unlock_shared() noexcept { release(); }

	bool owns_lock() const noexcept { return static_cast<bool>(g_); }
	key_view key() const noexcept { return key_view(key_); }
	table &get_table() const noexcept { return *t_; }

private:
	void release() noexcept
	{
		detail::basic_guard g(std::move(g_)); /* unlocked as g goes */
	}
	void check_free() const
	{
		if (g_)
			detail::throw_errno(EDEADLK, "keymutex::key_lock");
	}

	table *t_;
	std::string key_;
	detail::basic_guard g_;
};

} // namespace keymutex

#endif /* KEYMUTEX_HPP */
