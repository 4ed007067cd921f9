// Level 2: one runtime = one loaded library + cfg + a request queue + the
// thread(s) that poll it. See docs/architecture.md for the thread map.
#pragma once

#include <napi.h>
#include <uv.h>

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "include/dlhost.h"
#include "library.h"
#include "queue.h"

namespace dlhost {

class RuntimeCore;

enum class Abi { kHost = 0, kNative = 1, kLua = 2 };

// One call. Slots live in RuntimeCore's chunks for the core's whole life, so
// a plugin answering twice touches valid memory and is caught by `state`.
// The JS side owns the choice of slot (its free list), and writes small
// requests straight into the slot's inline bytes: the one copy.
struct Task {
  enum State : uint32_t { kFree = 0, kQueued, kTaken, kDone };
  static constexpr uint32_t kMagic = 0xd1a05c0d;
  static constexpr size_t kStride = 128;         // inline bytes per slot
  static constexpr size_t kInline = kStride - 1;  // + the NUL the ABI promises

  std::atomic<Task *> cq_next{nullptr};
  std::atomic<uint32_t> state{kFree};
  uint32_t magic = kMagic;
  uint32_t id = 0;  // slot index, the JS side's key for this call
  RuntimeCore *core = nullptr;
  // Request: owned by the host; req points to inline_buf or to a malloc
  // (big, set before submit by SetBig).
  char *req = nullptr;
  size_t req_len = 0;
  // Response: malloc'd by the plugin, owned by the host after respond.
  int rc = 0;
  void *rsp = nullptr;
  size_t rsp_len = 0;
  char *inline_buf = nullptr;  // kStride bytes in the chunk's area
};

}  // namespace dlhost

// The opaque queue handed to plugins.
struct dlhost_queue {
  dlhost::RuntimeCore *core;
};

namespace dlhost {

// Everything a runtime's threads share. Owned by shared_ptr: the JS wrapper,
// the host poll thread and the reaper each hold one; a core whose plugin
// threads never left is leaked on purpose (they may still call into it).
class RuntimeCore {
 public:
  RuntimeCore(EntryPtr entry, Abi abi, size_t max_queue, uint64_t spin_ns);
  ~RuntimeCore();

  // ---- JS thread
  uint32_t Grow();             // one more chunk of slots; returns its index
  void FreeTask(Task *t);
  // tasks[0..n) (state kQueued already) in order; how many were queued (a
  // prefix), or -1 if closed.
  long SubmitBatch(Task *const *tasks, size_t n);
  Task *TakeCompletions();     // FIFO list via cq_next

  // ---- any thread
  void Complete(Task *t);      // into the completion queue, ring if needed
  static void Respond(Task *t, int rc, void *rsp, size_t len);  // plugin ABI
  Task *Poll();                // plugin ABI, records the polling thread
  size_t PollBatch(Task **out, size_t max);
  void RecordPoller();

  // Doorbell to the JS thread; set/cleared on the JS thread under bell_mu.
  void Ring();
  std::mutex bell_mu;
  uv_async_t *bell = nullptr;
  std::atomic<bool> js_spinning{false};

  EntryPtr entry;
  Abi abi;
  uint64_t serial;  // unique per core, for per-thread poller records
  dlhost_queue q{this};
  TaskQueue<Task> requests;
  CompletionQueue<Task> completions;

  // Plugin entry points (resolved on the JS thread before start).
  dlhost_open_fn open_fn = nullptr;
  dlhost_handle_fn handle_fn = nullptr;
  dlhost_close_fn close_fn = nullptr;
  dlhost_init_fn init_fn = nullptr;
  libffi_init_fn lua_init_fn = nullptr;
  void *state = nullptr;  // dlhost_open's result

  // Lifecycle, written by worker threads, read by the JS thread on a ring.
  std::atomic<int> init_state{0};  // 0 pending, 1 ok, 2 failed
  std::atomic<int> init_rc{0};
  std::atomic<int> unload_state{0};  // 0 running, 1 closing, 2 done
  std::atomic<bool> dlclosed{false}, mapped{true}, threads_stuck{false};
  std::atomic<uint64_t> misuse{0};
  // Polls that returned the end (NULL / 0). A plugin-driven runtime whose
  // init succeeded has threads we may not have seen poll yet: until one of
  // them was handed the end, its code may still be about to run.
  std::atomic<uint64_t> ends{0};
  std::atomic<uint64_t> aborted{0};
  uint64_t unload_timeout_ms = 5000;

