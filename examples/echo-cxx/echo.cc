// Build by hand (from examples/): c++ -O2 -fPIC -shared -Wall -std=c++17 -pthread -fno-gnu-unique -fvisibility=hidden -fvisibility-inlines-hidden -Wl,--version-script=echo-cxx/exports.map -I../csrc/include -o out/libecho_cxx.so echo-cxx/echo.cc
//
// echo-cxx — a *plugin-driven* dlhost plugin in C++ (std::thread,
// std::string, std::vector, std::shared_ptr) that can really be unloaded.
//
// Why the flags matter:
//  * -fno-gnu-unique: g++ marks the static data of inline functions and
//    templates (the ones the standard library instantiates in *our* object,
//    e.g. for std::make_shared) as STB_GNU_UNIQUE, and glibc never dlclose()s
//    a library that defines a GNU_UNIQUE symbol: the hot-reload would silently
//    keep the old code. With this flag they are ordinary weak symbols.
//    Check: readelf --dyn-syms -W out/libecho_cxx.so | grep UNIQUE  (nothing)
//  * -fvisibility=hidden and the version script exports.map: only
//    dlhost_init is exported. libstdc++'s headers force default visibility on
//    some template instances (typeinfo, the make_shared tag), which
//    -fvisibility=hidden alone leaves exported; the version script makes them
//    local. So when this library is loaded with RTLD_GLOBAL (load()'s
//    `global`), no library loaded after it - our own next version side by
//    side included - can bind to them, which would make glibc keep this
//    library mapped for as long as that one lives.
//  * no thread_local with a destructor anywhere: a pending thread_local
//    destructor also keeps glibc from unmapping the library.
//
// Threads: dlhost_init starts N std::threads (cfg "threads=N" or
// {"threads":N}, default 2, at most 64) and detaches them. Each one polls with
// dlhost_task_poll (one task at a time) until it returns NULL. The runtime's
// state is a std::shared_ptr held by every thread: the last thread out frees it.
// No thread may be running our code once the library is unmapped. dlhost
// guarantees its half: before it dlclose()s the library it waits until a poll
// has returned the end of the queue and every thread that ever polled the
// queue has *exited* (not merely returned from poll) - which also covers the
// code libstdc++ runs after our thread function returns (it destroys the
// std::thread state object, whose destructor is instantiated in this
// library). Our half: the host only knows a thread once it has polled, so no
// thread leaves before all its siblings have seen the end of the queue too
// (Runtime::leave, an exit barrier).
//
// Behaviour (relied on by tests, demos and benchmarks; identical in every
// example plugin):
//   "fail:N"   rc = N (decimal, optional sign; no digits -> 1), body "failed"
//   "cfg"      the cfg the runtime was initialised with, byte for byte
//   "version"  the string PLUGIN_VERSION (default "1"; -DPLUGIN_VERSION='"2"')
//   "count"    decimal number of requests this runtime has handled, this one
//              included
//   "pid"      decimal getpid()
//   "sleep:N"  sleeps N milliseconds (at most one hour), then echoes
//   anything else, including the empty request: echoed byte for byte
// dlhost_init returns 7 (ERR_INIT_FAILED, no thread started) when the cfg
// contains "fail-init", and 2 when the host speaks another ABI version.

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "dlhost.h"

#ifndef PLUGIN_VERSION
#define PLUGIN_VERSION "1"
#endif

namespace {

constexpr unsigned kMaxThreads = 64;

// Decimal number at the start of s: optional sign, then digits, stops at the
// first non-digit, clamped to [lo, hi]; `dflt` when there is no digit.
long long parse_num(std::string_view s, long long lo, long long hi, long long dflt) {
  size_t i = 0;
  bool neg = false, any = false;
  long long v = 0;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; i++) {
    any = true;
    if (v < LLONG_MAX / 16) v = v * 10 + (s[i] - '0');
  }
  if (!any) return dflt;
  if (neg) v = -v;
  return v < lo ? lo : v > hi ? hi : v;
}

// The number after `key` in the cfg ("threads=4", "threads: 4", {"threads":4}):
// the first occurrence of `key` followed by a number; `dflt` when none is.
long long cfg_num(std::string_view cfg, std::string_view key, long long lo, long long hi,
                  long long dflt) {
  for (size_t at = cfg.find(key); at != std::string_view::npos; at = cfg.find(key, at + 1)) {
    size_t j = cfg.find_first_not_of(std::string_view("\"'=: \t"), at + key.size());
    if (j == std::string_view::npos) break;
    const long long none = LLONG_MIN;  // below any lo, so never a clamped result
    long long v = parse_num(cfg.substr(j), lo, hi, none);
    if (v != none) return v;
  }
  return dflt;
}

// One runtime, shared (std::shared_ptr) by the threads that serve it.
class Runtime {
 public:
  Runtime(dlhost_queue *q, std::string cfg) : q_(q), cfg_(std::move(cfg)) {}

