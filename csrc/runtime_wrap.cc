// runtime_wrap.cc: class Runtime (binding): construction, submit, lifecycle
// events, the unload path, the loop reference and the JS-side spin. JS thread
// only; the threads it starts live in runtime_core.cc.
#include "runtime_wrap.h"

#include <sched.h>

#include <cstring>
#include <system_error>

#include "clock.h"
#include "js_request.h"
#include "js_util.h"
#include "library_wrap.h"

namespace dlhost {

Napi::Function RuntimeWrap::Init(Napi::Env env) {
  return DefineClass(env, "Runtime",
                     {InstanceMethod<&RuntimeWrap::Start>("start"),
                      InstanceMethod<&RuntimeWrap::Submit>("submit"),
                      InstanceMethod<&RuntimeWrap::Grow>("grow"),
                      InstanceMethod<&RuntimeWrap::SetBig>("setBig"),
                      InstanceMethod<&RuntimeWrap::Counters>("counters"),
                      InstanceMethod<&RuntimeWrap::CallSync>("callSync"),
                      InstanceMethod<&RuntimeWrap::SyncBytes>("syncBytes"),
                      InstanceMethod<&RuntimeWrap::SyncMeta>("syncMeta"),
                      InstanceMethod<&RuntimeWrap::SyncSlab>("syncSlab"),
                      InstanceMethod<&RuntimeWrap::TakeBig>("takeBig"),
                      InstanceMethod<&RuntimeWrap::Unload>("unload"),
                      InstanceMethod<&RuntimeWrap::Stats>("stats"),
                      InstanceMethod<&RuntimeWrap::SetSpin>("setSpin"),
                      InstanceMethod<&RuntimeWrap::SetKind>("setKind"),
                      InstanceMethod<&RuntimeWrap::Cancel>("cancel"),
                      InstanceMethod<&RuntimeWrap::MessageFlow>("messageFlow"),
                      InstanceMethod<&RuntimeWrap::MessagesRef>("messagesRef"),
                      InstanceMethod<&RuntimeWrap::SetStream>("setStream"),
                      InstanceMethod<&RuntimeWrap::StreamRead>("streamRead"),
                      InstanceMethod<&RuntimeWrap::Histogram>("histogram")});
}

// new Runtime(library, abi, maxQueue, onComplete, onEvent, unloadTimeoutMs,
//             onMessages, onChunks)
RuntimeWrap::RuntimeWrap(const Napi::CallbackInfo &info)
    : Napi::ObjectWrap<RuntimeWrap>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsFunction() ||
      !info[4].IsFunction() || !info[5].IsNumber() || !info[6].IsFunction() ||
      !info[7].IsFunction())
    throw Napi::TypeError::New(env,
                               "Runtime(library, abi, maxQueue, onComplete, onEvent, "
                               "unloadTimeoutMs, onMessages, onChunks)");
  LibraryWrap *lib = LibraryWrap::FromValue(env, info[0]);
  if (!lib) throw Napi::TypeError::New(env, "Runtime: library must be a Library");
  if (lib->released()) ThrowCoded(env, "ERR_RELEASED", "the library was released");
  int32_t abi = info[1].As<Napi::Number>().Int32Value();
  if (abi < int32_t(Abi::kHost) || abi > int32_t(Abi::kLua))
    throw Napi::RangeError::New(env, "Runtime: no such ABI");
  size_t max_queue = info[2].As<Napi::Number>().Uint32Value();
  core_ = std::make_shared<RuntimeCore>(lib->entry(), Abi(abi), max_queue,
                                        info[5].As<Napi::Number>().Int64Value());
  if (const char *missing = core_->ResolveEntry())
    ThrowCoded(env, "ERR_SYMBOL_MISSING", "the library does not export " + std::string(missing));
  Registry::Get().AcquireRuntime(core_->entry);
  on_complete_ = Napi::Persistent(info[3].As<Napi::Function>());
  on_event_ = Napi::Persistent(info[4].As<Napi::Function>());
  on_messages_ = Napi::Persistent(info[6].As<Napi::Function>());
  on_chunks_ = Napi::Persistent(info[7].As<Napi::Function>());
  async_ctx_ = std::make_unique<Napi::AsyncContext>(env, "dlhost:runtime");
  max_body_ = EnvState::Of(env)->max_body;

  uv_loop_t *loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  bell_ = new uv_async_t;
  uv_async_init(loop, bell_, &RuntimeWrap::OnBell);
  bell_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t *>(bell_));
  idle_ = new uv_idle_t;
  uv_idle_init(loop, idle_);
  idle_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t *>(idle_));
  {
    std::lock_guard<std::mutex> lock(core_->bell_mu);
    core_->bell = [](void *h) { uv_async_send(static_cast<uv_async_t *>(h)); };
    core_->bell_arg = bell_;
  }
  settling_.reserve(kSettleChunk);
  hook_.Arm(env, &RuntimeWrap::OnEnvCleanup, this);
}

