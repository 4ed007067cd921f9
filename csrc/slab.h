// slab.h: answer bytes packed into a JS ArrayBuffer that the TypeScript side
// slices into Buffer views (as Node's own Buffer pool does): a fresh
// ArrayBuffer per answer costs several times a call. JS thread only.
#pragma once

#include <napi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "messages.h"

namespace dlhost {

class Slab {
 public:
  static constexpr size_t kBytes = 64 * 1024;

  // Room for n bytes: their offset in Buffer(). A new ArrayBuffer (of at
  // least kBytes) when the current one is full; generation() then grows. The
  // old one lives on while JS holds views of it.
  size_t Reserve(Napi::Env env, size_t n) {
    if (off_ + n > cap_) {
      size_t cap = std::max(kBytes, n);
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, cap);
      ref_ = Napi::Persistent(ab);
      data_ = static_cast<char *>(ab.Data());
      cap_ = cap;
      off_ = 0;
      gen_++;
    }
    size_t at = off_;
    off_ = std::min(cap_, (at + n + 7) & ~size_t(7));
    return at;
  }
  // Would n more bytes go into the current buffer?
  bool Fits(size_t n) const { return data_ != nullptr && off_ + n <= cap_; }
  char *Data() const { return data_; }
  int32_t generation() const { return gen_; }
  Napi::Value Buffer(Napi::Env env) const {
    return ref_.IsEmpty() ? env.Undefined() : Napi::Value(ref_.Value());
  }
  void Reset() {
    ref_.Reset();
    data_ = nullptr;
    off_ = cap_ = 0;
  }

 private:
  Napi::Reference<Napi::ArrayBuffer> ref_;
  char *data_ = nullptr;
  size_t off_ = 0, cap_ = 0;
  int32_t gen_ = 0;
};

// The Int32Array a batch's meta goes in ([id, offset, length]… per item),
// grown when a batch needs more, reused otherwise. JS thread only.
class MetaArray {
 public:
  // Room for n int32s (at least min when it grows).
  int32_t *Reserve(Napi::Env env, size_t n, size_t min) {
    if (cap_ < n) {
      size_t cap = std::max(min, n);
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, cap * sizeof(int32_t));
      ref_ = Napi::Persistent(Napi::Object(Napi::Int32Array::New(env, cap, ab, 0)));
      data_ = static_cast<int32_t *>(ab.Data());
      cap_ = cap;
    }
    return data_;
  }
  Napi::Value Value() const { return ref_.Value(); }
  void Reset() {
    ref_.Reset();
    data_ = nullptr;
    cap_ = 0;
  }

 private:
  Napi::ObjectReference ref_;
  int32_t *data_ = nullptr;
  size_t cap_ = 0;
};

// Packs the front of `list` into slab, one batch for one callback: at most
// max_count messages and, past the first, max_bytes. meta gets, per message,
// [id,] offset, length (the id with with_id). The packed messages are freed
// and list becomes the rest. Returns how many. JS thread only.
inline size_t PackMessages(Napi::Env env, Message *&list, size_t max_count, size_t max_bytes,
                           Slab &slab, MetaArray &meta, bool with_id) {
  const size_t stride = with_id ? 3 : 2;
  size_t count = 0, bytes = 0;
  Message *last = nullptr;
  for (Message *m = list; m && count < max_count; m = m->cq_next.load(std::memory_order_relaxed)) {
    if (count && bytes + m->len > max_bytes) break;
    bytes += m->len;
    last = m;
    count++;
  }
  Message *m = list;
  list = last->cq_next.load(std::memory_order_relaxed);
  last->cq_next.store(nullptr, std::memory_order_relaxed);
  int32_t *out = meta.Reserve(env, count * stride, max_count * stride);
  size_t base = slab.Reserve(env, bytes ? bytes : 1);
  char *dst = slab.Data() + base;
  for (size_t i = 0, off = 0; m; i++) {
    Message *next = m->cq_next.load(std::memory_order_relaxed);
    if (m->len) memcpy(dst + off, m->data(), m->len);
    int32_t *e = out + i * stride;
    if (with_id) *e++ = int32_t(m->id);
    e[0] = int32_t(base + off);
    e[1] = int32_t(m->len);
    off += m->len;
    Message::Free(m);
    m = next;
  }
  return count;
}

}  // namespace dlhost
