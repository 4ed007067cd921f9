// Level 2 runtimes. Thread map:
//   JS thread      : RuntimeWrap (submit, drain completions, lifecycle events)
//   host poll      : one detached std::thread per host-driven runtime
//   plugin threads : the plugin's own (dlhost_task_poll & co, host_abi.cc)
//   reaper         : one detached std::thread per unloading plugin-driven
//                    runtime; waits for the plugin's pollers to exit, then
//                    drops the runtime's library reference (maybe dlclose).
#include "runtime.h"

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "addon.h"
#include "library_wrap.h"

namespace dlhost {

namespace {

// Responses at least this big are handed to JS without a copy (external
// buffer freed by its finalizer); smaller ones are packed into one
// ArrayBuffer per batch, which costs one allocation for the whole batch.
constexpr size_t kBigResponse = 64 * 1024;
constexpr size_t kSyncSlab = 64 * 1024;
constexpr int32_t kAbortedLen = -1;
constexpr int32_t kBigOffset = -2;
constexpr size_t kDrainChunk = 256;

std::atomic<uint64_t> next_core_serial{1};
std::atomic<uint64_t> orphan_misuse{0};

uint64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool ThreadAlive(pid_t tid) {
  // Signal 0 checks existence only. ESRCH once the kernel has reaped the
  // thread: from then on it can't be executing anything of the plugin.
  return syscall(SYS_tgkill, getpid(), tid, 0) == 0 || errno != ESRCH;
}

}  // namespace

thread_local uint64_t tls_last_core = 0;

RuntimeCore::RuntimeCore(EntryPtr e, Abi a, size_t mq, uint64_t spin_ns)
    : entry(std::move(e)), abi(a), serial(next_core_serial++), requests(mq, spin_ns) {}

RuntimeCore::~RuntimeCore() {
  for (auto &chunk : chunks)
    for (uint32_t i = 0; i < kChunkSize; i++) {
      Task &t = chunk[i];
      if (t.req && t.req != t.inline_buf) free(t.req);
      if (t.state.load() == Task::kDone) free(t.rsp);
    }
}

uint32_t RuntimeCore::Grow() {
  std::unique_ptr<Task[]> chunk(new Task[kChunkSize]);
  std::unique_ptr<char[]> area(new char[kChunkSize * Task::kStride]());
  uint32_t base = uint32_t(chunks.size()) << kChunkBits;
  for (uint32_t i = 0; i < kChunkSize; i++) {
    chunk[i].id = base + i;
    chunk[i].core = this;
    chunk[i].inline_buf = area.get() + i * Task::kStride;
  }
  chunks.push_back(std::move(chunk));
  areas.push_back(std::move(area));
  slots += kChunkSize;
  return uint32_t(chunks.size() - 1);
}

void RuntimeCore::FreeTask(Task *t) {
  if (t->req && t->req != t->inline_buf) free(t->req);
  t->req = nullptr;
  t->req_len = 0;
  t->rc = 0;
  t->rsp = nullptr;
  t->rsp_len = 0;
  t->state.store(Task::kFree, std::memory_order_release);
  in_flight--;
}

long RuntimeCore::SubmitBatch(Task *const *tasks, size_t n) {
  size_t k = requests.push_batch(tasks, n);
  return k == TaskQueue<Task>::kClosedBatch ? -1 : long(k);
}

Task *RuntimeCore::TakeCompletions() { return completions.pop_all(); }

void RuntimeCore::Ring() {
  std::lock_guard<std::mutex> lock(bell_mu);
  if (bell) uv_async_send(bell);
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
  t->rsp = rsp;
  t->rsp_len = rsp ? len : 0;
  t->core->Complete(t);
}

void RuntimeCore::RecordPoller() {
  if (tls_last_core == serial) return;
  tls_last_core = serial;
  pid_t tid = pid_t(syscall(SYS_gettid));
  std::lock_guard<std::mutex> lock(tids_mu);
  for (pid_t x : tids)
    if (x == tid) return;
  tids.push_back(tid);
}

Task *RuntimeCore::Poll() {
  RecordPoller();
  Task *t = requests.pop();
  if (t) t->state.store(Task::kTaken, std::memory_order_release);
  else ends.fetch_add(1);
  return t;
}

size_t RuntimeCore::PollBatch(Task **out, size_t max) {
  RecordPoller();
  if (!out || max == 0) return 0;
  size_t n = requests.pop_batch(out, max);
  if (n == 0) ends.fetch_add(1);
  for (size_t i = 0; i < n; i++) out[i]->state.store(Task::kTaken, std::memory_order_release);
  return n;
}

// Settles every call that will never be answered: queued ones nobody took,
// and taken ones whose plugin thread is gone. CAS makes a late answer lose.
static void AbortLeftovers(RuntimeCore &core) {
  Task *t;
  while (core.requests.try_pop(t)) t->state.store(Task::kTaken);
  for (auto &chunk : core.chunks)
    for (uint32_t i = 0; i < RuntimeCore::kChunkSize; i++) {
      Task &x = chunk[i];
      uint32_t expect = Task::kTaken;
      if (x.state.compare_exchange_strong(expect, Task::kDone)) {
        x.rc = 0;
        x.rsp = nullptr;
        x.rsp_len = SIZE_MAX;  // marks "aborted" for the JS side
        core.aborted.fetch_add(1);
        core.Complete(&x);
      }
    }
}

static void FinishUnload(const std::shared_ptr<RuntimeCore> &core, bool release) {
  if (release) {
    ReleaseResult r = Registry::Get().ReleaseRuntime(core->entry);
    core->dlclosed = r.dlclosed;
    core->mapped = r.mapped;
  }
  core->unload_state.store(2);
  core->Ring();
}

// Host-driven: dlhost's own poll thread.
static void HostLoop(std::shared_ptr<RuntimeCore> core, std::string cfg) {
  bool ok = true;
  if (core->open_fn) {
    core->state = core->open_fn(cfg.c_str(), cfg.size());
    ok = core->state != nullptr;
  }
  core->init_rc = ok ? 0 : -1;
  core->init_state.store(ok ? 1 : 2);
  core->Ring();
  if (ok) {
    Task *batch[64];
    for (;;) {
      size_t n = core->requests.pop_batch(batch, 64);
      if (n == 0) break;
      for (size_t i = 0; i < n; i++) {
        Task *t = batch[i];
        t->state.store(Task::kTaken, std::memory_order_relaxed);
        void *rsp = nullptr;
        size_t len = 0;
        int rc = core->handle_fn(core->state, t->req, t->req_len, &rsp, &len);
        core->Respond(t, rc, rsp, len);
      }
    }
    if (core->close_fn) core->close_fn(core->state);
  } else {
    core->requests.close();
    AbortLeftovers(*core);
  }
  FinishUnload(core, true);
}

// Plugin-driven: wait (bounded) for every thread that polled to exit.
static void Reap(std::shared_ptr<RuntimeCore> core) {
  const uint64_t deadline = NowNs() + core->unload_timeout_ms * 1000000ull;
  uint64_t nap_us = 50;
  bool stuck = false;
  for (;;) {
    std::vector<pid_t> tids;
    {
      std::lock_guard<std::mutex> lock(core->tids_mu);
      tids = core->tids;
    }
    // Init succeeded but no thread was handed the end yet: the plugin's
    // threads may not have polled (or even started) — their code may run.
    bool alive = core->init_state.load() == 1 && core->ends.load() == 0;
    for (pid_t tid : tids)
      if (ThreadAlive(tid)) alive = true;
    if (!alive) break;
    if (NowNs() > deadline) {
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
    new std::shared_ptr<RuntimeCore>(core);  // deliberate leak
    FinishUnload(core, false);
    return;
  }
  FinishUnload(core, true);
}

// ------------------------------------------------------------------ wrap

Napi::Function RuntimeWrap::Init(Napi::Env env) {
  return DefineClass(env, "Runtime",
                     {InstanceMethod<&RuntimeWrap::Start>("start"),
                      InstanceMethod<&RuntimeWrap::Submit>("submit"),
                      InstanceMethod<&RuntimeWrap::Grow>("grow"),
                      InstanceMethod<&RuntimeWrap::SetBig>("setBig"),
                      InstanceMethod<&RuntimeWrap::CallSync>("callSync"),
                      InstanceMethod<&RuntimeWrap::SyncBytes>("syncBytes"),
                      InstanceMethod<&RuntimeWrap::SyncMeta>("syncMeta"),
                      InstanceMethod<&RuntimeWrap::SyncSlab>("syncSlab"),
                      InstanceMethod<&RuntimeWrap::TakeBig>("takeBig"),
                      InstanceMethod<&RuntimeWrap::Unload>("unload"),
                      InstanceMethod<&RuntimeWrap::Stats>("stats"),
                      InstanceMethod<&RuntimeWrap::SetSpin>("setSpin")});
}

// new Runtime(library, abi, maxQueue, onComplete, onEvent, unloadTimeoutMs)
RuntimeWrap::RuntimeWrap(const Napi::CallbackInfo &info)
    : Napi::ObjectWrap<RuntimeWrap>(info), env_(info.Env()), addon_(Addon::Of(info.Env())) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject() || !info[1].IsNumber() || !info[2].IsNumber() ||
      !info[3].IsFunction() || !info[4].IsFunction() || !info[5].IsNumber())
    throw Napi::TypeError::New(env, "Runtime(library, abi, maxQueue, onComplete, onEvent, unloadTimeoutMs)");
  LibraryWrap *lib = LibraryWrap::Unwrap(info[0].As<Napi::Object>());
  if (!lib || lib->released()) ThrowCoded(env, "ERR_RELEASED", "the library was released");
  Abi abi = Abi(info[1].As<Napi::Number>().Int32Value());
  size_t max_queue = info[2].As<Napi::Number>().Uint32Value();
  core_ = std::make_shared<RuntimeCore>(lib->entry(), abi, max_queue, 50000);
  core_->unload_timeout_ms = info[5].As<Napi::Number>().Int64Value();
  Registry &reg = Registry::Get();
  auto sym = [&](const char *n) { return reg.Symbol(core_->entry, n); };
  core_->open_fn = reinterpret_cast<dlhost_open_fn>(sym("dlhost_open"));
  core_->handle_fn = reinterpret_cast<dlhost_handle_fn>(sym("dlhost_handle"));
  core_->close_fn = reinterpret_cast<dlhost_close_fn>(sym("dlhost_close"));
  core_->init_fn = reinterpret_cast<dlhost_init_fn>(sym("dlhost_init"));
  core_->lua_init_fn = reinterpret_cast<libffi_init_fn>(sym("libffi_init"));
  bool have = abi == Abi::kHost ? core_->handle_fn != nullptr
              : abi == Abi::kNative ? core_->init_fn != nullptr
                                    : core_->lua_init_fn != nullptr;
  if (!have) ThrowCoded(env, "ERR_SYMBOL_MISSING", "the library has no entry symbol for this ABI");
  reg.AcquireRuntime(core_->entry);
  on_complete_ = Napi::Persistent(info[3].As<Napi::Function>());
  on_event_ = Napi::Persistent(info[4].As<Napi::Function>());
  async_ctx_ = std::make_unique<Napi::AsyncContext>(env, "dlhost:runtime");
  js_thread_ = std::this_thread::get_id();

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
    core_->bell = bell_;
  }
  addon_->runtimes.insert(this);
}