// The finalizer is a safety net: TS keeps live runtimes strongly referenced.
RuntimeWrap::~RuntimeWrap() { Detach(); }

void RuntimeWrap::OnEnvCleanup(void *self) { static_cast<RuntimeWrap *>(self)->Detach(); }

void RuntimeWrap::Detach() {
  hook_.Disarm();
  if (env_gone_) return;
  env_gone_ = true;
  if (core_) core_->readers_gone.store(true, std::memory_order_release);
  BeginUnload();
  StopHandles();
  DropJs();
}

void RuntimeWrap::BeginUnload() {
  if (unloading_ || !core_) return;
  unloading_ = true;
  RuntimeCore::BeginUnload(core_);
}

// start(cfg: Buffer): init runs on the library's owner thread; its result
// comes as an 'init' event.
Napi::Value RuntimeWrap::Start(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBuffer()) throw Napi::TypeError::New(env, "start(cfg: Buffer)");
  auto buf = info[0].As<Napi::Buffer<char>>();
  std::string cfg(buf.Data(), buf.Length());
  referenced_ = false;
  try {
    RuntimeCore::Start(core_, std::move(cfg));
  } catch (const std::exception &e) {
    BeginUnload();
    ThrowCoded(env, "ERR_RESOURCE", std::string("cannot start the plugin's init: ") + e.what());
  }
  StartSpin();  // a quick init is answered in ~µs: don't pay a futex wake for it
  UpdateLoopRef();
  return env.Null();
}

// submit(staged: Int32Array [slot, len] * count, count, batch?) -> how many
// were queued (a prefix), or kSubmitClosed. The JS side stages the calls of
// one turn: it wrote each small request (and its NUL) into the slot's inline
// bytes, or handed a big one to setBig() (len -1). One N-API call, one queue
// enter/leave and at most one wake-up per batch. With `batch` (a handle),
// they are the items of one callBatch(), settled together.
Napi::Value RuntimeWrap::Submit(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || !info[1].IsNumber() ||
      !(info[2].IsUndefined() || info[2].IsNumber()))
    throw Napi::TypeError::New(env, "submit(staged, count, batch?)");
  auto staged = info[0].As<Napi::Int32Array>();
  size_t count =
      std::min<size_t>(info[1].As<Napi::Number>().Uint32Value(), staged.ElementLength() / 2);
  const int32_t *m = staged.Data();
  batch_.clear();
  if (!core_) return Napi::Number::New(env, double(kSubmitClosed));
  BatchCore *bc = nullptr;
  if (info[2].IsNumber()) {
    // Each batch in flight holds a slot at least: no more handles than slots.
    uint32_t h = info[2].As<Napi::Number>().Uint32Value();
    if (h > core_->slots) throw Napi::RangeError::New(env, "submit: no such batch handle");
    bc = core_->Batch(h);
    if (!bc->tasks.empty()) throw Napi::Error::New(env, "submit: that batch is in flight");
  }
  const uint64_t now = hist_.on() ? monotonic_ns() : 0;  // one clock read per batch
  for (size_t i = 0; i < count; i++) {
    uint32_t id = uint32_t(m[2 * i]);
    int32_t len = m[2 * i + 1];
    Task *t = id < core_->slots ? core_->Slot(id) : nullptr;
    if (!t || t->state.load(std::memory_order_relaxed) != Task::kFree ||
        (len >= 0 && size_t(len) > kSlotInline) || (len < 0 && !t->req)) {
      // A bug on the JS side (bad or repeated slot): undo the whole batch.
      for (Task *x : batch_) x->Reset();
      batch_.clear();
      throw Napi::Error::New(env, "submit: no such slot, slot in use, or request not staged");
    }
    if (len >= 0) {
      if (t->req && t->req != t->inline_buf) free(t->req);  // a setBig never submitted
      t->req = t->inline_buf;
      t->req_len = size_t(len);
    }
    // Also catches a slot repeated in the batch.
    t->state.store(Task::kQueued, std::memory_order_relaxed);
    t->submit_ns = now;
    t->batch = bc;
    batch_.push_back(t);
  }
  // + 1: no answer completes the batch before we know what was queued.
  if (bc) bc->remaining.store(uint32_t(batch_.size() + 1), std::memory_order_relaxed);
  long k = unloading_ ? -1 : batch_.empty() ? 0 : core_->SubmitBatch(batch_.data(), batch_.size());
  size_t queued = k < 0 ? 0 : size_t(k);
  if (bc) {
    bc->tasks.assign(batch_.begin(), batch_.begin() + long(queued));
    // The refused ones and our + 1; if every queued item is answered
    // already, the batch is complete now (else its last answer does it).
    uint32_t drop = uint32_t(batch_.size() - queued + 1);
    if (bc->remaining.fetch_sub(drop, std::memory_order_acq_rel) == drop && queued)
      core_->Complete(batch_[0]);
  }
  for (size_t i = queued; i < batch_.size(); i++) batch_[i]->Reset();
  batch_.clear();
  if (queued) {
    StartSpin();
    UpdateLoopRef();
  }
  return Napi::Number::New(env, k < 0 ? double(kSubmitClosed) : double(queued));
}

