// channel_wrap.cc: class Channel (binding). JS thread only.
#include "channel_wrap.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "clock.h"
#include "constants.h"
#include "js_request.h"
#include "js_util.h"

namespace dlhost {

namespace {
constexpr size_t kBigAnswer = 64 * 1024;
}  // namespace

Napi::Function ChannelWrap::Init(Napi::Env env) {
  return DefineClass(
      env, "Channel",
      {InstanceMethod<&ChannelWrap::Fds>("fds"), InstanceMethod<&ChannelWrap::Spawned>("spawned"),
       InstanceMethod<&ChannelWrap::SendCfg>("sendCfg"), InstanceMethod<&ChannelWrap::Send>("send"),
       InstanceMethod<&ChannelWrap::Flush>("flush"), InstanceMethod<&ChannelWrap::Unload>("unload"),
       InstanceMethod<&ChannelWrap::Cancel>("cancel"),
       InstanceMethod<&ChannelWrap::MessageFlow>("messageFlow"),
       InstanceMethod<&ChannelWrap::MessagesRefused>("messagesRefused"),
       InstanceMethod<&ChannelWrap::StreamRead>("streamRead"),
       InstanceMethod<&ChannelWrap::Histogram>("histogram"),
       InstanceMethod<&ChannelWrap::Counters>("counters"),
       InstanceMethod<&ChannelWrap::Limit>("limit"), InstanceMethod<&ChannelWrap::Close>("close")});
}

// new Channel(ringBytes, onComplete, onEvent)
ChannelWrap::ChannelWrap(const Napi::CallbackInfo &info)
    : Napi::ObjectWrap<ChannelWrap>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsFunction() || !info[2].IsFunction() ||
      !info[3].IsFunction() || !info[4].IsFunction())
    throw Napi::TypeError::New(env,
                               "Channel(ringBytes, onComplete, onEvent, onMessages, onChunks)");
  uint64_t ring = 1;
  while (ring < uint64_t(info[0].As<Napi::Number>().DoubleValue()) && ring < (uint64_t(1) << 30))
    ring <<= 1;
  if (ring < 64 * 1024) ring = 64 * 1024;
  map_bytes_ = ChannelBytes(ring);
  memfd_ = memfd_create("dlhost-channel", MFD_CLOEXEC);
  if (memfd_ < 0 || ftruncate(memfd_, off_t(map_bytes_)) != 0) {
    int err = errno;
    if (memfd_ >= 0) close(memfd_);
    ThrowCoded(env, "ERR_RESOURCE", std::string("cannot make the channel: ") + strerror(err));
  }
  void *m = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
  int fds[2];
  if (m == MAP_FAILED || pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    int err = errno;
    if (m != MAP_FAILED) munmap(m, map_bytes_);
    close(memfd_);
    ThrowCoded(env, "ERR_RESOURCE", std::string("cannot make the channel: ") + strerror(err));
  }
  chan_ = new (m) ChannelShared();
  chan_->magic = kChannelMagic;
  chan_->version = kChannelVersion;
  chan_->ring_bytes = ring;
  bell_r_ = fds[0];
  bell_w_ = fds[1];
  on_complete_ = Napi::Persistent(info[1].As<Napi::Function>());
  on_event_ = Napi::Persistent(info[2].As<Napi::Function>());
  on_messages_ = Napi::Persistent(info[3].As<Napi::Function>());
  on_chunks_ = Napi::Persistent(info[4].As<Napi::Function>());
  async_ctx_ = std::make_unique<Napi::AsyncContext>(env, "dlhost:isolated");
  uv_loop_t *loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  poll_ = new uv_poll_t;
  uv_poll_init(loop, poll_, bell_r_);
  poll_->data = this;
  uv_poll_start(poll_, UV_READABLE, [](uv_poll_t *h, int, int) {
    auto *self = static_cast<ChannelWrap *>(h->data);
    char buf[256];
    while (read(self->bell_r_, buf, sizeof buf) > 0) {
    }
    self->Settle();
  });
  uv_unref(reinterpret_cast<uv_handle_t *>(poll_));
  idle_ = new uv_idle_t;
  uv_idle_init(loop, idle_);
  idle_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t *>(idle_));
  hook_.Arm(env, &ChannelWrap::OnEnvCleanup, this);
}

ChannelWrap::~ChannelWrap() {
  Detach();
  if (chan_) munmap(chan_, map_bytes_);
}

void ChannelWrap::OnEnvCleanup(void *self) { static_cast<ChannelWrap *>(self)->Detach(); }

