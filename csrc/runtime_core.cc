// runtime_core.cc: the threads of a runtime. Thread map:
//   JS thread      : Grow, SubmitBatch, TakeCompletions, Start, BeginUnload,
//                    ReapNow (runtime_wrap.cc calls them)
//   owner thread   : the library's (owner_thread.h): plugin init and close
//   host poll      : one detached std::thread per host-driven runtime (HostLoop)
//   plugin threads : the plugin's own (Poll, PollBatch, Respond; host_abi.cc)
//   reaper         : one detached std::thread per unloading plugin-driven
//                    runtime; waits for the plugin's pollers to exit, then
//                    drops the runtime's library reference (maybe dlclose).
// No N-API here.
#include "runtime_core.h"

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>
#include <unordered_set>

#include "clock.h"

namespace dlhost {

namespace {

std::atomic<uint64_t> next_core_serial{1};

// Every core of the process, for the exit hook. Leaked on purpose (see
// Registry::Get).
std::mutex live_mu;
std::unordered_set<RuntimeCore *> *live_cores = new std::unordered_set<RuntimeCore *>();

// process.exit() ends the process without tearing environments down: close
// every runtime's queue here (non-blocking), so that its threads leave and
// Registry::AtExit, which runs after this, can close idle libraries on their
// owner threads.
void CloseAllAtExit() {
  try {
    std::vector<std::shared_ptr<RuntimeCore>> cores;
    {
      std::lock_guard<std::mutex> lock(live_mu);
      for (RuntimeCore *c : *live_cores)
        if (auto sp = c->weak_from_this().lock()) cores.push_back(std::move(sp));
    }
    for (auto &c : cores) RuntimeCore::BeginUnload(c);
  } catch (...) {
    // Out of memory at exit: glibc's own teardown follows.
  }
}
std::atomic<uint64_t> orphan_misuse{0};
thread_local uint64_t tls_last_core = 0;

bool ThreadAlive(pid_t tid) {
  // Signal 0 checks existence only. ESRCH once the kernel has reaped the
  // thread: from then on it can't be executing anything of the plugin.
  return syscall(SYS_tgkill, getpid(), tid, 0) == 0 || errno != ESRCH;
}

}  // namespace

void Task::Reset() {
  if (req && req != inline_buf) free(req);
  req = nullptr;
  req_len = 0;
  rc = 0;
  rsp = nullptr;
  rsp_len = 0;
  kind = kTaskCall;
  batch = nullptr;
  submit_ns = taken_ns = service_ns = 0;
  cancelled.store(0, std::memory_order_relaxed);
  stream_hwm = 0;
  unread.store(0, std::memory_order_relaxed);
  state.store(kFree, std::memory_order_release);
}

namespace {

// Plugin queue handles, recycled: a handle is reused only after kReuseAfter
// others were retired, so a plugin thread that misbehaves by emitting long
// after its runtime ended is refused (core == nullptr) rather than heard by
// the next runtime, in all but pathological timing.
constexpr size_t kReuseAfter = 64;
std::mutex queue_pool_mu;
std::deque<dlhost_queue *> *queue_pool = new std::deque<dlhost_queue *>();

dlhost_queue *AcquireQueue(RuntimeCore *c) {
  dlhost_queue *q = nullptr;
  {
    std::lock_guard<std::mutex> lock(queue_pool_mu);
    if (queue_pool->size() > kReuseAfter) {
      q = queue_pool->front();
      queue_pool->pop_front();
    }
  }
  if (!q) q = new dlhost_queue();
  q->core.store(c, std::memory_order_release);
  return q;
}

// After this no dlhost_emit on q touches the core (Dekker: the store of
// nullptr and the emitters count are both seq_cst).
void RetireQueue(dlhost_queue *q) {
  q->core.store(nullptr, std::memory_order_seq_cst);
  while (q->emitters.load(std::memory_order_seq_cst) != 0) sched_yield();
  std::lock_guard<std::mutex> lock(queue_pool_mu);
  try {
    queue_pool->push_back(q);
  } catch (const std::bad_alloc &) {
    // Not recycled: kept for ever (a plugin may still hold it).
  }
}

}  // namespace

int RuntimeCore::Emit(dlhost_queue *q, const void *data, size_t len) {
  if (!q || (!data && len) || len > kMaxMessageBytes) return DLHOST_EINVAL;
  q->emitters.fetch_add(1, std::memory_order_seq_cst);
  RuntimeCore *c = q->core.load(std::memory_order_seq_cst);
  int rc = DLHOST_ECLOSED;
  if (c && c->unload_state.load(std::memory_order_acquire) != kUnloaded &&
      !c->readers_gone.load(std::memory_order_acquire)) {
    bool wake = false;
    rc = c->messages.Push(data, len, &wake);
    // As Complete(): a spinning JS thread re-checks after it stops.
    if (wake && !c->js_spinning.load(std::memory_order_seq_cst)) c->Ring();
  } else if (c) {
    c->messages.Refuse();
  }
  q->emitters.fetch_sub(1, std::memory_order_release);
  return rc;
}

bool RuntimeCore::Writable(Task *t) {
  return t && t->magic == Task::kMagic && t->stream_hwm > 0 &&
         t->state.load(std::memory_order_acquire) == Task::kTaken &&
         !t->cancelled.load(std::memory_order_acquire) &&
         !t->core->readers_gone.load(std::memory_order_acquire) &&
         t->unread.load(std::memory_order_acquire) < t->stream_hwm;
}

int RuntimeCore::Send(Task *t, const void *data, size_t len) {
  if (!t || t->magic != Task::kMagic || (!data && len) || len > kMaxMessageBytes)
    return DLHOST_EINVAL;
  if (t->stream_hwm <= 0 || t->state.load(std::memory_order_acquire) != Task::kTaken)
    return DLHOST_EINVAL;
  if (t->cancelled.load(std::memory_order_acquire) ||
      t->core->readers_gone.load(std::memory_order_acquire))
    return DLHOST_ECANCELLED;
  if (t->unread.load(std::memory_order_acquire) >= t->stream_hwm) return DLHOST_EAGAIN;
  if (len == 0) return DLHOST_OK;
  Message *m = Message::New(data, len);
  if (!m) return DLHOST_ENOMEM;
  // In an isolated runtime's child the host's key is the call's, not the slot.
  m->id = t->core->keyed_by_call ? t->call : t->id;
  t->unread.fetch_add(1, std::memory_order_acq_rel);
  RuntimeCore *c = t->core;
  if (c->stream_chunks.push(m) && !c->js_spinning.load(std::memory_order_seq_cst)) c->Ring();
  return DLHOST_OK;
}

RuntimeCore::RuntimeCore(EntryPtr e, Abi a, size_t mq, int64_t unload_timeout)
    : entry(std::move(e)),
      abi(a),
      serial(next_core_serial++),
      q(AcquireQueue(this)),
      requests(mq, kDefaultSpinNs),
      unload_timeout_ms(unload_timeout) {
  // Registered after the registry's handler (the registry exists before any
  // runtime), so it runs first.
  static bool hooked = (atexit(CloseAllAtExit), true);
  (void)hooked;
  std::lock_guard<std::mutex> lock(live_mu);
  live_cores->insert(this);
}

RuntimeCore::~RuntimeCore() {
  RetireQueue(q);
  for (Message *m = stream_chunks.pop_all(); m;) {
    Message *next = m->cq_next.load(std::memory_order_relaxed);
    Message::Free(m);
    m = next;
  }
  {
    std::lock_guard<std::mutex> lock(live_mu);
    live_cores->erase(this);
  }
  for (auto &chunk : chunks)
    for (uint32_t i = 0; i < kChunkSlots; i++) {
      Task &t = chunk[i];
      if (t.req && t.req != t.inline_buf) free(t.req);
      if (t.state.load() == Task::kDone) t.DropRsp();
    }
}

const char *RuntimeCore::ResolveEntry() {
  Registry &reg = Registry::Get();
  auto sym = [&](const char *n) { return reg.Symbol(entry, n); };
  open_fn = reinterpret_cast<dlhost_open_fn>(sym("dlhost_open"));
  handle_fn = reinterpret_cast<dlhost_handle_fn>(sym("dlhost_handle"));
  close_fn = reinterpret_cast<dlhost_close_fn>(sym("dlhost_close"));
  init_fn = reinterpret_cast<dlhost_init_fn>(sym("dlhost_init"));
  lua_init_fn = reinterpret_cast<libffi_init_fn>(sym("libffi_init"));
  export_fn = reinterpret_cast<dlhost_state_export_fn>(sym("dlhost_state_export"));
  import_fn = reinterpret_cast<dlhost_state_import_fn>(sym("dlhost_state_import"));
  attach_fn = reinterpret_cast<dlhost_attach_fn>(sym("dlhost_attach"));
  switch (abi) {
    case Abi::kHost: return handle_fn ? nullptr : "dlhost_handle";
    case Abi::kNative: return init_fn ? nullptr : "dlhost_init";
    case Abi::kLua: return lua_init_fn ? nullptr : "libffi_init";
  }
  return "an entry symbol";
}

uint32_t RuntimeCore::Grow() {
  std::unique_ptr<Task[]> chunk(new Task[kChunkSlots]);
  std::unique_ptr<char[]> area(new char[kChunkSlots * kSlotStride]());
  uint32_t base = uint32_t(chunks.size()) << kChunkBits;
  for (uint32_t i = 0; i < kChunkSlots; i++) {
    chunk[i].id = base + i;
    chunk[i].core = this;
    chunk[i].inline_buf = area.get() + i * kSlotStride;
  }
  chunks.push_back(std::move(chunk));
  areas.push_back(std::move(area));
  slots += kChunkSlots;
  return uint32_t(chunks.size() - 1);
}

long RuntimeCore::SubmitBatch(Task *const *tasks, size_t n) {
  size_t k = requests.push_batch(tasks, n);
  return k == TaskQueue<Task>::kClosedBatch ? -1 : long(k);
}

Task *RuntimeCore::TakeCompletions() { return completions.pop_all(); }

void RuntimeCore::Ring() {
  std::lock_guard<std::mutex> lock(bell_mu);
  if (bell) bell(bell_arg);
}

BatchCore *RuntimeCore::Batch(uint32_t h) {
  if (h >= batches.size()) batches.resize(h + 1);
  if (!batches[h]) {
    batches[h] = std::make_unique<BatchCore>();
    batches[h]->handle = h;
  }
  return batches[h].get();
}

void RuntimeCore::Finish(Task *t) {
  BatchCore *b = t->batch;
  // acq_rel: whoever counts the batch down to 0 sees every item's answer,
  // and hands them all to the JS thread with the one it queues.
  if (!b || b->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) Complete(t);
}

void RuntimeCore::Complete(Task *t) {
  // The JS thread re-checks the queue after it stops spinning (seq_cst on
  // both sides), so skipping the syscall while it spins loses no wake-up.
  if (completions.push(t) && !js_spinning.load(std::memory_order_seq_cst)) Ring();
}

void RuntimeCore::Respond(Task *t, int rc, void *rsp, size_t len) {
  if (!t || t->magic != Task::kMagic) {
    orphan_misuse.fetch_add(1);  // not a task of ours: no core to count it on
    free(rsp);
    return;
  }
  uint32_t expect = Task::kTaken;
  if (!t->state.compare_exchange_strong(expect, Task::kDone, std::memory_order_acq_rel)) {
    // Answered twice, answered after the host gave up on it, or never taken.
    t->core->misuse.fetch_add(1);
    free(rsp);
    return;
  }
  t->rc = rc;
  if (rsp && len <= kSlotInline && t->inline_buf) {
    // The request is done with (valid only until the answer): its bytes
    // take the response.
    if (len) memcpy(t->inline_buf, rsp, len);
    free(rsp);
    rsp = t->inline_buf;
  }
  t->rsp = rsp;
  t->rsp_len = rsp ? len : 0;
  if (t->taken_ns) t->service_ns = monotonic_ns() - t->taken_ns;
  t->core->Finish(t);
}

void RuntimeCore::RecordPoller() {
  if (tls_last_core == serial) return;
  tls_last_core = serial;
  pid_t tid = pid_t(syscall(SYS_gettid));
  std::lock_guard<std::mutex> lock(tids_mu_);
  try {
    if (std::find(tids_.begin(), tids_.end(), tid) == tids_.end()) tids_.push_back(tid);
  } catch (const std::bad_alloc &) {
    // Unrecorded, this thread is not waited for: keep the library for ever.
    untracked_pollers = true;
  }
}

size_t RuntimeCore::Pollers() {
  std::lock_guard<std::mutex> lock(tids_mu_);
  return tids_.size();
}

std::vector<pid_t> RuntimeCore::PollerTids() {
  std::lock_guard<std::mutex> lock(tids_mu_);
  return tids_;
}

void RuntimeCore::RunStateStep(Task *t) {
  void *out = nullptr;
  size_t len = 0;
  int rc = kRcNoStateEntry;
  // Host-driven plugins get what dlhost_open returned; plugin-driven ones NULL.
  void *s = abi == Abi::kHost ? state : nullptr;
  if (t->kind == kTaskStateExport && export_fn)
    rc = export_fn(s, &out, &len);
  else if (t->kind == kTaskStateImport && import_fn)
    rc = import_fn(s, t->req, t->req_len);
  Respond(t, rc, out, out ? len : 0);
}

// Plugin-driven: a state step is run inside the poll of whichever plugin
// thread takes it, and that poll goes on to the next task.
Task *RuntimeCore::Poll() {
  RecordPoller();
  for (;;) {
    Task *t = requests.pop();
    if (!t) {
      ends.fetch_add(1);
      return nullptr;
    }
    t->state.store(Task::kTaken, std::memory_order_release);
    if (t->kind == kTaskCall) {
      Taken(t);
      return t;
    }
    RunStateStep(t);
  }
}

size_t RuntimeCore::PollBatch(Task **out, size_t max) {
  RecordPoller();
  if (!out || max == 0) return 0;
  for (;;) {
    size_t n = requests.pop_batch(out, max);
    if (n == 0) {
      ends.fetch_add(1);
      return 0;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
      out[i]->state.store(Task::kTaken, std::memory_order_release);
      if (out[i]->kind == kTaskCall) {
        Taken(out[i]);
        out[k++] = out[i];
      } else
        RunStateStep(out[i]);
    }
    if (k) return k;  // 0 would mean the end: poll again
  }
}

namespace {

// Settles every call that will never be answered: queued ones nobody took,
// and taken ones whose plugin thread is gone. CAS makes a late answer lose.
void AbortLeftovers(RuntimeCore &core) {
  Task *t;
  while (core.requests.try_pop(t)) t->state.store(Task::kTaken);
  for (auto &chunk : core.chunks)
    for (uint32_t i = 0; i < kChunkSlots; i++) {
      Task &x = chunk[i];
      uint32_t expect = Task::kTaken;
      if (x.state.compare_exchange_strong(expect, Task::kDone)) {
        x.rc = 0;
        x.rsp = nullptr;
        x.rsp_len = Task::kAbortedRsp;
        core.aborted.fetch_add(1);
        core.Finish(&x);
      }
    }
}

void FinishUnload(const std::shared_ptr<RuntimeCore> &core, bool release) {
  if (release) {
    ReleaseResult r = Registry::Get().ReleaseRuntime(core->entry);
    core->dlclosed = r.dlclosed;
    core->mapped = r.mapped;
  }
  core->unload_state.store(RuntimeCore::kUnloaded);
  core->Ring();
}

// Host-driven: dlhost's own poll thread, started by the init task.
void HostLoopBody(const std::shared_ptr<RuntimeCore> &core) {
  Task *batch[64];
  for (;;) {
    size_t n = core->requests.pop_batch(batch, 64);
    if (n == 0) break;
    for (size_t i = 0; i < n; i++) {
      Task *t = batch[i];
      t->state.store(Task::kTaken, std::memory_order_relaxed);
      core->Taken(t);
      if (t->kind != kTaskCall) {
        core->RunStateStep(t);
        continue;
      }
      void *rsp = nullptr;
      size_t len = 0;
      int rc = core->handle_fn(core->state, t->req, t->req_len, &rsp, &len);
      RuntimeCore::Respond(t, rc, rsp, len);
    }
  }
  if (core->close_fn) {
    RuntimeCore *c = core.get();
    Registry::Get().RunOnOwner(core->entry, [c] { c->close_fn(c->state); });
  }
  FinishUnload(core, true);
}

// Plugin-driven: wait (bounded) for every thread that polled to exit.
void ReapBody(const std::shared_ptr<RuntimeCore> &core) {
  const bool bounded = core->unload_timeout_ms >= 0;
  const uint64_t deadline =
      bounded ? monotonic_ns() + uint64_t(core->unload_timeout_ms) * 1000000ull : 0;
  uint64_t nap_us = 50;
  bool stuck = false;
  for (;;) {
    // Init succeeded but no thread was handed the end yet: the plugin's
    // threads may not have polled (or even started); their code may run.
    bool alive = (core->init_state.load() == RuntimeCore::kInitOk && core->ends.load() == 0) ||
                 core->untracked_pollers.load();
    try {
      for (pid_t tid : core->PollerTids())
        if (ThreadAlive(tid)) alive = true;
    } catch (const std::bad_alloc &) {
      alive = true;  // can't tell: wait on (bounded)
    }
    if (!alive) break;
    if (bounded && monotonic_ns() > deadline) {
      stuck = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(nap_us));
    nap_us = std::min<uint64_t>(nap_us * 2, 10000);
  }
  AbortLeftovers(*core);
  if (stuck) {
    // Never unmap under a running thread: keep the library and the core
    // (the plugin's threads may still call into it).
    core->threads_stuck = true;
    core->mapped = true;
    Registry::Get().MarkThreadsStuck(core->entry);
    new std::shared_ptr<RuntimeCore>(core);  // deliberate leak
    FinishUnload(core, false);
    return;
  }
  FinishUnload(core, true);
}

// Thread entry points: nothing may escape a thread (std::terminate). What
// could (an allocation failing in the release path) leaves the core and
// its library in place, as for stuck plugin threads.
void Abandon(const std::shared_ptr<RuntimeCore> &core) {
  core->threads_stuck = true;
  new std::shared_ptr<RuntimeCore>(core);  // deliberate leak
  core->unload_state.store(RuntimeCore::kUnloaded);
  core->Ring();
}

void HostLoop(std::shared_ptr<RuntimeCore> core) {
  try {
    HostLoopBody(core);
  } catch (...) {
    Abandon(core);
  }
}

void Reap(std::shared_ptr<RuntimeCore> core) {
  try {
    ReapBody(core);
  } catch (...) {
    Abandon(core);
  }
}

}  // namespace

// A reaper for this runtime; with no thread to be had, reap here (bounded
// by unloadTimeoutMs).
static void StartReaper(const std::shared_ptr<RuntimeCore> &core) {
  try {
    std::thread(Reap, core).detach();
  } catch (const std::exception &) {
    Reap(core);
  }
}

void RuntimeCore::Start(const std::shared_ptr<RuntimeCore> &core, std::string cfg) {
  Registry::Get().PostOnOwner(core->entry, [core, cfg = std::move(cfg)] {
    RuntimeCore &c = *core;
    int rc = 0;
    switch (c.abi) {
      case Abi::kHost:
        if (c.open_fn) {
          c.state = c.open_fn(cfg.c_str(), cfg.size());
          if (!c.state) {
            rc = -1;
            c.init_failure = kOpenNull;
          }
        }
        if (rc == 0 && c.attach_fn) c.attach_fn(c.state, c.q);
        break;
      case Abi::kNative: rc = c.init_fn(cfg.c_str(), cfg.size(), c.q); break;
      case Abi::kLua: {
        // lua-resty-ffi: a mutable NUL-terminated copy, freed after init returns.
        char *copy = static_cast<char *>(malloc(cfg.size() + 1));
        if (!copy) {
          rc = -1;
          c.init_failure = kNoResource;
          break;
        }
        memcpy(copy, cfg.data(), cfg.size());
        copy[cfg.size()] = 0;
        rc = c.lua_init_fn(copy, c.q);
        free(copy);
        break;
      }
    }
    bool ok = rc == 0;
    if (ok && c.abi == Abi::kHost) {
      try {
        std::thread(HostLoop, core).detach();
      } catch (const std::exception &) {
        if (c.close_fn) c.close_fn(c.state);
        c.init_failure = kNoResource;
        ok = false;
        rc = -1;
      }
    }
    c.init_rc = rc;
    c.init_state.store(ok ? kInitOk : kInitFailed);
    if (!ok) {
      // Nothing will run: abort what is queued and drop the library, on a
      // reaper (the release needs this thread free), else from the JS
      // thread's next settle.
      c.unload_state.store(kClosing);
      c.requests.close();
      try {
        std::thread(Reap, core).detach();
      } catch (const std::exception &) {
        c.reap_later = true;
      }
    }
    c.Ring();
  });
}

void RuntimeCore::BeginUnload(const std::shared_ptr<RuntimeCore> &core) {
  int expect = kRunning;
  if (!core->unload_state.compare_exchange_strong(expect, kClosing)) return;
  core->requests.close();
  // Host-driven: the poll thread (or, while init runs, the init task)
  // finishes the queue and drops the library.
  if (core->abi != Abi::kHost) StartReaper(core);
}

void RuntimeCore::ReapNow(const std::shared_ptr<RuntimeCore> &core) {
  if (core->reap_later.exchange(false)) Reap(core);
}

}  // namespace dlhost