RuntimeWrap::~RuntimeWrap() {
  // The finalizer is a safety net: TS keeps live runtimes strongly referenced.
  if (!env_gone_) {
    TeardownFromEnv();
    addon_->runtimes.erase(this);
  }
}

// start(cfg: Buffer) -> null (host-driven: init result comes as an event) | rc
Napi::Value RuntimeWrap::Start(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBuffer()) throw Napi::TypeError::New(env, "start(cfg: Buffer)");
  auto buf = info[0].As<Napi::Buffer<char>>();
  std::string cfg(buf.Data(), buf.Length());
  referenced_ = false;
  if (core_->abi == Abi::kHost) {
    std::thread(HostLoop, core_, std::move(cfg)).detach();
    StartSpin();  // init is answered in ~µs: don't pay a futex wake for it
    UpdateLoopRef();
    return env.Null();
  }
  // Init runs on a short-lived thread that is joined: thread-local state the
  // plugin creates there (Rust's std::thread registers some) dies with that
  // thread instead of pinning the library to the JS thread forever.
  int rc = 0;
  RuntimeCore *core = core_.get();
  std::thread([core, &cfg, &rc] {
    if (core->abi == Abi::kNative) {
      rc = core->init_fn(cfg.c_str(), cfg.size(), &core->q);
    } else {
      // lua-resty-ffi: a mutable NUL-terminated copy, freed after init returns.
      char *copy = static_cast<char *>(malloc(cfg.size() + 1));
      memcpy(copy, cfg.data(), cfg.size());
      copy[cfg.size()] = 0;
      rc = core->lua_init_fn(copy, &core->q);
      free(copy);
    }
  }).join();
  core_->init_rc = rc;
  core_->init_state.store(rc == 0 ? 1 : 2);
  init_reported_ = true;
  if (rc != 0) {
    unloading_ = true;
    core_->requests.close();
    std::thread(Reap, core_).detach();
    UpdateLoopRef();
  }
  return Napi::Number::New(env, rc);
}

