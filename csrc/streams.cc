// streams.cc: RuntimeWrap's stream chunks (Level 5, dlhost_task_send). JS
// thread only: plugin threads push chunks into the core's chunk queue
// (runtime_core.cc Send); here they are handed to TypeScript in batches,
// packed into a slab that TypeScript slices into Buffer views.
#include <algorithm>

#include "js_util.h"
#include "runtime_wrap.h"

namespace dlhost {

void RuntimeWrap::SettleChunks() {
  if (env_gone_ || !core_ || on_chunks_.IsEmpty() || core_->stream_chunks.empty_approx()) return;
  Napi::Env env(env_);
  Message *list = core_->stream_chunks.pop_all();
  while (list) {
    Napi::HandleScope scope(env);
    // A batch: up to kSettleChunk chunks, copied into one slab (chunks are
    // at most kMaxMessageBytes). One copy of 64 KiB costs less than a
    // Buffer of its own, whose finalizer the GC must run.
    size_t count = PackMessages(env, list, kSettleChunk, SIZE_MAX, chunk_slab_, chunk_meta_, true);
    CallJs(on_chunks_,
           {Napi::Number::New(env, double(count)), chunk_meta_.Value(), chunk_slab_.Buffer(env)});
    if (env_gone_ || !core_) {
      for (Message *m = list; m;) {  // the environment went away meanwhile
        Message *next = m->cq_next.load(std::memory_order_relaxed);
        Message::Free(m);
        m = next;
      }
      return;
    }
  }
}

// setStream(slot, highWaterMark): the free slot's next call is a stream.
Napi::Value RuntimeWrap::SetStream(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int32_t hwm = info[1].As<Napi::Number>().Int32Value();
  if (hwm < 1) throw Napi::RangeError::New(env, "setStream: highWaterMark below 1");
  FreeSlot(env, info[0], "setStream")->stream_hwm = hwm;
  return env.Undefined();
}

// streamRead(slot, n): the reader took n chunks: room for n more.
Napi::Value RuntimeWrap::StreamRead(const Napi::CallbackInfo &info) {
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  int32_t n = info[1].As<Napi::Number>().Int32Value();
  if (core_ && id < core_->slots && n > 0) {
    Task *t = core_->Slot(id);
    if (t->stream_hwm > 0) t->unread.fetch_sub(n, std::memory_order_acq_rel);
  }
  return info.Env().Undefined();
}

}  // namespace dlhost
