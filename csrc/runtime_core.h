// runtime_core.h: Level 2, one runtime = one loaded library + cfg + a request
// queue + the thread(s) that poll it. No N-API here: every member may be used
// from any thread unless its comment says otherwise (docs/architecture.md has
// the thread map).
#pragma once

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "clock.h"
#include "constants.h"
#include "include/dlhost.h"
#include "messages.h"
#include "queue.h"
#include "registry.h"

namespace dlhost {

class RuntimeCore;

// One call. Slots live in RuntimeCore's chunks for the core's whole life, so
// a plugin answering twice touches valid memory and is caught by `state`.
// The JS side owns the choice of slot (its free list), and writes small
// requests straight into the slot's inline bytes: the one copy.
struct BatchCore;

struct Task {
  enum State : uint32_t { kFree = 0, kQueued, kTaken, kDone };
  static constexpr uint32_t kMagic = 0xd1a05c0d;
  // rsp_len of a call that will never be answered (its plugin threads left).
  static constexpr size_t kAbortedRsp = SIZE_MAX;

  std::atomic<Task *> cq_next{nullptr};
  std::atomic<uint32_t> state{kFree};
  uint32_t magic = kMagic;
  uint32_t id = 0;            // slot index, the JS side's key for this call
  uint32_t call = 0;          // in an isolated runtime's child: the host's key for this call
  uint32_t kind = kTaskCall;  // TaskKind, set before submit
  uint64_t submit_ns = 0;     // when its batch was submitted (latency metrics)
  // Service time (metrics, while core->time_service): taken -> answered.
  uint64_t taken_ns = 0, service_ns = 0;
  // Non-zero once the caller gave up (dlhost_task_cancelled); any thread.
  std::atomic<uint32_t> cancelled{0};
  // A stream (runtime.stream()): its reader's high-water mark in chunks (set
  // before submit; 0 for a plain call), and chunks sent and not yet read.
  int32_t stream_hwm = 0;
  std::atomic<int32_t> unread{0};
  RuntimeCore *core = nullptr;
  // Request: owned by the host; req points to inline_buf or to a malloc
  // (big, set before submit by the wrapper's setBig).
  char *req = nullptr;
  size_t req_len = 0;
  // Response: malloc'd by the plugin, owned by the host after respond. A
  // small one is moved into inline_buf by the answering thread (Respond), so
  // the plugin's malloc is freed on the thread that made it: glibc's
  // per-thread cache then serves its next malloc, where a free on the JS
  // thread cost both threads a trip through the arena.
  int rc = 0;
  void *rsp = nullptr;
  size_t rsp_len = 0;
  char *inline_buf = nullptr;  // kSlotStride bytes in the chunk's area
  // An item of a callBatch(): answered, it counts down its batch instead of
  // being queued for the JS thread (set before submit).
  BatchCore *batch = nullptr;

  // Back to kFree, dropping what the task owns (a big request). The response
  // was handed over or freed by whoever settled the call.
  void Reset();
  // Frees the response unless it sits in inline_buf.
  void DropRsp() {
    if (rsp != inline_buf) free(rsp);
    rsp = nullptr;
  }
};

// One callBatch() in flight: its items are answered one by one, and the
// last answer (or the submitting JS thread, if every item was answered
// before it finished submitting) queues one item for the JS thread, which
// settles the whole batch in one go. Pooled per core by the TypeScript
// side's batch handle; freed with the core, never while a thread may still
// count one down.
struct BatchCore {
  // Items queued and not answered, + 1 while the JS thread submits.
  std::atomic<uint32_t> remaining{0};
  std::vector<Task *> tasks;  // the queued items in order (JS thread only)
  uint32_t handle = 0;
};

}  // namespace dlhost

// The opaque queue handed to plugins. Its memory is recycled, never freed
// (runtime_core.cc): a plugin thread that emits after its runtime ended
// finds core == nullptr and is refused, never touching freed memory.
struct dlhost_queue {
  std::atomic<dlhost::RuntimeCore *> core{nullptr};
  std::atomic<uint32_t> emitters{0};  // dlhost_emit calls inside, now
};

namespace dlhost {

// Everything a runtime's threads share. Owned by shared_ptr: the JS wrapper,
// the host poll thread and the reaper each hold one; a core whose plugin
// threads never left is leaked on purpose (they may still call into it).
class RuntimeCore : public std::enable_shared_from_this<RuntimeCore> {
 public:
  RuntimeCore(EntryPtr entry, Abi abi, size_t max_queue, int64_t unload_timeout_ms);
  ~RuntimeCore();

  // Resolves the ABI's entry points (JS thread, before Start). Returns the
  // name of the ABI's entry symbol when the library lacks it, else null.
  const char *ResolveEntry();

  // ---- JS thread
  uint32_t Grow();  // one more chunk of slots; returns its index
  // tasks[0..n) (state kQueued already) in order; how many were queued (a
  // prefix), or -1 if closed.
  long SubmitBatch(Task *const *tasks, size_t n);
  Task *TakeCompletions();  // FIFO list via cq_next
  Task *Slot(uint32_t id) { return &chunks[id >> kChunkBits][id & (kChunkSlots - 1)]; }
  // Runs the plugin's init (dlhost_open, dlhost_init or libffi_init) on the
  // library's owner thread and returns at once; the result comes through
  // init_state + Ring(). Host-driven: on success the owner thread starts the
  // poll thread. A failed init unloads the runtime (reaper).
  static void Start(const std::shared_ptr<RuntimeCore> &core, std::string cfg);
  // The one unload path: closes the queue (the sentinel); the host poll
  // thread or, for plugin-driven runtimes, a reaper then drops the library.
  // Idempotent.
  static void BeginUnload(const std::shared_ptr<RuntimeCore> &core);
  // JS thread: a failed init found no thread for its reaper; reap here.
  static void ReapNow(const std::shared_ptr<RuntimeCore> &core);