// A request as JS handed it: a string (UTF-8 encoded when copied) or the
// bytes of a TypedArray (borrowed: valid during the call only).
struct JsRequest {
  napi_value str = nullptr;
  const char *bytes = nullptr;
  size_t len = 0;
  // Writes the len bytes and the NUL the ABI promises after them.
  void CopyTo(napi_env env, char *dst) const {
    if (str) {
      size_t copied = 0;
      napi_get_value_string_utf8(env, str, dst, len + 1, &copied);
    } else if (len) {
      memcpy(dst, bytes, len);
    }
    dst[len] = 0;
  }
};

static JsRequest ReadRequest(Napi::Env env, napi_value v) {
  JsRequest r;
  napi_valuetype type;
  napi_typeof(env, v, &type);
  if (type == napi_string) {
    r.str = v;
    napi_get_value_string_utf8(env, v, nullptr, 0, &r.len);
    return r;
  }
  bool is_ta = false;
  napi_is_typedarray(env, v, &is_ta);
  if (!is_ta) throw Napi::TypeError::New(env, "request must be a string or a Uint8Array");
  napi_typedarray_type tt;
  size_t n, off;
  void *p;
  napi_value ab;
  napi_get_typedarray_info(env, v, &tt, &n, &p, &ab, &off);
  size_t elem = (tt == napi_int8_array || tt == napi_uint8_array || tt == napi_uint8_clamped_array) ? 1
                : (tt == napi_int16_array || tt == napi_uint16_array) ? 2
                : (tt == napi_float64_array || tt == napi_bigint64_array || tt == napi_biguint64_array) ? 8 : 4;
  r.bytes = static_cast<const char *>(p);
  r.len = n * elem;
  return r;
}

