// host_main.cc: dlhost-host, the child process of an isolated runtime (and
// of a probe load). A small native host: it loads one library with the same
// registry and runtime core as the addon, and serves the calls the parent
// sends through the channel (channel.h). Threads: main (the writer:
// completions and lifecycle -> responses), the reader (requests -> tasks),
// the lifeline (parent gone -> exit), and those of the runtime core.
//
//   dlhost-host --parent PID --lib PATH --abi N [--global] [--max-queue N]
//               [--unload-timeout-ms N] [--memory-mb N] [--cpu-seconds N]
//               [--open-files N] [--ring-bytes N] [--probe]
//   fd 0: the lifeline (EOF: the parent is gone); fd 3: the channel memfd;
//   fd 4: the doorbell (a pipe the parent polls).
// --probe: dlopen and init, then exit 0 (or die of what the build does).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "../channel.h"
#include "../clock.h"
#include "../registry.h"
#include "../runtime_core.h"

using namespace dlhost;

namespace {

struct Args {
  long parent = 0;
  std::string lib;
  int abi = 0;
  bool global = false, probe = false;
  long max_queue = kDefaultMaxQueue, unload_timeout_ms = kDefaultUnloadTimeoutMs;
  long memory_mb = 0, cpu_seconds = 0, open_files = 0;
  uint64_t ring_bytes = 0;
};

ChannelShared *chan = nullptr;
int doorbell = -1;
uint64_t memory_limit = 0;

[[noreturn]] void Die(const char *what) {
  fprintf(stderr, "dlhost-host: %s\n", what);
  _exit(70);
}

// A crash: say which limit was near (best effort, async-signal-safe calls
// only), then die of the signal as the parent expects.
void OnCrash(int sig) {
  if (chan && sig == SIGXCPU) chan->limit.store(2);
  signal(sig, SIG_DFL);
  raise(sig);
}

void InstallCrashHandlers() {
  static char altstack[64 * 1024];
  stack_t ss{};
  ss.ss_sp = altstack;
  ss.ss_size = sizeof altstack;
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_handler = OnCrash;
  sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
  for (int s : {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE, SIGXCPU}) sigaction(s, &sa, nullptr);
}

void Limit(int resource, long value, long hard_extra = 0) {
  if (value <= 0) return;
  struct rlimit rl;
  rl.rlim_cur = rlim_t(value);
  rl.rlim_max = rlim_t(value + hard_extra);
  setrlimit(resource, &rl);
}

// Response writer (main thread only).
void Ding() {
  if (chan->host_spinning.load(std::memory_order_seq_cst)) return;
  char c = 1;
  if (write(doorbell, &c, 1) < 0 && errno == EPIPE) _exit(0);
}
void Write(uint32_t id, int32_t rc, const void *payload, size_t len, uint32_t b) {
  FrameHeader h{0, id, uint32_t(rc), b};
  uint64_t cap = chan->ring_bytes;
  uint64_t spin_until = monotonic_ns() + kDefaultSpinNs;
  while (!RingWrite(chan->rsp, RspData(chan), cap, h, payload, len)) {
    Ding();  // the host may be parked with our answers waiting
    if (monotonic_ns() < spin_until) {
      sched_yield();
      continue;
    }
    uint32_t key = chan->rsp.space.prepare_wait();
    uint64_t head = chan->rsp.head.load(), tail = chan->rsp.tail.load();
    if (tail + FrameSize(len) - head <= cap) {
      chan->rsp.space.cancel_wait(key);
      continue;
    }
    chan->rsp.space.commit_wait(key);
  }
}
// A payload longer than one frame goes in pieces: kEventMore frames, then
// the last piece in the frame of the answer itself.
void WriteAnswer(uint32_t id, int32_t rc, const char *p, size_t len) {
  size_t max = MaxFramePayload(chan->ring_bytes) - sizeof(uint32_t);
  std::vector<char> piece;
  while (len > max) {
    piece.resize(sizeof(uint32_t) + max);
    memcpy(piece.data(), &id, sizeof id);
    memcpy(piece.data() + sizeof id, p, max);
    Write(kControlId, kEventMore, piece.data(), piece.size(), uint32_t(piece.size()));
    p += max;
    len -= max;
  }
  Write(id, rc, p, len, uint32_t(len));
}

// Service times, into the channel's header (this thread only writes it).
LatencyHistogram service;

// Slots: taken for requests, given back with their answers (one thread,
// the channel thread; the lock keeps that true if it ever is not).
std::mutex free_mu;
std::vector<uint32_t> free_slots;

// The core's doorbell (any thread of this process): the channel thread
// parks on the request ring's event count, so one futex word wakes it for
// requests and for answers alike.
void RingChannel(void *) { chan->req.items.notify_all(); }

// The channel thread's state.
struct Channel {
  std::shared_ptr<RuntimeCore> core;
  std::unordered_map<uint32_t, std::string> partial;  // requests in pieces
  std::vector<Task *> batch;
  // The child's slot of each call in flight, by the host's id (dense: the
  // host's slot numbers), for a cancel.
  std::vector<uint32_t> slot_of;
  bool unloading = false;
  // Host-driven: the handler runs on this thread, in order, as the host
  // poll thread would run it (one thread hop less each way).
  bool direct = false;
  // The host's message iterator is full: messages wait in the core's
  // bounded queue (dlhost_emit refuses once it is full).
  bool messages_held = false;
};

void SubmitBatch(Channel &ch) {
  if (ch.batch.empty()) return;
  if (ch.core->SubmitBatch(ch.batch.data(), ch.batch.size()) < long(ch.batch.size())) {
    for (Task *t : ch.batch) {  // closed under us: answered as never run
      t->state.store(Task::kDone);
      t->rsp_len = Task::kAbortedRsp;
      ch.core->Complete(t);
    }
  }
  ch.batch.clear();
}

// Every request frame there is now; true if any was taken.
bool ReadRequests(Channel &ch) {
  RuntimeCore &core = *ch.core;
  const uint64_t cap = chan->ring_bytes;
  bool any = false;
  FrameHeader h;
  while (!ch.unloading && RingPeek(chan->req, ReqData(chan), cap, &h)) {
    if (h.id == kControlId) {
      uint32_t args[2] = {0, 0};
      size_t want = (h.b & kFrameStreamRead) ? sizeof args : sizeof args[0];
      bool has_arg = (h.b & (kFrameCancel | kFrameMessageFlow | kFrameStreamRead)) && h.a == want;
      RingTake(chan->req, ReqData(chan), cap, h, has_arg ? args : nullptr, has_arg ? want : 0);
      uint32_t arg = args[0];
      any = true;
      if (has_arg && (h.b & kFrameStreamRead) && arg < ch.slot_of.size() &&
          ch.slot_of[arg] < core.slots) {
        Task *t = core.Slot(ch.slot_of[arg]);
        if (t->call == arg && t->stream_hwm > 0 && t->state.load() != Task::kFree)
          t->unread.fetch_sub(int32_t(args[1]));
      }
      if (has_arg && (h.b & kFrameMessageFlow)) ch.messages_held = arg == 0;
      bool cancel = has_arg && (h.b & kFrameCancel);
      uint32_t cancel_id = arg;
      if (cancel && cancel_id < ch.slot_of.size() && ch.slot_of[cancel_id] < core.slots) {
        Task *t = core.Slot(ch.slot_of[cancel_id]);
        if (t->call == cancel_id && t->state.load() != Task::kFree) t->cancelled.store(1);
      }
      if (h.b & kFrameUnload) {
        SubmitBatch(ch);
        ch.unloading = true;
        RuntimeCore::BeginUnload(ch.core);
      }
      continue;
    }
    // A host-driven plugin is called here, once its init succeeded.
    if (ch.direct && core.init_state.load() != RuntimeCore::kInitOk) break;
    any = true;
    // Most requests come in one frame: straight to where they go; a
    // request in pieces is gathered first.
    std::string gathered;
    bool whole = !(h.b & kFrameMore) && ch.partial.empty();
    if (!whole) {
      auto it = ch.partial.find(h.id);
      if (it != ch.partial.end()) gathered.swap(it->second), ch.partial.erase(it);
      size_t at = gathered.size();
      gathered.resize(at + h.a);
      RingTake(chan->req, ReqData(chan), cap, h, &gathered[at], h.a);
      if (h.b & kFrameMore) {
        ch.partial[h.id].swap(gathered);
        continue;
      }
    }
    size_t len = whole ? h.a : gathered.size();
    if (ch.direct) {
      char small[512];
      std::unique_ptr<char[]> big;
      char *req = len < sizeof small ? small : (big.reset(new char[len + 1]), big.get());
      if (whole)
        RingTake(chan->req, ReqData(chan), cap, h, req, len);
      else
        memcpy(req, gathered.data(), len);
      req[len] = 0;
      void *rsp = nullptr;
      size_t rsp_len = 0;
      int rc;
      if (h.b & kFrameStateExport)
        rc = core.export_fn ? core.export_fn(core.state, &rsp, &rsp_len) : kRcNoStateEntry;
      else if (h.b & kFrameStateImport)
        rc = core.import_fn ? core.import_fn(core.state, req, len) : kRcNoStateEntry;
      else {
        uint64_t t0 = monotonic_ns();
        rc = core.handle_fn(core.state, req, len, &rsp, &rsp_len);
        service.Record(monotonic_ns() - t0);
      }
      WriteAnswer(h.id, rc, static_cast<const char *>(rsp), rsp ? rsp_len : 0);
      free(rsp);
      continue;
    }
    uint32_t slot;
    {
      std::lock_guard<std::mutex> lock(free_mu);
      if (free_slots.empty()) {
        uint32_t c = core.Grow();
        for (uint32_t i = kChunkSlots; i-- > 0;) free_slots.push_back((c << kChunkBits) + i);
      }
      slot = free_slots.back();
      free_slots.pop_back();
    }
    Task *t = core.Slot(slot);
    char *dst = t->inline_buf;
    if (len > kSlotInline) {
      dst = static_cast<char *>(malloc(len + 1));
      if (!dst) Die("out of memory for a request");
    }
    if (whole)
      RingTake(chan->req, ReqData(chan), cap, h, dst, len);
    else
      memcpy(dst, gathered.data(), len);
    dst[len] = 0;
    t->req = dst;
    t->req_len = len;
    t->call = h.id;
    t->stream_hwm = (h.b & kFrameStream) ? int32_t(h.b >> 16) : 0;
    t->kind = (h.b & kFrameStateExport)   ? kTaskStateExport
              : (h.b & kFrameStateImport) ? kTaskStateImport
                                          : kTaskCall;
    if (h.id >= ch.slot_of.size()) ch.slot_of.resize(size_t(h.id) + 1024, UINT32_MAX);
    ch.slot_of[h.id] = slot;
    t->state.store(Task::kQueued, std::memory_order_relaxed);
    ch.batch.push_back(t);
    if (ch.batch.size() == 64) SubmitBatch(ch);
  }
  SubmitBatch(ch);
  return any;
}

// Every message the plugin emitted, to the host (unless it holds them).
bool WriteMessages(Channel &ch) {
  if (ch.messages_held) return false;
  Message *list = ch.core->messages.TakeAll();
  if (!list) return false;
  size_t n = 0;
  for (Message *m = list; m; n++) {
    Message *next = m->cq_next.load(std::memory_order_relaxed);
    Write(kControlId, kEventMessage, m->data(), m->len, uint32_t(m->len));
    Message::Free(m);
    m = next;
  }
  ch.core->messages.Consumed(n);
  return true;
}

// Every answer there is now into the response ring; true if any.
// Every stream chunk sent so far, to the host: {u32 id} then the bytes.
bool WriteChunks(Channel &ch) {
  Message *list = ch.core->stream_chunks.pop_all();
  if (!list) return false;
  std::vector<char> frame;
  for (Message *m = list; m;) {
    Message *next = m->cq_next.load(std::memory_order_relaxed);
    frame.resize(sizeof m->id + m->len);
    memcpy(frame.data(), &m->id, sizeof m->id);
    memcpy(frame.data() + sizeof m->id, m->data(), m->len);
    Write(kControlId, kEventChunk, frame.data(), frame.size(), uint32_t(frame.size()));
    Message::Free(m);
    m = next;
  }
  return true;
}

// Every answer there is now into the response ring, each after the stream
// chunks sent before it; true if any.
bool WriteCompletions(Channel &ch) {
  Task *list = ch.core->TakeCompletions();
  bool chunks = WriteChunks(ch);  // taken after the answers: every chunk before one is here
  if (!list) return chunks;
  ch.core->requests.settled_at(monotonic_ns());
  std::vector<uint32_t> freed;
  for (Task *t = list; t;) {
    Task *next = t->cq_next.load(std::memory_order_relaxed);
    t->cq_next.store(nullptr, std::memory_order_relaxed);
    if (t->rsp_len == Task::kAbortedRsp)
      Write(t->call, 0, nullptr, 0, kFrameAborted);
    else
      WriteAnswer(t->call, t->rc, static_cast<const char *>(t->rsp), t->rsp_len);
    if (t->service_ns && t->kind == kTaskCall) service.Record(t->service_ns);
    t->DropRsp();
    freed.push_back(t->id);
    t->Reset();
    t = next;
  }
  std::lock_guard<std::mutex> lock(free_mu);
  free_slots.insert(free_slots.end(), freed.begin(), freed.end());
  return true;
}

}  // namespace