// The end: no more JS, no more handles, no more descriptors. The mapping
// stays until the wrapper goes (a late read finds it valid).
void ChannelWrap::Detach() {
  hook_.Disarm();
  closed_ = true;
  if (poll_) {
    uv_close(reinterpret_cast<uv_handle_t *>(poll_),
             [](uv_handle_t *h) { delete reinterpret_cast<uv_poll_t *>(h); });
    poll_ = nullptr;
  }
  if (idle_) {
    uv_close(reinterpret_cast<uv_handle_t *>(idle_),
             [](uv_handle_t *h) { delete reinterpret_cast<uv_idle_t *>(h); });
    idle_ = nullptr;
  }
  for (int *fd : {&memfd_, &bell_r_, &bell_w_})
    if (*fd >= 0) {
      close(*fd);
      *fd = -1;
    }
  on_complete_.Reset();
  on_event_.Reset();
  on_messages_.Reset();
  on_chunks_.Reset();
  hist_.Attach(nullptr);
  hist_ref_.Reset();
  counters_ref_.Reset();
  counters_ = nullptr;
  meta_ref_.Reset();
  meta_ = nullptr;
  slab_.Reset();
}

// fds() -> [channel, doorbell]: what the child gets as fds 3 and 4.
Napi::Value ChannelWrap::Fds(const Napi::CallbackInfo &info) {
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(uint32_t(0), double(memfd_));
  a.Set(uint32_t(1), double(bell_w_));
  return a;
}

// spawned(): the child has its copies; the host closes its own (the
// mapping stays), so the doorbell breaks when the child is gone.
Napi::Value ChannelWrap::Spawned(const Napi::CallbackInfo &info) {
  for (int *fd : {&memfd_, &bell_w_})
    if (*fd >= 0) {
      close(*fd);
      *fd = -1;
    }
  return info.Env().Undefined();
}

bool ChannelWrap::WriteFrames(uint32_t id, uint32_t flags, const char *p, size_t len) {
  size_t max = MaxFramePayload(chan_->ring_bytes);
  // All of it or none: a call never half-sent.
  uint64_t need = 0;
  for (size_t left = len;;) {
    size_t n = left > max ? max : left;
    need += FrameSize(n);
    left -= n;
    if (left == 0) break;
  }
  if (!staging_) {
    staged_tail_ = chan_->req.tail.load(std::memory_order_relaxed);
    if (hist_.on()) batch_ns_ = monotonic_ns();  // one clock read per batch
  }
  if (staged_tail_ + need - chan_->req.head.load() > chan_->ring_bytes) return false;
  staging_ = true;
  for (;;) {
    size_t n = len > max ? max : len;
    FrameHeader h{0, id, uint32_t(n), flags | (len > n ? kFrameMore : 0)};
    RingStage(chan_->req, ReqData(chan_), chan_->ring_bytes, &staged_tail_, h, p, n);
    p += n;
    len -= n;
    if (len == 0) return true;
  }
}

Napi::Value ChannelWrap::SendCfg(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (closed_ || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "sendCfg(cfg: Buffer)");
  auto b = info[0].As<Napi::Buffer<char>>();
  if (b.Length() > MaxFramePayload(chan_->ring_bytes))
    throw Napi::RangeError::New(env, "cfg is larger than the channel carries");
  FrameHeader h{0, kControlId, uint32_t(b.Length()), kFrameCfg};
  RingWrite(chan_->req, ReqData(chan_), chan_->ring_bytes, h, b.Data(), b.Length());
  StartSpin();
  UpdateLoopRef();
  return env.Undefined();
}

// send(id, req, kind?) -> true, or false when the channel has no room for
// it now. kind (TaskKind): a state step instead of a call.
Napi::Value ChannelWrap::Send(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (closed_) return Napi::Boolean::New(env, false);
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  JsRequest r = ReadRequest(env, info[1]);
  uint32_t flags = 0;
  if (info.Length() > 3 && info[3].IsNumber()) {
    uint32_t hwm = info[3].As<Napi::Number>().Uint32Value();
    if (hwm >= 1 && hwm <= 0xffff) flags |= kFrameStream | (hwm << 16);
  }
  if (info.Length() > 2 && info[2].IsNumber()) {
    uint32_t kind = info[2].As<Napi::Number>().Uint32Value();
    flags |= kind == kTaskStateExport   ? kFrameStateExport
             : kind == kTaskStateImport ? kFrameStateImport
                                        : 0;
  }
  bool ok;
  if (r.str) {
    std::string s(r.len + 1, '\0');
    r.CopyTo(env, &s[0]);
    ok = WriteFrames(id, flags, s.data(), r.len);
  } else {
    ok = WriteFrames(id, flags, r.bytes, r.len);
  }
  if (ok && hist_.on() && !(flags & (kFrameStateExport | kFrameStateImport))) {
    if (id >= submit_ns_.size()) submit_ns_.resize(size_t(id) + 1024, 0);
    submit_ns_[id] = batch_ns_;
  }
  if (ok) {
    StartSpin();
    UpdateLoopRef();
  }
  return Napi::Boolean::New(env, ok);
}

