// queue_stress — stress test of csrc/queue.h, meant to run under
// ThreadSanitizer (see Makefile, scripts/tsan.js, test/queue.test.ts).
//
// Checks, with a watchdog that fails instead of hanging:
//  - MpmcRing / TaskQueue single-threaded contract (rounding, Full, close).
//  - TaskQueue under several producers and consumers (pop and pop_batch),
//    small capacity (Full is frequent), close() racing pushes: every task
//    reported Ok is popped exactly once, no other task is ever popped, every
//    consumer gets nullptr/0, and every pop after that stays nullptr.
//  - Parker: consumers park, a producer wakes them, over many rounds; a lost
//    wake-up leaves a token untaken and trips the watchdog.
//  - CompletionQueue: several producers, one doorbell-driven consumer; each
//    item exactly once, per-producer FIFO, one doorbell per drain cycle.
//  - MessageQueue (messages.h, dlhost_emit): several producers against a
//    small bound and a slower consumer: every message accepted is taken
//    exactly once, in its producer's order, and every refusal is counted.
//
// Usage: queue_stress [scale]   (scale multiplies the iteration counts;
// default 1, or $QUEUE_STRESS_SCALE). Exit 0 and one "queue_stress: OK" line
// on success; non-zero and a "queue_stress: FAIL" line otherwise (exit 3 when
// the watchdog fired: each test has $QUEUE_STRESS_TIMEOUT s, default 30 x scale).
#include "messages.h"
#include "queue.h"

#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace dlhost;

namespace {

[[noreturn]] void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "queue_stress: FAIL: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  fflush(stderr);
  _exit(1);  // other threads may still run: do not unwind
}

