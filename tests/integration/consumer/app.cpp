// The C++ side of the consumer: keymutex.hpp from an installed keymutex.
// Prints "keymutex++ ok" when the layer behaves. SPDX-License-Identifier: MIT
#include <keymutex.hpp>

#include <cstdio>
#include <mutex>

int main()
{
	keymutex::table t;
	bool ok = true;
	{
		keymutex::guard g = t.lock("k");
		ok = ok && g && !t.try_lock("k");
	}
	{
		keymutex::key_lock kl(t, "k");
		std::unique_lock<keymutex::key_lock> lk(kl);
		ok = ok && lk.owns_lock() && !t.try_lock("k");
	}
	ok = ok && static_cast<bool>(t.try_lock("k"));
	std::printf("keymutex++ %s\n", ok ? "ok" : "FAILED");
	return ok ? 0 : 1;
}