// submit(staged: Int32Array [slot, len] * count, count) -> how many were
// queued (a prefix), or -2 if the runtime is closed. The JS side stages the
// calls of one turn: it wrote each small request (and its NUL) into the
// slot's inline bytes, or handed a big one to setBig() (len -1). One N-API
// call, one queue enter/leave and at most one wake-up per batch.
Napi::Value RuntimeWrap::Submit(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "submit(staged, count)");
  auto staged = info[0].As<Napi::Int32Array>();
  size_t count = std::min<size_t>(info[1].As<Napi::Number>().Uint32Value(), staged.ElementLength() / 2);
  const int32_t *m = staged.Data();
  batch_.clear();
  for (size_t i = 0; i < count; i++) {
    uint32_t id = uint32_t(m[2 * i]);
    int32_t len = m[2 * i + 1];
    Task *t = id < core_->slots ? core_->Slot(id) : nullptr;
    if (!t || t->state.load(std::memory_order_relaxed) != Task::kFree ||
        (len >= 0 && size_t(len) > Task::kInline) || (len < 0 && !t->req)) {
      // A bug on the JS side (bad or repeated slot): undo the whole batch.
      for (Task *x : batch_) core_->FreeTask(x);
      batch_.clear();
      throw Napi::Error::New(env, "submit: no such slot, slot in use, or request not staged");
    }
    if (len >= 0) {
      if (t->req && t->req != t->inline_buf) free(t->req);  // a setBig never submitted
      t->req = t->inline_buf;
      t->req_len = size_t(len);
    }
    t->state.store(Task::kQueued, std::memory_order_relaxed);  // also catches a slot repeated in the batch
    core_->in_flight++;
    batch_.push_back(t);
  }
  long k = unloading_ ? -1 : batch_.empty() ? 0 : core_->SubmitBatch(batch_.data(), batch_.size());
  size_t queued = k < 0 ? 0 : size_t(k);
  for (size_t i = queued; i < batch_.size(); i++) core_->FreeTask(batch_[i]);
  batch_.clear();
  if (queued) {
    StartSpin();
    UpdateLoopRef();
  }
  return Napi::Number::New(env, k < 0 ? -2.0 : double(queued));
}

