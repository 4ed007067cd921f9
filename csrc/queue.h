// queue.h — the lock-free queues of dlhost (header-only, C++17, Linux).
//
//   MpmcRing<T>         bounded multi-producer multi-consumer ring of T*.
//   Parker              event count on a 32-bit futex word: spin, then park;
//                       producers pay no syscall unless someone is parked.
//   TaskQueue<T>        one runtime's request queue: ring + parker + the
//                       closing sentinel (unload).
//   CompletionQueue<T>  unbounded intrusive MPSC (poll threads -> JS thread)
//                       with a coalesced doorbell.
//
// None of these own the T objects: they carry pointers. Whoever pushes gives
// the pointer to whoever pops; a queue destroyed with items still in it just
// forgets them (the owner drains first).
#ifndef DLHOST_QUEUE_H
#define DLHOST_QUEUE_H

#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "clock.h"
#include "constants.h"

namespace dlhost {

// 64 on x86-64 and most ARM; 128 would also cover the adjacent-line
// prefetcher, but doubles the size for little measured gain.
constexpr size_t kCacheLine = 64;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

// A full memory fence (the seq_cst fence of the Dekker pairs below).
inline void full_fence() noexcept {
#if defined(__SANITIZE_THREAD__) && (defined(__x86_64__) || defined(__i386__))
  // TSan does not model atomic_thread_fence (GCC warns). The same hardware
  // fence, invisible to TSan, so it neither warns nor invents a
  // happens-before edge that could hide a real race.
  asm volatile("mfence" ::: "memory");
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// ------------------------------------------------------------------ MpmcRing
//
// Dmitry Vyukov's bounded MPMC queue. Each cell carries a sequence number:
// seq == pos means "free for the producer of position pos", seq == pos + 1
// means "full, for the consumer of position pos". A thread claims a position
// with a CAS on head/tail, then publishes with a release store of seq, so the
// payload is handed over by that store alone. No locks, no syscalls.
//
// Not strictly lock-free: a producer preempted between its CAS and its
// publish makes consumers see "empty" at that slot until it resumes (later
// slots wait too). Callers that park must therefore rely on the producer's
// own notify after publish, which TaskQueue does.
template <typename T>
class MpmcRing {
 public:
  // capacity is rounded up to a power of two, at least 2 (with 1 cell the
  // "full" and "free for next lap" sequence numbers would coincide).
  //
  // Each cell stores its sequence number *minus its index*, so zeroed memory
  // is the initial state (seq == index): calloc'd cells need no init loop and
  // a big ring's pages are not touched until used (a 65536-cell ring would
  // otherwise cost ~0.5 ms of page faults at every load()).
  // Big rings come straight from mmap: malloc would hand a recycled heap
  // block to calloc, which then zeroes all of it (~0.1 ms per MiB).
  explicit MpmcRing(size_t capacity)
      : cap_(round_up(capacity)), mask_(cap_ - 1), cells_(Allocate(cap_), Free{cap_}) {}
  MpmcRing(const MpmcRing &) = delete;
  MpmcRing &operator=(const MpmcRing &) = delete;

  // Any thread. False when full; the caller keeps ownership of v then.
  bool try_push(T *v) noexcept {
    size_t pos = tail_.load(std::memory_order_relaxed);
    for (;;) {
      Cell &c = cells_.get()[pos & mask_];
      // acquire: pairs with the consumer's release that freed the cell, so
      // our payload write cannot race its payload read of the previous lap.
      size_t seq = c.seq.load(std::memory_order_acquire) + (pos & mask_);
      intptr_t diff = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos);
      if (diff == 0) {
        // relaxed CAS: it only arbitrates the position; the hand-over is the
        // seq store below.
        if (tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed))
          break;  // pos reloaded by the failed CAS otherwise
      } else if (diff < 0) {
        return false;  // the cell of the previous lap is not consumed: full
      } else {
        pos = tail_.load(std::memory_order_relaxed);  // lost a race
      }
    }
    Cell &c = cells_.get()[pos & mask_];
    c.data = v;
    c.seq.store(pos + 1 - (pos & mask_), std::memory_order_release);  // publish
    return true;
  }

