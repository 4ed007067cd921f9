// channel_wrap.h: class Channel (binding), the host's end of an isolated
// runtime's channel (channel.h): it writes requests, reads answers and
// lifecycle events, and wakes on the child's doorbell. JS thread only.
#pragma once

#include <napi.h>
#include <uv.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "channel.h"
#include "env_state.h"
#include "histogram.h"
#include "slab.h"

namespace dlhost {

class ChannelWrap : public Napi::ObjectWrap<ChannelWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit ChannelWrap(const Napi::CallbackInfo &info);
  ~ChannelWrap();

 private:
  Napi::Value Fds(const Napi::CallbackInfo &info);
  Napi::Value Spawned(const Napi::CallbackInfo &info);
  Napi::Value SendCfg(const Napi::CallbackInfo &info);
  Napi::Value Send(const Napi::CallbackInfo &info);
  Napi::Value Flush(const Napi::CallbackInfo &info);
  Napi::Value Unload(const Napi::CallbackInfo &info);
  Napi::Value Cancel(const Napi::CallbackInfo &info);
  Napi::Value MessageFlow(const Napi::CallbackInfo &info);
  Napi::Value MessagesRefused(const Napi::CallbackInfo &info);
  Napi::Value StreamRead(const Napi::CallbackInfo &info);
  Napi::Value Histogram(const Napi::CallbackInfo &info);
  void DeliverChunks();
  void DeliverMessages();
  void Deliver(Napi::FunctionReference &fn, std::vector<int32_t> &meta, std::string &bytes,
               size_t stride);
  Napi::Value Counters(const Napi::CallbackInfo &info);
  Napi::Value Limit(const Napi::CallbackInfo &info);
  Napi::Value Close(const Napi::CallbackInfo &info);
  bool WriteFrames(uint32_t id, uint32_t flags, const char *p, size_t len);
  void WriteControl(uint32_t flags, const void *payload, uint32_t len);
  void Settle();
  void SettleJs();
  void CallJs(Napi::FunctionReference &fn, std::initializer_list<napi_value> args);
  void StartSpin();
  void UpdateLoopRef();
  void Detach();
  static void OnEnvCleanup(void *self);
  int32_t Pending() const { return counters_ ? counters_[0] : 0; }

  ChannelShared *chan_ = nullptr;
  size_t map_bytes_ = 0;
  int memfd_ = -1, bell_r_ = -1, bell_w_ = -1;
  uv_poll_t *poll_ = nullptr;
  uv_idle_t *idle_ = nullptr;
  bool idle_active_ = false, referenced_ = false, closed_ = false;
  // Requests written and not yet published (flush()): the tail to publish.
  bool staging_ = false;
  uint64_t staged_tail_ = 0;
  uint64_t last_activity_ = 0;
  Napi::FunctionReference on_complete_, on_event_, on_messages_, on_chunks_;
  // Stream chunks read and not yet handed to JS: bytes, [id, offset, length].
  std::string chunk_bytes_;
  std::vector<int32_t> chunk_meta_;
  // Latencies (off until JS asks for the histogram): when each call id's
  // batch was written, and when the current batch began.
  LatencyHistogram hist_;
  Napi::ObjectReference hist_ref_;
  std::vector<uint64_t> submit_ns_;
  uint64_t batch_ns_ = 0;
  // Messages read and not yet handed to JS: their bytes, [offset, length].
  std::string msg_bytes_;
  std::vector<int32_t> msg_meta_;
  std::unique_ptr<Napi::AsyncContext> async_ctx_;
  Napi::ObjectReference counters_ref_, meta_ref_;
  int32_t *counters_ = nullptr, *meta_ = nullptr;
  size_t meta_cap_ = 0;
  Slab slab_;
  std::unordered_map<uint32_t, std::string> partial_;  // answers in pieces
  CleanupHook hook_;
  napi_env env_;
};

}  // namespace dlhost