// grow() -> ArrayBuffer: one more chunk of kChunkSize slots; the buffer is
// its inline request bytes (kStride per slot), owned by the core, which
// outlives every JS reference to it (the wrapper holds the core).
Napi::Value RuntimeWrap::Grow(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t c = core_->Grow();
  return Napi::ArrayBuffer::New(env, core_->areas[c].get(), RuntimeCore::kChunkSize * Task::kStride);
}

// setBig(slot, req): a request too big for the inline bytes, copied now (the
// caller may reuse its buffer as soon as call() returns) into a malloc.
Napi::Value RuntimeWrap::SetBig(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  if (id >= core_->slots) throw Napi::RangeError::New(env, "setBig: no such slot");
  Task *t = core_->Slot(id);
  if (t->state.load(std::memory_order_relaxed) != Task::kFree) throw Napi::Error::New(env, "setBig: slot in use");
  JsRequest r = ReadRequest(env, info[1]);
  char *req = static_cast<char *>(malloc(r.len + 1));
  if (!req) throw Napi::Error::New(env, "out of memory");
  r.CopyTo(env, req);
  if (t->req && t->req != t->inline_buf) free(t->req);
  t->req = req;
  t->req_len = r.len;
  return env.Undefined();
}

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
  if (argc < 1 || napi_get_typedarray_info(env, arg, &tt, &r.len, &p, nullptr, nullptr) != napi_ok ||
      tt != napi_uint8_array) {
    napi_throw_type_error(env, nullptr, "request must be a Uint8Array");
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
  NAPI_THROW_IF_FAILED(info.Env(), napi_create_function(info.Env(), "callSyncBytes", NAPI_AUTO_LENGTH, SyncBytesCb, this, &fn),
                       Napi::Value());
  return Napi::Value(info.Env(), fn);
}

void RuntimeWrap::RunSync(Napi::Env env, const JsRequest &r) {
  if (core_->abi != Abi::kHost)
    ThrowCoded(env, "ERR_NOT_SYNC", "callSync needs a host-driven plugin (dlhost_handle)");
  if (unloading_ || env_gone_ || core_->init_state.load() != 1)
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
  if (rsp_len > kSyncSlab / 4) {
    // Big: the plugin's buffer becomes the Buffer (zero copy).
    big_ = Napi::Persistent(Napi::Value(Napi::Buffer<char>::New(
        env, static_cast<char *>(rsp), rsp_len, [](Napi::Env, char *p) { free(p); })));
    m[1] = -1;
  } else {
    if (slab_off_ + rsp_len > slab_cap_) {
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, kSyncSlab);
      slab_ref_ = Napi::Persistent(ab);
      slab_ = static_cast<char *>(ab.Data());
      slab_cap_ = kSyncSlab;
      slab_off_ = 0;
      slab_gen_++;
    }
    if (rsp_len) memcpy(slab_ + slab_off_, rsp, rsp_len);
    m[1] = int32_t(slab_off_);
    slab_off_ = (slab_off_ + rsp_len + 7) & ~size_t(7);
    free(rsp);
  }
  m[0] = slab_gen_;
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
  return slab_ref_.IsEmpty() ? info.Env().Undefined() : Napi::Value(slab_ref_.Value());
}

Napi::Value RuntimeWrap::TakeBig(const Napi::CallbackInfo &info) {
  if (big_.IsEmpty()) return info.Env().Undefined();
  Napi::Value v = big_.Value();
  big_.Reset();
  return v;
}

Napi::Value RuntimeWrap::Unload(const Napi::CallbackInfo &info) {
  if (!unloading_) {
    unloading_ = true;
    core_->unload_state.store(1);
    core_->requests.close();
    // Host-driven: the poll thread finishes the queue and drops the library.
    if (core_->abi != Abi::kHost) std::thread(Reap, core_).detach();
    UpdateLoopRef();
  }
  return info.Env().Undefined();
}

Napi::Value RuntimeWrap::Stats(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("queued", double(core_->requests.size_approx()));
  o.Set("inFlight", double(core_->in_flight));
  o.Set("misuse", double(core_->misuse.load()));
  o.Set("aborted", double(core_->aborted.load()));
  size_t pollers;
  {
    std::lock_guard<std::mutex> lock(core_->tids_mu);
    pollers = core_->tids.size();
  }
  o.Set("pollers", double(pollers));
  return o;
}