  // Any thread. Pushes up to n items with one CAS: the run of free cells
  // from tail_ is claimed whole, then published in order. Returns how many
  // (0 when full); the caller keeps the rest. A cell seen free stays free
  // until tail_ passes it, and only the CAS below moves tail_ past it.
  size_t try_push_n(T *const *items, size_t n) noexcept {
    if (n == 0) return 0;
    size_t pos = tail_.load(std::memory_order_relaxed);
    size_t k;
    for (;;) {
      k = 0;
      while (k < n) {
        const size_t p = pos + k;
        size_t seq = cells_.get()[p & mask_].seq.load(std::memory_order_acquire) + (p & mask_);
        if (seq != p) break;  // not consumed yet (full there), or taken by another producer
        ++k;
      }
      if (k == 0) {
        size_t now = tail_.load(std::memory_order_relaxed);
        if (now == pos) return 0;  // the cell at tail_ is still full
        pos = now;                 // lost a race: look again
        continue;
      }
      if (tail_.compare_exchange_weak(pos, pos + k, std::memory_order_relaxed)) break;
    }
    for (size_t i = 0; i < k; i++) {
      const size_t p = pos + i;
      Cell &c = cells_.get()[p & mask_];
      c.data = items[i];
      c.seq.store(p + 1 - (p & mask_), std::memory_order_release);  // publish
    }
    return k;
  }

  // Any thread. False when empty (or when the next slot is claimed by a
  // producer that has not published yet). On true, out is the caller's.
  bool try_pop(T *&out) noexcept {
    size_t pos = head_.load(std::memory_order_relaxed);
    for (;;) {
      Cell &c = cells_.get()[pos & mask_];
      // acquire: pairs with the producer's publish; makes c.data and
      // everything the producer wrote before it visible.
      size_t seq = c.seq.load(std::memory_order_acquire) + (pos & mask_);
      intptr_t diff = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos + 1);
      if (diff == 0) {
        if (head_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) break;
      } else if (diff < 0) {
        return false;
      } else {
        pos = head_.load(std::memory_order_relaxed);
      }
    }
    Cell &c = cells_.get()[pos & mask_];
    out = c.data;
    // release: our read of data happens before the next lap's write.
    c.seq.store(pos + mask_ + 1 - (pos & mask_), std::memory_order_release);
    return true;
  }

  // Any thread; a snapshot that may be stale by the time it returns.
  size_t size_approx() const noexcept {
    size_t h = head_.load(std::memory_order_relaxed);
    size_t t = tail_.load(std::memory_order_relaxed);
    return t > h ? t - h : 0;  // h read first, so t >= h unless racing pops
  }
  size_t capacity() const noexcept { return cap_; }

 private:
  struct Cell {
    std::atomic<size_t> seq;
    T *data;
  };
  static size_t round_up(size_t n) noexcept {
    size_t c = 2;
    while (c < n && c <= (SIZE_MAX >> 2)) c <<= 1;
    return c;
  }

  const size_t cap_;
  const size_t mask_;
  static constexpr size_t kMmapBytes = 64 * 1024;
  static Cell *Allocate(size_t cap) {
    size_t bytes = cap * sizeof(Cell);
    void *p = bytes >= kMmapBytes
                  ? mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                  : std::calloc(cap, sizeof(Cell));
    if (p == nullptr || p == MAP_FAILED) throw std::bad_alloc();
    return static_cast<Cell *>(p);
  }
  struct Free {
    size_t cap;
    void operator()(Cell *p) const noexcept {
      if (cap * sizeof(Cell) >= kMmapBytes)
        munmap(p, cap * sizeof(Cell));
      else
        std::free(p);
    }
  };
  const std::unique_ptr<Cell, Free> cells_;
  // Producers hammer tail_, consumers head_: separate lines, and away from
  // the read-only fields above.
  alignas(kCacheLine) std::atomic<size_t> tail_{0};
  alignas(kCacheLine) std::atomic<size_t> head_{0};
  // (alignas also rounds sizeof up: nothing else lands on head_'s line.)
};