// flush(): the requests written since the last flush become visible to the
// child at once, with one wake-up (the JS side flushes once per turn).
Napi::Value ChannelWrap::Flush(const Napi::CallbackInfo &info) {
  if (!closed_ && staging_) {
    staging_ = false;
    RingPublish(chan_->req, staged_tail_);
  }
  return info.Env().Undefined();
}

// Hands the messages read in this round to JS: [offset, length].
void ChannelWrap::DeliverMessages() { Deliver(on_messages_, msg_meta_, msg_bytes_, 2); }

// Hands the stream chunks read in this round to JS: [id, offset, length].
void ChannelWrap::DeliverChunks() { Deliver(on_chunks_, chunk_meta_, chunk_bytes_, 3); }

// One callback for what was gathered: meta (stride int32s an item) and the
// bytes, each copied into an ArrayBuffer of its own; both emptied.
void ChannelWrap::Deliver(Napi::FunctionReference &fn, std::vector<int32_t> &meta,
                          std::string &bytes, size_t stride) {
  if (meta.empty() || fn.IsEmpty()) return;
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  size_t n = meta.size() / stride;
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, bytes.size() ? bytes.size() : 1);
  memcpy(ab.Data(), bytes.data(), bytes.size());
  Napi::ArrayBuffer mab = Napi::ArrayBuffer::New(env, meta.size() * sizeof(int32_t));
  memcpy(mab.Data(), meta.data(), meta.size() * sizeof(int32_t));
  meta.clear();
  bytes.clear();
  CallJs(fn,
         {Napi::Number::New(env, double(n)), Napi::Int32Array::New(env, n * stride, mab, 0), ab});
}

// streamRead(id, n): the reader of stream id took n chunks (room for n more
// in the child).
Napi::Value ChannelWrap::StreamRead(const Napi::CallbackInfo &info) {
  uint32_t args[2] = {info[0].As<Napi::Number>().Uint32Value(),
                      info[1].As<Napi::Number>().Uint32Value()};
  WriteControl(kFrameStreamRead, args, sizeof args);
  return info.Env().Undefined();
}

// messageFlow(on): the host's iterator is full (false) or has room again:
// the child holds messages meanwhile (backpressure to dlhost_emit).
Napi::Value ChannelWrap::MessageFlow(const Napi::CallbackInfo &info) {
  uint32_t on = info[0].ToBoolean() ? 1 : 0;
  WriteControl(kFrameMessageFlow, &on, sizeof on);
  return info.Env().Undefined();
}

// histogram(on) -> Float64Array | null: as Runtime's (runtime_wrap.cc):
// latencies from send to the answer read here, then the child's service
// times, copied out of the channel's header at each call.
Napi::Value ChannelWrap::Histogram(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].ToBoolean()) {
    hist_.Attach(nullptr);
    hist_ref_.Reset();
    return env.Null();
  }
  const size_t n = LatencyHistogram::kLength;
  if (hist_ref_.IsEmpty()) {
    if (closed_) return env.Null();
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, 2 * n * sizeof(double));
    memset(ab.Data(), 0, ab.ByteLength());
    hist_ref_ = Napi::Persistent(Napi::Object(Napi::Float64Array::New(env, 2 * n, ab, 0)));
    hist_.Attach(static_cast<double *>(ab.Data()));
  }
  Napi::Float64Array a = hist_ref_.Value().As<Napi::Float64Array>();
  if (chan_) memcpy(a.Data() + n, chan_->service, n * sizeof(double));
  return a;
}

// messagesRefused(): dlhost_emit calls the child refused so far.
Napi::Value ChannelWrap::MessagesRefused(const Napi::CallbackInfo &info) {
  return Napi::Number::New(info.Env(), chan_ ? double(chan_->messages_refused.load()) : 0.0);
}

// cancel(id): tells the child the caller gave up on call id (best effort:
// a full ring drops it; the answer is dropped here either way).
Napi::Value ChannelWrap::Cancel(const Napi::CallbackInfo &info) {
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  WriteControl(kFrameCancel, &id, sizeof id);
  return info.Env().Undefined();
}