// setSpin(jsSpinNs, pollerSpinNs): the spin-then-park budgets.
Napi::Value RuntimeWrap::SetSpin(const Napi::CallbackInfo &info) {
  if (info[0].IsNumber()) spin_ns_ = info[0].As<Napi::Number>().Int64Value();
  if (info[1].IsNumber()) core_->requests.set_spin_ns(info[1].As<Napi::Number>().Int64Value());
  return info.Env().Undefined();
}

void RuntimeWrap::StartSpin() {
  // While the idle spin runs, completions refresh last_activity_: no clock
  // read per submit.
  if (idle_active_ || spin_ns_ == 0 || !idle_) return;
  last_activity_ = uv_hrtime();
  core_->js_spinning.store(true, std::memory_order_seq_cst);
  uv_idle_start(idle_, &RuntimeWrap::OnIdle);
  idle_active_ = true;
}

void RuntimeWrap::OnIdle(uv_idle_t *h) {
  auto *self = static_cast<RuntimeWrap *>(h->data);
  // Nothing yet: give the core to a poll thread that may share it.
  if (self->core_->completions.empty_approx()) sched_yield();
  self->Drain();
  if (self->env_gone_ || !self->idle_active_) return;
  bool waiting = self->core_->in_flight > 0 || !self->init_reported_;
  if (!waiting || uv_hrtime() - self->last_activity_ > self->spin_ns_) {
    self->core_->js_spinning.store(false, std::memory_order_seq_cst);
    uv_idle_stop(self->idle_);
    self->idle_active_ = false;
    self->Drain();  // anything pushed while producers thought we spin
  }
}

void RuntimeWrap::OnBell(uv_async_t *h) {
  static_cast<RuntimeWrap *>(h->data)->Drain();
}

void RuntimeWrap::UpdateLoopRef() {
  if (!bell_) return;
  bool want = core_->in_flight > 0 || (unloading_ && !unload_reported_) ||
              (!init_reported_ && core_->abi == Abi::kHost);
  if (want == referenced_) return;
  referenced_ = want;
  if (want) uv_ref(reinterpret_cast<uv_handle_t *>(bell_));
  else uv_unref(reinterpret_cast<uv_handle_t *>(bell_));
}

// A terminating worker still runs its loop's callbacks while JS can no
// longer run there: N-API calls then fail without a pending exception. That
// is not an error of ours to report — stop touching the environment; the
// cleanup hook tears the runtime down.
void RuntimeWrap::Drain() {
  if (env_gone_) return;
  try {
    DrainJs();
  } catch (const Napi::Error &) {
    bool pending = false;
    napi_is_exception_pending(env_, &pending);
    if (pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env_, &exc);
      napi_fatal_exception(env_, exc);  // a throwing JS callback: uncaughtException
      return;
    }
    StopHandles();
  }
}

void RuntimeWrap::CallJs(Napi::FunctionReference &fn, std::initializer_list<napi_value> args) {
  fn.MakeCallback(Value(), args, *async_ctx_);
}