// -------------------------------------------------------------------- Parker
//
// An event count. A consumer that found nothing does
//
//     uint32_t key = p.prepare_wait();
//     if (<re-check the condition>) { p.cancel_wait(key); ...use it... }
//     else p.commit_wait(key);            // sleeps unless notified since key
//
// and a producer makes the condition true, then calls notify_one/notify_all.
// No wake-up is lost: prepare_wait (register ; fence) and notify (fence ;
// read the count) form a Dekker pair with the condition's own store and
// load, so either the consumer's re-check sees the producer's store, or the
// producer sees the waiter — and then the futex wait either finds the epoch
// changed (returns at once) or is woken by the wake.
//
// Epoch and waiter count share one 64-bit word (epoch in the high half, the
// futex word; count in the low half). A notify *claims* every registered
// waiter in one CAS (count := 0, epoch += 1) and wakes them: while that wake
// is on its way, later notifies see no waiter and pay no syscall. (With a
// separate count, every push until the sleeper actually ran paid a
// FUTEX_WAKE: about one syscall per call under load.) A claimed waiter does
// not unregister itself. With no waiter, notify is one fence and one load.
//
// The epoch is 32 bits: a waiter would miss a notify only if exactly 2^32
// notifies happened between its prepare_wait and commit_wait.
// Shared = true: the word lives in memory shared between processes (the
// isolation channel), so the futex calls are not FUTEX_PRIVATE.
template <bool Shared = false>
class BasicParker {
 public:
  BasicParker() = default;
  BasicParker(const BasicParker &) = delete;
  BasicParker &operator=(const BasicParker &) = delete;

  // Consumer thread. Registers as a waiter; returns the key for commit_wait.
  // Must be followed by exactly one cancel_wait or commit_wait.
  uint32_t prepare_wait() noexcept {
    uint64_t w = word_.fetch_add(1, std::memory_order_seq_cst);
    // Orders our registration before the caller's re-check of its
    // condition (Dekker with notify's fence). The RMW already is a full
    // barrier on x86; the fence makes it so by the language rules.
    full_fence();
    return static_cast<uint32_t>(w >> 32);
  }

  // Consumer thread: the re-check succeeded; unregister — unless a notify
  // already claimed us (the epoch moved), which zeroed our registration.
  void cancel_wait(uint32_t key) noexcept {
    uint64_t w = word_.load(std::memory_order_relaxed);
    while (static_cast<uint32_t>(w >> 32) == key) {
      if (word_.compare_exchange_weak(w, w - 1, std::memory_order_relaxed)) return;
    }
  }

  // Consumer thread: sleep (futex, 0% CPU) until a notify after key; returns
  // at once if one already happened. The caller re-checks its condition.
  void commit_wait(uint32_t key) noexcept {
    // Loops over EINTR and spurious returns; EAGAIN (word != key) exits.
    while (epoch() == key)
      syscall(SYS_futex, epoch_word(), Shared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE, key, nullptr,
              nullptr, 0);
  }

  // Producer, any thread, after making the condition true. Both claim and
  // wake every registered waiter; each re-checks (and the queue chains a
  // further wake if it leaves work behind).
  void notify_one() noexcept { notify(); }
  void notify_all() noexcept { notify(); }

  // Any thread; cheap hint (relaxed): is anyone registered as a waiter?
  bool has_waiters() const noexcept {
    return (word_.load(std::memory_order_relaxed) & 0xffffffffu) != 0;
  }
  // For tests: the epoch only moves (and the futex is only called) when
  // a notify found a waiter.
  uint32_t epoch() const noexcept {
    return static_cast<uint32_t>(word_.load(std::memory_order_acquire) >> 32);
  }