  // The batch state of TypeScript's batch handle h (created on first use).
  BatchCore *Batch(uint32_t h);

  // ---- any thread
  void Complete(Task *t);  // into the completion queue, ring if needed
  // An answered task: Complete(), or its batch counted down (and the batch
  // completed by the last one).
  void Finish(Task *t);
  // dlhost_emit: DLHOST_OK or the documented refusal.
  static int Emit(dlhost_queue *q, const void *data, size_t len);
  // dlhost_task_send / dlhost_task_writable (any plugin thread).
  static int Send(Task *t, const void *data, size_t len);
  static bool Writable(Task *t);
  static void Respond(Task *t, int rc, void *rsp, size_t len);  // plugin ABI
  Task *Poll();  // plugin ABI, records the polling thread
  // A state step (kind != kTaskCall) run by the thread that took it; it is
  // answered like a call.
  void RunStateStep(Task *t);
  size_t PollBatch(Task **out, size_t max);
  size_t Pollers();
  std::vector<pid_t> PollerTids();

  // Doorbell to whoever settles calls (the JS thread: a uv_async_t; in a
  // child host: its writer thread); set and cleared under bell_mu, so no
  // thread rings a doorbell that is gone.
  void Ring();
  std::mutex bell_mu;
  void (*bell)(void *) = nullptr;
  void *bell_arg = nullptr;
  std::atomic<bool> js_spinning{false};

  const EntryPtr entry;
  const Abi abi;
  const uint64_t serial;  // unique per core, for per-thread poller records
  dlhost_queue *const q;  // from the recycling pool; the plugin's handle
  TaskQueue<Task> requests;
  CompletionQueue<Task> completions;
  MessageQueue messages{kDefaultMaxMessages};
  // Stream chunks (Message::id: the task's key), bounded per task by its
  // reader's high-water mark; taken after the completions they precede.
  CompletionQueue<Message> stream_chunks;
  // Nobody will read messages or chunks any more (the JS environment went
  // away): emits and sends are refused at once (DLHOST_ECLOSED,
  // DLHOST_ECANCELLED), so plugin threads that retry are not kept spinning.
  std::atomic<bool> readers_gone{false};
  // Time tasks from taken to answered: the service time canary analysis
  // compares (metrics.ts). A sample, one slot in kServiceSample (two clock
  // reads on the plugin's thread cost a fast handler 25 % of its time):
  // slots are reused in turn, so the sample is spread over every call.
  static constexpr uint32_t kServiceSample = 8;
  std::atomic<bool> time_service{false};
  void Taken(Task *t) {
    if ((t->id & (kServiceSample - 1)) == 0 && time_service.load(std::memory_order_relaxed))
      t->taken_ns = monotonic_ns();
  }
  // In an isolated runtime's child: chunks carry Task::call (the host's key).
  bool keyed_by_call = false;

  // Plugin entry points (resolved on the JS thread before start).
  dlhost_open_fn open_fn = nullptr;
  dlhost_handle_fn handle_fn = nullptr;
  dlhost_close_fn close_fn = nullptr;
  dlhost_init_fn init_fn = nullptr;
  libffi_init_fn lua_init_fn = nullptr;
  dlhost_state_export_fn export_fn = nullptr;
  dlhost_state_import_fn import_fn = nullptr;
  dlhost_attach_fn attach_fn = nullptr;
  void *state = nullptr;  // dlhost_open's result

  // Lifecycle, written by worker threads, read by the JS thread on a ring.
  enum InitState : int { kInitPending = 0, kInitOk = 1, kInitFailed = 2 };
  enum UnloadState : int { kRunning = 0, kClosing = 1, kUnloaded = 2 };
  std::atomic<int> init_state{kInitPending};
  std::atomic<int> init_rc{0};
  std::atomic<int> unload_state{kRunning};
  std::atomic<bool> dlclosed{false}, mapped{true}, threads_stuck{false};
  std::atomic<uint64_t> misuse{0};
  // Polls that returned the end (NULL / 0). A plugin-driven runtime whose
  // init succeeded has threads we may not have seen poll yet: until one of
  // them was handed the end, its code may still be about to run.
  std::atomic<uint64_t> ends{0};
  std::atomic<uint64_t> aborted{0};
  const int64_t unload_timeout_ms;  // < 0: no limit
  // Why init failed when it is not an init rc: no thread (or memory) could
  // be had, or dlhost_open returned NULL.
  enum InitFailure : int { kPluginRc = 0, kNoResource = 1, kOpenNull = 2 };
  std::atomic<int> init_failure{kPluginRc};
  std::atomic<bool> reap_later{false};
  std::atomic<bool> untracked_pollers{false};

  // Slots (JS thread only, except that workers read Task contents).
  std::vector<std::unique_ptr<Task[]>> chunks;
  std::vector<std::unique_ptr<char[]>> areas;  // kChunkSlots * kSlotStride bytes each
  uint32_t slots = 0;
  std::vector<std::unique_ptr<BatchCore>> batches;  // by handle (JS thread only)

 private:
  void RecordPoller();
  std::mutex tids_mu_;
  std::vector<pid_t> tids_;  // every thread that polled (plugin-driven ABIs)
};

}  // namespace dlhost