Napi::Value ChannelWrap::Unload(const Napi::CallbackInfo &info) {
  WriteControl(kFrameUnload, nullptr, 0);
  return info.Env().Undefined();
}

// One control frame to the child, after the requests staged before it (so
// it reaches the child behind every call made before it). JS thread.
void ChannelWrap::WriteControl(uint32_t flags, const void *payload, uint32_t len) {
  if (closed_) return;
  if (staging_) {
    staging_ = false;
    RingPublish(chan_->req, staged_tail_);
  }
  FrameHeader h{0, kControlId, len, flags};
  RingWrite(chan_->req, ReqData(chan_), chan_->ring_bytes, h, payload, len);
}

Napi::Value ChannelWrap::Counters(const Napi::CallbackInfo &info) {
  return SharedCounter(info.Env(), counters_ref_, &counters_);
}

// limit() -> 'memoryMb' | 'cpuSeconds' | 'openFiles' | null: what the child
// said it was dying of.
Napi::Value ChannelWrap::Limit(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  switch (chan_ ? chan_->limit.load() : 0) {
    case 1: return Napi::String::New(env, "memoryMb");
    case 2: return Napi::String::New(env, "cpuSeconds");
    case 3: return Napi::String::New(env, "openFiles");
    default: return env.Null();
  }
}

// close(): settle what the child wrote, then stop (the child is gone).
Napi::Value ChannelWrap::Close(const Napi::CallbackInfo &info) {
  if (!closed_) {
    Settle();
    Detach();
  }
  return info.Env().Undefined();
}

void ChannelWrap::StartSpin() {
  if (idle_active_ || !idle_) return;
  last_activity_ = uv_hrtime();
  chan_->host_spinning.store(1, std::memory_order_seq_cst);
  uv_idle_start(idle_, [](uv_idle_t *h) {
    auto *self = static_cast<ChannelWrap *>(h->data);
    self->Settle();
    if (self->closed_ || !self->idle_active_) return;
    if (self->Pending() == 0 || uv_hrtime() - self->last_activity_ > kDefaultSpinNs) {
      self->chan_->host_spinning.store(0, std::memory_order_seq_cst);
      uv_idle_stop(self->idle_);
      self->idle_active_ = false;
      self->Settle();  // anything written while the child thought we spin
    } else {
      sched_yield();
    }
  });
  idle_active_ = true;
}

void ChannelWrap::UpdateLoopRef() {
  if (!poll_) return;
  bool want = Pending() > 0;
  if (want == referenced_) return;
  referenced_ = want;
  if (want)
    uv_ref(reinterpret_cast<uv_handle_t *>(poll_));
  else
    uv_unref(reinterpret_cast<uv_handle_t *>(poll_));
}

void ChannelWrap::CallJs(Napi::FunctionReference &fn, std::initializer_list<napi_value> args) {
  dlhost::CallJs(env_, *async_ctx_, Value(), fn.Value(), args);
}

void ChannelWrap::Settle() {
  if (closed_ || on_complete_.IsEmpty()) return;
  try {
    SettleJs();
  } catch (const EnvGone &) {
    Detach();
  } catch (const Napi::Error &) {
    Detach();
  }
}