 private:
  void notify() noexcept {
    // Orders the caller's store of the condition before our read of the
    // count (the other half of the Dekker pair in prepare_wait).
    full_fence();
    uint64_t w = word_.load(std::memory_order_relaxed);
    for (;;) {
      if ((w & 0xffffffffu) == 0) return;
      // release: a waiter that sees the new epoch also sees the condition.
      uint64_t next = ((w >> 32) + 1) << 32;
      if (word_.compare_exchange_weak(w, next, std::memory_order_release,
                                      std::memory_order_relaxed))
        break;
    }
    syscall(SYS_futex, epoch_word(), Shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
            nullptr, 0);
  }
  // The futex word is the epoch: the high 32 bits of word_.
  uint32_t *epoch_word() noexcept {
    static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t), "plain 64-bit word");
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return reinterpret_cast<uint32_t *>(&word_) + 1;
#else
    return reinterpret_cast<uint32_t *>(&word_);
#endif
  }

  // Own line: written only when someone parks or is woken, so the
  // producers' hot read stays a shared-cache hit.
  alignas(kCacheLine) std::atomic<uint64_t> word_{0};
};

using Parker = BasicParker<false>;

// ----------------------------------------------------------------- TaskQueue
//
// One runtime's request queue: many producers (the JS thread, workers), many
// consumers (the host's poll thread or the plugin's own threads).
//
// Closing is a "null sentinel" without a slot: close() sets a CLOSED bit in
// state_, whose low bits count pushes in progress. A push enters (fetch_add),
// gives up with Closed if the bit was set, else pushes and leaves
// (fetch_sub). A consumer returns nullptr only after it saw CLOSED with no
// push in progress and then found the ring empty: from then on no push can
// succeed, so the answer is final — and every push that returned Ok had
// published its task before leaving, so no Ok task is ever lost.
//
// Lifetime: destroy only when no thread is inside any member — pushers
// included: a push racing close() touches the queue (to wake consumers)
// until it returns, possibly after a consumer already got nullptr.
template <typename T>
class TaskQueue {
 public:
  enum class Push { Ok, Full, Closed };

  // Spin budget of a consumer before it parks (constants.h says why; 0 parks
  // at once).
  static constexpr uint64_t kDefaultSpinNs = dlhost::kDefaultSpinNs;

  // max_queue: tasks queued at most (>= 1). The ring is max_queue rounded up
  // to a power of two; when max_queue is not one, the bound is checked from
  // size_approx() and may be exceeded by the number of concurrent producers
  // (never beyond the ring). spin_ns: see set_spin_ns.
  explicit TaskQueue(size_t max_queue, uint64_t spin_ns = kDefaultSpinNs)
      : max_(max_queue ? max_queue : 1), ring_(max_), spin_ns_(spin_ns) {}
  TaskQueue(const TaskQueue &) = delete;
  TaskQueue &operator=(const TaskQueue &) = delete;

  // Any thread, never blocks. Ok: the queue owns t until a consumer pops it.
  // Full/Closed: t stays the caller's. No syscall unless a consumer is
  // parked.
  Push push(T *t) noexcept {
    // seq_cst: totally ordered with close()'s fetch_or, so either we see
    // CLOSED or close()'s consumers will see our count.
    uint64_t s = state_.fetch_add(1, std::memory_order_seq_cst);
    if (s & kClosed) {
      leave();
      return Push::Closed;
    }
    bool ok = (max_ == ring_.capacity() || ring_.size_approx() < max_) && ring_.try_push(t);
    if (ok) arrived(1);
    if (!leave() && ok) parker_.notify_one();
    return ok ? Push::Ok : Push::Full;
  }