namespace {

bool ParseArgs(int argc, char **argv, Args &a) {
  for (int i = 1; i < argc; i++) {
    std::string k = argv[i];
    auto num = [&](long &out) {
      if (i + 1 >= argc) return false;
      out = strtol(argv[++i], nullptr, 10);
      return true;
    };
    long v = 0;
    if (k == "--parent") {
      if (!num(a.parent)) return false;
    } else if (k == "--lib" && i + 1 < argc)
      a.lib = argv[++i];
    else if (k == "--abi") {
      if (!num(v)) return false;
      a.abi = int(v);
    } else if (k == "--global")
      a.global = true;
    else if (k == "--probe")
      a.probe = true;
    else if (k == "--max-queue") {
      if (!num(a.max_queue)) return false;
    } else if (k == "--unload-timeout-ms") {
      if (!num(a.unload_timeout_ms)) return false;
    } else if (k == "--memory-mb") {
      if (!num(a.memory_mb)) return false;
    } else if (k == "--cpu-seconds") {
      if (!num(a.cpu_seconds)) return false;
    } else if (k == "--open-files") {
      if (!num(a.open_files)) return false;
    } else if (k == "--ring-bytes") {
      if (!num(v)) return false;
      a.ring_bytes = uint64_t(v);
    } else
      return false;
  }
  return !a.lib.empty() && a.abi >= 0 && a.abi <= 2;
}

// Resident memory every 5 ms; past the limit: say so, and die.
void MemoryWatch() {
  const long page = sysconf(_SC_PAGESIZE);
  for (;;) {
    FILE *f = fopen("/proc/self/statm", "re");
    unsigned long size = 0, resident = 0;
    if (f) {
      if (fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
      fclose(f);
    }
    if (uint64_t(resident) * uint64_t(page) > memory_limit) {
      if (chan) chan->limit.store(1);
      kill(getpid(), SIGKILL);
    }
    usleep(5000);
  }
}

// The lifeline: the parent holds the other end of fd 0; EOF means it is gone.
void Lifeline() {
  char buf[64];
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EINTR)) _exit(0);
  }
}