// grow() -> ArrayBuffer: one more chunk of kChunkSlots slots; the buffer is
// its inline request bytes (kSlotStride per slot), owned by the core, which
// outlives every JS reference to it (the wrapper holds the core).
Napi::Value RuntimeWrap::Grow(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!core_) ThrowCoded(env, "ERR_RUNTIME_UNLOADED", "the runtime is unloaded");
  uint32_t c;
  try {
    c = core_->Grow();
  } catch (const std::bad_alloc &) {
    ThrowCoded(env, "ERR_RESOURCE", "out of memory for more call slots");
  }
  return Napi::ArrayBuffer::New(env, core_->areas[c].get(), kChunkSlots * kSlotStride);
}

// setBig(slot, req): a request too big for the inline bytes, copied now (the
// caller may reuse its buffer as soon as call() returns) into a malloc.
Napi::Value RuntimeWrap::SetBig(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Task *t = FreeSlot(env, info[0], "setBig");
  JsRequest r = ReadRequest(env, info[1]);
  char *req = static_cast<char *>(malloc(r.len + 1));
  if (!req) throw Napi::Error::New(env, "out of memory");
  r.CopyTo(env, req);
  if (t->req && t->req != t->inline_buf) free(t->req);
  t->req = req;
  t->req_len = r.len;
  return env.Undefined();
}

// The free slot JS names in `id`, about to be staged; throws (coded, or a
// bug of the JS side) for a runtime gone, no such slot, or a slot in use.
Task *RuntimeWrap::FreeSlot(Napi::Env env, Napi::Value id, const char *what) {
  uint32_t i = id.As<Napi::Number>().Uint32Value();
  if (!core_) ThrowCoded(env, "ERR_RUNTIME_UNLOADED", "the runtime is unloaded");
  if (i >= core_->slots) throw Napi::RangeError::New(env, std::string(what) + ": no such slot");
  Task *t = core_->Slot(i);
  if (t->state.load(std::memory_order_relaxed) != Task::kFree)
    throw Napi::Error::New(env, std::string(what) + ": slot in use");
  return t;
}

// setKind(slot, kind): the free slot's next task is a state step (TaskKind),
// staged and submitted like a call, so it runs in queue order.
Napi::Value RuntimeWrap::SetKind(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t kind = info[1].As<Napi::Number>().Uint32Value();
  if (kind > kTaskStateImport) throw Napi::RangeError::New(env, "setKind: no such kind");
  FreeSlot(env, info[0], "setKind")->kind = kind;
  return env.Undefined();
}

// cancel(slot): the caller gave up on the call in this slot; the plugin sees
// it through dlhost_task_cancelled. A slot already answered is not touched
// (its flag is cleared when it is freed).
Napi::Value RuntimeWrap::Cancel(const Napi::CallbackInfo &info) {
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  if (core_ && id < core_->slots) {
    Task *t = core_->Slot(id);
    if (t->state.load(std::memory_order_acquire) != Task::kFree)
      t->cancelled.store(1, std::memory_order_release);
  }
  return info.Env().Undefined();
}