  // Any thread; idempotent. Tasks pushed before stay deliverable; once they
  // are all taken, every pop returns nullptr. Wakes every parked consumer.
  // items[0..n) in order under one enter/leave and at most one notify: a
  // producer with many requests pays the fences and the wake-up check once.
  // Returns how many were pushed (a prefix), or kClosedBatch.
  static constexpr size_t kClosedBatch = SIZE_MAX;
  size_t push_batch(T *const *items, size_t n) noexcept {
    uint64_t s = state_.fetch_add(1, std::memory_order_seq_cst);
    if (s & kClosed) {
      leave();
      return kClosedBatch;
    }
    size_t room = n;
    if (max_ != ring_.capacity()) {
      size_t used = ring_.size_approx();
      room = used < max_ ? max_ - used : 0;
    }
    size_t want = n < room ? n : room, k = 0;
    // A run claimed at once; another producer may split it into several.
    while (k < want) {
      size_t got = ring_.try_push_n(items + k, want - k);
      if (got == 0) break;
      k += got;
    }
    if (k) arrived(k);
    if (!leave() && k) parker_.notify_one();
    return k;
  }

  void close() noexcept {
    if (closed_.load(std::memory_order_relaxed)) return;
    state_.fetch_or(kClosed, std::memory_order_seq_cst);
    // release: a consumer that sees closed_ also sees the CLOSED bit.
    closed_.store(true, std::memory_order_release);
    parker_.notify_all();
  }

  // Consumer, any thread; blocks (spin, then park) until a task or the end.
  // Returns the task (now the caller's), or nullptr after close + drain.
  T *pop() noexcept {
    T *v;
    if (poll(v)) return v;
    if (park_at_once())
      parked_at_once_.fetch_add(1, std::memory_order_relaxed);
    else if (spin(v))
      return v;
    for (;;) {
      uint32_t key = parker_.prepare_wait();
      if (poll(v)) {
        parker_.cancel_wait(key);
        return v;
      }
      parker_.commit_wait(key);
      if (poll(v)) return v;
      // Woken for nothing: a notify wakes every waiter, and one of them got
      // the task. Spin again, since wake-ups come in bursts, unless tasks
      // are sparse: then the others would each burn the whole budget per
      // task (a pool of pollers paid it once per thread per call).
      if (park_at_once())
        parked_at_once_.fetch_add(1, std::memory_order_relaxed);
      else if (spin(v))
        return v;
    }
  }

  // Consumer, any thread; blocks until at least one task, then takes up to
  // max ready ones into out[0..n). Returns n; 0 after close + drain (and for
  // max == 0, which is the caller's error).
  size_t pop_batch(T **out, size_t max) noexcept {
    if (max == 0) return 0;
    T *first = pop();
    if (!first) return 0;
    out[0] = first;
    size_t n = 1;
    while (n < max && ring_.try_pop(out[n])) ++n;
    return n;
  }

  // Consumer, any thread; never blocks. False when nothing is ready (also
  // after close + drain; use closed() to tell).
  bool try_pop(T *&out) noexcept {
    T *v;
    if (ring_.try_pop(v)) {
      out = v;
      chain();
      return true;
    }
    return false;
  }

