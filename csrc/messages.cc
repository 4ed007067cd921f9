// messages.cc: RuntimeWrap's message delivery (Level 5, dlhost_emit). JS
// thread only: plugin threads push into the core's MessageQueue
// (messages.h); here the waiting messages are handed to TypeScript in
// batches, one callback per kMessageChunk messages, their bytes packed into
// a slab that TypeScript slices into Buffer views.
#include <algorithm>

#include "js_util.h"
#include "runtime_wrap.h"

namespace dlhost {

void RuntimeWrap::SettleMessages() {
  // Held until the init event is out: a plugin may emit from init on, and a
  // listener can only be attached once load() has resolved, which happens
  // in that event's callback.
  if (env_gone_ || !core_ || on_messages_.IsEmpty() || !init_reported_) return;
  Napi::Env env(env_);
  Message *tail = msg_backlog_;
  while (tail && tail->cq_next.load(std::memory_order_relaxed))
    tail = tail->cq_next.load(std::memory_order_relaxed);
  if (Message *fresh = core_->messages.TakeAll()) {
    if (tail)
      tail->cq_next.store(fresh, std::memory_order_relaxed);
    else
      msg_backlog_ = fresh;
  }
  while (msg_backlog_ && !messages_paused_) {
    Napi::HandleScope scope(env);
    // A batch: up to kMessageChunk messages and kMessageChunkBytes (a
    // larger message goes alone).
    size_t count = PackMessages(env, msg_backlog_, kMessageChunk, kMessageChunkBytes, message_slab_,
                                msg_meta_, false);
    // Room again for the plugin before JS runs (a listener may take long).
    core_->messages.Consumed(count);
    CallJs(on_messages_,
           {Napi::Number::New(env, double(count)), msg_meta_.Value(), message_slab_.Buffer(env)});
    if (env_gone_ || !core_) return;
  }
}

// messageFlow(on): TypeScript's iterator is full (false) or has room again
// (true). Paused, messages stay in the core's bounded queue and dlhost_emit
// refuses once it is full: backpressure to the plugin, nothing dropped here.
Napi::Value RuntimeWrap::MessageFlow(const Napi::CallbackInfo &info) {
  bool on = info[0].ToBoolean();
  bool resumed = messages_paused_ && on;
  messages_paused_ = !on;
  if (resumed && bell_) uv_async_send(bell_);  // deliver on the next turn, not inside this call
  return info.Env().Undefined();
}

// messagesRef(on): a 'message' listener or an open iterator keeps the event
// loop alive, as a socket with a 'data' listener does (until unload()).
Napi::Value RuntimeWrap::MessagesRef(const Napi::CallbackInfo &info) {
  messages_ref_ = info[0].ToBoolean();
  UpdateLoopRef();
  return info.Env().Undefined();
}

}  // namespace dlhost
