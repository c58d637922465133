// Compiled by check-headers.sh as C++17 and C++20 with -Wall -Wextra
// -Wpedantic -Werror and more: keymutex.hpp (and the C headers under it)
// must compile cleanly, templates instantiated. SPDX-License-Identifier: MIT
#include <keymutex.hpp>
#include <keymutex.hpp> // include guard
#include <keymutex_scoped.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <system_error>
#include <vector>

int km_header_check_cpp();

int km_header_check_cpp()
{
	using namespace std::chrono;
	keymutex::table t;
	std::error_code ec;
	std::vector<unsigned char> v{1, 2};
	std::array<std::byte, 2> a{};
	unsigned long long u[2] = {1, 2};
	std::string s = "s";
	keymutex::guard g1 = t.lock(v);
	keymutex::guard g2 = t.try_lock(a, ec);
	keymutex::guard g3 = t.lock_until(u, steady_clock::now() + milliseconds(1));
	keymutex::guard g4 = t.lock_for(s, milliseconds(1), ec);
	keymutex::guard g5 = t.lock_until("sys", system_clock::now() + seconds(1), ec);
	keymutex::shared_guard r1 = t.lock_shared("r");
	keymutex::shared_guard r2 = t.try_lock_shared("r", ec);
	keymutex::shared_guard r3 = t.lock_shared_for("r", microseconds(10));
	keymutex::shared_guard r4 = t.lock_shared_until("r", steady_clock::now(), ec);
	keymutex::multi_guard m = t.lock_all({"m1", "m2"});
	keymutex::key_lock k1(t, "k1"), k2(t, "k2"), k3(t, "k3");
	{
		std::scoped_lock both(k1, k2);
		std::unique_lock<keymutex::key_lock> lk(k3, milliseconds(1));
	}
	{
		std::shared_lock<keymutex::key_lock> sl(k1, milliseconds(1));
	}
	struct km_stats st = t.stats(ec);
	g1.unlock(ec);
	return static_cast<int>(st.keys) + (g2 ? 1 : 0) + (m ? 1 : 0);
}