  size_t size_approx() const noexcept { return ring_.size_approx(); }
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }
  size_t max_queue() const noexcept { return max_; }

  // Any thread; consumers read it at the start of each spin. Setting it
  // turns the adaptive rule off: the budget is spent on every wait.
  void set_spin_ns(uint64_t ns) noexcept {
    spin_ns_.store(ns, std::memory_order_relaxed);
    adaptive_.store(false, std::memory_order_relaxed);
  }
  // Back to the default budget with the adaptive rule on.
  void reset_spin() noexcept {
    spin_ns_.store(kDefaultSpinNs, std::memory_order_relaxed);
    adaptive_.store(true, std::memory_order_relaxed);
  }
  // The estimate of recent gaps between arrivals (ns): the adaptive rule's input.
  uint64_t gap_ns() const noexcept { return gap_ns_.load(std::memory_order_relaxed); }
  // Answers were handed on to their callers at ns (the JS thread's settle,
  // a child's writer). The next gap counts from there: a caller that waits
  // for each answer before its next call is not sparse, however long the
  // round trip took. (Counted from the last arrival, a round trip longer
  // than the budget, as a parked poller's wake-ups make it, looked sparse
  // and kept the poller parked: a sequential caller stuck at ~60 us.)
  void settled_at(uint64_t ns) noexcept { last_settle_.store(ns, std::memory_order_relaxed); }
  // Are tasks arriving further apart than the spin budget (the adaptive
  // rule, on)? Waiting consumers then park at once; so does the JS side.
  bool sparse() const noexcept { return park_at_once(); }
  // Waits that skipped the spin (the adaptive rule said park at once).
  uint64_t parked_at_once() const noexcept {
    return parked_at_once_.load(std::memory_order_relaxed);
  }
  uint64_t spin_ns() const noexcept { return spin_ns_.load(std::memory_order_relaxed); }

 private:
  static constexpr uint64_t kClosed = uint64_t{1} << 63;

  // Ends a push; returns true when the queue was closed meanwhile, having
  // then woken everyone: a consumer may be parked waiting for the count of
  // pushes in progress to reach zero.
  bool leave() noexcept {
    // seq_cst (release is the part that matters): our ring write happens
    // before a consumer's acquire load that sees the lowered count.
    uint64_t s = state_.fetch_sub(1, std::memory_order_seq_cst);
    if (s & kClosed) {
      parker_.notify_all();
      return true;
    }
    return false;
  }

  // True when v is a task, or nullptr for the end; false: nothing yet.
  bool poll(T *&v) noexcept {
    if (ring_.try_pop(v)) {
      chain();
      return true;
    }
    if (!closed_.load(std::memory_order_acquire)) return false;
    if (drained_.load(std::memory_order_acquire)) {
      v = nullptr;
      return true;
    }
    // seq_cst: pairs with leave()'s fetch_sub (Dekker with the parker).
    if (state_.load(std::memory_order_seq_cst) != kClosed) return false;
    // Closed and no push in progress: the ring holds all there will ever be.
    if (ring_.try_pop(v)) {
      chain();
      return true;
    }
    drained_.store(true, std::memory_order_release);  // final, so cache it
    v = nullptr;
    return true;
  }

  // Adaptive spinning (the idea of glibc's adaptive mutexes and of Go's
  // scheduler): producers keep an EWMA of the gaps between their pushes
  // (one clock read per push or batch). When tasks have been arriving
  // further apart than the spin budget, a waiting consumer would only burn
  // the budget: it parks at once. Measured at the producer, the estimate
  // never includes a parked consumer's own wake-ups. A gap counts at most
  // 4 budgets, so a burst after a quiet spell spins again within a few
  // pushes. Relaxed and racy across producers on purpose: a hint only.
  // n tasks arrived now: the gap since the last arrival, or since answers
  // were last handed on if that came later, is shared by them.
  void arrived(size_t n) noexcept {
    uint64_t now = monotonic_ns();
    uint64_t last = last_push_.exchange(now, std::memory_order_relaxed);
    uint64_t settled = last_settle_.load(std::memory_order_relaxed);
    if (settled > last) last = settled;
    if (!last || now < last) return;
    uint64_t cap = 4 * spin_ns_.load(std::memory_order_relaxed);
    uint64_t per = (now - last) / n;
    uint64_t gap = per < cap ? per : cap;
    uint64_t e = gap_ns_.load(std::memory_order_relaxed);
    gap_ns_.store(e - e / 4 + gap / 4, std::memory_order_relaxed);
  }
  bool park_at_once() const noexcept {
    return adaptive_.load(std::memory_order_relaxed) &&
           gap_ns_.load(std::memory_order_relaxed) > spin_ns_.load(std::memory_order_relaxed);
  }

  // Spin up to spin_ns; the clock (vDSO, ~25 ns) is read every 16 pauses
  // (under 1 us), so the budget is kept to within a microsecond.
  bool spin(T *&v) noexcept {
    uint64_t budget = spin_ns_.load(std::memory_order_relaxed);
    if (budget == 0) return false;
    uint64_t start = monotonic_ns();
    for (unsigned i = 1;; ++i) {
      cpu_relax();
      if (poll(v)) return true;
      if ((i & 15) == 0) {
        if (monotonic_ns() - start >= budget) return false;
        // Let a thread that shares our core run (the JS thread, whose
        // answer we may be waiting for): spinning alone on an
        // oversubscribed core costs the whole budget per hand-off.
        sched_yield();
      }
    }
  }

  // After a take, if more is queued and someone is parked, pass the baton:
  // a consumer may have parked after seeing a not-yet-published slot while
  // later slots were ready. Relaxed hint; correctness never depends on it.
  void chain() noexcept {
    if (parker_.has_waiters() && ring_.size_approx() != 0) parker_.notify_one();
  }

  const size_t max_;
  MpmcRing<T> ring_;
  Parker parker_;
  // Written by every push: its own line.
  alignas(kCacheLine) std::atomic<uint64_t> state_{0};
  // Read-mostly flags and settings, on a line producers do not write.
  alignas(kCacheLine) std::atomic<bool> closed_{false};
  std::atomic<bool> drained_{false};
  std::atomic<uint64_t> spin_ns_;
  std::atomic<bool> adaptive_{true};
  // Written by producers at each push: their own line.
  alignas(kCacheLine) std::atomic<uint64_t> last_push_{0};
  std::atomic<uint64_t> last_settle_{0};
  std::atomic<uint64_t> gap_ns_{0};
  alignas(kCacheLine) std::atomic<uint64_t> parked_at_once_{0};
};

