// completions.cc: answers into JS. Settling finished calls (one callback per
// up to kSettleChunk calls) and the synchronous path (callSync), both packing
// small bodies into a Slab. JS thread only.
#include <cstring>

#include "clock.h"
#include "js_request.h"
#include "js_util.h"
#include "runtime_wrap.h"

namespace dlhost {

namespace {

// Responses at least this big are handed to JS without a copy (external
// buffer freed by its finalizer); smaller ones are packed into the slab.
constexpr size_t kBigResponse = 64 * 1024;
constexpr size_t kBigSyncResponse = Slab::kBytes / 4;
// Calls settled per JS callback: each callback's microtask checkpoint lets
// continuations issue their next calls while the poll thread still has work.
Napi::Value ExternalBody(Napi::Env env, void *rsp, size_t len) {
  return Napi::Buffer<char>::New(env, static_cast<char *>(rsp), len,
                                 [](Napi::Env, char *p) { free(p); });
}

}  // namespace

// Calls a TypeScript callback (see dlhost::CallJs: a throwing listener
// becomes an uncaughtException; a terminating worker throws EnvGone).
void RuntimeWrap::CallJs(Napi::FunctionReference &fn, std::initializer_list<napi_value> args) {
  dlhost::CallJs(env_, *async_ctx_, Value(), fn.Value(), args);
}

// A terminating worker still runs its loop's callbacks while JS can no
// longer run there: stop touching the environment; the cleanup hook tears
// the runtime down.
void RuntimeWrap::Settle() {
  if (env_gone_ || !core_) return;
  try {
    SettleJs();
  } catch (const EnvGone &) {
    StopHandles();
  } catch (const Napi::Error &) {
    StopHandles();  // an N-API call of ours failed: the same cause
  }
}

void RuntimeWrap::SettleJs() {
  Napi::Env env(env_);
  Task *tail = backlog_;
  while (tail && tail->cq_next.load(std::memory_order_relaxed))
    tail = tail->cq_next.load(std::memory_order_relaxed);
  if (Task *fresh = core_->TakeCompletions()) {
    if (tail)
      tail->cq_next.store(fresh, std::memory_order_relaxed);
    else
      backlog_ = fresh;
  }
  DeliverInit();  // before anything that follows it
  if (env_gone_ || !core_) return;
  // Taken after the answers: every chunk sent before one of them is here.
  SettleChunks();
  if (env_gone_ || !core_) return;
  if (backlog_) core_->requests.settled_at(monotonic_ns());
  // The tasks of one callback, in an array: the passes below then load
  // several tasks at once, where a list walk waits for each in turn.
  std::vector<Task *> &tasks = settling_;
  while (backlog_) {
    Task *head = backlog_;
    BatchCore *bc = head->batch;
    tasks.clear();
    if (bc) {
      // A batch's last answer stands for the whole batch: its items, in
      // order, are settled in one callback. (Swapped out: the handle may
      // be reused once JS has the answers.)
      backlog_ = head->cq_next.load(std::memory_order_relaxed);
      head->cq_next.store(nullptr, std::memory_order_relaxed);
      tasks.swap(bc->tasks);
    } else {
      // Calls up to the next batch, kSettleChunk at most (room reserved).
      Task *t = head;
      do {
        tasks.push_back(t);
        Task *n = t->cq_next.load(std::memory_order_relaxed);
        t->cq_next.store(nullptr, std::memory_order_relaxed);
        t = n;
      } while (t && !t->batch && tasks.size() < kSettleChunk);
      backlog_ = t;
    }
    const size_t count = tasks.size();
    Napi::HandleScope scope(env);
    size_t small_total = 0;
    bool any_big = false;
    const size_t max_body = max_body_;
    for (Task *t : tasks) {
      if (t->rsp_len == Task::kAbortedRsp || t->rsp_len > max_body) continue;
      if (t->rsp_len >= kBigResponse)
        any_big = true;
      else
        small_total += t->rsp_len;
    }
    if (meta_cap_ < count * 4) {
      size_t cap = std::max<size_t>(count * 4, 1024);
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, cap * sizeof(int32_t));
      meta_ref_ = Napi::Persistent(Napi::Object(Napi::Int32Array::New(env, cap, ab, 0)));
      meta_ = static_cast<int32_t *>(ab.Data());
      meta_cap_ = cap;
    }
    Napi::Value bodies = env.Undefined();
    char *dst = nullptr;
    size_t base = 0;
    if (small_total) {
      base = completion_slab_.Reserve(env, small_total);
      dst = completion_slab_.Data() + base;
      bodies = completion_slab_.Buffer(env);
    }
    Napi::Array bigs;
    if (any_big) bigs = Napi::Array::New(env);
    size_t i = 0, off = 0;
    const uint64_t now = hist_.on() ? monotonic_ns() : 0;  // one clock read per batch
    // A batch's items were submitted together: one latency, counted once
    // for each answered item.
    const uint64_t batch_submit = bc && now ? tasks[0]->submit_ns : 0;
    size_t batch_answered = 0;
    for (Task *t : tasks) {
      if (now && t->submit_ns && t->kind == kTaskCall && t->rsp_len != Task::kAbortedRsp) {
        if (batch_submit)
          batch_answered++;
        else
          hist_.Record(now - t->submit_ns);
        if (t->service_ns) svc_.Record(t->service_ns);
      }
      int32_t *m = meta_ + i * 4;
      m[0] = int32_t(t->id);
      m[1] = t->rc;
      if (t->rsp_len == Task::kAbortedRsp) {
        m[2] = 0;
        m[3] = kAbortedLen;
      } else if (t->rsp_len > max_body) {
        m[2] = kTooLargeOffset;  // freed below, once
        m[3] = 0;
      } else if (t->rsp_len >= kBigResponse) {
        // Zero copy: the plugin's malloc'd buffer becomes the Buffer.
        bigs.Set(uint32_t(i), ExternalBody(env, t->rsp, t->rsp_len));
        t->rsp = nullptr;
        m[2] = kBigOffset;
        m[3] = int32_t(t->rsp_len);
      } else {
        if (t->rsp_len) memcpy(dst + off, t->rsp, t->rsp_len);
        m[2] = int32_t(base + off);
        m[3] = int32_t(t->rsp_len);
        off += t->rsp_len;
      }
      t->DropRsp();
      t->Reset();
      i++;
    }
    if (batch_submit) hist_.RecordN(now - batch_submit, batch_answered);
    if (bc) {
      // Each gets its own buffer back, empty: JS may make a batch with this
      // handle as soon as it has the answers.
      tasks.clear();
      tasks.swap(bc->tasks);
    }
    last_activity_ = uv_hrtime();
    CallJs(on_complete_, {Napi::Number::New(env, double(count)), meta_ref_.Value(), bodies,
                          any_big ? Napi::Value(bigs) : env.Undefined(),
                          bc ? Napi::Number::New(env, double(bc->handle)) : env.Undefined()});
  }
  SettleMessages();
  if (env_gone_ || !core_) return;
  DeliverLifecycle();
  UpdateLoopRef();
}