#define CHECK(cond, ...)            \
  do {                              \
    if (!(cond)) fail(__VA_ARGS__); \
  } while (0)

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Fails the run (exit 3) when a test does not finish in time: a lost wake-up
// shows up as a hang, and a hang must not stall CI.
class Watchdog {
 public:
  Watchdog(const char *name, int seconds, std::function<std::string()> dump)
      : name_(name), dump_(std::move(dump)) {
    thread_ = std::thread([this, seconds] {
      std::unique_lock<std::mutex> lk(mu_);
      if (!cv_.wait_for(lk, std::chrono::seconds(seconds), [this] { return done_; })) {
        std::string state = dump_ ? dump_() : "";
        fprintf(stderr,
                "queue_stress: FAIL: %s did not finish within %d s "
                "(lost wake-up or hang). %s\n",
                name_, seconds, state.c_str());
        fflush(stderr);
        _exit(3);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  const char *name_;
  std::function<std::string()> dump_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

std::string fmt(const char *f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

struct Task {
  uint32_t id;
};

// ----------------------------------------------------- single-threaded basics
void test_basics() {
  {
    MpmcRing<Task> r(5);
    CHECK(r.capacity() == 8, "MpmcRing(5).capacity() = %zu, want 8", r.capacity());
    CHECK(MpmcRing<Task>(0).capacity() == 2, "MpmcRing(0) must have capacity 2");
    CHECK(MpmcRing<Task>(1).capacity() == 2, "MpmcRing(1) must have capacity 2");
    CHECK(MpmcRing<Task>(64).capacity() == 64, "MpmcRing(64) must stay 64");
    Task t[9];
    {
      // A run claimed at once, cut short where the ring is full.
      Task *items[9] = {&t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6], &t[7], &t[8]};
      CHECK(r.try_push_n(items, 3) == 3, "try_push_n(3) into an empty ring");
      CHECK(r.try_push_n(items + 3, 6) == 5, "try_push_n(6) with room for 5");
      CHECK(r.try_push_n(items + 8, 1) == 0, "try_push_n into a full ring");
      for (int i = 0; i < 8; ++i) {
        Task *p = nullptr;
        CHECK(r.try_pop(p) && p == &t[i], "try_push_n is not FIFO at %d", i);
      }
    }
    for (int lap = 0; lap < 3; ++lap) {
      for (int i = 0; i < 8; ++i) CHECK(r.try_push(&t[i]), "ring push %d failed", i);
      CHECK(!r.try_push(&t[8]), "ring accepted a 9th item at capacity 8");
      CHECK(r.size_approx() == 8, "ring size %zu, want 8", r.size_approx());
      for (int i = 0; i < 8; ++i) {
        Task *p = nullptr;
        CHECK(r.try_pop(p) && p == &t[i], "ring is not FIFO at %d", i);
      }
      Task *p;
      CHECK(!r.try_pop(p), "empty ring popped something");
    }
  }
  for (size_t cap : {size_t(5), size_t(8), size_t(1)}) {
    TaskQueue<Task> q(cap, 0);
    std::vector<Task> t(cap + 1);
    for (size_t i = 0; i < cap; ++i)
      CHECK(q.push(&t[i]) == TaskQueue<Task>::Push::Ok, "push %zu/%zu not Ok", i, cap);
    CHECK(q.push(&t[cap]) == TaskQueue<Task>::Push::Full, "TaskQueue(%zu) accepted task %zu", cap,
          cap + 1);
    CHECK(!q.closed(), "closed() before close");
    q.close();
    q.close();  // idempotent
    CHECK(q.closed(), "closed() false after close");
    CHECK(q.push(&t[cap]) == TaskQueue<Task>::Push::Closed, "push after close not Closed");
    Task *p = nullptr;
    CHECK(q.try_pop(p) && p == &t[0], "try_pop after close lost the first task");
    Task *out[4];
    size_t n = q.pop_batch(out, 1);
    CHECK(cap == 1 ? n == 0 : (n == 1 && out[0] == &t[1]), "pop_batch after close wrong (n=%zu)",
          n);
    for (size_t i = 2; i < cap; ++i) CHECK(q.pop() == &t[i], "pop after close lost task %zu", i);
    for (int i = 0; i < 3; ++i) {
      CHECK(q.pop() == nullptr, "pop after drain not nullptr");
      CHECK(q.pop_batch(out, 4) == 0, "pop_batch after drain not 0");
      CHECK(!q.try_pop(p), "try_pop after drain returned a task");
    }
  }
  {
    // Idle notify: no waiter, so no epoch bump and no futex syscall.
    Parker pk;
    uint32_t e = pk.epoch();
    pk.notify_one();
    pk.notify_all();
    CHECK(pk.epoch() == e, "notify without waiters moved the epoch (syscall path)");
    uint32_t key = pk.prepare_wait();
    pk.notify_one();
    CHECK(pk.epoch() != e, "notify with a waiter did not move the epoch");
    pk.commit_wait(key);  // must return at once: notified since key
    CHECK(!pk.has_waiters(), "waiter count leaked");
  }
}

// ------------------------------------------------------- TaskQueue stress
struct TqResult {
  uint64_t ok = 0, full = 0, closed = 0, batches = 0, popped = 0;
  double secs = 0;
};

TqResult test_task_queue(const char *name, size_t cap, uint64_t spin_ns, int producers,
                         int consumers, uint32_t target_ok, int timeout_s) {
  using Q = TaskQueue<Task>;
  const uint32_t max_ids = target_ok * 3;  // ids are never reused
  std::vector<Task> tasks(max_ids);
  for (uint32_t i = 0; i < max_ids; ++i) tasks[i].id = i;
  std::unique_ptr<std::atomic<uint8_t>[]> pushed_ok(new std::atomic<uint8_t>[max_ids]);
  std::unique_ptr<std::atomic<uint8_t>[]> seen(new std::atomic<uint8_t>[max_ids]);
  for (uint32_t i = 0; i < max_ids; ++i) {
    pushed_ok[i].store(0, std::memory_order_relaxed);
    seen[i].store(0, std::memory_order_relaxed);
  }

  Q q(cap, spin_ns);
  std::atomic<uint32_t> next_id{0};
  std::atomic<uint64_t> ok{0}, full{0}, closed{0}, batches{0}, popped{0};
  std::atomic<int> consumers_done{0}, producers_done{0};
  std::atomic<bool> first_null{false};

  Watchdog wd(name, timeout_s, [&] {
    return fmt(
        "state: ok=%llu popped=%llu full=%llu closed=%llu producers_done=%d "
        "consumers_done=%d/%d queued~%zu q.closed=%d",
        (unsigned long long)ok.load(), (unsigned long long)popped.load(),
        (unsigned long long)full.load(), (unsigned long long)closed.load(), producers_done.load(),
        consumers_done.load(), consumers, q.size_approx(), (int)q.closed());
  });

  double t0 = now_s();
  std::vector<std::thread> th;
  for (int p = 0; p < producers; ++p) {
    th.emplace_back([&, p] {
      bool closer = p == 0;
      // Odd producers push runs of ids with push_batch (one CAS claims a
      // run of cells; other producers may split it).
      const uint32_t run = p % 2 == 1 ? 1 + uint32_t(p) % 7 : 0;
      while (run) {
        uint32_t first = next_id.fetch_add(run, std::memory_order_relaxed);
        if (first >= max_ids) break;
        size_t cnt = std::min<size_t>(run, max_ids - first), done = 0;
        Task *items[8];
        for (size_t i = 0; i < cnt; ++i) items[i] = &tasks[first + i];
        unsigned spins = 0;
        bool ended = false;
        while (done < cnt) {
          size_t r = q.push_batch(items + done, cnt - done);
          if (r == Q::kClosedBatch) {
            closed.fetch_add(1, std::memory_order_relaxed);
            ended = true;
            break;
          }
          CHECK(r <= cnt - done, "%s: push_batch pushed %zu of %zu", name, r, cnt - done);
          for (size_t i = done; i < done + r; ++i) pushed_ok[first + i].store(1);
          ok.fetch_add(r, std::memory_order_relaxed);
          done += r;
          if (r == 0) {
            full.fetch_add(1, std::memory_order_relaxed);
            if (++spins % 4 == 0)
              sched_yield();
            else
              cpu_relax();
          }
        }
        if (ended) break;
      }
      for (; !run;) {
        uint32_t id = next_id.fetch_add(1, std::memory_order_relaxed);
        if (id >= max_ids) break;
        unsigned spins = 0;
        Q::Push r;
        while ((r = q.push(&tasks[id])) == Q::Push::Full) {
          full.fetch_add(1, std::memory_order_relaxed);
          if (++spins % 4 == 0)
            sched_yield();
          else
            cpu_relax();
        }
        if (r == Q::Push::Closed) {
          closed.fetch_add(1, std::memory_order_relaxed);
          break;
        }
        pushed_ok[id].store(1, std::memory_order_relaxed);
        uint64_t n = ok.fetch_add(1, std::memory_order_relaxed) + 1;
        // Close while the other producers are still pushing.
        if (closer && n >= target_ok) q.close();
      }
      if (closer) q.close();  // in case ids ran out first
      producers_done.fetch_add(1);
    });
  }
  for (int c = 0; c < consumers; ++c) {
    th.emplace_back([&, c] {
      const bool batch = c % 2 == 1;
      Task *out[16];
      const size_t max = 1 + c % 16;
      for (;;) {
        bool after_null = first_null.load(std::memory_order_acquire);
        size_t n;
        if (batch) {
          n = q.pop_batch(out, max);
          batches.fetch_add(1, std::memory_order_relaxed);
        } else {
          out[0] = q.pop();
          n = out[0] ? 1 : 0;
        }
        if (n == 0) break;
        CHECK(n <= max, "%s: pop_batch returned %zu > max %zu", name, n, max);
        CHECK(!after_null, "%s: a task was delivered after a nullptr was returned", name);
        for (size_t i = 0; i < n; ++i) {
          CHECK(out[i] != nullptr, "%s: pop_batch stored nullptr", name);
          uint32_t id = out[i]->id;
          CHECK(id < max_ids, "%s: bogus task pointer", name);
          uint8_t before = seen[id].fetch_add(1, std::memory_order_relaxed);
          CHECK(before == 0, "%s: task %u delivered twice", name, id);
        }
        popped.fetch_add(n, std::memory_order_relaxed);
      }
      first_null.store(true, std::memory_order_release);
      // The sentinel is final for every pop flavour.
      Task *p;
      for (int i = 0; i < 3; ++i) {
        CHECK(q.pop() == nullptr, "%s: pop after nullptr returned a task", name);
        CHECK(q.pop_batch(out, 4) == 0, "%s: pop_batch after 0 returned tasks", name);
        CHECK(!q.try_pop(p), "%s: try_pop after nullptr returned a task", name);
      }
      consumers_done.fetch_add(1);
    });
  }
  for (auto &t : th) t.join();
  double secs = now_s() - t0;

  CHECK(q.closed(), "%s: queue not closed", name);
  CHECK(q.push(&tasks[0]) == Q::Push::Closed, "%s: push after the end not Closed", name);
  CHECK(q.pop() == nullptr, "%s: pop after the end not nullptr", name);
  CHECK(q.size_approx() == 0, "%s: %zu tasks left in the queue", name, q.size_approx());
  uint64_t ok_ids = 0;
  uint32_t used = std::min(next_id.load(), max_ids);
  for (uint32_t i = 0; i < used; ++i) {
    uint8_t s = seen[i].load(), o = pushed_ok[i].load();
    if (o) {
      ++ok_ids;
      CHECK(s == 1, "%s: task %u was pushed Ok but %s", name, i, s ? "duplicated" : "LOST");
    } else {
      CHECK(s == 0, "%s: task %u delivered though its push was not Ok", name, i);
    }
  }
  CHECK(ok_ids == ok.load() && popped.load() == ok.load(),
        "%s: counts disagree: ok=%llu ok_ids=%llu popped=%llu", name, (unsigned long long)ok.load(),
        (unsigned long long)ok_ids, (unsigned long long)popped.load());
  CHECK(ok.load() >= target_ok, "%s: only %llu pushes Ok before close (want %u)", name,
        (unsigned long long)ok.load(), target_ok);

  TqResult r;
  r.ok = ok;
  r.full = full;
  r.closed = closed;
  r.batches = batches;
  r.popped = popped;
  r.secs = secs;
  printf(
      "  %-22s cap=%-3zu spin=%-6llu P=%d C=%d  ok=%llu popped=%llu full=%llu "
      "closed=%llu  %.2fs\n",
      name, cap, (unsigned long long)spin_ns, producers, consumers, (unsigned long long)r.ok,
      (unsigned long long)r.popped, (unsigned long long)r.full, (unsigned long long)r.closed, secs);
  fflush(stdout);
  return r;
}

// Many short lives of a queue, each closed after a few pushes while every
// producer is still pushing: the close/drain race runs thousands of times
// instead of once. Threads persist across rounds (a barrier per round).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lk(mu_);
    uint64_t gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lk, [&] { return gen_ != gen; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  uint64_t gen_ = 0;
};

struct CloseRaceResult {
  uint64_t rounds = 0, ok = 0, closed = 0;
  double secs = 0;
};

CloseRaceResult test_close_race(int producers, int consumers, uint32_t rounds, int timeout_s) {
  using Q = TaskQueue<Task>;
  constexpr uint32_t kIds = 256;
  std::vector<Task> tasks(kIds);
  for (uint32_t i = 0; i < kIds; ++i) tasks[i].id = i;
  std::atomic<uint8_t> pushed_ok[kIds], seen[kIds];
  std::atomic<Q *> qp{nullptr};
  std::atomic<uint32_t> next_id{0}, close_after{0}, round{0};
  std::atomic<uint64_t> ok{0}, closed{0}, popped{0};
  std::atomic<uint32_t> round_ok{0};
  std::atomic<bool> first_null{false}, quit{false};
  Barrier start(producers + consumers + 1), end(producers + consumers + 1);
  Watchdog wd("taskqueue/close-race", timeout_s, [&] {
    return fmt("round=%u ok=%llu popped=%llu", round.load(), (unsigned long long)ok.load(),
               (unsigned long long)popped.load());
  });

  double t0 = now_s();
  std::vector<std::thread> th;
  for (int p = 0; p < producers; ++p)
    th.emplace_back([&, p] {
      for (;;) {
        start.wait();
        if (quit.load()) return;
        Q &q = *qp.load();
        uint32_t k = close_after.load();
        if (k == 0 && p == 0) q.close();  // closed before anything
        for (;;) {
          uint32_t id = next_id.fetch_add(1, std::memory_order_relaxed);
          if (id >= kIds) break;
          Q::Push r;
          // Yield on Full: with 6 threads on 2 cores, spinning here would
          // starve the consumers that make room.
          while ((r = q.push(&tasks[id])) == Q::Push::Full) sched_yield();
          if (r == Q::Push::Closed) {
            closed.fetch_add(1, std::memory_order_relaxed);
            break;
          }
          pushed_ok[id].store(1, std::memory_order_relaxed);
          ok.fetch_add(1, std::memory_order_relaxed);
          // Whoever makes it k tasks closes, while the others push on.
          if (round_ok.fetch_add(1) + 1 == k) q.close();
        }
        if (p == 0) q.close();  // in case the ids ran out first
        end.wait();
      }
    });
  for (int c = 0; c < consumers; ++c)
    th.emplace_back([&, c] {
      Task *out[8];
      for (;;) {
        start.wait();
        if (quit.load()) return;
        Q &q = *qp.load();
        for (;;) {
          bool after_null = first_null.load(std::memory_order_acquire);
          size_t n;
          if (c % 2) {
            n = q.pop_batch(out, 1 + c % 8);
          } else {
            out[0] = q.pop();
            n = out[0] ? 1 : 0;
          }
          if (n == 0) break;
          CHECK(!after_null, "close-race: a task was delivered after a nullptr");
          for (size_t i = 0; i < n; ++i) {
            uint8_t before = seen[out[i]->id].fetch_add(1, std::memory_order_relaxed);
            CHECK(before == 0, "close-race: task %u delivered twice", out[i]->id);
          }
          popped.fetch_add(n, std::memory_order_relaxed);
        }
        first_null.store(true, std::memory_order_release);
        CHECK(q.pop() == nullptr, "close-race: pop after nullptr returned a task");
        end.wait();
      }
    });

  uint64_t seed = 88172645463325252ull;
  auto rnd = [&] {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
  };
  for (uint32_t r = 0; r < rounds; ++r) {
    round.store(r);
    for (uint32_t i = 0; i < kIds; ++i) {
      pushed_ok[i].store(0, std::memory_order_relaxed);
      seen[i].store(0, std::memory_order_relaxed);
    }
    // Parking and spinning consumers, tiny and exact-power-of-two bounds.
    std::unique_ptr<Q> q(new Q(2 + rnd() % 7, (r % 3 == 0) ? 0 : (r % 3 == 1 ? 1000 : 20000)));
    qp.store(q.get());
    next_id.store(0);
    round_ok.store(0);
    close_after.store(static_cast<uint32_t>(rnd() % 40));
    first_null.store(false);
    uint64_t ok0 = ok.load(), popped0 = popped.load();
    start.wait();
    end.wait();
    uint64_t n_ok = 0;
    for (uint32_t i = 0; i < kIds; ++i) {
      uint8_t o = pushed_ok[i].load(), s = seen[i].load();
      n_ok += o;
      CHECK(s == o, "close-race round %u: task %u pushed %s but delivered %u times", r, i,
            o ? "Ok" : "not Ok", s);
    }
    CHECK(ok.load() - ok0 == n_ok && popped.load() - popped0 == n_ok,
          "close-race round %u: counts disagree", r);
    CHECK(q->size_approx() == 0 && q->pop() == nullptr, "close-race round %u: not drained", r);
  }
  quit.store(true);
  start.wait();
  for (auto &t : th) t.join();
  CloseRaceResult res;
  res.rounds = rounds;
  res.ok = ok;
  res.closed = closed;
  res.secs = now_s() - t0;
  printf("  %-22s P=%d C=%d rounds=%llu ok=%llu closed=%llu  %.2fs\n", "taskqueue/close-race",
         producers, consumers, (unsigned long long)res.rounds, (unsigned long long)res.ok,
         (unsigned long long)res.closed, res.secs);
  fflush(stdout);
  return res;
}

// Consumers parked (spin 0) when close() comes: all must wake with nullptr.
void test_close_wakes_parked(int timeout_s) {
  TaskQueue<Task> q(16, 0);
  std::atomic<int> done{0};
  Watchdog wd("close-wakes-parked", timeout_s, [&] { return fmt("done=%d/4", done.load()); });
  std::vector<std::thread> th;
  for (int i = 0; i < 4; ++i)
    th.emplace_back([&] {
      CHECK(q.pop() == nullptr, "close-wakes-parked: got a task");
      done.fetch_add(1);
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  q.close();
  for (auto &t : th) t.join();
}

// ------------------------------------------------------------------ Parker
struct ParkerResult {
  uint64_t rounds = 0, tokens = 0, parks = 0;
  double secs = 0;
};

ParkerResult test_parker(int consumers, uint32_t rounds, int timeout_s) {
  Parker pk;
  std::atomic<int64_t> tokens{0};
  std::atomic<uint64_t> taken{0}, parks{0};
  std::atomic<bool> stop{false};
  std::atomic<uint32_t> round{0};
  Watchdog wd("parker", timeout_s, [&] {
    return fmt("round=%u tokens_left=%lld taken=%llu", round.load(), (long long)tokens.load(),
               (unsigned long long)taken.load());
  });

  auto take = [&]() -> bool {
    int64_t n = tokens.load(std::memory_order_relaxed);
    while (n > 0)
      if (tokens.compare_exchange_weak(n, n - 1, std::memory_order_acq_rel)) return true;
    return false;
  };
  double t0 = now_s();
  std::vector<std::thread> th;
  for (int c = 0; c < consumers; ++c)
    th.emplace_back([&] {
      for (;;) {
        if (take()) {
          taken.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        uint32_t key = pk.prepare_wait();
        if (take()) {
          pk.cancel_wait(key);
          taken.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        if (stop.load(std::memory_order_acquire)) {
          pk.cancel_wait(key);
          return;
        }
        parks.fetch_add(1, std::memory_order_relaxed);
        pk.commit_wait(key);
      }
    });

  uint64_t given = 0;
  for (uint32_t r = 0; r < rounds; ++r) {
    round.store(r, std::memory_order_relaxed);
    // 1..consumers tokens; rounds of a single token are the sharpest test:
    // one lost wake-up and it is never taken.
    int k = 1 + static_cast<int>(r % consumers);
    bool all = r % 5 == 4;
    for (int i = 0; i < k; ++i) {
      tokens.fetch_add(1, std::memory_order_release);
      if (!all) pk.notify_one();
    }
    if (all) pk.notify_all();
    given += k;
    // Wait for every token to be taken, so the consumers go back to park.
    while (taken.load(std::memory_order_acquire) != given) sched_yield();
    // Every few rounds let them actually reach the futex.
    if (r % 64 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  stop.store(true, std::memory_order_release);
  pk.notify_all();
  for (auto &t : th) t.join();
  CHECK(tokens.load() == 0 && taken.load() == given, "parker: tokens=%lld taken=%llu given=%llu",
        (long long)tokens.load(), (unsigned long long)taken.load(), (unsigned long long)given);
  CHECK(!pk.has_waiters(), "parker: waiter count leaked");
  ParkerResult res;
  res.rounds = rounds;
  res.tokens = given;
  res.parks = parks;
  res.secs = now_s() - t0;
  printf("  %-22s C=%d rounds=%llu tokens=%llu parks=%llu  %.2fs\n", "parker", consumers,
         (unsigned long long)res.rounds, (unsigned long long)res.tokens,
         (unsigned long long)res.parks, res.secs);
  fflush(stdout);
  return res;
}

// --------------------------------------------------------- CompletionQueue
struct Node {
  std::atomic<Node *> cq_next{nullptr};
  uint32_t producer = 0;
  uint32_t seq = 0;
};

struct CqResult {
  uint64_t items = 0, rings = 0, drains = 0, empty_drains = 0;
  double secs = 0;
};

CqResult test_completion_queue(int producers, uint32_t per_producer, int timeout_s) {
  CompletionQueue<Node> cq;
  std::vector<std::unique_ptr<Node[]>> nodes;
  for (int p = 0; p < producers; ++p) {
    nodes.emplace_back(new Node[per_producer]);
    for (uint32_t i = 0; i < per_producer; ++i) {
      nodes[p][i].producer = p;
      nodes[p][i].seq = i;
    }
  }
  // The doorbell, as uv_async_send would be: coalescing, so a flag.
  Parker pk;
  std::atomic<uint32_t> bell{0};
  std::atomic<uint64_t> rings{0}, received{0};
  const uint64_t total = uint64_t(producers) * per_producer;
  Watchdog wd("completion-queue", timeout_s, [&] {
    return fmt(
        "received=%llu/%llu rings=%llu (an item pushed without a doorbell, or a lost wake-up, "
        "stops here)",
        (unsigned long long)received.load(), (unsigned long long)total,
        (unsigned long long)rings.load());
  });

  double t0 = now_s();
  std::vector<std::thread> th;
  for (int p = 0; p < producers; ++p)
    th.emplace_back([&, p] {
      for (uint32_t i = 0; i < per_producer; ++i) {
        if (cq.push(&nodes[p][i])) {
          rings.fetch_add(1, std::memory_order_relaxed);
          bell.store(1, std::memory_order_release);
          pk.notify_one();
        }
        if (i % 256 == 0) sched_yield();  // vary the interleavings
      }
    });

  std::vector<uint32_t> expect(producers, 0);
  uint64_t drains = 0, empty_drains = 0, got = 0;
  while (got < total) {
    // Sleep until rung; never drain without a ring, so an item whose push
    // did not ring (and no later push rang) is never seen: the watchdog.
    if (bell.exchange(0, std::memory_order_acq_rel) == 0) {
      uint32_t key = pk.prepare_wait();
      if (bell.load(std::memory_order_acquire) != 0) {
        pk.cancel_wait(key);
      } else {
        pk.commit_wait(key);
      }
      continue;
    }
    Node *n = cq.pop_all();
    if (!n) {
      ++empty_drains;  // its items went with the previous drain: allowed
      continue;
    }
    ++drains;
    for (; n; n = n->cq_next.load(std::memory_order_relaxed)) {
      CHECK(n->producer < uint32_t(producers), "completion-queue: bogus node");
      uint32_t &e = expect[n->producer];
      CHECK(n->seq == e, "completion-queue: producer %u: got item %u, want %u (%s)", n->producer,
            n->seq, e, n->seq < e ? "duplicate" : "lost or out of order");
      ++e;
      ++got;
    }
    received.store(got, std::memory_order_relaxed);
  }
  for (auto &t : th) t.join();
  CHECK(cq.pop_all() == nullptr, "completion-queue: items left after the last");
  CHECK(rings.load() == drains,
        "completion-queue: %llu doorbells for %llu non-empty drains (want one each)",
        (unsigned long long)rings.load(), (unsigned long long)drains);
  // Re-armed: the next push rings, the one after does not.
  Node a, b;
  CHECK(cq.push(&a) && !cq.push(&b), "completion-queue: doorbell not re-armed");
  Node *l = cq.pop_all();
  CHECK(l == &a && l->cq_next.load() == &b && b.cq_next.load() == nullptr,
        "completion-queue: pop_all not FIFO");

  CqResult r;
  r.items = got;
  r.rings = rings;
  r.drains = drains;
  r.empty_drains = empty_drains;
  r.secs = now_s() - t0;
  printf("  %-22s P=%d items=%llu doorbells=%llu drains=%llu empty=%llu  %.2fs\n",
         "completion-queue", producers, (unsigned long long)r.items, (unsigned long long)r.rings,
         (unsigned long long)r.drains, (unsigned long long)r.empty_drains, r.secs);
  fflush(stdout);
  return r;
}

// ------------------------------------------------------------ MessageQueue
struct MqResult {
  uint64_t accepted = 0, refused = 0;
};

MqResult test_message_queue(int producers, uint32_t per_producer, uint32_t cap, int timeout_s) {
  MessageQueue mq(cap);
  std::atomic<uint64_t> accepted{0}, refused{0}, received{0};
  std::atomic<int> done{0};
  Watchdog wd("message-queue", timeout_s, [&] {
    return fmt("received=%llu accepted=%llu", (unsigned long long)received.load(),
               (unsigned long long)accepted.load());
  });
  std::vector<std::thread> th;
  for (int p = 0; p < producers; ++p)
    th.emplace_back([&, p] {
      for (uint32_t i = 0; i < per_producer; ++i) {
        uint32_t msg[2] = {uint32_t(p), i};
        bool wake = false;
        int rc = mq.Push(msg, sizeof msg, &wake);
        if (rc == DLHOST_OK)
          accepted.fetch_add(1, std::memory_order_relaxed);
        else if (rc == DLHOST_EAGAIN)
          refused.fetch_add(1, std::memory_order_relaxed);
        else
          fail("message-queue: push rc %d", rc);
        if (i % 128 == 0) sched_yield();
      }
      done.fetch_add(1);
    });
  // The consumer, slower than the producers now and then: the bound matters.
  std::vector<int64_t> last(producers, -1);
  uint64_t got = 0;
  for (;;) {
    bool finished = done.load() == producers;
    Message *m = mq.TakeAll();
    size_t n = 0;
    while (m) {
      Message *next = m->cq_next.load(std::memory_order_relaxed);
      uint32_t v[2];
      CHECK(m->len == sizeof v, "message-queue: length %zu", m->len);
      memcpy(v, m->data(), sizeof v);
      CHECK(v[0] < uint32_t(producers), "message-queue: bogus producer");
      CHECK(int64_t(v[1]) > last[v[0]], "message-queue: producer %u: %u after %lld (%s)", v[0],
            v[1], (long long)last[v[0]], "duplicate or out of order");
      last[v[0]] = v[1];
      Message::Free(m);
      m = next;
      ++n;
    }
    mq.Consumed(n);
    got += n;
    received.store(got, std::memory_order_relaxed);
    if (finished && n == 0 && mq.EmptyApprox()) break;
    if (got % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  for (auto &t : th) t.join();
  CHECK(got == accepted.load(), "message-queue: %llu taken, %llu accepted", (unsigned long long)got,
        (unsigned long long)accepted.load());
  CHECK(accepted.load() + refused.load() == uint64_t(producers) * per_producer,
        "message-queue: accepted + refused != pushed");
  CHECK(mq.Refused() == refused.load(), "message-queue: refusals counted %llu, seen %llu",
        (unsigned long long)mq.Refused(), (unsigned long long)refused.load());
  printf("  %-22s P=%d accepted=%llu refused=%llu\n", "message-queue", producers,
         (unsigned long long)accepted.load(), (unsigned long long)refused.load());
  return {accepted.load(), refused.load()};
}

}  // namespace

int main(int argc, char **argv) {
  double scale = 1;
  if (const char *e = getenv("QUEUE_STRESS_SCALE")) scale = atof(e);
  if (argc > 1) scale = atof(argv[1]);
  if (!(scale > 0)) scale = 1;
  // Per-test watchdog: each test takes 0.1-3 s under TSan on 2 cores.
  int wd = static_cast<int>(30 * (scale > 1 ? scale : 1));
  if (const char *e = getenv("QUEUE_STRESS_TIMEOUT")) wd = atoi(e);
  if (wd <= 0) wd = 30;
  auto n = [&](double base) { return static_cast<uint32_t>(base * scale) + 1; };
  setvbuf(stdout, nullptr, _IOLBF, 0);

  double t0 = now_s();
  printf("queue_stress: scale %g, %u cpus\n", scale, std::thread::hardware_concurrency());
  test_basics();
  printf("  %-22s ok\n", "basics");

  uint64_t ok = 0, full = 0, closed = 0;
  auto add = [&](const TqResult &r) {
    ok += r.ok;
    full += r.full;
    closed += r.closed;
  };
  // Spinning consumers (the default policy), tiny ring: Full all the time.
  add(test_task_queue("taskqueue/spin", 8, TaskQueue<Task>::kDefaultSpinNs, 3, 3, n(150000), wd));
  // Consumers that park at once: every push races a parking consumer.
  add(test_task_queue("taskqueue/park", 4, 0, 2, 4, n(40000), wd));
  // Short spins and a bound that is not a power of two.
  add(test_task_queue("taskqueue/short-spin", 6, 2000, 4, 2, n(40000), wd));
  CloseRaceResult cl = test_close_race(3, 3, n(5000), wd);
  ok += cl.ok;
  closed += cl.closed;
  test_close_wakes_parked(wd);
  printf("  %-22s ok\n", "close-wakes-parked");

  ParkerResult pr = test_parker(3, n(20000), wd);
  CqResult cr = test_completion_queue(3, n(100000), wd);
  MqResult mr = test_message_queue(4, n(50000), 256, wd);

  printf(
      "queue_stress: OK taskqueue ok=%llu full-retries=%llu closed=%llu "
      "close-rounds=%llu; parker "
      "rounds=%llu parks=%llu; completion items=%llu doorbells=%llu; messages accepted=%llu "
      "refused=%llu; %.1fs\n",
      (unsigned long long)ok, (unsigned long long)full, (unsigned long long)closed,
      (unsigned long long)cl.rounds, (unsigned long long)pr.rounds, (unsigned long long)pr.parks,
      (unsigned long long)cr.items, (unsigned long long)cr.rings, (unsigned long long)mr.accepted,
      (unsigned long long)mr.refused, now_s() - t0);
  return 0;
}
