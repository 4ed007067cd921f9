// queue_bench — hand-off latency and throughput of csrc/queue.h.
// Build and run: make -C test/native bench   (or: queue_bench [ms-per-case])
//
//  pingpong  one thread pushes a task into queue A, the other pops it and
//            pushes it back through queue B: the round trip is two
//            hand-offs. With the default spin the poller is awake (the fast
//            path); with spin 0 both hops park and pay a futex wake-up.
//  parked    as pingpong, but rounds are spaced twice the spin budget apart:
//            the poller has parked every time, the pinger spins (one wake-up
//            per round trip).
//  stream    producers push as fast as they can, consumers pop_batch:
//            tasks per second.
//  cq        poll threads push completions, one consumer pop_all()s on its
//            doorbell: items per second and items per doorbell.
#include "queue.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

using namespace dlhost;

namespace {

struct Task {
  uint64_t n;
};

uint64_t now_ns() { return monotonic_ns(); }

// Returns the median round trip (two hand-offs) in ns; *p99 its 99th pct.
double pingpong(uint64_t spin_ns, uint64_t gap_ns, int rounds, double *p99) {
  TaskQueue<Task> a(1024, spin_ns), b(1024, spin_ns);
  std::thread echo([&] {
    while (Task *t = a.pop()) b.push(t);
  });
  Task task{0};
  std::vector<uint64_t> rtt;
  rtt.reserve(rounds);
  for (int i = 0; i < rounds + 100; ++i) {
    if (gap_ns) std::this_thread::sleep_for(std::chrono::nanoseconds(gap_ns));
    uint64_t t0 = now_ns();
    a.push(&task);
    Task *back = b.pop();
    uint64_t dt = now_ns() - t0;
    if (back != &task) abort();
    if (i >= 100) rtt.push_back(dt);  // skip warm-up
  }
  a.close();
  echo.join();
  std::sort(rtt.begin(), rtt.end());
  *p99 = double(rtt[rtt.size() * 99 / 100]);
  return double(rtt[rtt.size() / 2]);
}

double stream(int producers, int consumers, size_t cap, uint64_t spin_ns, uint64_t ms) {
  TaskQueue<Task> q(cap, spin_ns);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> popped{0};
  Task task{0};
  std::vector<std::thread> th;
  for (int c = 0; c < consumers; ++c)
    th.emplace_back([&] {
      Task *out[64];
      uint64_t n = 0;
      for (size_t k; (k = q.pop_batch(out, 64)) != 0;) n += k;
      popped.fetch_add(n);
    });
  std::vector<std::thread> pr;
  for (int p = 0; p < producers; ++p)
    pr.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed))
        if (q.push(&task) != TaskQueue<Task>::Push::Ok) cpu_relax();
    });
  uint64_t t0 = now_ns();
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  stop = true;
  for (auto &t : pr) t.join();
  q.close();
  for (auto &t : th) t.join();
  return popped.load() / ((now_ns() - t0) / 1e9);
}

struct Node {
  std::atomic<Node *> cq_next{nullptr};
};

void cq(int producers, uint64_t ms) {
  CompletionQueue<Node> q;
  Parker pk;
  std::atomic<uint32_t> bell{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> th;
  const int per = 4096;
  std::vector<std::unique_ptr<Node[]>> nodes;
  // Each producer recycles its own nodes once the consumer hands them back.
  std::vector<std::unique_ptr<std::atomic<int>>> free_count;
  for (int p = 0; p < producers; ++p) {
    nodes.emplace_back(new Node[per]);
    free_count.emplace_back(new std::atomic<int>(per));
  }
  for (int p = 0; p < producers; ++p)
    th.emplace_back([&, p] {
      int i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        if (free_count[p]->load(std::memory_order_acquire) == 0) {
          cpu_relax();
          continue;
        }
        free_count[p]->fetch_sub(1, std::memory_order_relaxed);
        if (q.push(&nodes[p][i])) {
          bell.store(1, std::memory_order_release);
          pk.notify_one();
        }
        i = (i + 1) % per;
      }
    });
  uint64_t items = 0, drains = 0, t0 = now_ns(), end = t0 + ms * 1000000;
  while (now_ns() < end) {
    if (bell.exchange(0, std::memory_order_acq_rel) == 0) {
      uint32_t key = pk.prepare_wait();
      if (bell.load(std::memory_order_acquire))
        pk.cancel_wait(key);
      else
        pk.commit_wait(key);
      continue;
    }
    Node *n = q.pop_all();
    if (n) ++drains;
    while (n) {
      Node *next = n->cq_next.load(std::memory_order_relaxed);  // before handing n back
      ++items;
      for (int p = 0; p < producers; ++p)
        if (n >= &nodes[p][0] && n < &nodes[p][per])
          free_count[p]->fetch_add(1, std::memory_order_release);
      n = next;
    }
  }
  stop = true;
  for (auto &t : th) t.join();
  double secs = (now_ns() - t0) / 1e9;
  printf("  cq       P=%d                 %10.0f items/s  %6.1f items/doorbell\n", producers,
         items / secs, drains ? double(items) / drains : 0.0);
}

}  // namespace

int main(int argc, char **argv) {
  uint64_t ms = argc > 1 ? strtoull(argv[1], nullptr, 10) : 500;
  int rounds = 20000;
  printf("queue_bench (%u cpus; default spin %llu ns)\n", std::thread::hardware_concurrency(),
         (unsigned long long)TaskQueue<Task>::kDefaultSpinNs);
  double p99;
  for (uint64_t spin : {TaskQueue<Task>::kDefaultSpinNs, uint64_t(0)}) {
    double med = pingpong(spin, 0, spin ? rounds : rounds / 4, &p99);
    printf("  pingpong spin=%-6llu          round trip median %8.0f ns  p99 %8.0f ns\n",
           (unsigned long long)spin, med, p99);
  }
  // Idle poller: rounds spaced 2x the spin budget, so it has parked.
  double med =
      pingpong(TaskQueue<Task>::kDefaultSpinNs, 2 * TaskQueue<Task>::kDefaultSpinNs, 2000, &p99);
  printf("  pingpong poller parked        round trip median %8.0f ns  p99 %8.0f ns\n", med, p99);
  for (auto [p, c] : {std::pair<int, int>{1, 1}, {2, 1}, {1, 2}}) {
    double r = stream(p, c, 65536, TaskQueue<Task>::kDefaultSpinNs, ms);
    printf("  stream   P=%d C=%d cap=65536     %10.0f tasks/s\n", p, c, r);
  }
  cq(1, ms);
  cq(2, ms);
  return 0;
}