  dlhost_queue *queue() const { return q_; }

  // Answers one task, exactly once. Never throws.
  void serve(dlhost_task *t) noexcept {
    size_t len = 0;
    const char *p = static_cast<const char *>(dlhost_task_request(t, &len));
    std::string_view req(p, len);  // host-owned, valid until we respond
    unsigned long n = calls_.fetch_add(1, std::memory_order_relaxed) + 1;
    int rc = 0;
    void *rsp = nullptr;
    size_t rsp_len = 0;
    try {
      std::string_view body = req;  // by default: echo
      std::string tmp;
      if (req.substr(0, 5) == "fail:") {
        rc = static_cast<int>(parse_num(req.substr(5), INT_MIN, INT_MAX, 1));
        body = "failed";
      } else if (req == "cfg") {
        body = cfg_;
      } else if (req == "version") {
        body = PLUGIN_VERSION;
      } else if (req == "count") {
        tmp = std::to_string(n);
        body = tmp;
      } else if (req == "pid") {
        tmp = std::to_string(static_cast<long>(getpid()));
        body = tmp;
      } else if (req.substr(0, 6) == "sleep:") {
        std::this_thread::sleep_for(
            std::chrono::milliseconds(parse_num(req.substr(6), 0, 3600000, 0)));
      }
      // The response must come from malloc (the host frees it); NULL = empty.
      if (!body.empty()) {
        rsp = std::malloc(body.size() + 1);
        if (!rsp) throw std::bad_alloc();
        std::memcpy(rsp, body.data(), body.size());
        static_cast<char *>(rsp)[body.size()] = '\0';
        rsp_len = body.size();
      }
    } catch (...) {  // out of memory: still answer, never let it escape
      std::free(rsp);
      rsp = nullptr;
      rsp_len = 0;
      rc = ENOMEM;
    }
    dlhost_task_respond(t, rc, rsp, rsp_len);  // t is gone after this
  }

  // Exit barrier: wait until every thread has seen the end of the queue, so
  // every thread has polled (and is known to the host) before any one exits.
  void leave() {
    std::unique_lock<std::mutex> lock(mu_);
    if (++finished_ == started_) cv_.notify_all();
    cv_.wait(lock, [this] { return finished_ >= started_; });
  }

  std::mutex &mu() { return mu_; }
  void started_one() { ++started_; }  // with mu() held

 private:
  dlhost_queue *const q_;  // valid until a poll returns NULL
  const std::string cfg_;  // private copy: the host's cfg dies after init
  std::atomic<unsigned long> calls_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  unsigned started_ = 0, finished_ = 0;
};

// A pool thread. `rt` is this thread's own reference to the runtime.
void worker(std::shared_ptr<Runtime> rt) {
  // NULL: the runtime is unloading and every task queued before the unload
  // has been taken. The queue must not be touched again.
  while (dlhost_task *t = dlhost_task_poll(rt->queue())) rt->serve(t);
  rt->leave();
  // Returning drops our shared_ptr; the last thread out destroys the Runtime.
}

}  // namespace

// Called once per runtime on the JS thread. Must not throw (C ABI).
extern "C" DLHOST_EXPORT int dlhost_init(const char *cfg, size_t cfg_len, dlhost_queue *q) {
  if (dlhost_abi_version() < DLHOST_ABI_VERSION) return 2;  // an older host lacks what we use
  std::shared_ptr<Runtime> rt;
  unsigned nthreads;
  try {
    std::string c = cfg ? std::string(cfg, cfg_len) : std::string();
    if (c.find("fail-init") != std::string::npos) return 7;  // -> ERR_INIT_FAILED
    nthreads = static_cast<unsigned>(cfg_num(c, "threads", 1, kMaxThreads, 2));
    rt = std::make_shared<Runtime>(q, std::move(c));
  } catch (...) {
    return ENOMEM;
  }

  std::vector<std::thread> threads;
  threads.reserve(nthreads);  // so emplace_back cannot throw after a thread starts
  {
    // Held while the threads start so the barrier count is final before any
    // thread can reach it.
    std::lock_guard<std::mutex> lock(rt->mu());
    for (unsigned i = 0; i < nthreads; i++) {
      try {
        threads.emplace_back(worker, rt);
      } catch (const std::system_error &) {
        break;  // out of threads: run with those we have
      }
      rt->started_one();
    }
  }
  // Detached: they exit on their own; dlhost waits for their exit before it
  // dlclose()s us. (A joinable std::thread destroyed unjoined would terminate.)
  for (std::thread &t : threads) t.detach();
  // No thread: nobody polls q, so we may still fail (the threads' copies of rt
  // are gone, ours frees the Runtime).
  return threads.empty() ? EAGAIN : 0;
}

static_assert(std::is_same<decltype(&dlhost_init), dlhost_init_fn>::value,
              "dlhost_init does not match dlhost_init_fn");