void RuntimeWrap::DrainJs() {
  // What is there now, settled kDrainChunk at a time: each callback's
  // microtask checkpoint lets the continuations issue their next calls, so
  // the poll thread gets work back before its spin runs out. Whatever a
  // throwing callback leaves stays in backlog_ for the next drain.
  Napi::Env env(env_);
  Task *tail = backlog_;
  while (tail && tail->cq_next.load(std::memory_order_relaxed)) tail = tail->cq_next.load(std::memory_order_relaxed);
  if (Task *fresh = core_->TakeCompletions()) {
    if (tail) tail->cq_next.store(fresh, std::memory_order_relaxed);
    else backlog_ = fresh;
  }
  while (backlog_) {
    Task *list = backlog_;
    Task *last = list;
    size_t count = 1;
    while (count < kDrainChunk && last->cq_next.load(std::memory_order_relaxed)) {
      last = last->cq_next.load(std::memory_order_relaxed);
      count++;
    }
    backlog_ = last->cq_next.load(std::memory_order_relaxed);
    last->cq_next.store(nullptr, std::memory_order_relaxed);
    Napi::HandleScope scope(env);
    size_t small_total = 0;
    bool any_big = false;
    for (Task *t = list; t; t = t->cq_next.load(std::memory_order_relaxed)) {
      if (t->rsp_len == SIZE_MAX) continue;
      if (t->rsp_len >= kBigResponse) any_big = true;
      else small_total += t->rsp_len;
    }
    if (meta_cap_ < count * 4) {
      size_t cap = std::max<size_t>(count * 4, 1024);
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, cap * sizeof(int32_t));
      Napi::Int32Array ta = Napi::Int32Array::New(env, cap, ab, 0);
      meta_ref_ = Napi::Persistent(Napi::Object(ta));
      meta_ = static_cast<int32_t *>(ab.Data());
      meta_cap_ = cap;
    }
    Napi::Value bodies = env.Undefined();
    char *dst = nullptr;
    size_t base = 0;
    if (small_total) {
      if (cslab_off_ + small_total > cslab_cap_) {
        size_t cap = std::max(kSyncSlab, small_total);
        Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, cap);
        cslab_ref_ = Napi::Persistent(ab);
        cslab_ = static_cast<char *>(ab.Data());
        cslab_cap_ = cap;
        cslab_off_ = 0;
      }
      base = cslab_off_;
      dst = cslab_ + base;
      cslab_off_ = (base + small_total + 7) & ~size_t(7);
      if (cslab_off_ > cslab_cap_) cslab_off_ = cslab_cap_;
      bodies = cslab_ref_.Value();
    }
    Napi::Array bigs;
    if (any_big) bigs = Napi::Array::New(env);
    size_t i = 0, off = 0;
    for (Task *t = list; t;) {
      Task *next = t->cq_next.load(std::memory_order_relaxed);
      int32_t *m = meta_ + i * 4;
      m[0] = int32_t(t->id);
      m[1] = t->rc;
      if (t->rsp_len == SIZE_MAX) {
        m[2] = 0;
        m[3] = kAbortedLen;
      } else if (t->rsp_len >= kBigResponse) {
        // Zero copy: the plugin's malloc'd buffer becomes the Buffer.
        bigs.Set(uint32_t(i), Napi::Buffer<char>::New(
                                  env, static_cast<char *>(t->rsp), t->rsp_len,
                                  [](Napi::Env, char *p) { free(p); }));
        t->rsp = nullptr;
        m[2] = kBigOffset;
        m[3] = int32_t(t->rsp_len);
      } else {
        if (t->rsp_len) memcpy(dst + off, t->rsp, t->rsp_len);
        m[2] = int32_t(base + off);
        m[3] = int32_t(t->rsp_len);
        off += t->rsp_len;
      }
      free(t->rsp);
      t->rsp = nullptr;
      t->cq_next.store(nullptr, std::memory_order_relaxed);
      core_->FreeTask(t);
      t = next;
      i++;
    }
    last_activity_ = uv_hrtime();
    CallJs(on_complete_, {Napi::Number::New(env, double(count)), meta_ref_.Value(), bodies,
                          any_big ? Napi::Value(bigs) : env.Undefined()});
  }
  DeliverLifecycle();
  UpdateLoopRef();
}


void RuntimeWrap::DeliverLifecycle() {
  if (env_gone_) return;
  Napi::Env env(env_);
  if (!init_reported_ && core_->init_state.load() != 0) {
    init_reported_ = true;
    Napi::HandleScope scope(env);
    CallJs(on_event_, {Napi::String::New(env, "init"), Napi::Number::New(env, core_->init_rc.load())});
    if (core_->init_state.load() == 2) unloading_ = true;
  }
  if (!unload_reported_ && core_->unload_state.load() == 2 && core_->in_flight == 0) {
    unload_reported_ = true;
    Napi::HandleScope scope(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("dlclosed", core_->dlclosed.load());
    o.Set("mapped", core_->mapped.load());
    o.Set("threadsStuck", core_->threads_stuck.load());
    o.Set("misuse", double(core_->misuse.load()));
    o.Set("aborted", double(core_->aborted.load()));
    StopHandles();
    CallJs(on_event_, {Napi::String::New(env, "unloaded"), o});
  }
}

void RuntimeWrap::StopHandles() {
  {
    std::lock_guard<std::mutex> lock(core_->bell_mu);
    core_->bell = nullptr;  // worker threads never touch the handle again
  }
  core_->js_spinning.store(false);
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

void RuntimeWrap::TeardownFromEnv() {
  if (env_gone_) return;
  env_gone_ = true;
  if (!unloading_) {
    unloading_ = true;
    core_->unload_state.store(1);
    core_->requests.close();
    if (core_->abi != Abi::kHost) std::thread(Reap, core_).detach();
  }
  StopHandles();
}

}  // namespace dlhost