// histogram(on) -> Float64Array | null: two histograms (histogram.h's
// layout, one after the other) counted while on: call latencies from submit
// to settle, and service times from taken to answered. The buffer is JS's
// (it outlives this wrapper); turning it off drops it.
Napi::Value RuntimeWrap::Histogram(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].ToBoolean()) {
    hist_.Attach(nullptr);
    svc_.Attach(nullptr);
    hist_ref_.Reset();
    if (core_) core_->time_service.store(false);
    return env.Null();
  }
  if (hist_ref_.IsEmpty()) {
    const size_t n = 2 * LatencyHistogram::kLength;
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, n * sizeof(double));
    memset(ab.Data(), 0, ab.ByteLength());
    hist_ref_ = Napi::Persistent(Napi::Object(Napi::Float64Array::New(env, n, ab, 0)));
    hist_.Attach(static_cast<double *>(ab.Data()));
    svc_.Attach(static_cast<double *>(ab.Data()) + LatencyHistogram::kLength);
    if (core_) core_->time_service.store(true);
  }
  return hist_ref_.Value();
}

// counters() -> Int32Array [pending], written by the TypeScript side.
Napi::Value RuntimeWrap::Counters(const Napi::CallbackInfo &info) {
  return SharedCounter(info.Env(), counters_ref_, &counters_);
}

Napi::Value RuntimeWrap::Unload(const Napi::CallbackInfo &info) {
  BeginUnload();
  UpdateLoopRef();
  return info.Env().Undefined();
}

Napi::Value RuntimeWrap::Stats(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("queued", core_ ? double(core_->requests.size_approx()) : 0.0);
  o.Set("misuse", core_ ? double(core_->misuse.load()) : double(final_misuse_));
  o.Set("aborted", core_ ? double(core_->aborted.load()) : double(final_aborted_));
  o.Set("pollers", core_ ? double(core_->Pollers()) : 0.0);
  o.Set("callGapNs", core_ ? double(core_->requests.gap_ns()) : 0.0);
  o.Set("parksAtOnce", core_ ? double(core_->requests.parked_at_once()) : 0.0);
  o.Set("jsParksAtOnce", double(js_parks_at_once_));
  o.Set("messagesRefused", core_ ? double(core_->messages.Refused()) : double(final_refused_));
  return o;
}

// setSpin(jsSpinNs, pollerSpinNs): the spin-then-park budgets, spent on
// every wait; a negative one is the default: 50 us and the adaptive rule.
Napi::Value RuntimeWrap::SetSpin(const Napi::CallbackInfo &info) {
  if (info[0].IsNumber()) {
    int64_t ns = info[0].As<Napi::Number>().Int64Value();
    spin_ns_ = ns < 0 ? kDefaultSpinNs : uint64_t(ns);
    spin_adaptive_ = ns < 0;
  }
  if (info[1].IsNumber() && core_) {
    int64_t ns = info[1].As<Napi::Number>().Int64Value();
    if (ns < 0)
      core_->requests.reset_spin();
    else
      core_->requests.set_spin_ns(uint64_t(ns));
  }
  return info.Env().Undefined();
}

void RuntimeWrap::StartSpin() {
  // While the idle spin runs, completions refresh last_activity_: no clock
  // read per submit.
  if (idle_active_ || spin_ns_ == 0 || !idle_) return;
  // Sparse calls (the pollers' rule: gaps between calls beyond their spin
  // budget): a poller parks at once, so the answer takes a wake-up (25-50 us
  // here) that spinning here would burn whole. The bell wakes the loop
  // instead. A quick init is still spun for (nothing is known yet).
  if (spin_adaptive_ && init_reported_ && core_->requests.sparse()) {
    js_parks_at_once_++;
    return;
  }
  last_activity_ = uv_hrtime();
  core_->js_spinning.store(true, std::memory_order_seq_cst);
  uv_idle_start(idle_, &RuntimeWrap::OnIdle);
  idle_active_ = true;
}

void RuntimeWrap::OnIdle(uv_idle_t *h) {
  auto *self = static_cast<RuntimeWrap *>(h->data);
  // Nothing yet: give the core to a poll thread that may share it.
  if (self->core_->completions.empty_approx()) sched_yield();
  self->Settle();
  if (self->env_gone_ || !self->idle_active_) return;
  bool waiting = self->Pending() > 0 || !self->init_reported_;
  if (!waiting || uv_hrtime() - self->last_activity_ > self->spin_ns_) {
    self->core_->js_spinning.store(false, std::memory_order_seq_cst);
    uv_idle_stop(self->idle_);
    self->idle_active_ = false;
    self->Settle();  // anything pushed while producers thought we spin
  }
}

void RuntimeWrap::OnBell(uv_async_t *h) { static_cast<RuntimeWrap *>(h->data)->Settle(); }

