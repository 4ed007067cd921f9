// runtime_wrap.h: class Runtime (binding), the JS face of a RuntimeCore.
// JS thread only: runtime_wrap.cc (construction, submit, lifecycle, unload,
// loop ref and spin) and completions.cc (settling calls, callSync).
#pragma once

#include <napi.h>
#include <uv.h>

#include <memory>
#include <vector>

#include "env_state.h"
#include "histogram.h"
#include "runtime_core.h"
#include "slab.h"

namespace dlhost {

struct JsRequest;  // a request as JS handed it (completions.cc)

class RuntimeWrap : public Napi::ObjectWrap<RuntimeWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit RuntimeWrap(const Napi::CallbackInfo &info);
  ~RuntimeWrap();

 private:
  // ---- runtime_wrap.cc
  Napi::Value Start(const Napi::CallbackInfo &info);
  Napi::Value Submit(const Napi::CallbackInfo &info);
  Napi::Value Grow(const Napi::CallbackInfo &info);
  Napi::Value SetBig(const Napi::CallbackInfo &info);
  Napi::Value Counters(const Napi::CallbackInfo &info);
  Napi::Value Unload(const Napi::CallbackInfo &info);
  Napi::Value Stats(const Napi::CallbackInfo &info);
  Napi::Value SetSpin(const Napi::CallbackInfo &info);
  Napi::Value SetKind(const Napi::CallbackInfo &info);
  Task *FreeSlot(Napi::Env env, Napi::Value id, const char *what);
  Napi::Value Cancel(const Napi::CallbackInfo &info);
  Napi::Value Histogram(const Napi::CallbackInfo &info);
  // ---- messages.cc
  Napi::Value MessageFlow(const Napi::CallbackInfo &info);
  Napi::Value MessagesRef(const Napi::CallbackInfo &info);
  // Hands every waiting message to JS, in batches (no-op while paused).
  void SettleMessages();
  // ---- streams.cc
  Napi::Value SetStream(const Napi::CallbackInfo &info);
  Napi::Value StreamRead(const Napi::CallbackInfo &info);
  // Hands every stream chunk sent so far to JS (before the completions
  // taken earlier: a chunk is always sent before its task's answer).
  void SettleChunks();
  // The one unload path (unload(), environment teardown, finalizer).
  void BeginUnload();
  // The environment is going away (cleanup hook, finalizer): never block,
  // never call JS again.
  void Detach();
  static void OnEnvCleanup(void *self);
  static void OnBell(uv_async_t *h);
  static void OnIdle(uv_idle_t *h);
  void UpdateLoopRef();
  void StartSpin();
  void StopHandles();
  void DeliverLifecycle();  // init / unloaded events
  void DeliverInit();
  void DropJs();
  // Calls made and not settled, as counted by the TypeScript side (the one
  // count; it also enforces maxQueue). Read here for the loop ref.
  int32_t Pending() const { return counters_ ? counters_[0] : 0; }

  // ---- completions.cc
  Napi::Value CallSync(const Napi::CallbackInfo &info);
  Napi::Value SyncBytes(const Napi::CallbackInfo &info);
  static napi_value SyncBytesCb(napi_env env, napi_callback_info info);
  void RunSync(Napi::Env env, const JsRequest &r);
  Napi::Value SyncMeta(const Napi::CallbackInfo &info);
  Napi::Value SyncSlab(const Napi::CallbackInfo &info);
  Napi::Value TakeBig(const Napi::CallbackInfo &info);
  void EnsureSyncMeta(Napi::Env env);
  // Settles finished calls (a throwing JS callback becomes an
  // uncaughtException; a dying environment stops the handles).
  void Settle();
  void SettleJs();
  void CallJs(Napi::FunctionReference &fn, std::initializer_list<napi_value> args);

  std::shared_ptr<RuntimeCore> core_;
  Napi::FunctionReference on_complete_;  // (count, meta, bodies, bigs)
  Napi::FunctionReference on_event_;     // (kind, info)
  Napi::FunctionReference on_messages_;  // (count, meta [offset, length] * n, bodies)
  Napi::FunctionReference on_chunks_;    // (count, meta [id, offset, length] * n, bodies)
  std::unique_ptr<Napi::AsyncContext> async_ctx_;
  CleanupHook hook_;

  // Submit's scratch.
  std::vector<Task *> batch_;
  // SettleJs's: the tasks of one callback (kSettleChunk reserved up front).
  std::vector<Task *> settling_;
  // [pending] written by TypeScript (see Pending()).
  Napi::ObjectReference counters_ref_;
  int32_t *counters_ = nullptr;

  // Completions: taken from the core, not yet settled (a throwing callback
  // leaves the rest here); meta Int32Array [id, rc, off, len] * n; bodies of
  // small answers in the completion slab.
  Task *backlog_ = nullptr;
  Napi::ObjectReference meta_ref_;
  int32_t *meta_ = nullptr;
  size_t meta_cap_ = 0;
  Slab completion_slab_;

  // callSync answers: meta [slab generation, offset or kSyncBigOffset
  // (takeBig()), length, rc]; small bodies in the sync slab.
  Napi::ObjectReference sync_meta_ref_;
  int32_t *sync_meta_ = nullptr;
  Slab sync_slab_;
  Napi::Reference<Napi::Value> big_;

  uv_async_t *bell_ = nullptr;
  uv_idle_t *idle_ = nullptr;
  bool idle_active_ = false;
  bool referenced_ = false;
  uint64_t last_activity_ = 0;
  uint64_t spin_ns_ = kDefaultSpinNs;
  // The JS side follows the pollers' adaptive rule until setSpin sets its budget.
  bool spin_adaptive_ = true;
  uint64_t js_parks_at_once_ = 0;  // submits not followed by a spin (the rule said sparse)
  bool init_reported_ = false, unload_reported_ = false, unloading_ = false;
  bool env_gone_ = false;
  uint64_t final_misuse_ = 0, final_aborted_ = 0;  // kept once the core is gone
  uint64_t final_refused_ = 0;
  // Messages: taken from the core and not yet handed to JS (a throwing
  // listener, or a batch cut at kSettleChunk); JS asked to pause (its
  // async iterator is full: the core's queue fills, and dlhost_emit
  // refuses); JS keeps the loop alive for them (a listener or an iterator).
  Message *msg_backlog_ = nullptr;
  bool messages_paused_ = false, messages_ref_ = false;
  MetaArray msg_meta_;
  Slab message_slab_;
  // Latencies of settled calls (off until JS asks for the histogram).
  LatencyHistogram hist_, svc_;
  Napi::ObjectReference hist_ref_;
  MetaArray chunk_meta_;
  Slab chunk_slab_;
  size_t max_body_ = 0;  // EnvState::max_body, read once
  napi_env env_;
};

}  // namespace dlhost