// ----------------------------------------------------------- CompletionQueue
//
// Unbounded intrusive MPSC: many poll threads push finished tasks, the one JS
// thread takes them all at once. T must have `std::atomic<T*> cq_next`.
//
// A Treiber stack: push CASes itself onto the head; pop_all exchanges the
// head with nullptr and reverses the list into push order. The doorbell falls
// out for free: a push that finds the stack empty is the first of a drain
// cycle and must ring (uv_async_send); later pushes of the cycle do not. The
// consumer's pop_all takes everything, so every item rides on one ring.
template <typename T>
class CompletionQueue {
 public:
  CompletionQueue() = default;
  CompletionQueue(const CompletionQueue &) = delete;
  CompletionQueue &operator=(const CompletionQueue &) = delete;

  // Any thread. The queue owns t until pop_all hands it to the consumer.
  // Returns true when the consumer must be woken: exactly one push per drain
  // cycle (the one that found the queue empty) returns true.
  bool push(T *t) noexcept {
    T *head = head_.load(std::memory_order_relaxed);
    do {
      // relaxed: published by the release CAS below.
      t->cq_next.store(head, std::memory_order_relaxed);
      // release: the consumer's acquire exchange sees t's fields and link.
    } while (!head_.compare_exchange_weak(head, t, std::memory_order_release,
                                          std::memory_order_relaxed));
    return head == nullptr;
  }

  // Consumer thread only. Takes every pushed item and returns them oldest
  // first, linked by cq_next (nullptr-terminated; nullptr when empty). The
  // items are the caller's. Re-arms the doorbell: the next push rings.
  T *pop_all() noexcept {
    // acquire: pairs with the pushes' release CAS (a release sequence, so
    // all older items of the stack are covered too).
    T *node = head_.exchange(nullptr, std::memory_order_acquire);
    T *fifo = nullptr;
    while (node) {  // reverse: the stack is newest first
      T *next = node->cq_next.load(std::memory_order_relaxed);
      node->cq_next.store(fifo, std::memory_order_relaxed);
      fifo = node;
      node = next;
    }
    return fifo;
  }

  // Any thread; a hint.
  bool empty_approx() const noexcept { return head_.load(std::memory_order_relaxed) == nullptr; }

 private:
  alignas(kCacheLine) std::atomic<T *> head_{nullptr};
};

}  // namespace dlhost

#endif  // DLHOST_QUEUE_H