// ------------------------------------------------------------------ callSync

Napi::Value RuntimeWrap::CallSync(const Napi::CallbackInfo &info) {
  JsRequest r = ReadRequest(info.Env(), info[0]);
  RunSync(info.Env(), r);
  return info.Env().Undefined();
}

// The bytes-only twin of callSync as a plain function whose data is this
// wrapper: no unwrap, no type dispatch (~20 ns of a ~150 ns call). JS keeps
// it next to the wrapper and drops both together.
napi_value RuntimeWrap::SyncBytesCb(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value arg;
  void *data;
  napi_get_cb_info(env, cbinfo, &argc, &arg, nullptr, &data);
  auto *self = static_cast<RuntimeWrap *>(data);
  JsRequest r;
  napi_typedarray_type tt;
  void *p = nullptr;
  // The typed array's own length, not a property a subclass could override
  // (napi_get_typedarray_info refuses anything that is not a typed array).
  if (argc < 1 ||
      napi_get_typedarray_info(env, arg, &tt, &r.len, &p, nullptr, nullptr) != napi_ok ||
      tt != napi_uint8_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "request must be a string or a Uint8Array");
    return nullptr;
  }
  // Empty, or a view of a transferred buffer? Only then is its buffer
  // looked at (a handle per call costs more than the rest of the check).
  bool detached = false;
  napi_value ab = nullptr;
  if (r.len == 0 && napi_get_typedarray_info(env, arg, &tt, &r.len, &p, &ab, nullptr) == napi_ok &&
      napi_is_detached_arraybuffer(env, ab, &detached) == napi_ok && detached) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "request is a view of a detached ArrayBuffer (it was transferred)");
    return nullptr;
  }
  r.bytes = static_cast<const char *>(p);
  try {
    self->RunSync(Napi::Env(env), r);
  } catch (const Napi::Error &e) {
    e.ThrowAsJavaScriptException();
  }
  return nullptr;
}