void InitEvent(int32_t rc, int32_t failure, const std::string &message) {
  std::string p(8, '\0');
  memcpy(&p[0], &rc, 4);
  memcpy(&p[4], &failure, 4);
  p += message;
  Write(kControlId, kEventInit, p.data(), p.size(), uint32_t(p.size()));
  Ding();
}

}  // namespace

int main(int argc, char **argv) {
  Args a;
  if (!ParseArgs(argc, argv, a)) Die("bad arguments");
  // Die with the parent: the signal when the thread that made us ends, the
  // pipe when the process does (whichever comes first), and a check for a
  // parent that died before the signal was armed.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (a.parent && getppid() != pid_t(a.parent)) _exit(0);
  signal(SIGPIPE, SIG_IGN);
  // memoryMb is resident memory, sampled by a watchdog (an address-space
  // rlimit would count thread stacks and malloc arenas' reservations, and a
  // failed malloc says nothing of why).
  memory_limit = uint64_t(a.memory_mb) * 1024 * 1024;
  if (memory_limit) std::thread(MemoryWatch).detach();
  // The soft limit sends SIGXCPU (named as the limit by the crash handler);
  // the hard one, a second later, SIGKILL for a plugin that ignores it.
  Limit(RLIMIT_CPU, a.cpu_seconds, 1);
  Limit(RLIMIT_NOFILE, a.open_files);
  InstallCrashHandlers();
  if (!a.probe) std::thread(Lifeline).detach();

  if (a.probe) {
    // dlopen (constructors) and init on the library's owner thread, as a
    // host would; the cfg is all of stdin; the parent reads the status.
    std::string cfg;
    char buf[4096];
    for (ssize_t n; (n = read(0, buf, sizeof buf)) != 0;) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      cfg.append(buf, size_t(n));
    }
    std::shared_ptr<RuntimeCore> core;
    try {
      EntryPtr e =
          Registry::Get().Open(a.lib, (a.global ? uint32_t(kGlobal) : 0u) | uint32_t(kPin));
      core = std::make_shared<RuntimeCore>(e, Abi(a.abi), 64, 0);
      if (const char *missing = core->ResolveEntry()) {
        fprintf(stderr, "dlhost-host: the library does not export %s\n", missing);
        _exit(3);
      }
      Registry::Get().AcquireRuntime(e);
    } catch (const LoadError &e) {
      fprintf(stderr, "dlhost-host: %s\n", e.message.c_str());
      _exit(4);
    }
    RuntimeCore::Start(core, std::move(cfg));
    for (int i = 0; i < 10000 && core->init_state.load() == RuntimeCore::kInitPending; i++)
      usleep(1000);
    int st = core->init_state.load();
    if (st != RuntimeCore::kInitOk)
      fprintf(stderr, "dlhost-host: init %s (rc %d)\n",
              st == RuntimeCore::kInitFailed ? "failed" : "did not return", core->init_rc.load());
    _exit(st == RuntimeCore::kInitOk ? 0 : 5);
  }

  struct stat st;
  if (fstat(3, &st) != 0 || st.st_size < off_t(kChannelHeader)) Die("no channel on fd 3");
  void *map = mmap(nullptr, size_t(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, 3, 0);
  if (map == MAP_FAILED) Die("cannot map the channel");
  chan = static_cast<ChannelShared *>(map);
  if (chan->magic != kChannelMagic || chan->version != kChannelVersion ||
      ChannelBytes(chan->ring_bytes) > size_t(st.st_size))
    Die("not a dlhost channel");
  doorbell = 4;

  // The cfg comes first, as a control frame.
  FrameHeader h;
  std::string cfg;
  for (;;) {
    uint32_t key = chan->req.items.prepare_wait();
    if (RingPeek(chan->req, ReqData(chan), chan->ring_bytes, &h)) {
      chan->req.items.cancel_wait(key);
      break;
    }
    chan->req.items.commit_wait(key);
  }
  cfg.resize(h.a);
  RingTake(chan->req, ReqData(chan), chan->ring_bytes, h, &cfg[0], h.a);

  std::shared_ptr<RuntimeCore> core;
  try {
    EntryPtr e = Registry::Get().Open(a.lib, (a.global ? uint32_t(kGlobal) : 0u) | uint32_t(kPin));
    core = std::make_shared<RuntimeCore>(e, Abi(a.abi), size_t(a.max_queue), a.unload_timeout_ms);
    if (const char *missing = core->ResolveEntry()) {
      InitEvent(-1, 3, std::string("the library does not export ") + missing);
      _exit(0);
    }
    Registry::Get().AcquireRuntime(e);
  } catch (const LoadError &e) {
    InitEvent(-1, 4, e.code.empty() ? e.message : e.code + ": " + e.message);
    _exit(0);
  }
  {
    std::lock_guard<std::mutex> lock(core->bell_mu);
    core->bell = RingChannel;
  }
  core->messages.Mirror(&chan->messages_refused);
  core->keyed_by_call = true;
  core->time_service.store(true);
  service.Attach(chan->service);
  RuntimeCore::Start(core, std::move(cfg));
  // The channel thread (this one): requests in, answers and lifecycle out.
  Channel ch;
  ch.core = core;
  // A plugin that emits from its own threads (it takes dlhost_attach) runs
  // on the host poll thread instead: a long handler must not stop this
  // thread from forwarding its messages.
  ch.direct = core->abi == Abi::kHost && !core->attach_fn;
  bool init_sent = false;
  for (;;) {
    // The init event goes before any message: the host's load() resolves on
    // it, and only then can a listener be attached. Messages emitted from
    // init on wait in the core's queue until it is out.
    bool progress = false;
    if (!init_sent && core->init_state.load() != RuntimeCore::kInitPending) {
      init_sent = true;
      InitEvent(core->init_rc.load(), core->init_failure.load(), "");
      progress = true;
    }
    progress = ReadRequests(ch) || progress;
    progress = WriteCompletions(ch) || progress;
    if (init_sent) progress = WriteMessages(ch) || progress;
    if (core->unload_state.load() == RuntimeCore::kUnloaded && core->completions.empty_approx()) {
      WriteCompletions(ch);
      ch.messages_held = false;  // what the plugin said before it ended goes out first
      WriteMessages(ch);
      char p[12] = {0};
      p[0] = core->dlclosed.load();
      p[1] = core->mapped.load();
      p[2] = core->threads_stuck.load();
      uint32_t misuse = uint32_t(core->misuse.load()), aborted = uint32_t(core->aborted.load());
      memcpy(p + 4, &misuse, 4);
      memcpy(p + 8, &aborted, 4);
      Write(kControlId, kEventUnloaded, p, sizeof p, sizeof p);
      chan->host_spinning.store(0);
      Ding();
      // Nothing of the library runs any more (or its threads never leave:
      // a Go runtime); the process, not dlclose, takes it out.
      _exit(0);
    }
    if (progress) {
      Ding();
      continue;
    }
    // Spin, then park (the same policy as the other waiters).
    FrameHeader h;
    auto idle = [&] {
      return core->completions.empty_approx() && core->stream_chunks.empty_approx() &&
             (ch.messages_held || core->messages.EmptyApprox()) &&
             (ch.unloading || (ch.direct && core->init_state.load() != RuntimeCore::kInitOk) ||
              !RingPeek(chan->req, ReqData(chan), chan->ring_bytes, &h)) &&
             (init_sent || core->init_state.load() == RuntimeCore::kInitPending) &&
             core->unload_state.load() != RuntimeCore::kUnloaded;
    };
    for (uint64_t until = monotonic_ns() + kDefaultSpinNs; idle() && monotonic_ns() < until;)
      sched_yield();
    uint32_t key = chan->req.items.prepare_wait();
    if (!idle()) {
      chan->req.items.cancel_wait(key);
      continue;
    }
    chan->req.items.commit_wait(key);
  }
}