void ChannelWrap::SettleJs() {
  Napi::Env env(env_);
  const uint64_t cap = chan_->ring_bytes;
  char *data = RspData(chan_);
  for (;;) {
    Napi::HandleScope scope(env);
    if (meta_cap_ < kSettleChunk * 4) {
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, kSettleChunk * 4 * sizeof(int32_t));
      meta_ref_ =
          Napi::Persistent(Napi::Object(Napi::Int32Array::New(env, kSettleChunk * 4, ab, 0)));
      meta_ = static_cast<int32_t *>(ab.Data());
      meta_cap_ = kSettleChunk * 4;
    }
    size_t count = 0;
    Napi::Array bigs;
    bool any_big = false;
    Napi::Value bodies = env.Undefined();
    FrameHeader h;
    const uint64_t now = hist_.on() ? monotonic_ns() : 0;
    while (count < kSettleChunk && RingPeek(chan_->rsp, data, cap, &h)) {
      if (h.id == kControlId) {
        std::string p(h.b, '\0');
        RingTake(chan_->rsp, data, cap, h, &p[0], h.b);
        int32_t kind = int32_t(h.a);
        if (kind == kEventChunk && p.size() >= 4) {
          uint32_t id;
          memcpy(&id, p.data(), 4);
          chunk_meta_.push_back(int32_t(id));
          chunk_meta_.push_back(int32_t(chunk_bytes_.size()));
          chunk_meta_.push_back(int32_t(p.size() - 4));
          chunk_bytes_.append(p, 4, std::string::npos);
          continue;
        }
        if (kind == kEventMessage) {
          msg_meta_.push_back(int32_t(msg_bytes_.size()));
          msg_meta_.push_back(int32_t(p.size()));
          msg_bytes_ += p;
          if (msg_meta_.size() >= kMessageChunk * 2) DeliverMessages();
          if (closed_) return;
          continue;
        }
        DeliverMessages();  // before a lifecycle event: what came first goes first
        if (closed_) return;
        if (kind == kEventMore && p.size() >= 4) {
          uint32_t id;
          memcpy(&id, p.data(), 4);
          partial_[id].append(p, 4, std::string::npos);
        } else if (kind == kEventInit && p.size() >= 8) {
          int32_t rc, failure;
          memcpy(&rc, p.data(), 4);
          memcpy(&failure, p.data() + 4, 4);
          static const char *const kFailures[] = {"rc", "resource", "open-null", "symbol", "load"};
          CallJs(on_event_,
                 {Napi::String::New(env, "init"), Napi::Number::New(env, rc),
                  Napi::String::New(env, kFailures[failure >= 0 && failure <= 4 ? failure : 0]),
                  Napi::String::New(env, p.substr(8))});
        } else if (kind == kEventUnloaded && p.size() >= 12) {
          Napi::Object o = Napi::Object::New(env);
          uint32_t misuse, aborted;
          memcpy(&misuse, p.data() + 4, 4);
          memcpy(&aborted, p.data() + 8, 4);
          o.Set("dlclosed", bool(p[0]));
          o.Set("mapped", bool(p[1]));
          o.Set("threadsStuck", bool(p[2]));
          o.Set("misuse", double(misuse));
          o.Set("aborted", double(aborted));
          CallJs(on_event_, {Napi::String::New(env, "unloaded"), o});
        }
        if (closed_) return;
        continue;
      }
      int32_t *m = meta_ + count * 4;
      m[0] = int32_t(h.id);
      m[1] = int32_t(h.a);
      if (now && h.id < submit_ns_.size() && submit_ns_[h.id]) {
        if (h.b != kFrameAborted) hist_.Record(now - submit_ns_[h.id]);
        submit_ns_[h.id] = 0;
      }
      if (h.b == kFrameAborted) {
        RingTake(chan_->rsp, data, cap, h, nullptr, 0);
        m[2] = 0;
        m[3] = kAbortedLen;
        count++;
        continue;
      }
      auto it = partial_.find(h.id);
      size_t total = (it != partial_.end() ? it->second.size() : 0) + h.b;
      // One slab per callback: a body that needs a new one waits for the next.
      if (total < kBigAnswer && !bodies.IsUndefined() && !slab_.Fits(total)) break;
      std::string head;
      if (it != partial_.end()) {
        head.swap(it->second);
        partial_.erase(it);
      }
      if (total >= kBigAnswer) {
        char *p = static_cast<char *>(malloc(total ? total : 1));
        if (!p) throw Napi::Error::New(env, "out of memory");
        memcpy(p, head.data(), head.size());
        RingTake(chan_->rsp, data, cap, h, p + head.size(), h.b);
        if (!any_big) bigs = Napi::Array::New(env);
        any_big = true;
        bigs.Set(uint32_t(count),
                 Napi::Buffer<char>::New(env, p, total, [](Napi::Env, char *q) { free(q); }));
        m[2] = kBigOffset;
        m[3] = int32_t(total);
      } else if (total == 0) {  // no bytes, no slab (which may not exist yet)
        RingTake(chan_->rsp, data, cap, h, nullptr, 0);
        m[2] = 0;
        m[3] = 0;
      } else {
        size_t at = slab_.Reserve(env, total);
        if (!head.empty()) memcpy(slab_.Data() + at, head.data(), head.size());
        RingTake(chan_->rsp, data, cap, h, slab_.Data() + at + head.size(), h.b);
        bodies = slab_.Buffer(env);
        m[2] = int32_t(at);
        m[3] = int32_t(total);
      }
      count++;
    }
    DeliverMessages();
    if (closed_) return;
    DeliverChunks();  // before the answers read with them: a stream's last chunk, then its end
    if (closed_) return;
    if (count == 0) break;
    last_activity_ = uv_hrtime();
    CallJs(on_complete_, {Napi::Number::New(env, double(count)), meta_ref_.Value(), bodies,
                          any_big ? Napi::Value(bigs) : env.Undefined()});
    if (closed_) return;
  }
  UpdateLoopRef();
}

}  // namespace dlhost