Napi::Value RuntimeWrap::SyncBytes(const Napi::CallbackInfo &info) {
  napi_value fn;
  NAPI_THROW_IF_FAILED(
      info.Env(),
      napi_create_function(info.Env(), "callSyncBytes", NAPI_AUTO_LENGTH, SyncBytesCb, this, &fn),
      Napi::Value());
  return Napi::Value(info.Env(), fn);
}

void RuntimeWrap::RunSync(Napi::Env env, const JsRequest &r) {
  if (!core_) ThrowCoded(env, "ERR_RUNTIME_UNLOADED", "the runtime is not running");
  if (core_->abi != Abi::kHost)
    ThrowCoded(env, "ERR_NOT_SYNC", "callSync needs a host-driven plugin (dlhost_handle)");
  if (unloading_ || env_gone_ || core_->init_state.load() != RuntimeCore::kInitOk)
    ThrowCoded(env, "ERR_RUNTIME_UNLOADED", "the runtime is not running");
  size_t len = r.len;
  // The ABI promises a NUL after the request: copy into room for it.
  char small[512];
  std::unique_ptr<char[]> big;
  char *req = len < sizeof small ? small : (big.reset(new char[len + 1]), big.get());
  r.CopyTo(env, req);
  void *rsp = nullptr;
  size_t rsp_len = 0;
  int rc = core_->handle_fn(core_->state, req, len, &rsp, &rsp_len);
  if (!rsp) rsp_len = 0;
  if (!sync_meta_) EnsureSyncMeta(env);
  int32_t *m = sync_meta_;
  if (rsp_len > max_body_) {
    free(rsp);
    m[1] = kSyncTooLargeOffset;
    rsp_len = 0;
  } else if (rsp_len > kBigSyncResponse) {
    // Big: the plugin's buffer becomes the Buffer (zero copy).
    big_ = Napi::Persistent(ExternalBody(env, rsp, rsp_len));
    m[1] = kSyncBigOffset;
  } else {
    size_t at = sync_slab_.Reserve(env, rsp_len);
    if (rsp_len) memcpy(sync_slab_.Data() + at, rsp, rsp_len);
    m[1] = int32_t(at);
    free(rsp);
  }
  m[0] = sync_slab_.generation();
  m[2] = int32_t(rsp_len);
  m[3] = rc;
}

void RuntimeWrap::EnsureSyncMeta(Napi::Env env) {
  if (sync_meta_) return;
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, 4 * sizeof(int32_t));
  sync_meta_ref_ = Napi::Persistent(Napi::Object(Napi::Int32Array::New(env, 4, ab, 0)));
  sync_meta_ = static_cast<int32_t *>(ab.Data());
}

Napi::Value RuntimeWrap::SyncMeta(const Napi::CallbackInfo &info) {
  EnsureSyncMeta(info.Env());
  return sync_meta_ref_.Value();
}

Napi::Value RuntimeWrap::SyncSlab(const Napi::CallbackInfo &info) {
  return sync_slab_.Buffer(info.Env());
}

Napi::Value RuntimeWrap::TakeBig(const Napi::CallbackInfo &info) {
  if (big_.IsEmpty()) return info.Env().Undefined();
  Napi::Value v = big_.Value();
  big_.Reset();
  return v;
}

}  // namespace dlhost