void RuntimeWrap::UpdateLoopRef() {
  if (!bell_) return;
  bool want = Pending() > 0 || (unloading_ && !unload_reported_) || !init_reported_ ||
              (messages_ref_ && !unloading_);
  if (want == referenced_) return;
  referenced_ = want;
  if (want)
    uv_ref(reinterpret_cast<uv_handle_t *>(bell_));
  else
    uv_unref(reinterpret_cast<uv_handle_t *>(bell_));
}

// The init event, once the plugin's init is over. It goes out before any
// message (SettleMessages holds them until then): load() resolves in this
// callback, and only then can a listener be attached.
void RuntimeWrap::DeliverInit() {
  if (env_gone_ || !core_ || init_reported_ ||
      core_->init_state.load() == RuntimeCore::kInitPending)
    return;
  Napi::Env env(env_);
  init_reported_ = true;
  Napi::HandleScope scope(env);
  if (core_->init_state.load() == RuntimeCore::kInitFailed) {
    unloading_ = true;
    RuntimeCore::ReapNow(core_);
  }
  static const char *const kFailures[] = {"rc", "resource", "open-null"};
  CallJs(on_event_, {Napi::String::New(env, "init"), Napi::Number::New(env, core_->init_rc.load()),
                     Napi::String::New(env, kFailures[core_->init_failure.load()])});
}

void RuntimeWrap::DeliverLifecycle() {
  if (env_gone_) return;
  DeliverInit();
  if (env_gone_ || !core_) return;
  Napi::Env env(env_);
  if (!unload_reported_ && core_->unload_state.load() == RuntimeCore::kUnloaded && Pending() == 0) {
    // What the plugin said before it ended reaches JS before 'unloaded'.
    messages_paused_ = false;
    SettleMessages();
    if (env_gone_) return;
    unload_reported_ = true;
    Napi::HandleScope scope(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("dlclosed", core_->dlclosed.load());
    o.Set("mapped", core_->mapped.load());
    o.Set("threadsStuck", core_->threads_stuck.load());
    o.Set("misuse", double(core_->misuse.load()));
    o.Set("aborted", double(core_->aborted.load()));
    StopHandles();
    final_misuse_ = core_->misuse.load();
    final_aborted_ = core_->aborted.load();
    final_refused_ = core_->messages.Refused();
    bool stuck = core_->threads_stuck.load();
    CallJs(on_event_, {Napi::String::New(env, "unloaded"), o});
    DropJs();
    // The slots and the ring go now, not when a GC finds this wrapper: a
    // host that reloads all day keeps no unloaded runtime's memory. (A core
    // whose plugin threads never left is kept: they may still touch it.)
    if (!stuck) core_.reset();
  }
}

// After the last event nothing calls JS again: drop every strong reference
// to JS values (the callbacks close over the TypeScript Runtime, which holds
// this wrapper: kept, they would make an unloaded runtime immortal).
void RuntimeWrap::DropJs() {
  on_complete_.Reset();
  on_event_.Reset();
  on_messages_.Reset();
  on_chunks_.Reset();
  hist_.Attach(nullptr);
  svc_.Attach(nullptr);
  hist_ref_.Reset();
  chunk_meta_.Reset();
  chunk_slab_.Reset();
  for (Message *m = msg_backlog_; m;) {  // the environment is gone
    Message *next = m->cq_next.load(std::memory_order_relaxed);
    Message::Free(m);
    m = next;
  }
  msg_backlog_ = nullptr;
  msg_meta_.Reset();
  message_slab_.Reset();
  meta_ref_.Reset();
  meta_ = nullptr;
  meta_cap_ = 0;
  completion_slab_.Reset();
  sync_meta_ref_.Reset();
  sync_meta_ = nullptr;
  sync_slab_.Reset();
  big_.Reset();
  counters_ref_.Reset();
  counters_ = nullptr;
}

void RuntimeWrap::StopHandles() {
  if (core_) {
    {
      std::lock_guard<std::mutex> lock(core_->bell_mu);
      core_->bell = nullptr;  // worker threads never touch the handle again
      core_->bell_arg = nullptr;
    }
    core_->js_spinning.store(false);
  }
  if (bell_) {
    uv_close(reinterpret_cast<uv_handle_t *>(bell_),
             [](uv_handle_t *h) { delete reinterpret_cast<uv_async_t *>(h); });
    bell_ = nullptr;
  }
  if (idle_) {
    uv_close(reinterpret_cast<uv_handle_t *>(idle_),
             [](uv_handle_t *h) { delete reinterpret_cast<uv_idle_t *>(h); });
    idle_ = nullptr;
    idle_active_ = false;
  }
}

}  // namespace dlhost