  std::mutex tids_mu;
  std::vector<pid_t> tids;  // every thread that polled (plugin-driven ABIs)

  // Slots (JS thread only, except that workers read Task contents).
  std::vector<std::unique_ptr<Task[]>> chunks;
  std::vector<std::unique_ptr<char[]>> areas;  // kChunkSize * kStride bytes each
  uint32_t slots = 0;
  size_t in_flight = 0;

  Task *Slot(uint32_t id) { return &chunks[id >> kChunkBits][id & (kChunkSize - 1)]; }
  static constexpr uint32_t kChunkBits = 8, kChunkSize = 1u << kChunkBits;
};

struct JsRequest;  // a request as JS handed it (runtime.cc)

// class Runtime (binding). JS thread only.
class RuntimeWrap : public Napi::ObjectWrap<RuntimeWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit RuntimeWrap(const Napi::CallbackInfo &info);
  ~RuntimeWrap();
  void TeardownFromEnv();  // environment is going away: never block, never call JS

 private:
  Napi::Value Start(const Napi::CallbackInfo &info);
  Napi::Value Submit(const Napi::CallbackInfo &info);
  Napi::Value Grow(const Napi::CallbackInfo &info);
  Napi::Value SetBig(const Napi::CallbackInfo &info);
  Napi::Value CallSync(const Napi::CallbackInfo &info);
  Napi::Value SyncBytes(const Napi::CallbackInfo &info);
  static napi_value SyncBytesCb(napi_env env, napi_callback_info info);
  void RunSync(Napi::Env env, const JsRequest &r);
  void EnsureSyncMeta(Napi::Env env);
  Napi::Value SyncMeta(const Napi::CallbackInfo &info);
  Napi::Value SyncSlab(const Napi::CallbackInfo &info);
  Napi::Value TakeBig(const Napi::CallbackInfo &info);
  Napi::Value Unload(const Napi::CallbackInfo &info);
  Napi::Value Stats(const Napi::CallbackInfo &info);
  Napi::Value SetSpin(const Napi::CallbackInfo &info);

  static void OnBell(uv_async_t *h);
  static void OnIdle(uv_idle_t *h);
  void Drain();             // settle finished calls in one JS callback
  void DrainJs();
  void CallJs(Napi::FunctionReference &fn, std::initializer_list<napi_value> args);
  void DeliverLifecycle();  // init / unloaded events
  void UpdateLoopRef();
  void StartSpin();
  void StopHandles();

  std::shared_ptr<RuntimeCore> core_;
  Napi::FunctionReference on_complete_;  // (count, meta, bodies, bigs)
  Napi::FunctionReference on_event_;     // (kind, info)
  Napi::ObjectReference meta_ref_;       // Int32Array [id, rc, off, len] * n
  std::vector<Task *> batch_;            // Submit's scratch
  Task *backlog_ = nullptr;              // completions taken, not yet settled
  int32_t *meta_ = nullptr;
  size_t meta_cap_ = 0;
  std::unique_ptr<Napi::AsyncContext> async_ctx_;
  // callSync answers: copied into a slab the JS side slices (a fresh Buffer
  // per call would cost several times the call itself). meta: [slab
  // generation, offset or -1 (big: takeBig()), length, rc].
  Napi::Reference<Napi::ArrayBuffer> slab_ref_;
  char *slab_ = nullptr;
  size_t slab_off_ = 0, slab_cap_ = 0;
  int32_t slab_gen_ = 0;
  Napi::ObjectReference sync_meta_ref_;
  int32_t *sync_meta_ = nullptr;
  Napi::Reference<Napi::Value> big_;
  // The same for completed calls: bodies of a batch go into the current
  // completion slab (a new ArrayBuffer per batch cost ~0.45 µs).
  Napi::Reference<Napi::ArrayBuffer> cslab_ref_;
  char *cslab_ = nullptr;
  size_t cslab_off_ = 0, cslab_cap_ = 0;
  uv_async_t *bell_ = nullptr;
  uv_idle_t *idle_ = nullptr;
  bool idle_active_ = false;
  bool referenced_ = false;
  uint64_t last_activity_ = 0;
  uint64_t spin_ns_ = 50000;
  bool init_reported_ = false, unload_reported_ = false, unloading_ = false;
  bool env_gone_ = false;
  std::thread::id js_thread_;
  napi_env env_;
  class Addon *addon_;
};

}  // namespace dlhost
