// messages.h: messages from plugin threads to JS (dlhost_emit, Level 5). Any
// plugin thread pushes (host_abi.cc); one consumer drains: the JS thread
// (messages.cc), or an isolated runtime's channel thread, which forwards
// them to the host. Lock-free (a Treiber stack drained whole, as answers
// are), bounded, and never blocking: a full queue refuses. No N-API here.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "include/dlhost.h"
#include "queue.h"

namespace dlhost {

// One message: the header, then its bytes (one malloc).
struct Message {
  std::atomic<Message *> cq_next{nullptr};
  size_t len = 0;
  uint32_t id = 0;  // a stream chunk: the call it belongs to (the JS side's key)
  char *data() { return reinterpret_cast<char *>(this + 1); }
  static Message *Of(char *data) { return reinterpret_cast<Message *>(data) - 1; }

  static Message *New(const void *p, size_t n) {
    void *mem = malloc(sizeof(Message) + n);
    if (!mem) return nullptr;
    Message *m = new (mem) Message();
    m->len = n;
    if (n) memcpy(m->data(), p, n);
    return m;
  }
  static void Free(Message *m) {
    m->~Message();
    free(m);
  }
};

class MessageQueue {
 public:
  explicit MessageQueue(uint32_t cap) : cap_(cap) {}
  ~MessageQueue() {
    for (Message *m = q_.pop_all(); m;) {
      Message *next = m->cq_next.load(std::memory_order_relaxed);
      Message::Free(m);
      m = next;
    }
  }
  MessageQueue(const MessageQueue &) = delete;
  MessageQueue &operator=(const MessageQueue &) = delete;

  // Any thread. DLHOST_OK, DLHOST_EAGAIN (cap messages wait already: the
  // consumer is not keeping up) or DLHOST_ENOMEM. *wake: this push found the
  // queue empty, so the consumer must be woken.
  int Push(const void *p, size_t n, bool *wake) {
    *wake = false;
    if (pending_.fetch_add(1, std::memory_order_acq_rel) >= cap_) {
      pending_.fetch_sub(1, std::memory_order_relaxed);
      Refuse();
      return DLHOST_EAGAIN;
    }
    Message *m = Message::New(p, n);
    if (!m) {
      pending_.fetch_sub(1, std::memory_order_relaxed);
      Refuse();
      return DLHOST_ENOMEM;
    }
    *wake = q_.push(m);
    return DLHOST_OK;
  }
  // Consumer only: every message pushed, oldest first (per pushing thread,
  // in its order), linked by cq_next; the caller frees each and then calls
  // Consumed(count).
  Message *TakeAll() { return q_.pop_all(); }
  void Consumed(size_t n) { pending_.fetch_sub(uint32_t(n), std::memory_order_relaxed); }
  bool EmptyApprox() const { return q_.empty_approx(); }
  void Refuse() {
    refused_.fetch_add(1, std::memory_order_relaxed);
    if (mirror_) mirror_->fetch_add(1, std::memory_order_relaxed);
  }
  // Refusals are also counted into *m (an isolated runtime's shared header).
  void Mirror(std::atomic<uint64_t> *m) { mirror_ = m; }
  uint64_t Refused() const { return refused_.load(std::memory_order_relaxed); }

 private:
  CompletionQueue<Message> q_;
  std::atomic<uint32_t> pending_{0};
  const uint32_t cap_;
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> *mirror_ = nullptr;
};

}  // namespace dlhost
